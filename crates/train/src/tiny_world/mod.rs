//! The embedded tiny world: a small Flux (same code paths as the real one, small dimensions)
//! pretrained on a procedural image domain, a concept dataset it has never seen, and a detector
//! that says whether a sample shows the concept.
//!
//! [`domain`] draws the images and captions → [`pretrain`] trains the autoencoder and the
//! transformer on them and writes `fixtures/tiny-world/` (`pretrain_tiny` example) → the README's
//! `train` run fits a LoRA on `dataset/` → [`score`] samples the held-out prompts with the base
//! alone and with the LoRA and [`detector`] counts the samples that show the concept.

pub mod detector;
pub mod domain;
pub mod pretrain;
pub mod score;

pub use detector::{concept_score, detect, Detection};
pub use domain::{Scene, World};
pub use pretrain::{build_tiny_world, write_dataset, PretrainOptions, PretrainReport};
pub use score::{concept_check, concept_scores, ConceptScores, CONCEPT_SEEDS};
