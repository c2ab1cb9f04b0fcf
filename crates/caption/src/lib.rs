//! Captioning for Flux LoRA datasets: caption tools, WD14 tagger, VLM client.
//!
//! Not landed yet: the implementation is in progress (see docs/ARCHITECTURE.md).
