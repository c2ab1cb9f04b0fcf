//! Property tests of caption transforms: kept tokens never move, nothing is invented, shuffling
//! is a permutation, and the same seed gives the same caption.

use fluxlora_data::*;
use proptest::prelude::*;

fn tag() -> impl Strategy<Value = String> {
    "[a-z]{1,6}( [a-z]{1,6})?"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn keep_tokens_are_never_shuffled_or_dropped(
        tags in prop::collection::vec(tag(), 1..12),
        keep in 0usize..5,
        tag_dropout in prop::sample::select(vec![0.0, 0.3, 0.9]),
        seed in any::<u64>(), epoch in 0u64..10,
    ) {
        let s = CaptionSettings {
            shuffle_caption: true,
            keep_tokens: keep,
            caption_tag_dropout_rate: tag_dropout,
            ..Default::default()
        };
        let caption = tags.join(", ");
        let out = s.randomise(&caption, epoch, &mut SplitMix64::new(seed));
        let out_tags: Vec<&str> = out.split(", ").filter(|t| !t.is_empty()).collect();
        let k = keep.min(tags.len());
        prop_assert!(out_tags.len() >= k);
        for i in 0..k {
            prop_assert_eq!(out_tags[i], tags[i].as_str());
        }
        // Every output tag comes from the input's flexible part, each at most as often as there.
        let mut rest: Vec<&str> = tags[k..].iter().map(String::as_str).collect();
        for t in &out_tags[k..] {
            let pos = rest.iter().position(|r| r == t);
            prop_assert!(pos.is_some(), "invented tag {}", t);
            rest.remove(pos.unwrap());
        }
        if tag_dropout == 0.0 {
            prop_assert!(rest.is_empty(), "dropped without dropout: {:?}", rest);
        }
        prop_assert_eq!(&out, &s.randomise(&caption, epoch, &mut SplitMix64::new(seed)));
    }

    #[test]
    fn keep_tokens_separator_pins_prefix_and_suffix(
        fixed in prop::collection::vec(tag(), 0..4),
        flex in prop::collection::vec(tag(), 0..8),
        suffix in prop::collection::vec(tag(), 0..3),
        seed in any::<u64>(),
    ) {
        let s = CaptionSettings {
            shuffle_caption: true,
            keep_tokens: 7,
            keep_tokens_separator: Some("|||".into()),
            ..Default::default()
        };
        let caption =
            format!("{} ||| {} ||| {}", fixed.join(", "), flex.join(", "), suffix.join(", "));
        let out = s.randomise(&caption, 0, &mut SplitMix64::new(seed));
        let out_tags: Vec<String> =
            out.split(", ").filter(|t| !t.is_empty()).map(String::from).collect();
        prop_assert_eq!(out_tags.len(), fixed.len() + flex.len() + suffix.len());
        prop_assert_eq!(&out_tags[..fixed.len()], &fixed[..]);
        prop_assert_eq!(&out_tags[fixed.len() + flex.len()..], &suffix[..]);
        let mut mid = out_tags[fixed.len()..fixed.len() + flex.len()].to_vec();
        let mut want = flex.clone();
        mid.sort();
        want.sort();
        prop_assert_eq!(mid, want);
    }

    #[test]
    fn trigger_is_present_after_insertion(
        tags in prop::collection::vec(tag(), 0..6),
        placeholder in any::<bool>(),
    ) {
        let s = CaptionSettings { trigger_word: Some("zxq".into()), ..Default::default() };
        let mut caption = tags.join(", ");
        if placeholder {
            caption = format!("photo of [trigger], {caption}");
        }
        let out = s.base_caption(Some(&caption), None);
        prop_assert!(out.contains("zxq"));
        prop_assert!(!out.contains("[trigger]"));
        if !placeholder && !caption.contains("zxq") {
            prop_assert!(out.starts_with("zxq"));
        }
    }
}
