//! Listing a dataset: which image files each subset has and the caption text next to them.
//! Nothing is decoded here; unreadable captions, caption files without an image and missing
//! folders become [`Problem`]s rather than errors, so that one report can list everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::caption::CaptionSource;
use crate::config::{is_image_path, DatasetConfig};
use crate::problem::{Problem, ProblemKind, Severity};

/// A listed dataset: its configuration and the files found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// The configuration that was listed.
    pub config: DatasetConfig,
    /// One record per (dataset, subset, image file), in a stable order.
    pub images: Vec<ImageRecord>,
    /// Problems found while listing (missing folders, unreadable captions, orphan captions).
    pub problems: Vec<Problem>,
}

/// An image file of a subset and its caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// Index of the subset within that dataset.
    pub subset: usize,
    /// The image file (not yet decoded).
    pub path: PathBuf,
    /// The caption file, when one exists.
    pub caption_path: Option<PathBuf>,
    /// The caption, or why its file could not be read (e.g. not UTF-8).
    pub caption: Result<CaptionSource, String>,
    /// The Kontext control image of the same stem, for subsets with a `control_directory`
    /// (`None` there means it is missing or ambiguous: a problem was recorded).
    #[serde(default)]
    pub control: Option<PathBuf>,
}

impl DatasetSpec {
    /// Lists every subset's folder.
    pub fn scan(config: &DatasetConfig) -> DatasetSpec {
        let skip = config.skip_bad_images;
        let mut images = Vec::new();
        let mut problems = Vec::new();
        let mut orphans_seen = BTreeSet::new();
        for (di, d) in config.datasets.iter().enumerate() {
            for (si, s) in d.subsets.iter().enumerate() {
                let files =
                    match list_dir(&s.image_dir) {
                        Ok(f) => f,
                        Err(e) => {
                            problems.push(Problem::new(
                            ProblemKind::MissingImageDir,
                            Severity::Blocking,
                            Some(s.image_dir.clone()),
                            format!("image_dir cannot be listed ({e}); fix the path in the dataset \
                                     config"),
                        ));
                            continue;
                        }
                    };
                let ext = s.caption_extension.as_str();
                let image_stems: BTreeSet<PathBuf> = files
                    .iter()
                    .filter(|p| is_image_path(p))
                    .map(|p| p.with_extension(""))
                    .collect();
                let controls = match &s.control_dir {
                    Some(dir) => match ControlFolder::list(dir, &image_stems) {
                        Ok((c, orphans)) => {
                            problems.extend(orphans);
                            Some(c)
                        }
                        Err(p) => {
                            problems.push(p);
                            continue;
                        }
                    },
                    None => None,
                };
                for path in files.iter().filter(|p| is_image_path(p)) {
                    let control = match &controls {
                        Some(c) => match c.pair(path, skip) {
                            Ok(found) => Some(found),
                            Err(p) => {
                                problems.push(p);
                                continue;
                            }
                        },
                        None => None,
                    };
                    let cap = caption_path_for(path, ext);
                    let (caption_path, caption) =
                        if cap.exists() || std::fs::symlink_metadata(&cap).is_ok() {
                            let c = outside_folder(&cap, &s.image_dir)
                                .map_or_else(|| read_caption(&cap), Err);
                            if let Err(reason) = &c {
                                let kind = if reason.starts_with(OUTSIDE) {
                                    ProblemKind::PathOutsideDataset
                                } else if reason.contains("UTF-8") {
                                    ProblemKind::CaptionNotUtf8
                                } else {
                                    ProblemKind::CaptionUnreadable
                                };
                                problems.push(Problem::bad_file(
                                    kind,
                                    cap.clone(),
                                    reason.clone(),
                                    skip,
                                ));
                            }
                            (Some(cap), c)
                        } else {
                            (None, Ok(CaptionSource::Missing))
                        };
                    images.push(ImageRecord {
                        dataset: di,
                        subset: si,
                        path: path.clone(),
                        caption_path,
                        caption,
                        control,
                    });
                }
                for path in files.iter().filter(|p| has_extension(p, ext)) {
                    let stem = strip_caption_ext(path, ext);
                    if !image_stems.contains(&stem) && orphans_seen.insert(path.clone()) {
                        problems.push(Problem::new(
                            ProblemKind::OrphanCaption,
                            Severity::Warning,
                            Some(path.clone()),
                            "caption file without an image of the same name; it is ignored — add \
                             the image or delete the caption",
                        ));
                    }
                }
            }
        }
        if images.is_empty()
            && !problems
                .iter()
                .any(|p| p.kind == ProblemKind::MissingImageDir)
        {
            problems.push(Problem::new(
                ProblemKind::NoImages,
                Severity::Blocking,
                None,
                format!(
                    "no image files (.jpg, .jpeg, .png, .webp, .bmp) in any image_dir of {}",
                    config.source.display()
                ),
            ));
        }
        DatasetSpec {
            config: config.clone(),
            images,
            problems,
        }
    }
}

/// The image files of a `control_directory`, by stem.
struct ControlFolder {
    dir: PathBuf,
    by_stem: BTreeMap<PathBuf, Vec<PathBuf>>,
}

impl ControlFolder {
    /// Lists `dir`; controls whose stem is not in `image_stems` (paths without extension in the
    /// image folder) are returned as warnings.
    fn list(dir: &Path, image_stems: &BTreeSet<PathBuf>) -> Result<(Self, Vec<Problem>), Problem> {
        let files = list_dir(dir).map_err(|e| {
            Problem::new(
                ProblemKind::MissingControlDir,
                Severity::Blocking,
                Some(dir.to_path_buf()),
                format!(
                    "control_directory cannot be listed ({e}); fix the path in the dataset config"
                ),
            )
        })?;
        let targets: BTreeSet<PathBuf> = image_stems
            .iter()
            .filter_map(|p| p.file_name().map(PathBuf::from))
            .collect();
        let mut by_stem: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        let mut orphans = Vec::new();
        for f in files.into_iter().filter(|p| is_image_path(p)) {
            let Some(stem) = f.file_stem().map(PathBuf::from) else {
                continue;
            };
            if !targets.contains(&stem) {
                orphans.push(Problem::new(
                    ProblemKind::OrphanControl,
                    Severity::Warning,
                    Some(f.clone()),
                    "control image without a target image of the same name; it is ignored — \
                     add the target or delete the control",
                ));
            }
            by_stem.entry(stem).or_default().push(f);
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                by_stem,
            },
            orphans,
        ))
    }

    /// The control of the target `image`, or the problem that there is none (or several, or one
    /// that links outside the folder).
    fn pair(&self, image: &Path, skip: bool) -> Result<PathBuf, Problem> {
        let stem = image.file_stem().map(PathBuf::from).unwrap_or_default();
        match self.by_stem.get(&stem).map(Vec::as_slice) {
            Some([one]) => match outside_folder(one, &self.dir) {
                Some(reason) => Err(Problem::bad_file(
                    ProblemKind::PathOutsideDataset,
                    one.clone(),
                    reason,
                    skip,
                )),
                None => Ok(one.clone()),
            },
            Some(many) if many.len() > 1 => Err(Problem::bad_file(
                ProblemKind::AmbiguousControl,
                image.to_path_buf(),
                format!(
                    "{} control images share this image's name ({}); keep one",
                    many.len(),
                    many.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                skip,
            )),
            _ => Err(Problem::bad_file(
                ProblemKind::MissingControl,
                image.to_path_buf(),
                format!(
                    "no control image named {}.* in {}; add it (same name, any image \
                     extension) or remove the image",
                    stem.display(),
                    self.dir.display()
                ),
                skip,
            )),
        }
    }
}

/// Start of the reason given for a file that resolves outside its dataset folder.
pub const OUTSIDE: &str = "resolves outside the dataset folder";

/// Why `path`, found inside the dataset folder `dir`, may not be read: it is (or passes through)
/// a symbolic link whose target lies outside `dir`. `None` when it stays inside. A dataset from
/// somebody else must not make the trainer read, and copy into its caches and samples, files
/// from elsewhere on the machine.
pub fn outside_folder(path: &Path, dir: &Path) -> Option<String> {
    let (Ok(real), Ok(root)) = (std::fs::canonicalize(path), std::fs::canonicalize(dir)) else {
        // A dangling link or an unreadable folder: the reader reports it.
        return None;
    };
    (!real.starts_with(&root)).then(|| {
        format!(
            "{OUTSIDE} {} (it is a link to {}); copy the file into the folder or remove the link",
            root.display(),
            real.display()
        )
    })
}

/// `a/b.png` with `.txt` → `a/b.txt`.
pub fn caption_path_for(image: &Path, caption_extension: &str) -> PathBuf {
    let mut s = image.with_extension("").into_os_string();
    s.push(caption_extension);
    PathBuf::from(s)
}

fn has_extension(p: &Path, ext: &str) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().ends_with(ext))
        .unwrap_or(false)
}

fn strip_caption_ext(p: &Path, ext: &str) -> PathBuf {
    let s = p.as_os_str().to_string_lossy();
    PathBuf::from(&s[..s.len() - ext.len()])
}

/// Entries of a folder (not recursive), hidden files left out, sorted by name.
fn list_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(e.path());
    }
    out.sort();
    Ok(out)
}

/// Reads a caption file as UTF-8.
pub fn read_caption(path: &Path) -> Result<CaptionSource, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("caption file unreadable ({e}); fix or remove it"))?;
    if !meta.is_file() {
        return Err("caption path is not a regular file; remove or rename it".into());
    }
    let bytes = std::fs::read(path)
        .map_err(|e| format!("caption file unreadable ({e}); check its permissions"))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(CaptionSource::from_text(&text)),
        Err(e) => Err(format!(
            "caption is not UTF-8 (invalid byte at offset {}); re-save it as UTF-8",
            e.utf8_error().valid_up_to()
        )),
    }
}
