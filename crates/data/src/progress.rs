//! Progress bars for long steps (image analysis, cache builds), drawn on stderr only when it is a
//! terminal and progress was asked for; otherwise hidden at no cost.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether and how to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Draw progress bars (only when stderr is a terminal).
    pub enabled: bool,
}

impl Progress {
    /// Progress shown (when stderr is a terminal).
    pub fn shown() -> Self {
        Self { enabled: true }
    }

    /// No progress output.
    pub fn hidden() -> Self {
        Self { enabled: false }
    }

    /// A bar over `len` items.
    pub fn bar(&self, len: u64, message: &'static str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        bar
    }
}
