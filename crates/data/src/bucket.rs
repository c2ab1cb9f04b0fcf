//! Aspect-ratio buckets (kohya style) and crop rectangles.
//!
//! With upscaling allowed, the bucket list is kohya's `make_bucket_resolutions`: every width from
//! `min_bucket_reso` to `max_bucket_reso` in steps, paired with the largest step-multiple height
//! that keeps the area within `resolution` (capped at `max_bucket_reso`), both orientations, plus
//! the largest square. An image goes to the bucket nearest in log aspect ratio and is scaled to
//! cover it. With `bucket_no_upscale`, an image is only ever shrunk: to the target area if larger,
//! then each side rounded down to the step (and capped at `max_bucket_reso`). Either way the
//! bucket sides are multiples of `bucket_reso_steps` and the area is ≤ width·height of the
//! resolution. The crop is taken in source pixels (centre, or seeded random) and resized once.

use serde::{Deserialize, Serialize};

use crate::config::BucketSettings;
use crate::rng::SplitMix64;

/// A bucket: the pixel size every image in it is trained at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bucket {
    /// Width in pixels, a multiple of `bucket_reso_steps`.
    pub width: u32,
    /// Height in pixels, a multiple of `bucket_reso_steps`.
    pub height: u32,
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Where an image goes and by how much it is scaled (> 1 means upscaled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketAssignment {
    /// The bucket the image is trained at.
    pub bucket: Bucket,
    /// Resize factor from the oriented source to the bucket (the larger of the two sides'
    /// ratios, so the image covers the bucket before cropping).
    pub scale: f64,
}

/// A crop in source pixels, resized to the bucket afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CropRect {
    /// Left edge, in source pixels.
    pub x: u32,
    /// Top edge, in source pixels.
    pub y: u32,
    /// Width, in source pixels.
    pub width: u32,
    /// Height, in source pixels.
    pub height: u32,
}

/// Why an image cannot be bucketed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketRejection {
    /// With `bucket_no_upscale`, a side is smaller than one step.
    TooSmall {
        /// The image's width (after EXIF orientation).
        width: u32,
        /// The image's height (after EXIF orientation).
        height: u32,
        /// The dataset's `bucket_reso_steps`.
        step: u32,
    },
    /// Zero-sized image.
    Empty,
}

impl std::fmt::Display for BucketRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketRejection::TooSmall {
                width,
                height,
                step,
            } => write!(
                f,
                "{width}×{height} has a side below bucket_reso_steps {step} and bucket_no_upscale \
                 forbids enlarging it; remove the image or turn bucket_no_upscale off"
            ),
            BucketRejection::Empty => write!(f, "image has zero width or height"),
        }
    }
}

/// kohya's predefined bucket list for the upscaling mode, sorted.
pub fn bucket_resolutions(s: &BucketSettings) -> Vec<Bucket> {
    let step = s.bucket_reso_steps as u64;
    let max_area = s.resolution.0 as u64 * s.resolution.1 as u64;
    let (min, max) = (s.min_bucket_reso as u64, s.max_bucket_reso as u64);
    let mut set = std::collections::BTreeSet::new();
    let side = (((max_area as f64).sqrt() as u64) / step * step).min(max);
    set.insert(Bucket {
        width: side as u32,
        height: side as u32,
    });
    let mut width = min;
    while width <= max {
        let height = max.min((max_area / width) / step * step);
        if height >= min {
            set.insert(Bucket {
                width: width as u32,
                height: height as u32,
            });
            set.insert(Bucket {
                width: height as u32,
                height: width as u32,
            });
        }
        width += step;
    }
    set.into_iter().collect()
}

/// Chooses the bucket of a `width`×`height` image (after EXIF orientation).
pub fn assign_bucket(
    width: u32,
    height: u32,
    s: &BucketSettings,
) -> Result<BucketAssignment, BucketRejection> {
    if width == 0 || height == 0 {
        return Err(BucketRejection::Empty);
    }
    let (w, h) = (width as f64, height as f64);
    let bucket = if !s.enable_bucket {
        Bucket {
            width: s.resolution.0,
            height: s.resolution.1,
        }
    } else if s.bucket_no_upscale {
        no_upscale_bucket(width, height, s)?
    } else {
        let ar = (w / h).ln();
        *bucket_resolutions(s)
            .iter()
            .min_by(|a, b| {
                let da = ((a.width as f64 / a.height as f64).ln() - ar).abs();
                let db = ((b.width as f64 / b.height as f64).ln() - ar).abs();
                da.total_cmp(&db)
            })
            .expect("validated settings give at least one bucket")
    };
    let scale = (bucket.width as f64 / w).max(bucket.height as f64 / h);
    Ok(BucketAssignment { bucket, scale })
}

fn no_upscale_bucket(
    width: u32,
    height: u32,
    s: &BucketSettings,
) -> Result<Bucket, BucketRejection> {
    let step = s.bucket_reso_steps as u64;
    let max_area = s.resolution.0 as f64 * s.resolution.1 as f64;
    let (w, h) = (width as f64, height as f64);
    let shrink = (max_area / (w * h)).sqrt().min(1.0);
    let cap = s.max_bucket_reso as u64;
    let bw = ((w * shrink).floor() as u64).min(cap) / step * step;
    let bh = ((h * shrink).floor() as u64).min(cap) / step * step;
    if bw == 0 || bh == 0 {
        return Err(BucketRejection::TooSmall {
            width,
            height,
            step: s.bucket_reso_steps,
        });
    }
    Ok(Bucket {
        width: bw as u32,
        height: bh as u32,
    })
}

/// The source rectangle that, resized, fills `bucket` without distortion: centred, or at a
/// seeded random offset when `random` is set.
pub fn crop_rect(
    width: u32,
    height: u32,
    bucket: Bucket,
    random: bool,
    rng: &mut SplitMix64,
) -> CropRect {
    let scale = (bucket.width as f64 / width as f64).max(bucket.height as f64 / height as f64);
    let cw = ((bucket.width as f64 / scale).round() as u32).clamp(1, width);
    let ch = ((bucket.height as f64 / scale).round() as u32).clamp(1, height);
    let (sx, sy) = (width - cw, height - ch);
    let (x, y) = if random {
        (
            rng.below(sx as u64 + 1) as u32,
            rng.below(sy as u64 + 1) as u32,
        )
    } else {
        (sx / 2, sy / 2)
    };
    CropRect {
        x,
        y,
        width: cw,
        height: ch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kohya_512() -> BucketSettings {
        BucketSettings {
            resolution: (512, 512),
            enable_bucket: true,
            min_bucket_reso: 256,
            max_bucket_reso: 1024,
            bucket_reso_steps: 64,
            bucket_no_upscale: false,
        }
    }

    /// The list worked out by hand from kohya's formula for 512², 256..1024, step 64:
    /// width w ↦ height min(1024, ⌊⌊262144 / w⌋ / 64⌋·64).
    #[test]
    fn bucket_list_matches_kohya_formula_by_hand() {
        let got: Vec<(u32, u32)> = bucket_resolutions(&kohya_512())
            .iter()
            .map(|b| (b.width, b.height))
            .collect();
        let mut want = vec![
            (256, 1024),
            (320, 768),
            (384, 640),
            (448, 576),
            (512, 512),
            (576, 448),
            (640, 384),
            (704, 320),
            (768, 320),
            (832, 256),
            (896, 256),
            (960, 256),
            (1024, 256),
            (1024, 256),
            (768, 320),
            (640, 384),
            (576, 448),
            (448, 576),
            (384, 640),
            (320, 704),
            (320, 768),
            (256, 832),
            (256, 896),
            (256, 960),
            (256, 1024),
        ];
        want.sort();
        want.dedup();
        assert_eq!(got, want);
    }

    #[test]
    fn common_shapes_land_where_expected() {
        let s = kohya_512();
        assert_eq!(
            assign_bucket(1024, 1024, &s).unwrap().bucket,
            Bucket {
                width: 512,
                height: 512
            }
        );
        // 3:2 landscape (ln 1.5 = 0.405): 576×448 (ln 1.286 = 0.251) vs 640×384 (ln 1.667 =
        // 0.511).
        assert_eq!(
            assign_bucket(1500, 1000, &s).unwrap().bucket,
            Bucket {
                width: 640,
                height: 384
            }
        );
        let a = assign_bucket(100, 100, &s).unwrap();
        assert_eq!(
            a.bucket,
            Bucket {
                width: 512,
                height: 512
            }
        );
        assert!((a.scale - 5.12).abs() < 1e-12);
    }

    #[test]
    fn no_upscale_keeps_small_images_small() {
        let s = BucketSettings {
            bucket_no_upscale: true,
            ..kohya_512()
        };
        assert_eq!(
            assign_bucket(300, 200, &s).unwrap().bucket,
            Bucket {
                width: 256,
                height: 192
            }
        );
        assert!(assign_bucket(300, 200, &s).unwrap().scale <= 1.0);
        assert_eq!(
            assign_bucket(1, 1, &s),
            Err(BucketRejection::TooSmall {
                width: 1,
                height: 1,
                step: 64
            })
        );
    }

    #[test]
    fn disabled_buckets_use_the_resolution() {
        let s = BucketSettings {
            enable_bucket: false,
            resolution: (512, 768),
            ..kohya_512()
        };
        assert_eq!(
            assign_bucket(10, 10, &s).unwrap().bucket,
            Bucket {
                width: 512,
                height: 768
            }
        );
    }

    #[test]
    fn crop_is_centred_or_seeded() {
        let b = Bucket {
            width: 512,
            height: 512,
        };
        let c = crop_rect(1000, 500, b, false, &mut SplitMix64::new(0));
        assert_eq!(
            c,
            CropRect {
                x: 250,
                y: 0,
                width: 500,
                height: 500
            }
        );
        let r1 = crop_rect(1000, 500, b, true, &mut SplitMix64::new(4));
        let r2 = crop_rect(1000, 500, b, true, &mut SplitMix64::new(4));
        assert_eq!(r1, r2);
        assert!(r1.x <= 500 && r1.width == 500);
    }
}
