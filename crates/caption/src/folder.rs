//! A dataset folder: images (jpg, jpeg, png, webp, bmp) with same-stem caption files beside
//! them (`photo.png` ↔ `photo.txt`; the caption extension is configurable).

use std::path::{Path, PathBuf};

use fluxlora_data::spec::caption_path_for;

use crate::error::{CaptionError, Result};

/// Image extensions recognised (lower case, compared case-insensitively): the data crate's
/// list, so the captioner and the trainer see the same images.
pub use fluxlora_data::config::IMAGE_EXTENSIONS;

/// Whether the file name ends in one of [`IMAGE_EXTENSIONS`] (any case); the data crate's test.
pub use fluxlora_data::config::is_image_path;

/// Which files of a folder are dataset images, and where their captions live.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderScan {
    /// The dataset folder.
    pub root: PathBuf,
    /// Caption file extension, with or without the dot (default `txt`).
    pub caption_extension: String,
    /// Also visit sub-folders (kohya's `10_name` repeat folders).
    pub recursive: bool,
}

impl FolderScan {
    /// A non-recursive scan of `root` with `.txt` captions.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            caption_extension: "txt".into(),
            recursive: false,
        }
    }

    /// The caption extension without its leading dot.
    pub fn extension(&self) -> &str {
        self.caption_extension.trim_start_matches('.')
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        let ext = self.extension();
        if ext.is_empty() || ext.contains(['/', '\\']) {
            return Err(CaptionError::InvalidOption {
                name: "caption_extension",
                message: format!(
                    "{:?} is not a file extension; use e.g. `txt` or `caption`",
                    self.caption_extension
                ),
            });
        }
        if IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)) {
            return Err(CaptionError::InvalidOption {
                name: "caption_extension",
                message: format!(
                    "`{ext}` is an image extension; captions would overwrite images — use `txt`"
                ),
            });
        }
        Ok(())
    }

    /// The images of the folder, sorted by path, each with its caption path.
    pub fn images(&self) -> Result<Vec<ImageEntry>> {
        self.validate()?;
        if !self.root.is_dir() {
            return Err(CaptionError::NotAFolder {
                path: self.root.clone(),
            });
        }
        let mut images = Vec::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| CaptionError::io(&dir, "listing the folder", e))?;
            for entry in entries {
                let entry = entry.map_err(|e| CaptionError::io(&dir, "listing the folder", e))?;
                let path = entry.path();
                // Real sub-folders are visited (never symlinked ones: no cycles); symlinked image
                // files count. Unreadable entries are left to the reader to report.
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    if self.recursive {
                        pending.push(path);
                    }
                } else if is_image_path(&path)
                    && !std::fs::metadata(&path).is_ok_and(|m| m.is_dir())
                {
                    let caption = caption_path(&path, self.extension());
                    images.push(ImageEntry {
                        image: path,
                        caption,
                    });
                }
            }
        }
        images.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(images)
    }
}

/// One dataset image and the path of its caption file (which may not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The image file.
    pub image: PathBuf,
    /// Its caption file: same folder and stem, the scan's caption extension.
    pub caption: PathBuf,
}

/// The caption file of an image: same folder, same stem, extension `ext` (with or without
/// its dot) — the data crate's [`fluxlora_data::spec::caption_path_for`].
pub fn caption_path(image: &Path, ext: &str) -> PathBuf {
    caption_path_for(image, &format!(".{}", ext.trim_start_matches('.')))
}

/// Reads a caption file; `Ok(None)` when it does not exist.
pub fn read_caption(path: &Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| CaptionError::NotUtf8 {
                path: path.to_path_buf(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CaptionError::io(path, "reading the caption", e)),
    }
}

/// Writes a caption file atomically (temp file + rename), with a trailing newline.
pub fn write_caption(path: &Path, text: &str) -> Result<()> {
    fluxlora_io::atomic_write(path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })
    .map_err(CaptionError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_images_sorted_with_caption_paths() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.PNG",
            "a.jpg",
            "c.webp",
            "notes.txt",
            "d.gif",
            "e.bmp",
            "f.jpeg",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("10_sub")).unwrap();
        std::fs::write(dir.path().join("10_sub/z.png"), b"x").unwrap();

        let scan = FolderScan::new(dir.path());
        let names: Vec<String> = scan
            .images()
            .unwrap()
            .iter()
            .map(|e| e.image.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jpg", "b.PNG", "c.webp", "e.bmp", "f.jpeg"]);

        let recursive = FolderScan {
            recursive: true,
            caption_extension: ".caption".into(),
            ..scan
        };
        let all = recursive.images().unwrap();
        assert_eq!(all.len(), 6);
        let z = all
            .iter()
            .find(|e| e.image.ends_with("10_sub/z.png"))
            .unwrap();
        assert_eq!(z.caption, dir.path().join("10_sub/z.caption"));
    }

    #[test]
    fn caption_paths_match_the_data_crate() {
        for (image, ext, want) in [
            ("a/photo.png", "txt", "a/photo.txt"),
            ("a/photo.PNG", ".caption", "a/photo.caption"),
            ("a/my.photo.jpg", "txt", "a/my.photo.txt"),
            ("noext", "txt", "noext.txt"),
        ] {
            assert_eq!(
                caption_path(Path::new(image), ext),
                PathBuf::from(want),
                "{image}"
            );
        }
        assert!(is_image_path(Path::new("x/Y.WebP")) && !is_image_path(Path::new("x/y.gif")));
        assert_eq!(IMAGE_EXTENSIONS, ["jpg", "jpeg", "png", "webp", "bmp"]);
    }

    #[test]
    fn bad_folders_and_extensions_are_errors() {
        let err = FolderScan::new("/definitely/not/here")
            .images()
            .unwrap_err();
        assert!(matches!(err, CaptionError::NotAFolder { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        for ext in ["", ".", "png", "a/b"] {
            let scan = FolderScan {
                caption_extension: ext.into(),
                ..FolderScan::new(dir.path())
            };
            assert!(
                matches!(scan.images(), Err(CaptionError::InvalidOption { .. })),
                "{ext:?}"
            );
        }
    }

    #[test]
    fn caption_round_trip_and_non_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        assert_eq!(read_caption(&p).unwrap(), None);
        write_caption(&p, "sks, dog").unwrap();
        assert_eq!(read_caption(&p).unwrap().as_deref(), Some("sks, dog\n"));
        std::fs::write(&p, [0xff, 0xfe, 0x00, 0x41]).unwrap();
        let err = read_caption(&p).unwrap_err();
        assert!(matches!(err, CaptionError::NotUtf8 { .. }));
        assert!(err.to_string().contains("a.txt"), "{err}");
    }
}
