//! Dataset preparation for Flux LoRA training: images, captions, buckets, caches, loader.
//!
//! Not landed yet: the implementation is in progress (see docs/ARCHITECTURE.md).
