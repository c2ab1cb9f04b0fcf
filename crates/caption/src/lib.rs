//! Captioning for Flux LoRA datasets: caption-file tools, a WD14-style tagger in Burn, and a
//! client for OpenAI-compatible vision-language servers.
//!
//! A dataset folder holds images (jpg, jpeg, png, webp, bmp) with same-stem caption files
//! (`photo.png` ↔ `photo.txt`). Data flow of [`caption_folder`]:
//!
//! ```text
//! FolderScan::images ──► per image (worker threads):
//!     read caption ─► [Captioner: WdTagger | VlmCaptioner] when missing or `overwrite`
//!                  ─► TagEdits (underscores, dedupe, sort, trigger)
//!                  ─► CaptionChange (diff) ─► atomic write unless `dry_run`
//! ──► RunSummary (changes, kept, missing, per-image failures)
//! ```
//!
//! Modules:
//! - [`tags`]: tag-level edits on one caption line — trigger insertion (`[trigger]` placeholder
//!   or prepend), dedupe, sort, underscores → spaces — and [`TagEdits`].
//! - [`folder`]: finding images and their caption files; reading/writing captions.
//! - [`stats`]: tag frequencies over a folder ([`TagStats`]).
//! - [`run`]: the [`Captioner`] trait and the folder runner ([`caption_folder`]).
//! - [`image_io`]: decoding any supported image to RGB (orientation, alpha on white).
//! - [`tagger`]: the wd-vit-tagger-v3 ViT (timm layout) with `selected_tags.csv` ([`WdTagger`]).
//! - [`vlm`]: the chat-completions client ([`VlmCaptioner`]) with retries and image upload.
//! - [`error`]: [`CaptionError`], the crate's one error type.
//!
//! ```
//! use fluxlora_caption::{TagEdits, Trigger};
//!
//! // A tagger's output made into a LoRA caption: spaces for underscores, no repeats, the
//! // trigger word first.
//! let edits = TagEdits {
//!     trigger: Some(Trigger::new("sks")?),
//!     dedupe: true,
//!     underscores_to_spaces: true,
//!     ..Default::default()
//! };
//! assert_eq!(
//!     edits.apply_line("striped_disc, magenta, striped_disc"),
//!     "sks, striped disc, magenta"
//! );
//! # Ok::<(), fluxlora_caption::CaptionError>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod error;
pub mod folder;
pub mod image_io;
pub mod run;
pub mod stats;
pub mod tagger;
pub mod tags;
pub mod vlm;

pub use error::{CaptionError, Result};
pub use folder::{
    caption_path, is_image_path, read_caption, write_caption, FolderScan, ImageEntry,
    IMAGE_EXTENSIONS,
};
pub use run::{caption_folder, CaptionChange, CaptionJob, Captioner, RunSummary};
pub use stats::{TagCount, TagStats};
pub use tagger::config::{Activation, GlobalPool, VitConfig, VitOverrides};
pub use tagger::select::TagPrediction;
pub use tagger::vit::VitClassifier;
pub use tagger::{load_classifier, TaggerOptions, WdTagger};
pub use tags::{insert_trigger, TagEdits, Trigger, TRIGGER_PLACEHOLDER};
pub use vlm::{VlmCaptioner, VlmConfig};
