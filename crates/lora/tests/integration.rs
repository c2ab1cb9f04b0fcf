//! All integration tests of fluxlora-lora, compiled as one test binary (one link instead of one per
//! file).

mod common;
mod frozen;
mod lora_math;
mod lycoris_math;
mod targets;
