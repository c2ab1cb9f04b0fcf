//! All integration tests of fluxlora-train, compiled as one test binary (one link instead of one
//! per file).

mod cached_source;
mod common;
mod config;
mod ema;
mod kill_during_save;
mod lycoris;
mod pipeline;
mod resume;
mod tensorboard;
mod trainer;
mod validation;
