//! Optimizers and LR schedules for LoRA training in Burn: AdamW, AdamW8bit, Prodigy, Adafactor.
//!
//! Not landed yet: the implementation is in progress (see docs/ARCHITECTURE.md).
