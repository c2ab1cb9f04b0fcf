//! All integration tests of fluxlora-flux, compiled as one test binary (one link instead of one per
//! file).

mod autoencoder;
mod bf16_base;
mod common;
mod export;
mod fused_ops;
mod kontext;
mod load_errors;
mod lora;
mod parity;
mod parity_encoders;
mod quantized_base;
mod sampler_cfg;
mod t5_mask;
mod text_encoders;
