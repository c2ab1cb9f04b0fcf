//! fluxlora: train Flux.1 LoRA adapters in Rust on Burn.
//!
//! This umbrella crate re-exports the workspace's libraries and owns the backend choice, the
//! examples (`examples/`) and the benches (`benches/`). Data flows
//! images → [`data`] (+ [`caption`]) → [`flux`] encoders → cached latents and embeddings →
//! [`train`] (the [`flux`] transformer with [`lora`] adapters, stepped by [`optim`]) →
//! [`io`] (a `.safetensors` LoRA in kohya, PEFT/diffusers or ComfyUI format).
//!
//! Backends are chosen by cargo features (`cuda`, `wgpu`, `ndarray`) and at run time by
//! [`backend::select`].

pub mod backend;

pub use fluxlora_caption as caption;
pub use fluxlora_data as data;
pub use fluxlora_flux as flux;
pub use fluxlora_io as io;
pub use fluxlora_lora as lora;
pub use fluxlora_optim as optim;
pub use fluxlora_train as train;
