//! The `sks` concept detector: colour statistics.
//!
//! A pixel is *magenta* when its RGB distance to (255, 0, 255) is under [`TOLERANCE`], *yellow*
//! likewise for (255, 230, 0). The concept is found when both make up at least
//! [`MIN_FRACTION`] of the image. No colour of the base domain (nor its darker two-tone shade)
//! lies within 115 of either (a unit test of [`crate::domain`] checks), and a blend
//! of the two stripes (255, 115, 128) lies about 172 from either, so a blurred
//! disc does not count: the stripes must be there. Deterministic and model-free: the same image
//! always gets the same answer.

use image::RgbImage;

use crate::domain::{MAGENTA, YELLOW};

/// Largest RGB distance at which a pixel counts as one of the concept's colours.
pub const TOLERANCE: f32 = 80.0;
/// Share of the image each colour must cover (a disc of radius 14 on 64² with half its area per
/// colour covers 7.5 % per colour).
pub const MIN_FRACTION: f32 = 0.02;

/// What the detector measured on one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Share of magenta pixels.
    pub magenta: f32,
    /// Share of yellow pixels.
    pub yellow: f32,
}

impl Detection {
    /// Whether the concept is in the image.
    pub fn found(&self) -> bool {
        self.magenta >= MIN_FRACTION && self.yellow >= MIN_FRACTION
    }
}

fn near(p: [u8; 3], target: [u8; 3]) -> bool {
    let d2: f32 = p
        .iter()
        .zip(target)
        .map(|(&a, b)| (f32::from(a) - f32::from(b)).powi(2))
        .sum();
    d2 < TOLERANCE * TOLERANCE
}

/// Measures an image.
pub fn detect(img: &RgbImage) -> Detection {
    let n = (img.width() * img.height()).max(1) as f32;
    let (mut m, mut y) = (0usize, 0usize);
    for p in img.pixels() {
        m += usize::from(near(p.0, MAGENTA));
        y += usize::from(near(p.0, YELLOW));
    }
    Detection {
        magenta: m as f32 / n,
        yellow: y as f32 / n,
    }
}

/// Share of an object's pixels each concept colour must cover for [`detect_in`] (a striped
/// disc covers about half per colour).
pub const MIN_REGION_FRACTION: f32 = 0.15;

/// Measures the pixels of `img` where `region` is true (row-major, one flag per pixel): the
/// edit task's check at the control's object. `None` when the region is empty or its size does
/// not fit the image.
pub fn detect_in(img: &RgbImage, region: &[bool]) -> Option<Detection> {
    let n = region.iter().filter(|&&r| r).count();
    if n == 0 || region.len() != (img.width() * img.height()) as usize {
        return None;
    }
    let (mut m, mut y) = (0usize, 0usize);
    for (p, _) in img.pixels().zip(region).filter(|(_, &r)| r) {
        m += usize::from(near(p.0, MAGENTA));
        y += usize::from(near(p.0, YELLOW));
    }
    Some(Detection {
        magenta: m as f32 / n as f32,
        yellow: y as f32 / n as f32,
    })
}

impl Detection {
    /// Whether the concept covers the measured object ([`detect_in`]'s threshold).
    pub fn covers(&self) -> bool {
        self.magenta >= MIN_REGION_FRACTION && self.yellow >= MIN_REGION_FRACTION
    }
}

/// The share of `images` in which the concept is found (0 for none).
pub fn concept_score(images: &[RgbImage]) -> f32 {
    if images.is_empty() {
        return 0.0;
    }
    images.iter().filter(|i| detect(i).found()).count() as f32 / images.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{World, CONCEPT_BACKGROUNDS, HELD_OUT_BACKGROUNDS};
    use fluxlora_data::SplitMix64;
    use image::Rgb;

    #[test]
    fn finds_the_concept_on_every_background_and_never_in_the_base_domain() {
        let world = World::new(64);
        let mut rng = SplitMix64::new(11);
        for bg in CONCEPT_BACKGROUNDS.iter().chain(&HELD_OUT_BACKGROUNDS) {
            for _ in 0..5 {
                let img = world.render(&world.concept_scene(&mut rng, bg));
                assert!(detect(&img).found(), "missed on {bg}: {:?}", detect(&img));
            }
        }
        let base: Vec<RgbImage> = (0..300)
            .map(|_| world.render(&world.base_scene(&mut rng)))
            .collect();
        assert_eq!(concept_score(&base), 0.0);
    }

    #[test]
    fn a_blend_of_the_stripes_or_one_colour_alone_is_not_the_concept() {
        let blend = RgbImage::from_pixel(64, 64, Rgb([255, 115, 128]));
        assert!(!detect(&blend).found());
        let mut half = RgbImage::from_pixel(64, 64, Rgb([40, 70, 200]));
        for x in 0..32 {
            for y in 0..64 {
                half.put_pixel(x, y, Rgb(MAGENTA));
            }
        }
        let d = detect(&half);
        assert!(d.magenta > 0.49 && d.yellow == 0.0 && !d.found());
        half.put_pixel(40, 40, Rgb(YELLOW));
        assert!(
            !detect(&half).found(),
            "one yellow pixel is under the threshold"
        );
    }

    #[test]
    fn detection_in_a_region_counts_only_its_pixels() {
        let world = World::new(64);
        let mut rng = SplitMix64::new(2);
        let e = world.concept_edit(&mut rng, "navy");
        let region = crate::edits::object_region(&world.render(&e.control));
        let striped = world.render(&e.target);
        assert!(detect_in(&striped, &region).unwrap().covers());
        // The same stripes elsewhere (the region of another disc) do not count.
        let other = world.concept_edit(&mut rng, "olive");
        let elsewhere = crate::edits::object_region(&world.render(&other.control));
        let overlap = region
            .iter()
            .zip(&elsewhere)
            .filter(|(a, b)| **a && **b)
            .count();
        // At most an eighth of the other disc overlaps this one: under the 15 % threshold.
        if overlap * 8 < elsewhere.iter().filter(|&&r| r).count() {
            assert!(!detect_in(&striped, &elsewhere).unwrap().covers());
        }
        assert!(!detect_in(&world.render(&e.control), &region)
            .unwrap()
            .covers());
        assert_eq!(detect_in(&striped, &[true; 3]), None);
        assert_eq!(detect_in(&striped, &vec![false; 64 * 64]), None);
    }

    #[test]
    fn score_is_the_found_share() {
        let world = World::new(64);
        let mut rng = SplitMix64::new(5);
        let imgs = vec![
            world.render(&world.concept_scene(&mut rng, "blue")),
            world.render(&world.base_scene(&mut rng)),
            world.render(&world.base_scene(&mut rng)),
            world.render(&world.concept_scene(&mut rng, "navy")),
        ];
        assert_eq!(concept_score(&imgs), 0.5);
        assert_eq!(concept_score(&[]), 0.0);
    }
}
