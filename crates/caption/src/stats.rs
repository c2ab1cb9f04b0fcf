//! Tag statistics over a folder: how many captions use each tag, most frequent first.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::error::CaptionError;
use crate::folder::{read_caption, FolderScan};
use crate::tags::{caption_lines, split_tags};

/// How often one tag is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCount {
    /// The tag, trimmed, as written in the captions.
    pub tag: String,
    /// Caption files that use the tag at least once.
    pub files: usize,
    /// Uses in all lines of all caption files.
    pub occurrences: usize,
}

/// Tag frequencies of a folder.
#[derive(Debug, Default)]
pub struct TagStats {
    /// Images in the folder.
    pub images: usize,
    /// Images with a readable, non-empty caption.
    pub captioned: usize,
    /// Images without a caption file (or with an empty one).
    pub missing: Vec<PathBuf>,
    /// Caption files that could not be read (not UTF-8, permissions).
    pub errors: Vec<CaptionError>,
    /// Tags, by `files` descending, then `occurrences` descending, then name.
    pub tags: Vec<TagCount>,
}

impl TagStats {
    /// Statistics over caption texts (one per file).
    pub fn from_captions<'a>(captions: impl IntoIterator<Item = &'a str>) -> Self {
        let mut stats = TagStats::default();
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for text in captions {
            stats.images += 1;
            let mut in_file: Vec<&str> = Vec::new();
            for line in caption_lines(text) {
                for tag in split_tags(line) {
                    counts.entry(tag).or_default().1 += 1;
                    if !in_file.contains(&tag) {
                        in_file.push(tag);
                    }
                }
            }
            if !in_file.is_empty() {
                stats.captioned += 1;
            }
            for tag in in_file {
                counts.entry(tag).or_default().0 += 1;
            }
        }
        let mut tags: Vec<TagCount> = counts
            .into_iter()
            .map(|(tag, (files, occurrences))| TagCount {
                tag: tag.to_string(),
                files,
                occurrences,
            })
            .collect();
        tags.sort_by(|a, b| {
            b.files
                .cmp(&a.files)
                .then(b.occurrences.cmp(&a.occurrences))
                .then_with(|| a.tag.cmp(&b.tag))
        });
        stats.tags = tags;
        stats
    }

    /// Statistics over the captions of a folder. Unreadable captions are listed in `errors`; only
    /// a missing or unlistable folder is an error.
    pub fn of_folder(scan: &FolderScan) -> crate::Result<Self> {
        let mut texts = Vec::new();
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        let entries = scan.images()?;
        for entry in &entries {
            match read_caption(&entry.caption) {
                Ok(Some(text)) if caption_lines(&text).next().is_some() => texts.push(text),
                Ok(_) => missing.push(entry.image.clone()),
                Err(e) => errors.push(e),
            }
        }
        let mut stats = TagStats::from_captions(texts.iter().map(String::as_str));
        stats.images = entries.len();
        stats.missing = missing;
        stats.errors = errors;
        Ok(stats)
    }

    /// The count of one tag, if used.
    pub fn get(&self, tag: &str) -> Option<&TagCount> {
        self.tags.iter().find(|t| t.tag == tag)
    }
}

impl fmt::Display for TagStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} images, {} captioned, {} without caption, {} unreadable captions, {} distinct tags",
            self.images,
            self.captioned,
            self.missing.len(),
            self.errors.len(),
            self.tags.len()
        )?;
        let width = self
            .tags
            .iter()
            .map(|t| t.tag.chars().count())
            .max()
            .unwrap_or(0)
            .min(48);
        for t in &self.tags {
            writeln!(
                f,
                "  {:<width$}  {:>5} files  {:>5} uses",
                t.tag, t.files, t.occurrences
            )?;
        }
        for p in &self.missing {
            writeln!(f, "  missing caption: {}", p.display())?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_and_occurrences() {
        let stats =
            TagStats::from_captions(["sks, dog, dog", "sks, cat\nsks, cat, dog", "", "b, a"]);
        assert_eq!(stats.images, 4);
        assert_eq!(stats.captioned, 3);
        let order: Vec<(&str, usize, usize)> = stats
            .tags
            .iter()
            .map(|t| (t.tag.as_str(), t.files, t.occurrences))
            .collect();
        assert_eq!(
            order,
            [
                ("dog", 2, 3),
                ("sks", 2, 3),
                ("cat", 1, 2),
                ("a", 1, 1),
                ("b", 1, 1)
            ]
        );
        assert_eq!(stats.get("cat").unwrap().files, 1);
        assert!(stats.get("zebra").is_none());
        let text = stats.to_string();
        assert!(text.starts_with("4 images, 3 captioned"), "{text}");
    }
}
