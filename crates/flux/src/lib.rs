//! The Flux.1 model in Burn: transformer, autoencoder, text encoders, flow-matching schedule and sampler.
//!
//! Not landed yet: the implementation is in progress (see docs/ARCHITECTURE.md).
