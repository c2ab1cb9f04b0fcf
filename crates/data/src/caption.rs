//! Caption transforms, applied per epoch to the text of a caption file.
//!
//! Order, for one item in one epoch:
//! 1. choose the line: a multi-line caption file yields one (non-empty) line per epoch, chosen by
//!    the seeded stream; an image without a caption file uses `class_tokens` (else "");
//! 2. `caption_prefix` / `caption_suffix` are joined with a space (as kohya does);
//! 3. trigger word: every `[trigger]` placeholder is replaced; when there is none and the caption
//!    does not already contain the trigger, it is prepended as the first tag (so `keep_tokens = 1`
//!    pins it);
//! 4. caption dropout (`caption_dropout_rate`, or every n-th epoch, 1-based as in kohya) → "";
//! 5. when shuffling or tag dropout is on, or a `keep_tokens_separator` is present: tags are split
//!    on `caption_separator`; the first `keep_tokens` tags (or everything before the
//!    `keep_tokens_separator`, and after its second occurrence) stay in place; the rest is shuffled
//!    and each dropped with `caption_tag_dropout_rate`; tags are re-joined with ", ";
//! 6. `secondary_separator` is replaced by `caption_separator`.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// The placeholder replaced by the trigger word.
pub const TRIGGER_PLACEHOLDER: &str = "[trigger]";

/// Caption settings of one subset (kohya key names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionSettings {
    /// Replaces every `[trigger]` placeholder, else is prepended as the first tag when the
    /// caption lacks it (an extension to kohya's keys).
    pub trigger_word: Option<String>,
    /// Shuffle the tags (split on `caption_separator`) each epoch, except the kept ones.
    pub shuffle_caption: bool,
    /// How many leading tags stay in place when shuffling or dropping tags.
    pub keep_tokens: usize,
    /// A marker (kohya uses `|||`): tags before it, and after a second one, stay in place;
    /// overrides `keep_tokens` in captions that contain it.
    pub keep_tokens_separator: Option<String>,
    /// Joins tags that are shuffled and dropped as one unit; replaced by `caption_separator`
    /// after shuffling (e.g. `;;;`).
    pub secondary_separator: Option<String>,
    /// What separates tags in a caption (default `,`); tags are re-joined with `", "`.
    pub caption_separator: String,
    /// Text put before every caption, joined with a space.
    pub caption_prefix: Option<String>,
    /// Text put after every caption, joined with a space.
    pub caption_suffix: Option<String>,
    /// Probability, in [0, 1], that an item's caption is replaced by "" in an epoch.
    pub caption_dropout_rate: f64,
    /// Every n-th epoch (1-based) all captions are "" (0 = never).
    pub caption_dropout_every_n_epochs: u32,
    /// Probability, in [0, 1], that each non-kept tag is dropped in an epoch.
    pub caption_tag_dropout_rate: f64,
}

impl Default for CaptionSettings {
    fn default() -> Self {
        Self {
            trigger_word: None,
            shuffle_caption: false,
            keep_tokens: 0,
            keep_tokens_separator: None,
            secondary_separator: None,
            caption_separator: ",".into(),
            caption_prefix: None,
            caption_suffix: None,
            caption_dropout_rate: 0.0,
            caption_dropout_every_n_epochs: 0,
            caption_tag_dropout_rate: 0.0,
        }
    }
}

/// Where a caption comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CaptionSource {
    /// The non-empty, trimmed lines of a caption file.
    File {
        /// The lines, in file order; one is chosen per epoch. Never empty.
        lines: Vec<String>,
    },
    /// No caption file (or an empty one): `class_tokens` is used.
    Missing,
}

impl CaptionSource {
    /// Parses caption file text into its non-empty lines (BOM and surrounding whitespace removed).
    pub fn from_text(text: &str) -> Self {
        let lines: Vec<String> = text
            .trim_start_matches('\u{feff}')
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            CaptionSource::Missing
        } else {
            CaptionSource::File { lines }
        }
    }
}

impl CaptionSettings {
    /// Invariants; returns the offending key and a message with the fix.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.caption_separator.is_empty() {
            return Err((
                "caption_separator",
                "must not be empty; the usual value is \",\"".into(),
            ));
        }
        for (key, rate) in [
            ("caption_dropout_rate", self.caption_dropout_rate),
            ("caption_tag_dropout_rate", self.caption_tag_dropout_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err((key, format!("{rate} is outside [0, 1]")));
            }
        }
        Ok(())
    }

    /// Steps 1–3: the caption before random per-epoch transforms, given the chosen line.
    pub fn base_caption(&self, line: Option<&str>, class_tokens: Option<&str>) -> String {
        let mut caption = line.or(class_tokens).unwrap_or("").trim().to_string();
        if let Some(p) = &self.caption_prefix {
            caption = join_space(p, &caption);
        }
        if let Some(s) = &self.caption_suffix {
            caption = join_space(&caption, s);
        }
        self.insert_trigger(&caption)
    }

    /// Step 3 alone: replaces `[trigger]` or prepends the trigger word when absent.
    pub fn insert_trigger(&self, caption: &str) -> String {
        let Some(trigger) = self.trigger_word.as_deref() else {
            return caption.to_string();
        };
        if caption.contains(TRIGGER_PLACEHOLDER) {
            caption.replace(TRIGGER_PLACEHOLDER, trigger)
        } else if caption.contains(trigger) {
            caption.to_string()
        } else if caption.trim().is_empty() {
            trigger.to_string()
        } else {
            format!("{trigger}{} {caption}", self.caption_separator.trim_end())
        }
    }

    /// The full transform for one item in one epoch (0-based); `rng` is that item's stream.
    pub fn apply(
        &self,
        source: &CaptionSource,
        class_tokens: Option<&str>,
        epoch: u64,
        rng: &mut SplitMix64,
    ) -> String {
        let line = match source {
            CaptionSource::File { lines } if lines.len() > 1 => {
                Some(lines[rng.below(lines.len() as u64) as usize].as_str())
            }
            CaptionSource::File { lines } => lines.first().map(|s| s.as_str()),
            CaptionSource::Missing => None,
        };
        let caption = self.base_caption(line, class_tokens);
        self.randomise(&caption, epoch, rng)
    }

    /// Steps 4–6 on a base caption.
    pub fn randomise(&self, caption: &str, epoch: u64, rng: &mut SplitMix64) -> String {
        let every_n = self.caption_dropout_every_n_epochs as u64;
        let dropped = rng.chance(self.caption_dropout_rate)
            || (every_n > 0 && (epoch + 1).is_multiple_of(every_n));
        if dropped {
            return String::new();
        }
        let sep = self.caption_separator.as_str();
        let keep_sep = self
            .keep_tokens_separator
            .as_deref()
            .filter(|k| caption.contains(k));
        let mut caption =
            if self.shuffle_caption || self.caption_tag_dropout_rate > 0.0 || keep_sep.is_some() {
                let (fixed, mut flex, suffix) = self.split_tags(caption);
                if self.shuffle_caption {
                    rng.shuffle(&mut flex);
                }
                if self.caption_tag_dropout_rate > 0.0 {
                    flex.retain(|_| !rng.chance(self.caption_tag_dropout_rate));
                }
                let all: Vec<&str> = fixed.into_iter().chain(flex).chain(suffix).collect();
                all.join(", ")
            } else {
                caption.to_string()
            };
        if let Some(sec) = &self.secondary_separator {
            caption = caption.replace(sec.as_str(), sep);
        }
        caption
    }

    /// Splits into (fixed prefix tags, shufflable tags, fixed suffix tags).
    pub fn split_tags<'a>(&self, caption: &'a str) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
        let sep = self.caption_separator.as_str();
        let tags = |s: &'a str| -> Vec<&'a str> {
            s.split(sep)
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        };
        if let Some(k) = self
            .keep_tokens_separator
            .as_deref()
            .filter(|k| caption.contains(k))
        {
            let (fixed, rest) = caption.split_once(k).expect("checked contains");
            let (flex, suffix) = rest.split_once(k).unwrap_or((rest, ""));
            return (tags(fixed), tags(flex), tags(suffix));
        }
        let all = tags(caption);
        let k = self.keep_tokens.min(all.len());
        (all[..k].to_vec(), all[k..].to_vec(), Vec::new())
    }
}

fn join_space(a: &str, b: &str) -> String {
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, _) => b.trim().to_string(),
        (_, true) => a.trim().to_string(),
        _ => format!("{} {}", a.trim(), b.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> CaptionSettings {
        CaptionSettings::default()
    }

    #[test]
    fn trigger_is_prepended_or_replaces_placeholder() {
        let c = CaptionSettings {
            trigger_word: Some("ohwx".into()),
            ..s()
        };
        assert_eq!(
            c.base_caption(Some("a cat, sitting"), None),
            "ohwx, a cat, sitting"
        );
        assert_eq!(
            c.base_caption(Some("photo of [trigger] cat"), None),
            "photo of ohwx cat"
        );
        assert_eq!(c.base_caption(Some("ohwx cat"), None), "ohwx cat");
        assert_eq!(c.base_caption(None, None), "ohwx");
        assert_eq!(c.base_caption(None, Some("dog")), "ohwx, dog");
    }

    #[test]
    fn prefix_suffix_and_secondary_separator() {
        let c = CaptionSettings {
            caption_prefix: Some("photo".into()),
            caption_suffix: Some("end".into()),
            secondary_separator: Some(";;;".into()),
            ..s()
        };
        let mut r = SplitMix64::new(0);
        let base = c.base_caption(Some("a;;;b"), None);
        assert_eq!(base, "photo a;;;b end");
        assert_eq!(c.randomise(&base, 0, &mut r), "photo a,b end");
    }

    #[test]
    fn keep_tokens_separator_pins_both_ends() {
        let c = CaptionSettings {
            keep_tokens_separator: Some("|||".into()),
            shuffle_caption: true,
            ..s()
        };
        let mut r = SplitMix64::new(1);
        for _ in 0..20 {
            let out = c.randomise("a, b ||| c, d, e, f ||| g", 0, &mut r);
            let tags: Vec<&str> = out.split(", ").collect();
            assert_eq!(&tags[..2], &["a", "b"]);
            assert_eq!(tags[6], "g");
            let mut mid = tags[2..6].to_vec();
            mid.sort();
            assert_eq!(mid, ["c", "d", "e", "f"]);
        }
    }

    #[test]
    fn dropout_every_n_epochs_is_one_based() {
        let c = CaptionSettings {
            caption_dropout_every_n_epochs: 2,
            ..s()
        };
        let mut r = SplitMix64::new(0);
        assert_eq!(c.randomise("x", 0, &mut r), "x");
        assert_eq!(c.randomise("x", 1, &mut r), "");
        assert_eq!(c.randomise("x", 2, &mut r), "x");
    }

    #[test]
    fn caption_dropout_rate_matches_frequency() {
        let c = CaptionSettings {
            caption_dropout_rate: 0.25,
            ..s()
        };
        let mut r = SplitMix64::new(9);
        let dropped = (0..4000)
            .filter(|_| c.randomise("x", 0, &mut r).is_empty())
            .count();
        // Binomial(4000, 0.25): mean 1000, sd ≈ 27.
        assert!((880..1120).contains(&dropped), "{dropped}");
    }

    #[test]
    fn multi_line_files_use_every_line_over_epochs() {
        let src = CaptionSource::from_text("\u{feff}first\n\n  second \nthird\n");
        assert_eq!(
            src,
            CaptionSource::File {
                lines: vec!["first".into(), "second".into(), "third".into()]
            }
        );
        let mut seen = std::collections::BTreeSet::new();
        for epoch in 0..50 {
            let mut r = SplitMix64::derive(5, &[epoch]);
            seen.insert(s().apply(&src, None, epoch, &mut r));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(CaptionSource::from_text(" \n\n"), CaptionSource::Missing);
    }
}
