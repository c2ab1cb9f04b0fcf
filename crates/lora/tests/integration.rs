//! All integration tests of fluxlora-lora, compiled as one test binary (one link instead of one per
//! file).

mod common;
mod lora_math;
mod targets;
