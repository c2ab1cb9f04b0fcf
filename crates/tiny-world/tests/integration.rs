//! The embedded tiny world: `pretrain_tiny`'s library path builds a world the ordinary loaders
//! read, and the committed world's autoencoder keeps the concept through a round trip (so the
//! concept score measures the transformer, not the autoencoder).

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use fluxlora_data::SplitMix64;
use fluxlora_tiny_world::domain::{image_to_chw, World, CONCEPT_BACKGROUNDS, HELD_OUT_BACKGROUNDS};
use fluxlora_tiny_world::{
    build_tiny_world, detect, write_dataset, PretrainOptions, PretrainReport,
};
use fluxlora_train::{BaseModel, TrainConfig};
use image::RgbImage;

type B = NdArray;

/// `fixtures/tiny-base`, found above this crate.
fn tiny_base() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    while !dir.join("fixtures/tiny-base").is_dir() {
        assert!(
            dir.pop(),
            "fixtures/tiny-base not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    dir.join("fixtures/tiny-base")
}

fn tiny_world() -> PathBuf {
    tiny_base().parent().unwrap().join("tiny-world")
}

fn to_image(x: Tensor<B, 4>) -> RgbImage {
    let [_, _, h, w] = x.dims();
    let v = x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    RgbImage::from_fn(w as u32, h as u32, |px, py| {
        let at = |c: usize| {
            fluxlora_train::sampling::sample::to_u8(v[c * h * w + py as usize * w + px as usize])
        };
        image::Rgb([at(0), at(1), at(2)])
    })
}

#[test]
fn the_committed_autoencoder_keeps_the_concept_and_the_colours() {
    let config = TrainConfig {
        pretrained_model_name_or_path: Some(tiny_world().join("base")),
        ..Default::default()
    };
    let base = BaseModel::resolve(&config).unwrap();
    let dev = Default::default();
    let ae = base.load_autoencoder::<B>(None, &dev).unwrap();
    let world = World::new(64);
    let mut rng = SplitMix64::new(99);
    let backgrounds: Vec<&str> = CONCEPT_BACKGROUNDS
        .iter()
        .chain(&HELD_OUT_BACKGROUNDS)
        .copied()
        .collect();
    let (mut found, mut err, n) = (0, 0.0f64, backgrounds.len());
    for bg in &backgrounds {
        let img = world.render(&world.concept_scene(&mut rng, bg));
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(image_to_chw(&img), [1, 3, 64, 64]), &dev);
        let back = ae.decode(ae.encode(x.clone()).unwrap()).unwrap();
        err += f64::from((back.clone() - x).abs().mean().into_scalar());
        let d = detect(&to_image(back));
        eprintln!("{bg}: {d:?}");
        found += usize::from(d.found());
    }
    assert!(
        found * 10 >= n * 9,
        "the concept survives the round trip in only {found}/{n} images"
    );
    assert!(
        err / (n as f64) < 0.15,
        "mean absolute round-trip error {} (in [-1, 1] units)",
        err / n as f64
    );
}

#[test]
fn a_shortened_pretraining_writes_a_world_the_loaders_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = PretrainOptions::tiny_world(tiny_base(), tmp.path());
    (
        o.ae_steps,
        o.ae_refine_steps,
        o.flux_steps,
        o.flux_images,
        o.flux_batch,
        o.concept_images,
    ) = (2, 1, 2, 8, 2, 3);
    o.flux_stages = 2;
    let mut lines = Vec::new();
    let report = build_tiny_world::<Autodiff<B>>(
        &o,
        &mut |l: &str| lines.push(l.to_string()),
        &Default::default(),
    )
    .unwrap();
    assert!(report.ae_loss.0.is_finite() && report.flux_loss.0.is_finite());
    assert!(
        lines.iter().any(|l| l.starts_with("transformer step")),
        "{lines:?}"
    );
    for f in [
        "base/vae/ae.safetensors",
        "base/transformer/flux1-tiny.safetensors",
        "base/preview.png",
        "prompts.txt",
        "dataset/sks_02.txt",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }
    let config = TrainConfig {
        pretrained_model_name_or_path: Some(tmp.path().join("base")),
        ..Default::default()
    };
    let base = BaseModel::resolve(&config).unwrap();
    let dev = Default::default();
    let ae = base.load_autoencoder::<B>(None, &dev).unwrap();
    assert_eq!(ae.config().z_channels, o.autoencoder.z_channels);
    assert_eq!(ae.config().downscale(), 4);
    let flux = base
        .load_transformer::<B>(Default::default(), 0, &dev)
        .unwrap();
    assert_eq!(flux.config, o.transformer);
    assert!(base.is_dev(&config).unwrap());
    let caption = std::fs::read_to_string(tmp.path().join("dataset/sks_00.txt")).unwrap();
    assert_eq!(caption.trim(), "a photo of a sks disc on a blue background");
    let img = image::open(tmp.path().join("dataset/sks_00.png"))
        .unwrap()
        .to_rgb8();
    assert!(detect(&img).found());

    // A second build that reuses the finished autoencoder writes it back unchanged, with the
    // same scale and shift.
    let again = tempfile::tempdir().unwrap();
    let reuse = PretrainOptions {
        ae_trained: Some(tmp.path().join("base/vae")),
        out: again.path().to_path_buf(),
        ..o
    };
    let r2 = build_tiny_world::<Autodiff<B>>(&reuse, &mut |_: &str| {}, &dev).unwrap();
    assert_eq!(
        r2.scale_shift,
        (ae.config().scale_factor, ae.config().shift_factor)
    );
    for f in [
        "base/vae/ae.safetensors",
        "base/vae/config.json",
        "base/transformer/flux1-tiny.safetensors",
    ] {
        assert!(
            std::fs::read(tmp.path().join(f)).unwrap()
                == std::fs::read(again.path().join(f)).unwrap(),
            "{f} changed"
        );
    }

    // The transformer's second stage started from a first-stage file (`--flux-from`) ends where
    // the two stages in one build end.
    let first = tempfile::tempdir().unwrap();
    let one = PretrainOptions {
        flux_stages: 1,
        out: first.path().to_path_buf(),
        ..reuse.clone()
    };
    build_tiny_world::<Autodiff<B>>(&one, &mut |_: &str| {}, &dev).unwrap();
    let stage1 = first.path().join("base/transformer/flux1-tiny.safetensors");
    let flux_file =
        |dir: &Path| std::fs::read(dir.join("base/transformer/flux1-tiny.safetensors")).unwrap();
    assert!(
        flux_file(first.path()) != flux_file(tmp.path()),
        "the second stage trains"
    );
    let resumed = tempfile::tempdir().unwrap();
    let cont = PretrainOptions {
        flux_from: Some(stage1),
        out: resumed.path().to_path_buf(),
        ..reuse
    };
    build_tiny_world::<Autodiff<B>>(&cont, &mut |_: &str| {}, &dev).unwrap();
    assert!(
        flux_file(resumed.path()) == flux_file(tmp.path()),
        "stage 2 from the stage-1 file differs from one build"
    );
}

#[test]
fn the_committed_dataset_and_prompts_are_what_pretrain_tiny_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let o = PretrainOptions::tiny_world(tiny_base(), tmp.path());
    let mut report = PretrainReport::default();
    write_dataset(&o, &mut report).unwrap();
    assert_eq!(report.files.len(), 2 * o.concept_images + 1);
    let committed = tiny_world();
    for f in &report.files {
        let rel = f.strip_prefix(tmp.path()).unwrap();
        let want =
            std::fs::read(committed.join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        let got = std::fs::read(f).unwrap();
        if rel.extension().is_some_and(|e| e == "png") {
            // Compare pixels (PNG encoders may differ in bytes across versions).
            let (a, b) = (
                image::load_from_memory(&want).unwrap().to_rgb8(),
                image::load_from_memory(&got).unwrap().to_rgb8(),
            );
            assert!(
                a == b,
                "{} differs from what pretrain_tiny writes",
                rel.display()
            );
        } else {
            assert!(
                want == got,
                "{} differs from what pretrain_tiny writes",
                rel.display()
            );
        }
    }
    let committed_images = std::fs::read_dir(committed.join("dataset"))
        .unwrap()
        .count();
    assert_eq!(
        committed_images,
        2 * o.concept_images,
        "stray files in the committed dataset"
    );
}
