//! Property tests of bucketing: every image lands in a bucket whose sides are multiples of the
//! step and whose area respects the limit, and its crop lies inside the image with the bucket's
//! aspect ratio.

use fluxlora_data::*;
use proptest::prelude::*;

fn settings() -> impl Strategy<Value = BucketSettings> {
    (
        1u32..=4,
        4u32..=128,
        4u32..=128,
        1u32..=8,
        0u32..=32,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_filter_map(
            "settings the config validator accepts",
            |(k, rw, rh, min_k, extra, no_upscale, enable)| {
                let step = 16 * k;
                let s = BucketSettings {
                    resolution: (rw * 16, rh * 16),
                    enable_bucket: enable,
                    min_bucket_reso: step * min_k,
                    max_bucket_reso: step * (min_k + extra),
                    bucket_reso_steps: step,
                    bucket_no_upscale: no_upscale,
                };
                valid(&s).then_some(s)
            },
        )
}

/// Whether the config validator accepts these settings.
fn valid(s: &BucketSettings) -> bool {
    let cfg = DatasetConfig {
        source: "props".into(),
        skip_bad_images: false,
        image_limits: Default::default(),
        datasets: vec![DatasetSettings {
            batch_size: 1,
            buckets: *s,
            subsets: vec![],
        }],
    };
    cfg.validate().is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_image_lands_in_a_valid_bucket(
        s in settings(),
        w in 1u32..30000,
        h in 1u32..30000,
        seed in any::<u64>(),
        random in any::<bool>(),
    ) {
        let step = s.bucket_reso_steps;
        let limit = s.resolution.0 as u64 * s.resolution.1 as u64;
        match assign_bucket(w, h, &s) {
            Ok(a) => {
                let b = a.bucket;
                prop_assert!(b.width > 0 && b.height > 0);
                if s.enable_bucket {
                    prop_assert_eq!(b.width % step, 0);
                    prop_assert_eq!(b.height % step, 0);
                    prop_assert!(b.width <= s.max_bucket_reso && b.height <= s.max_bucket_reso);
                    if !s.bucket_no_upscale {
                        prop_assert!(b.width >= s.min_bucket_reso && b.height >= s.min_bucket_reso);
                    }
                }
                prop_assert!(
                    b.width as u64 * b.height as u64 <= limit,
                    "{}x{} > {}",
                    b.width,
                    b.height,
                    limit
                );
                if s.enable_bucket && s.bucket_no_upscale {
                    prop_assert!(a.scale <= 1.0 + 1e-12, "no_upscale scaled by {}", a.scale);
                    prop_assert!(b.width <= w && b.height <= h);
                }
                // The crop is inside the image and, resized by one factor, fills the bucket.
                let c = crop_rect(w, h, b, random, &mut SplitMix64::new(seed));
                prop_assert!(c.x + c.width <= w && c.y + c.height <= h);
                prop_assert!(c.width >= 1 && c.height >= 1);
                // The crop is the ideal cover crop rounded to whole pixels (at least one).
                let scale = (b.width as f64 / w as f64).max(b.height as f64 / h as f64);
                let (iw, ih) = (b.width as f64 / scale, b.height as f64 / scale);
                prop_assert!(iw <= w as f64 + 1e-6 && ih <= h as f64 + 1e-6);
                prop_assert!(
                    (iw - w as f64).abs() < 1e-6 || (ih - h as f64).abs() < 1e-6,
                    "not a cover crop"
                );
                for (got, ideal) in [(c.width, iw), (c.height, ih)] {
                    prop_assert!(
                        (got as f64 - ideal).abs() <= 0.5 + 1e-6 || (got == 1 && ideal < 1.0),
                        "crop {:?} vs ideal {}x{}",
                        c,
                        iw,
                        ih
                    );
                }
                if !random {
                    prop_assert!((c.x as i64 * 2 - (w - c.width) as i64).abs() <= 1);
                }
            }
            Err(BucketRejection::TooSmall { .. }) => {
                // Only without upscaling, and only when a side cannot reach one step.
                prop_assert!(s.enable_bucket && s.bucket_no_upscale);
                let shrink = ((limit as f64) / (w as f64 * h as f64)).sqrt().min(1.0);
                prop_assert!(
                    ((w as f64 * shrink).floor() as u32) < step
                        || ((h as f64 * shrink).floor() as u32) < step
                );
            }
            Err(BucketRejection::Empty) => prop_assert!(false, "non-empty image rejected as empty"),
        }
    }

    #[test]
    fn predefined_buckets_respect_limits(
        s in settings()
            .prop_map(|s| BucketSettings { enable_bucket: true, bucket_no_upscale: false, ..s })
            .prop_filter("valid", valid),
    ) {
        let limit = s.resolution.0 as u64 * s.resolution.1 as u64;
        let list = bucket_resolutions(&s);
        prop_assert!(!list.is_empty());
        for b in list {
            prop_assert_eq!(b.width % s.bucket_reso_steps, 0);
            prop_assert_eq!(b.height % s.bucket_reso_steps, 0);
            prop_assert!(b.width as u64 * b.height as u64 <= limit);
        }
    }
}
