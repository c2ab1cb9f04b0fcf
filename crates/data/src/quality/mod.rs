//! The quality report: everything worth knowing about a dataset before hours of training.

pub mod blur;
pub mod phash;
pub mod report;

pub use report::{QualityReport, QualitySettings};
