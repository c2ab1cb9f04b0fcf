//! One non-generic entry point per job, each taking its arguments (a clap struct that is also
//! the library's options type) and returning what it did; every `Backend` instantiation of the
//! generic stack happens here, in this one crate, so the example binaries only parse, call and
//! print.
//!
//! | job | arguments | result | runs on |
//! |---|---|---|---|
//! | [`train`] | [`TrainArgs`] | [`TrainOutcome`] | the selected autodiff backend |
//! | [`bench`] | [`BenchArgs`] | [`BenchOutcome`] | the selected autodiff backend |
//! | [`prep`] | [`PrepArgs`] | [`PrepOutcome`] | host; caches on the selected backend |
//! | [`sample`] | [`SampleArgs`] | [`SampleOutcome`] | the selected backend |
//! | [`caption`] | [`CaptionArgs`] | [`CaptionOutcome`] | CPU (tagger) or a VLM server |
//! | [`lora`] | [`LoraArgs`] | text | host only |
//! | [`pretrain_tiny`] | [`PretrainArgs`] | [`PretrainOutcome`] | the selected autodiff backend |

pub mod bench;
pub mod caption;
pub mod lora;
pub mod prep;
pub mod pretrain;
pub mod sample;
pub mod train;

pub use bench::{bench, BenchArgs, BenchOutcome};
pub use caption::{caption, CaptionArgs, CaptionOutcome};
pub use lora::{lora, LoraArgs, LoraCommand};
pub use prep::{prep, PrepArgs, PrepOutcome};
pub use pretrain::{pretrain_tiny, PretrainArgs, PretrainOutcome};
pub use sample::{sample, SampleArgs, SampleOutcome};
pub use train::{stop_on_interrupt, train, TrainArgs, TrainOutcome};
