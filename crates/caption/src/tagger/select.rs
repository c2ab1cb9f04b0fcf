//! From classifier scores to a caption: sigmoid probabilities, separate thresholds for general and
//! character tags (strictly greater, as the WD reference code), rating tags reported but never
//! captioned, tags sorted by score.

use crate::tagger::labels::{Labels, TagCategory};
use crate::tags::{join_tags, underscores_to_spaces};

/// The tags of one image, each list sorted by score (highest first; ties in label order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagPrediction {
    /// General tags above the general threshold, with their probabilities.
    pub general: Vec<(String, f32)>,
    /// Character tags above the character threshold, with their probabilities.
    pub character: Vec<(String, f32)>,
    /// Every rating label with its probability (not thresholded, never captioned).
    pub rating: Vec<(String, f32)>,
}

/// Logistic sigmoid.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn sorted(mut v: Vec<(usize, String, f32)>) -> Vec<(String, f32)> {
    v.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    v.into_iter().map(|(_, n, s)| (n, s)).collect()
}

/// Picks the tags whose probability exceeds their category's threshold. `probs` must have one
/// entry per label (the caller checks sizes when loading).
pub fn select_tags(
    labels: &Labels,
    probs: &[f32],
    general_threshold: f32,
    character_threshold: f32,
) -> TagPrediction {
    let (mut general, mut character, mut rating) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (label, &p)) in labels.labels.iter().zip(probs).enumerate() {
        let item = (i, label.name.clone(), p);
        match label.category {
            TagCategory::General if p > general_threshold => general.push(item),
            TagCategory::Character if p > character_threshold => character.push(item),
            TagCategory::Rating => rating.push(item),
            _ => {}
        }
    }
    TagPrediction {
        general: sorted(general),
        character: sorted(character),
        rating: sorted(rating),
    }
}

impl TagPrediction {
    /// General and character tags merged, by score (highest first; general before character on
    /// equal scores).
    pub fn tags(&self) -> Vec<(&str, f32)> {
        let mut all: Vec<(usize, &str, f32)> = self
            .general
            .iter()
            .chain(&self.character)
            .enumerate()
            .map(|(i, (n, s))| (i, n.as_str(), *s))
            .collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        all.into_iter().map(|(_, n, s)| (n, s)).collect()
    }

    /// The caption: tags by score joined with `", "`, underscores optionally replaced by spaces
    /// (kaomoji kept).
    pub fn caption(&self, underscores_as_spaces: bool) -> String {
        let tags: Vec<String> = self
            .tags()
            .into_iter()
            .map(|(n, _)| {
                if underscores_as_spaces {
                    underscores_to_spaces(n)
                } else {
                    n.to_string()
                }
            })
            .collect();
        join_tags(&tags)
    }

    /// The most likely rating label, if the model has ratings.
    pub fn top_rating(&self) -> Option<(&str, f32)> {
        self.rating.first().map(|(n, s)| (n.as_str(), *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn labels() -> Labels {
        Labels::parse(
            Path::new("t.csv"),
            "tag_id,name,category,count\n0,general,9,1\n1,explicit,9,1\n2,long_hair,0,1\n\
             3,^_^,0,1\n4,smile,0,1\n5,hatsune_miku,4,1\n6,low_score,0,1\n7,artist,1,1\n",
        )
        .unwrap()
    }

    #[test]
    fn thresholds_categories_and_order() {
        let probs = [0.9, 0.1, 0.6, 0.8, 0.35, 0.7, 0.2, 0.99];
        let pred = select_tags(&labels(), &probs, 0.35, 0.65);
        assert_eq!(
            pred.general,
            [("^_^".to_string(), 0.8), ("long_hair".to_string(), 0.6)]
        );
        assert_eq!(pred.character, [("hatsune_miku".to_string(), 0.7)]);
        assert_eq!(pred.top_rating(), Some(("general", 0.9)));
        assert_eq!(pred.caption(true), "^_^, hatsune miku, long hair");
        assert_eq!(pred.caption(false), "^_^, hatsune_miku, long_hair");
        // Raise the character threshold: the character goes, ratings and "other" never appear.
        let pred = select_tags(&labels(), &probs, 0.1, 0.75);
        assert_eq!(pred.caption(false), "^_^, long_hair, smile, low_score");
    }

    #[test]
    fn sigmoid_matches_the_formula() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) - 0.880_797_1).abs() < 1e-6);
        assert!((sigmoid(-2.0) - 0.119_202_92).abs() < 1e-6);
    }
}
