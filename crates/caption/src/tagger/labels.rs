//! The tag list of a WD tagger: `selected_tags.csv` with columns `tag_id,name,category,count`
//! (one row per classifier output, in output order). Categories: 0 general, 4 character,
//! 9 rating; anything else is kept but never emitted.

use std::path::{Path, PathBuf};

use crate::error::{CaptionError, Result};

/// A tag's category in `selected_tags.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagCategory {
    /// `0`.
    General,
    /// `4`.
    Character,
    /// `9` (general / sensitive / questionable / explicit): never put in captions.
    Rating,
    /// Any other category number.
    Other(u32),
}

impl TagCategory {
    /// From the CSV's category number.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::General,
            4 => Self::Character,
            9 => Self::Rating,
            other => Self::Other(other),
        }
    }
}

/// One classifier output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The tag as written in the CSV's `name` column (underscores kept, e.g. `long_hair`).
    pub name: String,
    /// The tag's category, from the `category` column.
    pub category: TagCategory,
}

/// All labels, in classifier output order.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    /// The `selected_tags.csv` they were read from (named in errors).
    pub path: PathBuf,
    /// One label per classifier output, in output order.
    pub labels: Vec<Label>,
}

/// Splits one CSV record (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn split_record(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

impl Labels {
    /// Reads `selected_tags.csv`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| CaptionError::io(path, "reading the tag list", e))?;
        let text = String::from_utf8(bytes).map_err(|_| CaptionError::Labels {
            path: path.into(),
            line: 0,
            message: "not UTF-8 text".into(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses the CSV text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let err = |line: usize, message: String| CaptionError::Labels {
            path: path.into(),
            line,
            message,
        };
        let mut lines = text
            .trim_start_matches('\u{feff}')
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines
            .next()
            .ok_or_else(|| err(1, "the file is empty".into()))?;
        let header =
            split_record(header).ok_or_else(|| err(1, "unbalanced quotes in the header".into()))?;
        let column = |name: &str| header.iter().position(|h| h.trim() == name);
        let (Some(name_col), Some(cat_col)) = (column("name"), column("category")) else {
            return Err(err(
                1,
                format!("the header {header:?} lacks a `name` or `category` column"),
            ));
        };
        let mut labels = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            let fields = split_record(line).ok_or_else(|| err(n, "unbalanced quotes".into()))?;
            let (Some(name), Some(cat)) = (fields.get(name_col), fields.get(cat_col)) else {
                return Err(err(
                    n,
                    format!("{} fields, the header has {}", fields.len(), header.len()),
                ));
            };
            let code: u32 = cat
                .trim()
                .parse()
                .map_err(|_| err(n, format!("category {cat:?} is not a number")))?;
            if name.is_empty() {
                return Err(err(n, "empty tag name".into()));
            }
            labels.push(Label {
                name: name.clone(),
                category: TagCategory::from_code(code),
            });
        }
        if labels.is_empty() {
            return Err(err(1, "no tags after the header".into()));
        }
        Ok(Labels {
            path: path.into(),
            labels,
        })
    }

    /// Number of labels (must equal the classifier's outputs).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no labels (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "tag_id,name,category,count\n9999999,general,9,807366\n\
                       470575,1girl,0,4225150\n1,\"hand,on_hip\",0,5\n2,\"say \"\"hi\"\"\",0,3\n\
                       3,hatsune_miku,4,100\n4,weird,3,1\n";

    #[test]
    fn parses_categories_and_quotes() {
        let labels = Labels::parse(Path::new("selected_tags.csv"), CSV).unwrap();
        let got: Vec<(&str, TagCategory)> = labels
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.category))
            .collect();
        assert_eq!(
            got,
            [
                ("general", TagCategory::Rating),
                ("1girl", TagCategory::General),
                ("hand,on_hip", TagCategory::General),
                ("say \"hi\"", TagCategory::General),
                ("hatsune_miku", TagCategory::Character),
                ("weird", TagCategory::Other(3)),
            ]
        );
        assert_eq!(labels.len(), 6);
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, line) in [
            ("", 1),
            ("id,label\n1,x\n", 1),
            ("tag_id,name,category,count\n1,a,zero,1\n", 2),
            ("tag_id,name,category,count\n1,a,0,1\n2,\"b,0,1\n", 3),
            ("tag_id,name,category,count\n", 1),
        ] {
            let err = Labels::parse(Path::new("tags.csv"), text).unwrap_err();
            match &err {
                CaptionError::Labels { line: l, .. } => assert_eq!(*l, line, "{err}"),
                other => panic!("unexpected {other}"),
            }
            assert!(err.to_string().contains("tags.csv"), "{err}");
        }
    }
}
