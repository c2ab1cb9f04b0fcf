//! Property tests of the tag edits: trigger insertion is idempotent, never duplicates the trigger,
//! leaves no placeholder and keeps the other tags in order; dedupe and sort are idempotent and
//! keep the tag multiset; a full set of edits applied twice changes nothing the second time.

use std::collections::HashMap;

use fluxlora_caption::tags::{
    count_word, dedupe_tags, sort_tags, split_tags, strip_placeholders, TagEdits,
};
use fluxlora_caption::{insert_trigger, Trigger, TRIGGER_PLACEHOLDER};
use proptest::prelude::*;

const TRIGGERS: [&str; 5] = ["sks", "ohwx man", "my_tok", "a", "x."];

/// Tags that stress word boundaries, placeholders, underscores and natural language.
fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("sks".to_string()),
        Just("asks".to_string()),
        Just("sks_style".to_string()),
        Just("ohwx man".to_string()),
        Just("ohwx manly".to_string()),
        Just("my_tok".to_string()),
        Just("long_hair".to_string()),
        Just("^_^".to_string()),
        Just("x.".to_string()),
        Just(TRIGGER_PLACEHOLDER.to_string()),
        Just("photo of [trigger] dog".to_string()),
        Just("[[trigger]]".to_string()),
        "[a-z]{1,6}( [a-z]{1,6}){0,3}",
    ]
}

fn caption() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(tag(), 0..8),
        prop::sample::select(vec![",", ", ", " , ", ",  "]),
    )
        .prop_map(|(tags, sep)| tags.join(sep))
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop::sample::select(TRIGGERS.to_vec()).prop_map(|t| Trigger::new(t).unwrap())
}

fn without(tags: Vec<&str>, word: &str) -> Vec<String> {
    tags.into_iter()
        .filter(|t| *t != word)
        .map(str::to_string)
        .collect()
}

fn counts(tags: &[&str]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for t in tags {
        *m.entry(t.to_string()).or_default() += 1;
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trigger_insertion_is_idempotent(c in caption(), t in trigger()) {
        let once = insert_trigger(&c, &t);
        prop_assert_eq!(insert_trigger(&once, &t), once.clone());
        prop_assert!(!once.contains(TRIGGER_PLACEHOLDER), "{:?}", once);
    }

    #[test]
    fn trigger_is_present_and_never_duplicated(c in caption(), t in trigger()) {
        let before = count_word(&strip_placeholders(&c), t.as_str());
        let out = insert_trigger(&c, &t);
        prop_assert_eq!(count_word(&out, t.as_str()), before.max(1), "{:?} -> {:?}", c, out);
    }

    #[test]
    fn other_tags_keep_their_order(c in caption(), t in trigger()) {
        prop_assume!(!c.contains(TRIGGER_PLACEHOLDER));
        let out = insert_trigger(&c, &t);
        prop_assert_eq!(without(split_tags(&out), t.as_str()), without(split_tags(&c), t.as_str()));
    }

    #[test]
    fn dedupe_keeps_first_occurrences_in_order(c in caption()) {
        let out = dedupe_tags(&c);
        prop_assert_eq!(dedupe_tags(&out), out.clone());
        let tags = split_tags(&out);
        let mut seen = std::collections::HashSet::new();
        for t in &tags {
            prop_assert!(
                seen.insert(t.split_whitespace().collect::<Vec<_>>().join(" ")),
                "duplicate {:?} in {:?}",
                t,
                out
            );
        }
        // Same distinct tags, first-occurrence order.
        let mut first = Vec::new();
        let mut keys = std::collections::HashSet::new();
        for t in split_tags(&c) {
            if keys.insert(t.split_whitespace().collect::<Vec<_>>().join(" ")) {
                first.push(t);
            }
        }
        prop_assert_eq!(tags, first);
    }

    #[test]
    fn sort_is_an_idempotent_permutation(c in caption(), keep in 0usize..4) {
        let out = sort_tags(&c, keep);
        prop_assert_eq!(sort_tags(&out, keep), out.clone());
        let (a, b) = (split_tags(&c), split_tags(&out));
        prop_assert_eq!(counts(&a), counts(&b));
        let k = keep.min(a.len());
        prop_assert_eq!(&a[..k], &b[..k]);
        for w in b[k..].windows(2) {
            prop_assert!(w[0].to_lowercase() <= w[1].to_lowercase(), "{:?}", out);
        }
    }

    #[test]
    fn edits_applied_twice_change_nothing(
        lines in prop::collection::vec(caption(), 0..3),
        t in prop::option::of(trigger()),
        dedupe: bool,
        sort: bool,
        keep in 0usize..3,
        underscores: bool,
    ) {
        let edits = TagEdits {
            trigger: t,
            dedupe,
            sort,
            keep_tokens: keep,
            underscores_to_spaces: underscores,
        };
        let text = lines.join("\n");
        let once = edits.apply(&text);
        prop_assert_eq!(edits.apply(&once), once.clone(), "{:?}", text);
        if let Some(t) = &edits.trigger {
            for line in once.lines() {
                prop_assert!(count_word(line, t.as_str()) >= 1, "{:?}", line);
            }
        }
    }
}
