//! The crate's error type.

use std::path::PathBuf;

/// Errors from rendering or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The PNG encoder refused the image or a text chunk.
    #[error("{}: PNG encoding failed: {message}", path.display())]
    Encode {
        /// The file that was being written.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
    /// Writing the file failed (it is written atomically: the old file, if any, is intact).
    #[error(transparent)]
    Write(#[from] fluxlora_io::IoError),
}
