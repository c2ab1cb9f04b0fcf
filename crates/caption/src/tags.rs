//! Tag-level caption edits: trigger word insertion, dedupe, sort, underscores → spaces.
//!
//! A caption line is a list of tags separated by `,` (natural-language captions are one long
//! "tag", or several when they contain commas). Every function here works on one line and
//! returns the new line; [`TagEdits`] bundles them in a fixed order and applies them to every
//! non-empty line of a caption file (a multi-line caption file holds alternatives, one per epoch).
//!
//! Trigger rules ([`insert_trigger`]):
//! 1. every `[trigger]` placeholder is replaced — the first by the trigger word, the others
//!    removed — unless the trigger word is already in the caption, in which case all placeholders
//!    are removed;
//! 2. with no placeholder, the trigger is prepended as the first tag (`sks, …`) unless the
//!    caption already contains it as a whole word (so `a photo of sks dog` is left alone).
//!
//! The result always contains the trigger and no placeholder, so insertion is idempotent, and it
//! never adds a second copy of the trigger.

use crate::error::{CaptionError, Result};

/// The placeholder replaced by the trigger word.
pub const TRIGGER_PLACEHOLDER: &str = "[trigger]";

/// Kaomoji tags whose underscores are part of the face (kept by [`underscores_to_spaces`]), as in
/// the WD tagger reference code.
pub const KAOMOJI: [&str; 19] = [
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
    "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
];

/// A validated trigger word (or phrase): non-empty, trimmed, one line, no `,`, `[` or `]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger(String);

impl Trigger {
    /// Validates a trigger word.
    pub fn new(word: &str) -> Result<Self> {
        let trimmed = word.trim();
        let reason = if trimmed.is_empty() {
            Some("is empty; pass a rare token such as `sks` or `ohwx`")
        } else if trimmed.contains([',', '\n', '\r']) {
            Some(
                "contains a comma or a line break, which would split it into several tags; use one \
                 tag",
            )
        } else if trimmed.contains(['[', ']']) {
            Some(
                "contains `[` or `]`, which collide with the `[trigger]` placeholder; drop the \
                 brackets",
            )
        } else {
            None
        };
        match reason {
            Some(reason) => Err(CaptionError::InvalidTrigger {
                trigger: word.to_string(),
                reason,
            }),
            None => Ok(Trigger(trimmed.to_string())),
        }
    }

    /// The word itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Splits a caption line into trimmed, non-empty tags.
pub fn split_tags(line: &str) -> Vec<&str> {
    line.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Joins tags with `", "`.
pub fn join_tags<S: AsRef<str>>(tags: &[S]) -> String {
    tags.iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// How often `word` occurs in `text` as a whole word (not inside a longer word: `sks` is not in
/// `asks`). Boundaries are only required on a side where `word` itself starts/ends with a
/// letter, digit or `_`.
pub fn count_word(text: &str, word: &str) -> usize {
    if word.is_empty() {
        return 0;
    }
    let first_is_word = word.chars().next().is_some_and(is_word_char);
    let last_is_word = word.chars().next_back().is_some_and(is_word_char);
    let mut count = 0;
    let mut from = 0;
    while let Some(pos) = text[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before_ok = !first_is_word
            || text[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !is_word_char(c));
        let after_ok = !last_is_word || text[end..].chars().next().is_none_or(|c| !is_word_char(c));
        if before_ok && after_ok {
            count += 1;
            from = end;
        } else {
            from = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
    }
    count
}

/// Removes every `[trigger]` placeholder: a tag that is only the placeholder is dropped, an inline
/// one is cut out (whitespace collapsed). A line without placeholders is returned unchanged.
pub fn strip_placeholders(line: &str) -> String {
    let mut s = line.to_string();
    // Removing one placeholder can join text into a new one (`[[trigger]trigger]`): repeat.
    while s.contains(TRIGGER_PLACEHOLDER) {
        let pieces: Vec<String> = s
            .split(',')
            .filter_map(|piece| {
                if piece.contains(TRIGGER_PLACEHOLDER) {
                    let cut = piece.replace(TRIGGER_PLACEHOLDER, " ");
                    let collapsed = cut.split_whitespace().collect::<Vec<_>>().join(" ");
                    (!collapsed.is_empty()).then_some(collapsed)
                } else {
                    let t = piece.trim();
                    (!t.is_empty()).then(|| t.to_string())
                }
            })
            .collect();
        s = join_tags(&pieces);
    }
    s
}

/// Inserts the trigger word into one caption line (rules in the module docs).
pub fn insert_trigger(line: &str, trigger: &Trigger) -> String {
    let word = trigger.as_str();
    let line = line.trim();
    let mut s = line.to_string();
    if s.contains(TRIGGER_PLACEHOLDER) && count_word(&strip_placeholders(&s), word) == 0 {
        s = s.replacen(TRIGGER_PLACEHOLDER, word, 1);
    }
    let s = strip_placeholders(&s);
    if count_word(&s, word) > 0 {
        s
    } else if s.trim().is_empty() {
        word.to_string()
    } else {
        format!("{word}, {}", s.trim())
    }
}

/// The key two tags are duplicates under: trimmed, inner whitespace collapsed.
fn dedupe_key(tag: &str) -> String {
    tag.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Drops repeated tags, keeping the first occurrence of each (tags compare with surrounding and
/// repeated inner whitespace ignored; case matters). Empty tags are dropped too.
pub fn dedupe_tags(line: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    let tags: Vec<&str> = split_tags(line)
        .into_iter()
        .filter(|t| seen.insert(dedupe_key(t)))
        .collect();
    join_tags(&tags)
}

/// Sorts tags alphabetically (case-insensitively, ties by exact text), keeping the first
/// `keep_tokens` tags in place (kohya's `keep_tokens`). Empty tags are dropped.
pub fn sort_tags(line: &str, keep_tokens: usize) -> String {
    let mut tags = split_tags(line);
    let keep = keep_tokens.min(tags.len());
    tags[keep..].sort_by(|a, b| {
        a.to_lowercase()
            .cmp(&b.to_lowercase())
            .then_with(|| a.cmp(b))
    });
    join_tags(&tags)
}

/// Replaces `_` with a space in a booru tag, except in kaomoji ([`KAOMOJI`]).
pub fn underscores_to_spaces(tag: &str) -> String {
    if KAOMOJI.contains(&tag) {
        tag.to_string()
    } else {
        tag.replace('_', " ")
    }
}

/// A set of tag edits applied to every non-empty line of a caption, in this order:
/// underscores → spaces (tags holding the trigger excepted), dedupe, trigger, sort (a leading
/// trigger tag stays first, then `keep_tokens` tags; a `[trigger]` replaced in place is sorted
/// like any tag). Applying the same edits twice changes nothing the second time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagEdits {
    /// Insert this trigger word ([`insert_trigger`]).
    pub trigger: Option<Trigger>,
    /// Drop repeated tags ([`dedupe_tags`]).
    pub dedupe: bool,
    /// Sort tags alphabetically ([`sort_tags`]), keeping the first `keep_tokens` in place (after a
    /// leading trigger tag, which always stays first).
    pub sort: bool,
    /// Tags kept in place by `sort`.
    pub keep_tokens: usize,
    /// Replace `_` with spaces in every tag ([`underscores_to_spaces`]).
    pub underscores_to_spaces: bool,
}

impl TagEdits {
    /// Whether applying these edits can change anything.
    pub fn is_noop(&self) -> bool {
        self.trigger.is_none() && !self.dedupe && !self.sort && !self.underscores_to_spaces
    }

    /// Applies the edits to one caption line.
    pub fn apply_line(&self, line: &str) -> String {
        let mut s = line.trim().to_string();
        let trigger = self.trigger.as_ref().map(Trigger::as_str);
        let has_trigger = |tag: &str| trigger.is_some_and(|t| count_word(tag, t) > 0);
        if self.underscores_to_spaces {
            // Tags holding the trigger keep its spelling (`ohwx_man` stays a match).
            let tags: Vec<String> = split_tags(&s)
                .into_iter()
                .map(|t| {
                    if has_trigger(t) {
                        t.to_string()
                    } else {
                        underscores_to_spaces(t)
                    }
                })
                .collect();
            s = join_tags(&tags);
        }
        if self.dedupe {
            s = dedupe_tags(&s);
        }
        if let Some(trigger) = &self.trigger {
            s = insert_trigger(&s, trigger);
        }
        if self.sort {
            // A leading trigger tag stays first and does not count towards `keep_tokens`, so
            // sorting an edited caption again is a no-op.
            let leading_trigger = split_tags(&s).first().is_some_and(|t| Some(*t) == trigger);
            let keep = self.keep_tokens + usize::from(leading_trigger);
            s = sort_tags(&s, keep);
        }
        s
    }

    /// Applies the edits to a whole caption text: every non-empty line is edited, empty lines are
    /// dropped, an empty text stays empty (see [`TagEdits::apply_or_create`] to give it the
    /// trigger). The result has no trailing newline.
    pub fn apply(&self, text: &str) -> String {
        let lines: Vec<String> = caption_lines(text)
            .map(|l| self.apply_line(l))
            .filter(|l| !l.is_empty())
            .collect();
        lines.join("\n")
    }

    /// Like [`TagEdits::apply`], but an empty caption becomes the trigger word (when one is set).
    pub fn apply_or_create(&self, text: &str) -> String {
        let out = self.apply(text);
        match (&self.trigger, out.is_empty()) {
            (Some(t), true) => t.as_str().to_string(),
            _ => out,
        }
    }
}

/// The non-empty, trimmed lines of a caption text (BOM removed).
pub fn caption_lines(text: &str) -> impl Iterator<Item = &str> {
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// A caption text normalised for comparison and writing: BOM removed, lines trimmed, empty lines
/// dropped, joined with `\n`.
pub fn normalize_caption(text: &str) -> String {
    caption_lines(text).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(word: &str) -> Trigger {
        Trigger::new(word).unwrap()
    }

    #[test]
    fn trigger_is_prepended_when_absent() {
        assert_eq!(insert_trigger("1girl, solo", &t("sks")), "sks, 1girl, solo");
        assert_eq!(insert_trigger("", &t("sks")), "sks");
        assert_eq!(
            insert_trigger("  a dog  ", &t("ohwx man")),
            "ohwx man, a dog"
        );
    }

    #[test]
    fn trigger_present_as_a_word_is_left_alone() {
        assert_eq!(
            insert_trigger("a photo of sks dog", &t("sks")),
            "a photo of sks dog"
        );
        // `sks` inside `asks` is not the trigger.
        assert_eq!(insert_trigger("she asks", &t("sks")), "sks, she asks");
        assert_eq!(
            insert_trigger("sks_style, dog", &t("sks")),
            "sks, sks_style, dog"
        );
    }

    #[test]
    fn placeholder_is_replaced_once() {
        assert_eq!(
            insert_trigger("a photo of [trigger] dog", &t("sks")),
            "a photo of sks dog"
        );
        assert_eq!(
            insert_trigger("[trigger], dog, [trigger]", &t("sks")),
            "sks, dog"
        );
        // Trigger already there: the placeholder goes away instead of doubling it.
        assert_eq!(insert_trigger("sks, [trigger], dog", &t("sks")), "sks, dog");
        // Inline placeholder next to the trigger.
        assert_eq!(
            insert_trigger("photo of [trigger] sks", &t("sks")),
            "photo of sks"
        );
    }

    #[test]
    fn nested_placeholder_cannot_survive() {
        let out = insert_trigger("[[trigger]]", &t("trigger"));
        assert!(!out.contains(TRIGGER_PLACEHOLDER), "{out}");
        assert_eq!(count_word(&out, "trigger"), 1, "{out}");
        assert_eq!(insert_trigger(&out, &t("trigger")), out);
    }

    #[test]
    fn bad_triggers_are_rejected_with_the_reason() {
        for bad in ["", "  ", "a, b", "x\ny", "[x]"] {
            let err = Trigger::new(bad).unwrap_err().to_string();
            assert!(err.contains("trigger word"), "{err}");
        }
        assert_eq!(t("  sks ").as_str(), "sks");
    }

    #[test]
    fn count_word_respects_boundaries() {
        assert_eq!(count_word("sks sks, asks, sks_x, x-sks", "sks"), 3);
        assert_eq!(count_word("ohwx man, ohwx manly", "ohwx man"), 1);
        assert_eq!(count_word("naïve café", "café"), 1);
        assert_eq!(count_word("abc", ""), 0);
        // A trigger ending in punctuation needs no boundary on that side.
        assert_eq!(count_word("x.y x.", "x."), 2);
    }

    #[test]
    fn dedupe_keeps_first_occurrences() {
        assert_eq!(
            dedupe_tags("a, b,  a , c,b, ,  long   hair, long hair"),
            "a, b, c, long   hair"
        );
        assert_eq!(dedupe_tags("A, a"), "A, a");
    }

    #[test]
    fn sort_keeps_leading_tokens() {
        assert_eq!(
            sort_tags("sks, zebra, Apple, banana", 1),
            "sks, Apple, banana, zebra"
        );
        assert_eq!(sort_tags("b, a", 5), "b, a");
        assert_eq!(sort_tags("b, a", 0), "a, b");
    }

    #[test]
    fn underscores_spare_kaomoji() {
        assert_eq!(underscores_to_spaces("long_hair"), "long hair");
        assert_eq!(underscores_to_spaces("^_^"), "^_^");
        assert_eq!(underscores_to_spaces("o_o"), "o_o");
    }

    #[test]
    fn edits_apply_in_order_per_line() {
        let edits = TagEdits {
            trigger: Some(t("sks")),
            dedupe: true,
            sort: true,
            keep_tokens: 0,
            underscores_to_spaces: true,
        };
        let text = "\u{feff}zebra, long_hair, long hair\n\n  b, a  \n";
        assert_eq!(edits.apply(text), "sks, long hair, zebra\nsks, a, b");
        assert!(!edits.is_noop());
        assert!(TagEdits::default().is_noop());
        assert_eq!(edits.apply(""), "");
        assert_eq!(edits.apply_or_create("  \n"), "sks");
        assert_eq!(TagEdits::default().apply_or_create(""), "");
    }

    #[test]
    fn normalize_drops_blank_lines_and_bom() {
        assert_eq!(normalize_caption("\u{feff} a \r\n\r\n b\n"), "a\nb");
    }
}
