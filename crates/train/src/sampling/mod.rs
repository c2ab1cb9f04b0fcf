//! Sampling: images from the base model with LoRAs, for the sample grids a run draws and for the
//! `sample` job.
//!
//! [`prompts`] parses kohya prompt lines and files (`--w --h --s --d --g --n`) → [`inference`]
//! applies LoRAs (`Σ wᵢ·ΔWᵢ` into the linears, with a report of what matched) and runs a set
//! of prompts ([`inference::SampleRun`]) → [`sample`] encodes the prompt, draws the noise and
//! runs the Euler sampler and the autoencoder. Grids and PNGs are `fluxlora-render`'s.
//! [`control`] reads and encodes a Kontext prompt's control image (`--ci`).

pub mod control;
pub mod inference;
pub mod prompts;
pub mod run;
pub mod sample;
