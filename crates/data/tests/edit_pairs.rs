//! Kontext edit pairs: a control image of the same stem beside each target, cropped, resized and
//! flipped with it, cached with it; bad pairs (missing, ambiguous, unreadable, another aspect
//! ratio) are named, blocking or skipped, never dropped silently.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use fluxlora_data::*;
use fluxlora_io::HostTensor;
use image::{DynamicImage, ImageFormat};

/// 8×8 average pooling of each channel (a stand-in for the autoencoder).
struct Pool8;

impl LatentEncoder for Pool8 {
    fn identity(&self) -> String {
        "pool8/pairs".into()
    }
    fn encode(&self, image: &HostTensor) -> Result<HostTensor> {
        Ok(pool8(image))
    }
}

fn config(images: &Path, subset_extra: &str, general: &str) -> DatasetConfig {
    let text = format!(
        "{}{subset_extra}\n",
        toml_for(
            images,
            general,
            "resolution = 128\nmin_bucket_reso = 64\nmax_bucket_reso = 256"
        )
    );
    DatasetConfig::from_toml_str(&text, &images.join("d.toml")).unwrap()
}

fn png(dir: &Path, name: &str, img: &DynamicImage) -> PathBuf {
    write(dir, name, &encode(img, ImageFormat::Png))
}

/// Gradients and 16-pixel blocks: smooth enough that resizing from 1× and 2× agree, and
/// mirrored it is another picture.
fn smooth(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x / 16 + y / 16) % 2 * 200) as u8,
        ])
    }))
}

/// Mean absolute difference of two tensors of one shape.
fn mean_abs(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / a.data.len() as f32
}

#[test]
fn pairs_are_cropped_flipped_and_cached_together() {
    let tmp = tempfile::tempdir().unwrap();
    let (imgs, ctrl) = (tmp.path().join("imgs"), tmp.path().join("control"));
    // Each control is its target at twice the size (nearest neighbour, the same picture), and in
    // another format: after the pair's crop and resize both give nearly the same pixels.
    for (i, (w, h)) in [(160u32, 128u32), (128, 192)].into_iter().enumerate() {
        let target = smooth(w, h);
        png(&imgs, &format!("p{i}.png"), &target);
        let big = target.resize_exact(2 * w, 2 * h, image::imageops::FilterType::Nearest);
        write(&ctrl, &format!("p{i}.bmp"), &encode(&big, ImageFormat::Bmp));
    }
    let cfg = config(
        &imgs,
        &format!(
            "control_directory = {:?}\nflip_aug = true\nrandom_crop = true",
            ctrl.display().to_string()
        ),
        "",
    );
    let d = Dataset::open(&cfg, &Progress::hidden()).unwrap();
    assert_eq!(d.items.len(), 2);
    for it in &d.items {
        let c = it.control.as_ref().expect("every item is a pair");
        assert_eq!(c.path.file_stem(), it.path.file_stem());
        assert_eq!(
            (c.info.width, c.info.height),
            (2 * it.info.width, 2 * it.info.height)
        );
    }
    // Over several epochs both flips and several crops occur; the control follows each.
    let mut flips = [false, false];
    for epoch in 0..6 {
        for item in 0..2 {
            let s = d.sample(item, 0, epoch, 3);
            flips[usize::from(s.flip)] = true;
            let px = d.load_pixels(&s).unwrap();
            let control = px.control.expect("pairs load their control");
            assert_eq!(control.shape, px.image.shape);
            let diff = mean_abs(&control, &px.image);
            assert!(
                diff < 0.06,
                "epoch {epoch} item {item} flip {}: {diff}",
                s.flip
            );
            // The unflipped control does not match a flipped target.
            if s.flip {
                let unflipped = Sample {
                    flip: false,
                    ..s.clone()
                };
                let other = d.load_pixels(&unflipped).unwrap().control.unwrap();
                assert!(mean_abs(&other, &px.image) > 2.0 * diff + 0.02);
            }
        }
    }
    assert_eq!(flips, [true, true]);

    // The cache stores the control's latent beside the target's.
    let cache = LatentCache::open(&tmp.path().join("cache"), &Pool8.identity()).unwrap();
    let samples: Vec<Sample> = (0..2).map(|i| d.sample(i, 0, 0, 3)).collect();
    let st = cache
        .build(&d, &samples, &Pool8, &BuildOptions::default())
        .unwrap();
    assert_eq!(st.built, 2);
    for s in &samples {
        let key = LatentKey::of(&d, s);
        assert!(key.control.is_some());
        let got = cache.load(&key).unwrap();
        let px = d.load_pixels(s).unwrap();
        assert_eq!(got.latent, Pool8.encode(&px.image).unwrap());
        assert_eq!(
            got.control,
            Some(Pool8.encode(&px.control.unwrap()).unwrap())
        );
        // Without its control the entry is not the pair's.
        let plain = LatentKey {
            control: None,
            ..key.clone()
        };
        assert_ne!(cache.digest(&plain), cache.digest(&key));
    }
    // A changed control makes its pair's entry stale: only that pair is rebuilt.
    let changed = textured(320, 256, 9);
    write(&ctrl, "p0.bmp", &encode(&changed, ImageFormat::Bmp));
    let d = Dataset::open(&cfg, &Progress::hidden()).unwrap();
    let samples: Vec<Sample> = (0..2).map(|i| d.sample(i, 0, 0, 3)).collect();
    let st = cache
        .build(&d, &samples, &Pool8, &BuildOptions::default())
        .unwrap();
    assert_eq!((st.built, st.reused), (1, 1));
}

#[test]
fn bad_pairs_are_named_and_block_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let (imgs, ctrl) = (tmp.path().join("imgs"), tmp.path().join("control"));
    for (name, (w, h)) in [
        ("good", (128, 128)),
        ("missing", (128, 128)),
        ("wide", (128, 128)),
        ("broken", (128, 128)),
        ("twice", (128, 128)),
    ] {
        png(&imgs, &format!("{name}.png"), &textured(w, h, 1));
    }
    png(&ctrl, "good.png", &textured(256, 256, 2));
    png(&ctrl, "wide.png", &textured(200, 100, 2));
    write(&ctrl, "broken.png", b"not an image at all");
    png(&ctrl, "twice.png", &textured(128, 128, 2));
    write(
        &ctrl,
        "twice.bmp",
        &encode(&textured(128, 128, 3), ImageFormat::Bmp),
    );
    png(&ctrl, "stray.png", &textured(64, 64, 4));
    let dir = format!("control_directory = {:?}", ctrl.display().to_string());

    let cfg = config(&imgs, &dir, "");
    let report = QualityReport::build(&DatasetSpec::scan(&cfg), &QualitySettings::default());
    let find = |kind: ProblemKind| {
        report
            .problems
            .iter()
            .find(|p| p.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", report.problems))
            .clone()
    };
    let missing = find(ProblemKind::MissingControl);
    assert_eq!(missing.path, Some(imgs.join("missing.png")));
    assert!(missing.message.contains("missing.*") && missing.message.contains("add it"));
    let wide = find(ProblemKind::ControlAspectMismatch);
    assert_eq!(wide.path, Some(ctrl.join("wide.png")));
    assert!(wide.message.contains("200×100") && wide.message.contains("128×128"));
    let broken = find(ProblemKind::UnreadableControl);
    assert_eq!(broken.path, Some(ctrl.join("broken.png")));
    let twice = find(ProblemKind::AmbiguousControl);
    assert!(twice.message.contains("twice.bmp") && twice.message.contains("keep one"));
    let stray = find(ProblemKind::OrphanControl);
    assert_eq!(
        (stray.path, stray.severity),
        (Some(ctrl.join("stray.png")), Severity::Warning)
    );
    for p in [&missing, &wide, &broken, &twice] {
        assert_eq!(p.severity, Severity::Blocking, "{p:?}");
    }
    assert_eq!(report.images_usable, 1);

    // Training refuses, listing every bad pair.
    let e = Dataset::open(&cfg, &Progress::hidden())
        .unwrap_err()
        .to_string();
    for name in ["missing.png", "wide.png", "broken.png", "twice"] {
        assert!(e.contains(name), "{name} not in {e}");
    }
    // With skip_bad_images the good pair trains and each skip is a named warning.
    let cfg = config(&imgs, &dir, "skip_bad_images = true");
    let d = Dataset::open(&cfg, &Progress::hidden()).unwrap();
    assert_eq!(d.items.len(), 1);
    assert_eq!(d.items[0].path, imgs.join("good.png"));
    let skipped: Vec<&Problem> = d
        .problems
        .iter()
        .filter(|p| p.message.contains("skipped"))
        .collect();
    assert_eq!(skipped.len(), 4, "{skipped:#?}");
}

#[test]
fn control_folder_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    png(&imgs, "a.png", &textured(64, 64, 0));
    // ai-toolkit's spelling, relative to the config file's folder.
    let cfg = config(&imgs, "control_path = \"ctl\"", "");
    let s = &cfg.datasets[0].subsets[0];
    assert_eq!(s.control_dir, Some(imgs.join("ctl")));
    // Missing folder: blocking, named.
    let spec = DatasetSpec::scan(&cfg);
    let p = spec
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::MissingControlDir)
        .expect("a missing control folder is reported");
    assert_eq!(
        (p.severity, p.path.clone()),
        (Severity::Blocking, Some(imgs.join("ctl")))
    );
    // Both spellings must agree.
    let text = format!(
        "{}control_path = \"a\"\ncontrol_directory = \"b\"\n",
        toml_for(&imgs, "", "resolution = 64")
    );
    let e = DatasetConfig::from_toml_str(&text, &imgs.join("d.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("control_path") && e.contains("keep one"), "{e}");
    // A control folder that is the image folder pairs every image with itself.
    let text = format!(
        "{}control_directory = {:?}\n",
        toml_for(&imgs, "", "resolution = 64"),
        imgs.display().to_string()
    );
    let e = DatasetConfig::from_toml_str(&text, &imgs.join("d.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("control_directory") && e.contains("image_dir"),
        "{e}"
    );
}
