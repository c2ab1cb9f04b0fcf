//! Cache keying, reuse, rebuild and resume, with small deterministic fake encoders (average
//! pooling) standing in for the real VAE and text encoders.

use crate::common;

use std::cell::Cell;
use std::path::Path;

use common::*;
use fluxlora_data::*;
use fluxlora_io::HostTensor;
use image::ImageFormat;

/// 8×8 average pooling of each channel; fails after `fail_after` calls when set.
struct PoolEncoder {
    id: String,
    calls: Cell<usize>,
    fail_after: Option<usize>,
}

impl PoolEncoder {
    fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            calls: Cell::new(0),
            fail_after: None,
        }
    }
}

impl LatentEncoder for PoolEncoder {
    fn identity(&self) -> String {
        self.id.clone()
    }
    fn encode(&self, image: &HostTensor) -> Result<HostTensor> {
        if self.fail_after == Some(self.calls.get()) {
            return Err(DataError::Loader("simulated crash".into()));
        }
        self.calls.set(self.calls.get() + 1);
        Ok(pool8(image))
    }
}

/// Embeds a caption as its bytes; the identity carries the max length.
struct BytesEncoder {
    max_len: usize,
    calls: Cell<usize>,
}

impl TextEncoder for BytesEncoder {
    fn identity(&self) -> String {
        format!("bytes-t5/max_len={}", self.max_len)
    }
    fn encode(&self, caption: &str) -> Result<TextEmbedding> {
        self.calls.set(self.calls.get() + 1);
        let mut t5 = vec![0.0f32; self.max_len];
        for (i, b) in caption.bytes().take(self.max_len).enumerate() {
            t5[i] = b as f32;
        }
        Ok(TextEmbedding {
            t5: HostTensor {
                shape: vec![self.max_len, 1],
                data: t5,
            },
            t5_mask: None,
            clip_pooled: HostTensor {
                shape: vec![1],
                data: vec![caption.len() as f32],
            },
        })
    }
}

fn dataset(dir: &Path, resolution: u32, extra: &str) -> Dataset {
    let text = toml_for(
        dir,
        extra,
        &format!("resolution = {resolution}\nmin_bucket_reso = 64\nmax_bucket_reso = 512"),
    );
    let cfg = DatasetConfig::from_toml_str(&text, &dir.join("d.toml")).unwrap();
    Dataset::open(&cfg, &Progress::hidden()).unwrap()
}

fn samples(d: &Dataset) -> Vec<Sample> {
    (0..d.items.len()).map(|i| d.sample(i, 0, 0, 0)).collect()
}

fn three_images(dir: &Path) {
    for (i, (w, h)) in [(160, 128), (128, 160), (200, 200)].into_iter().enumerate() {
        write(
            dir,
            &format!("img{i}.png"),
            &encode(&textured(w, h, i as u32), ImageFormat::Png),
        );
    }
}

#[test]
fn latents_are_reused_and_only_changes_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    three_images(&imgs);
    let cache_dir = tmp.path().join("cache");
    let enc = PoolEncoder::new("pool8/v1");
    let cache = LatentCache::open(&cache_dir, &enc.identity()).unwrap();
    let opts = BuildOptions::default();

    let d = dataset(&imgs, 128, "");
    let s = samples(&d);
    let st = cache.build(&d, &s, &enc, &opts).unwrap();
    assert_eq!((st.built, st.reused, enc.calls.get()), (3, 0, 3));

    // The stored latent is what the encoder produced for the sample's pixels.
    for sample in &s {
        let want = enc.encode(&d.load_pixels(sample).unwrap().image).unwrap();
        let got = cache.load(&LatentKey::of(&d, sample)).unwrap();
        assert_eq!(got.latent, want);
        assert!(got.mask.is_none());
    }
    enc.calls.set(3);

    // Second run: everything reused, encoder not called.
    let st = cache.build(&d, &s, &enc, &opts).unwrap();
    assert_eq!((st.built, st.reused, enc.calls.get()), (3 - 3, 3, 3));

    // One image changes on disk: only it is rebuilt.
    write(
        &imgs,
        "img1.png",
        &encode(&textured(128, 160, 99), ImageFormat::Png),
    );
    let d = dataset(&imgs, 128, "");
    let s = samples(&d);
    let st = cache.build(&d, &s, &enc, &opts).unwrap();
    assert_eq!((st.built, st.reused, enc.calls.get()), (1, 2, 4));

    // A flip is a different entry.
    let mut flipped = s[0].clone();
    flipped.flip = true;
    let st = cache.build(&d, &[flipped], &enc, &opts).unwrap();
    assert_eq!((st.built, st.reused), (1, 0));

    // A setting that changes buckets (resolution) rebuilds the affected entries.
    let d2 = dataset(&imgs, 192, "");
    let s2 = samples(&d2);
    let st = cache.build(&d2, &s2, &enc, &opts).unwrap();
    assert_eq!(st.built, 3);

    // Another encoder identity never reuses entries.
    let enc2 = PoolEncoder::new("pool8/v2");
    let cache2 = LatentCache::open(&cache_dir, &enc2.identity()).unwrap();
    let st = cache2.build(&d, &s, &enc2, &opts).unwrap();
    assert_eq!((st.built, st.reused), (3, 0));
    assert!(
        cache.build(&d, &s, &enc2, &opts).is_err(),
        "identity mismatch must be refused"
    );

    // Pruning keeps only the entries of the given samples.
    let removed = cache.prune(&d, &s).unwrap();
    assert!(removed >= 4, "{removed}");
    let st = cache.build(&d, &s, &enc, &opts).unwrap();
    assert_eq!((st.built, st.reused), (0, 3));
}

#[test]
fn interrupted_build_resumes_without_corrupt_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    for i in 0..6 {
        write(
            &imgs,
            &format!("img{i}.png"),
            &encode(&textured(96 + 16 * i, 96, i), ImageFormat::Png),
        );
    }
    let cache_dir = tmp.path().join("cache");
    let d = dataset(&imgs, 128, "");
    let s = samples(&d);
    let crashing = PoolEncoder {
        fail_after: Some(2),
        ..PoolEncoder::new("pool8")
    };
    let cache = LatentCache::open(&cache_dir, "pool8").unwrap();
    let err = cache
        .build(
            &d,
            &s,
            &crashing,
            &BuildOptions {
                chunk: 4,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let entries = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "safetensors")
            })
            .count()
    };
    assert_eq!(entries(&cache_dir), 2);

    // What a kill in the middle of a write would leave: a temporary file. And a damaged entry.
    write(&cache_dir, ".deadbeef.safetensors.tmp-1-0", b"half a file");
    let valid: Vec<_> = s
        .iter()
        .filter(|x| cache.load(&LatentKey::of(&d, x)).is_some())
        .cloned()
        .collect();
    assert_eq!(valid.len(), 2);
    let damaged = cache.path(&LatentKey::of(&d, &valid[0]));
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();

    let enc = PoolEncoder::new("pool8");
    let st = cache.build(&d, &s, &enc, &BuildOptions::default()).unwrap();
    assert_eq!(st.removed_temporaries, 1);
    assert_eq!((st.built, st.reused, enc.calls.get()), (5, 1, 5));
    for x in &s {
        let got = cache
            .load(&LatentKey::of(&d, x))
            .expect("every entry valid after resume");
        assert_eq!(
            got.latent,
            enc.encode(&d.load_pixels(x).unwrap().image).unwrap()
        );
    }
    assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 6);
}

#[test]
fn alpha_mask_is_pooled_to_latent_size() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    // 128×128, left half transparent.
    let img = image::DynamicImage::ImageRgba8(image::ImageBuffer::from_fn(128, 128, |x, _| {
        image::Rgba([200, 100, 50, if x < 64 { 0 } else { 255 }])
    }));
    write(&imgs, "a.png", &encode(&img, ImageFormat::Png));
    let d = dataset(&imgs, 128, "alpha_mask = true");
    let s = samples(&d);
    let enc = PoolEncoder::new("pool8");
    let cache = LatentCache::open(&tmp.path().join("c"), "pool8").unwrap();
    cache.build(&d, &s, &enc, &BuildOptions::default()).unwrap();
    let got = cache.load(&LatentKey::of(&d, &s[0])).unwrap();
    let mask = got.mask.expect("mask stored");
    assert_eq!(mask.shape, vec![1, 16, 16]);
    for y in 0..16 {
        for x in 0..16 {
            assert_eq!(mask.data[y * 16 + x], if x < 8 { 0.0 } else { 1.0 });
        }
    }
}

#[test]
fn text_cache_rebuilds_only_changed_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = BytesEncoder {
        max_len: 16,
        calls: Cell::new(0),
    };
    let cache = TextCache::open(tmp.path(), &enc.identity()).unwrap();
    let caps: Vec<String> = ["ohwx, cat", "ohwx, dog", "", "ohwx, cat"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let st = cache.build(&caps, &enc, &BuildOptions::default()).unwrap();
    assert_eq!((st.built, st.reused, enc.calls.get()), (3, 0, 3));
    let e = cache.load("ohwx, dog").unwrap();
    assert_eq!(
        e.t5.data[..4],
        [b'o' as f32, b'h' as f32, b'w' as f32, b'x' as f32]
    );
    assert_eq!(e.clip_pooled.data, vec![9.0]);

    let caps2: Vec<String> = ["ohwx, cat", "ohwx, bird", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let st = cache.build(&caps2, &enc, &BuildOptions::default()).unwrap();
    assert_eq!((st.built, st.reused, enc.calls.get()), (1, 2, 4));

    // Max length is part of the identity: a new identity shares nothing.
    let enc2 = BytesEncoder {
        max_len: 32,
        calls: Cell::new(0),
    };
    let cache2 = TextCache::open(tmp.path(), &enc2.identity()).unwrap();
    let st = cache2
        .build(&caps2, &enc2, &BuildOptions::default())
        .unwrap();
    assert_eq!((st.built, st.reused), (3, 0));
    assert_eq!(cache2.load("ohwx, cat").unwrap().t5.shape, vec![32, 1]);
    assert_eq!(cache.load("ohwx, cat").unwrap().t5.shape, vec![16, 1]);
}

/// Throughput of the cache pipeline itself (decode, crop, Lanczos resize, write) with the cheap
/// pooling encoder; printed for the record, with a loose floor so a pathological slowdown fails.
#[test]
fn build_throughput_with_pooling_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    for i in 0..12 {
        write(
            &imgs,
            &format!("img{i}.png"),
            &encode(&textured(640, 480, i), ImageFormat::Png),
        );
    }
    let d = dataset(&imgs, 512, "");
    let s = samples(&d);
    let enc = PoolEncoder::new("pool8");
    let cache = LatentCache::open(&tmp.path().join("c"), "pool8").unwrap();
    let st = cache.build(&d, &s, &enc, &BuildOptions::default()).unwrap();
    assert_eq!(st.built, 12);
    println!(
        "latent cache build: {} images (640x480 -> {}) in {:.3}s = {:.1} images/s on {} threads",
        st.built,
        s[0].bucket,
        st.elapsed.as_secs_f64(),
        st.built_per_second(),
        rayon::current_num_threads()
    );
    assert!(st.built_per_second() > 1.0, "{st:?}");
}
