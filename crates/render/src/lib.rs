//! Images fluxlora draws for people to look at while a LoRA trains: the sample grid of a step
//! ([`SampleGrid`]: one cell per prompt, each with its wrapped prompt and seed, a header with the
//! run and step), the loss curve ([`LossPlot`]: raw loss faint, its EMA bold, validation points)
//! and the tiny bitmap [`font`] both write their labels with. Every PNG is written atomically
//! through [`fluxlora_io::atomic_write`], with text chunks that record what it shows.
//!
//! Data flow: RGB images (from the sampler) or `(step, loss)` points (from the CSV log) →
//! [`SampleGrid::render`] / [`LossPlot::render`] → `RgbImage` → [`save_png`].
//!
//! ```
//! use fluxlora_render::{LossPlot, SampleGrid};
//! use image::{Rgb, RgbImage};
//!
//! let mut grid = SampleGrid::new("sks", 100);
//! grid.push(RgbImage::from_pixel(32, 32, Rgb([200, 40, 200])), "sks disc on navy", 42);
//! let img = grid.render();
//! assert!(img.width() >= 32 && img.height() > 32);
//!
//! let losses: Vec<(u64, f64)> = (1..=50).map(|s| (s, 1.0 / s as f64)).collect();
//! let dir = tempfile::tempdir().unwrap();
//! LossPlot::default().save(dir.path().join("loss.png"), &losses, &[]).unwrap();
//! assert!(dir.path().join("loss.png").exists());
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod error;
pub mod font;
pub mod grid;
pub mod plot;

pub use error::RenderError;
pub use grid::{encode_png, save_png, GridCell, SampleGrid};
pub use plot::LossPlot;
