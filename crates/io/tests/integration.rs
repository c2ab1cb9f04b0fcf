//! All integration tests of fluxlora-io, compiled as one test binary (one link instead of one per
//! file).

mod common;
mod dtypes;
mod fuzz_headers;
mod lora_formats;
mod lora_roundtrip;
mod lycoris_formats;
mod lycoris_ops;
mod malformed;
mod safetensors_roundtrip;
mod sharded;
