//! The safetensors container: validated mmap reading, dtype upcasts, deterministic atomic writing.
//!
//! - [`dtype`]: element types and their `f32` conversions (F8/F16/BF16 upcast, F16/BF16 narrowing).
//! - [`header`]: header parsing and validation with precise, file- and key-naming errors.
//! - [`reader`]: [`SafeTensorsFile`], the mmap-backed reader.
//! - [`writer`]: [`write_safetensors`] and [`TensorRef`].

pub mod dtype;
pub mod header;
pub mod reader;
pub mod writer;

pub use dtype::Dtype;
pub use reader::SafeTensorsFile;
pub use writer::{serialize_safetensors, write_safetensors, TensorRef};
