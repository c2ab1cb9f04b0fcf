//! End to end on the tiny base model folder (`fixtures/tiny-base/`, made by diffusers and
//! transformers): resolve the base, build the caches with its real encoders, train, save, reload.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use fluxlora_data::TextEncoder;
use fluxlora_train::{prepare_data, BaseModel, FluxTextEncoder, TrainConfig, Trainer};
use image::{ImageBuffer, Rgb};

pub fn tiny_base() -> PathBuf {
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

/// Three 64×64 images with `sks` captions, one 128×64.
fn write_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..4u32 {
        let w = if i == 3 { 128 } else { 64 };
        let img = ImageBuffer::from_fn(w, 64, |x, y| {
            Rgb([
                ((x * 3 + i * 50) % 256) as u8,
                ((y * 5) % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
        std::fs::write(
            dir.join(format!("img{i}.txt")),
            format!("a red square number {i}"),
        )
        .unwrap();
    }
}

fn config(tmp: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        pretrained_model_name_or_path: Some(tiny_base()),
        train_data_dir: Some(tmp.join("images")),
        trigger_word: Some("sks".into()),
        resolution: 64,
        t5xxl_max_token_length: Some(16),
        base_bf16: false,
        ..tiny_train_config(&tmp.join("out"), steps)
    }
}

#[test]
fn base_model_folder_resolves_and_loads_every_part() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path(), 1);
    let base = BaseModel::resolve(&c).unwrap();
    assert!(
        base.is_dev(&c).unwrap(),
        "the tiny base has a guidance embedder"
    );
    let dev = Default::default();
    let flux = base
        .load_transformer::<AB>(Default::default(), 0, &dev)
        .unwrap();
    assert_eq!(
        flux.config.axes_dim,
        vec![8, 12, 12],
        "RoPE axes come from transformer/config.json"
    );
    let ae = base
        .load_autoencoder::<burn::backend::NdArray>(None, &dev)
        .unwrap();
    assert_eq!(
        ae.config().norm_groups,
        4,
        "group count comes from vae/config.json"
    );
    // Text: T5 [16, 32] and CLIP pooled [32]; the trigger word does not change the shapes.
    let text = FluxTextEncoder::<burn::backend::NdArray>::load(&base, 16, false, &dev).unwrap();
    let e = text.encode("sks, a red square").unwrap();
    assert_eq!(
        (e.t5.shape.clone(), e.clip_pooled.shape.clone()),
        (vec![16, 32], vec![32])
    );
    let other = text.encode("a blue circle").unwrap();
    assert_ne!(
        e.clip_pooled.data, other.clip_pooled.data,
        "different captions, different embeddings"
    );
}

#[test]
fn data_to_caches_to_trained_lora_and_back() {
    let _g = backend_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    write_images(&tmp.path().join("images"));
    let c = config(tmp.path(), 2);
    let base = BaseModel::resolve(&c).unwrap();
    let dev = Default::default();

    let mut data = prepare_data::<burn::backend::NdArray>(&c, &base, &dev, false).unwrap();
    assert_eq!((data.latents.built, data.latents.reused), (4, 0));
    assert_eq!((data.texts.built, data.texts.reused), (4, 0));
    // A second preparation reuses every entry and loads no encoder.
    let again = prepare_data::<burn::backend::NdArray>(&c, &base, &dev, false).unwrap();
    assert_eq!(
        (
            again.latents.built,
            again.latents.reused,
            again.texts.built,
            again.texts.reused
        ),
        (0, 4, 0, 4)
    );

    let flux = base
        .load_transformer::<AB>(Default::default(), 0, &dev)
        .unwrap();
    let mut t = Trainer::new(c.clone(), flux, dev)
        .unwrap()
        .with_progress(false);
    let s = t.run(&mut data.source).unwrap();
    assert_eq!(s.steps, 2);
    assert!(s.last_loss.unwrap().is_finite());
    let lora = s.lora.unwrap();
    let (weights, format) = fluxlora_io::read_lora(&lora).unwrap();
    assert_eq!(format, fluxlora_io::LoraFormat::Kohya);
    assert!(!weights.is_empty());
    // Every module is rank 4 (network_dim) and the adapters moved away from their zero-init up.
    assert!(weights.modules.values().all(|m| m.rank() == 4));
    assert!(weights
        .modules
        .values()
        .any(|m| m.up.data.iter().any(|v| *v != 0.0)));
}

/// The shortened README run: the whole session (caches, sample grids at step 0 and the end, loss
/// curve, checkpoint, LoRA), then the saved LoRA reloaded into a fresh base draws the same sample
/// as the trained model did.
#[test]
fn session_trains_samples_saves_and_the_reloaded_lora_samples_the_same() {
    use burn::backend::NdArray;
    use fluxlora_train::sampling::prompts::{parse_prompt_line, SampleDefaults};
    use fluxlora_train::{import_lora, sampling::sample::generate, train_session, SessionOptions};

    let _g = backend_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    write_images(&tmp.path().join("images"));
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "# one held-out prompt\nsks on a blue background --w 64 --h 64 --s 3 --d 5\n",
    )
    .unwrap();
    // One epoch (kohya's max_train_epochs): 4 images in two buckets at batch 1 are 4 steps.
    let c = TrainConfig {
        sample_prompts: Some(prompts),
        sample_at_first: true,
        save_every_n_steps: Some(2),
        learning_rate: 5e-2,
        max_train_steps: None,
        max_train_epochs: Some(1),
        ..config(tmp.path(), 3)
    };
    let dev = Default::default();
    let report = train_session::<AB>(c.clone(), &dev, SessionOptions::default()).unwrap();
    assert_eq!(report.run.steps, 4);
    assert_eq!(report.images, 4);
    assert_eq!(
        report.sample_grids.len(),
        2,
        "step 0 and the end: {:?}",
        report.sample_grids
    );
    for f in report.files() {
        assert!(f.exists(), "{} listed but missing", f.display());
    }
    let curve = image::open(report.loss_curve.as_ref().unwrap()).unwrap();
    assert!(curve.width() > 100 && curve.height() > 100);

    // Reload: a fresh base + the saved file draws what the trained model drew at the end.
    let base = BaseModel::resolve(&c).unwrap();
    let lora_path = report.run.lora.clone().unwrap();
    let (weights, _) = fluxlora_io::read_lora(&lora_path).unwrap();
    let mut fresh = base
        .load_transformer::<NdArray>(Default::default(), 0, &dev)
        .unwrap();
    let before = fresh_sample(&base, &c, &fresh);
    assert!(import_lora(&mut fresh, &weights, &lora_path).unwrap() > 0);
    let after = fresh_sample(&base, &c, &fresh);
    assert_ne!(before, after, "the LoRA changes the sample");
    let grid = image::open(report.sample_grids.last().unwrap())
        .unwrap()
        .to_rgb8();
    // The grid's single cell starts below the header; find `after` in it exactly.
    let found = (0..grid.height() - 63).any(|y0| {
        (0..grid.width() - 63).any(|x0| {
            (0..64)
                .all(|y| (0..64).all(|x| grid.get_pixel(x0 + x, y0 + y) == after.get_pixel(x, y)))
        })
    });
    assert!(
        found,
        "the reloaded LoRA's sample is not the trained model's final sample"
    );

    fn fresh_sample(
        base: &BaseModel,
        c: &TrainConfig,
        flux: &fluxlora_flux::Flux<NdArray>,
    ) -> image::RgbImage {
        let dev = Default::default();
        let p = parse_prompt_line(
            "sks on a blue background --w 64 --h 64 --s 3 --d 5",
            &SampleDefaults {
                seed: c.seed,
                ..Default::default()
            },
        )
        .unwrap();
        let text = FluxTextEncoder::<NdArray>::load(base, 16, false, &dev)
            .unwrap()
            .encode(&p.prompt)
            .unwrap();
        let ae = base.load_autoencoder::<NdArray>(None, &dev).unwrap();
        generate(flux, &ae, &text.into(), &p, true, &dev).unwrap()
    }
}
