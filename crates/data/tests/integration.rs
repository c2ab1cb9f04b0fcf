//! All integration tests of fluxlora-data, compiled as one test binary (one link instead of one per file).

mod common;
mod bad_inputs;
mod buckets_prop;
mod cache;
mod captions_prop;
mod config_and_report;
mod loader;
