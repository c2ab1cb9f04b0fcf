//! All integration tests of fluxlora-data, compiled as one test binary (one link instead of one per
//! file).

mod bad_inputs;
mod buckets_prop;
mod cache;
mod captions_prop;
mod common;
mod config_and_report;
mod decode_fuzz;
mod edit_pairs;
mod hostile;
mod loader;
