//! Checkpoint I/O for fluxlora: validated mmap safetensors, LoRA key formats, metadata.
//!
//! Not landed yet: the implementation is in progress (see docs/ARCHITECTURE.md).
