//! The embedded tiny world: a small Flux (same code paths as the real one, small dimensions)
//! pretrained on a procedural image domain, a concept dataset it has never seen, and a detector
//! that says whether a sample shows the concept.
//!
//! [`domain`] draws the images and captions → [`pretrain`] trains the autoencoder and the
//! transformer on them and writes `fixtures/tiny-world/` (`pretrain_tiny` example) → the README's
//! `train` run fits a LoRA on `dataset/` → [`score`] samples the held-out prompts with the base
//! alone and with the LoRA and [`detector`] counts the samples that show the concept.
//!
//! The edit task (FLUX.1 Kontext): [`edits`] draws edit pairs (control, target, instruction) →
//! [`kontext`] fine-tunes the base into a tiny Kontext base on base edits and writes
//! `fixtures/tiny-world/kontext/` with a dataset of a new edit (`paint sks stripes on the disc`)
//! → its `train.toml` fits a LoRA → [`score`] looks for the concept on each held-out control's
//! object ([`detect_in`] over [`object_region`]).
//!
//! Everything above the model is the training crate's (`fluxlora-train`: steps, noise, sampling,
//! encoders) and the optimizer is `fluxlora-optim`'s AdamW, so the tiny world exercises the same
//! code a real run does.
//!
//! ```
//! use fluxlora_tiny_world::{detect, Scene, World};
//!
//! // A held-out scene with the concept, drawn by the procedural domain, is detected.
//! let world = World::new(64);
//! let mut rng = fluxlora_data::SplitMix64::new(7);
//! let scene: Scene = world.concept_scene(&mut rng, "navy");
//! assert!(detect(&world.render(&scene)).found());
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod error;

pub mod detector;
pub mod domain;
pub mod edits;
pub mod kontext;
pub mod pretrain;
pub mod score;

pub use detector::{concept_score, detect, detect_in, Detection};
pub use domain::{Scene, World};
pub use edits::{object_region, EditPair};
pub use error::TinyWorldError;
pub use kontext::{build_kontext_world, write_kontext_dataset, KontextOptions, KontextReport};
pub use pretrain::{build_tiny_world, write_dataset, PretrainOptions, PretrainReport};
pub use score::{concept_check, concept_scores, ConceptScores, CONCEPT_SEEDS};
