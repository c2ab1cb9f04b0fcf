//! All integration tests of fluxlora-caption, compiled as one test binary (one link instead of one
//! per file).

mod common;
mod parity;
mod props;
mod tagger;
mod tools;
mod vlm;
