//! `CachedBatches`: the real batch source over the data crate's loader and caches, with small
//! deterministic stand-in encoders; then a short run on it.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use fluxlora_data::{
    BuildOptions, DataError, Dataset, DatasetConfig, LatentCache, LatentEncoder, LatentKey, Loader,
    Progress, TextCache, TextEmbedding, TextEncoder,
};
use fluxlora_io::HostTensor;
use fluxlora_train::{BatchSource, CachedBatches, Trainer};
use image::{DynamicImage, ImageBuffer, Rgb, Rgba};

/// 8×8 average pooling of RGB plus their mean as a 4th channel: `[4, H/8, W/8]`.
struct Pool4;

impl LatentEncoder for Pool4 {
    fn identity(&self) -> String {
        "pool4/test".into()
    }
    fn encode(&self, image: &HostTensor) -> Result<HostTensor, DataError> {
        let (h, w) = (image.shape[1], image.shape[2]);
        let (lh, lw) = (h / 8, w / 8);
        let mut out = vec![0.0f32; 4 * lh * lw];
        for ch in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = image.data[ch * h * w + y * w + x] / 64.0;
                    out[ch * lh * lw + (y / 8) * lw + x / 8] += v;
                    out[3 * lh * lw + (y / 8) * lw + x / 8] += v / 3.0;
                }
            }
        }
        Ok(HostTensor {
            shape: vec![4, lh, lw],
            data: out,
        })
    }
}

/// T5 `[3, 8]` and pooled `[8]` from the caption bytes.
struct Bytes8;

impl TextEncoder for Bytes8 {
    fn identity(&self) -> String {
        "bytes8/test".into()
    }
    fn encode(&self, caption: &str) -> Result<TextEmbedding, DataError> {
        let b: Vec<f32> = caption
            .bytes()
            .cycle()
            .take(32)
            .map(|v| f32::from(v) / 255.0)
            .collect();
        Ok(TextEmbedding {
            t5: HostTensor {
                shape: vec![3, 8],
                data: b[..24].to_vec(),
            },
            t5_mask: None,
            clip_pooled: HostTensor {
                shape: vec![8],
                data: b[24..].to_vec(),
            },
        })
    }
}

/// [`Bytes8`] from an encoder that masks T5 padding: of the 3 tokens, 1 + (last byte mod 3)
/// are text, the rest padding.
struct Bytes8Masked;

impl Bytes8Masked {
    fn mask(caption: &str) -> Vec<f32> {
        let text = 1 + usize::from(caption.bytes().last().unwrap_or(0) % 3);
        (0..3).map(|i| if i < text { 1.0 } else { 0.0 }).collect()
    }
}

impl TextEncoder for Bytes8Masked {
    fn identity(&self) -> String {
        "bytes8-masked/test".into()
    }
    fn encode(&self, caption: &str) -> Result<TextEmbedding, DataError> {
        Ok(TextEmbedding {
            t5_mask: Some(HostTensor::new(vec![3], Self::mask(caption)).unwrap()),
            ..Bytes8.encode(caption)?
        })
    }
}

fn write_dataset(dir: &Path) -> Arc<Dataset> {
    write_dataset_with(dir, false)
}

/// Four 64×64 images; with `alpha`, RGBA whose left half is transparent and `alpha_mask = true`.
fn write_dataset_with(dir: &Path, alpha: bool) -> Arc<Dataset> {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..4u32 {
        let rgb = |x: u32, y: u32| {
            [
                ((x * (i + 3) + y) % 256) as u8,
                ((y * 7 + i * 40) % 256) as u8,
                ((x ^ y) * 4 % 256) as u8,
            ]
        };
        let img = if alpha {
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(64, 64, |x, y| {
                let [r, g, b] = rgb(x, y);
                Rgba([r, g, b, if x < 32 { 0 } else { 255 }])
            }))
        } else {
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 64, |x, y| Rgb(rgb(x, y))))
        };
        img.save(imgs.join(format!("img{i}.png"))).unwrap();
        std::fs::write(
            imgs.join(format!("img{i}.txt")),
            format!("sks shape number {i}"),
        )
        .unwrap();
    }
    let text = format!(
        "[general]\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = \
         128\n[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = {:?}\nalpha_mask = \
         {alpha}\n",
        imgs.display().to_string()
    );
    let cfg = DatasetConfig::from_toml_str(&text, &dir.join("d.toml")).unwrap();
    Arc::new(Dataset::open(&cfg, &Progress::hidden()).unwrap())
}

fn source(dir: &Path, dataset: &Arc<Dataset>, seed: u64) -> CachedBatches {
    source_with(dir, dataset, seed, &Bytes8)
}

fn source_with(
    dir: &Path,
    dataset: &Arc<Dataset>,
    seed: u64,
    text: &dyn TextEncoder,
) -> CachedBatches {
    let loader = Loader::new(dataset.clone(), seed);
    let latents = LatentCache::open(&dir.join("lat"), &Pool4.identity()).unwrap();
    let texts = TextCache::open(&dir.join("txt"), &text.identity()).unwrap();
    let samples: Vec<_> = (0..3)
        .flat_map(|e| fluxlora_data::epoch_plan(dataset, seed, e))
        .flat_map(|b| b.samples)
        .collect();
    latents
        .build(dataset, &samples, &Pool4, &BuildOptions::default())
        .unwrap();
    texts
        .build(
            &loader.captions_for_epochs(0..3),
            text,
            &BuildOptions::default(),
        )
        .unwrap();
    CachedBatches::new(loader, latents, texts)
}

#[test]
fn batches_are_the_packed_cache_entries_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let mut src = source(tmp.path(), &ds, 3);
    let dev = Default::default();

    let plan = fluxlora_data::epoch_plan(&ds, 3, 0);
    let batch = BatchSource::<AB>::next_batch(&mut src, &dev).unwrap();
    assert_eq!(batch.dims().unwrap(), [2, 16, 16]);
    assert_eq!(batch.grid, (4, 4));
    assert!(batch.mask.is_none() && batch.is_reg == vec![false, false]);
    // Token (r, c), channel 4·ch + 2·py + px holds latent[ch, 2r + py, 2c + px] (BFL packing).
    let cache = LatentCache::open(&tmp.path().join("lat"), &Pool4.identity()).unwrap();
    let got: Vec<f32> = batch.latents.clone().into_data().to_vec().unwrap();
    for (i, s) in plan[0].samples.iter().enumerate() {
        let lat = cache.load(&LatentKey::of(&ds, s)).unwrap().latent;
        for r in 0..4 {
            for c in 0..4 {
                for ch in 0..4 {
                    for (py, px) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let want = lat.data[ch * 64 + (2 * r + py) * 8 + 2 * c + px];
                        let idx = ((i * 16) + r * 4 + c) * 16 + ch * 4 + py * 2 + px;
                        assert_eq!(got[idx], want);
                    }
                }
            }
        }
    }

    // Position → restore continues with the same next batch.
    let pos = BatchSource::<AB>::position(&src);
    let next: Vec<f32> = BatchSource::<AB>::next_batch(&mut src, &dev)
        .unwrap()
        .latents
        .into_data()
        .to_vec()
        .unwrap();
    let mut again = source(tmp.path(), &ds, 3);
    BatchSource::<AB>::restore(&mut again, &pos).unwrap();
    let resumed: Vec<f32> = BatchSource::<AB>::next_batch(&mut again, &dev)
        .unwrap()
        .latents
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(next, resumed);
}

#[test]
fn a_short_run_trains_on_cached_data() {
    let _g = backend_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let mut src = source(tmp.path(), &ds, 5);
    let cfg = tiny_train_config(&tmp.path().join("out"), 3);
    let mut t = Trainer::new(cfg, tiny_flux(5), Default::default())
        .unwrap()
        .with_progress(false);
    let s = t.run(&mut src).unwrap();
    assert_eq!(s.steps, 3);
    assert!(s.last_loss.unwrap().is_finite());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.checkpoint.unwrap().join("state.json")).unwrap(),
    )
    .unwrap();
    // 4 images in batches of 2: three steps end in epoch 1, at its batch 1.
    assert_eq!(
        (
            state["epoch"].as_u64(),
            state["source"]["epoch"].as_u64(),
            state["source"]["batch"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
}

#[test]
fn alpha_masks_become_per_element_weights_on_the_packed_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset_with(tmp.path(), true);
    let mut src = source(tmp.path(), &ds, 3);
    let batch = BatchSource::<AB>::next_batch(&mut src, &Default::default()).unwrap();
    let mask = batch.mask.expect("alpha-masked subset gives a mask");
    assert_eq!(mask.dims(), [2, 16, 16]);
    let m: Vec<f32> = mask.into_data().to_vec().unwrap();
    // flip_aug is off by default, so every mask keeps its transparent left half.
    // Latent columns 0..4 (pixels 0..32) are transparent: token columns 0..2 weigh 0, 2..4 weigh 1,
    // the same for every channel.
    for i in 0..2 {
        for r in 0..4 {
            for c in 0..4 {
                for k in 0..16 {
                    let want = if c < 2 { 0.0 } else { 1.0 };
                    assert_eq!(
                        m[((i * 16) + r * 4 + c) * 16 + k],
                        want,
                        "sample {i} token ({r},{c}) ch {k}"
                    );
                }
            }
        }
    }
}

#[test]
fn t5_padding_masks_reach_the_batch_and_a_run_trains_with_them() {
    let _g = backend_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let ds = write_dataset(tmp.path());
    let dev = Default::default();
    let mut src = source_with(tmp.path(), &ds, 3, &Bytes8Masked);
    let mut padded = 0;
    for planned in fluxlora_data::epoch_plan(&ds, 3, 0) {
        let batch = BatchSource::<AB>::next_batch(&mut src, &dev).unwrap();
        let got: Vec<f32> = batch
            .txt_mask
            .expect("the encoder masks padding")
            .into_data()
            .to_vec()
            .unwrap();
        let want: Vec<f32> = planned
            .samples
            .iter()
            .flat_map(|s| Bytes8Masked::mask(&s.caption))
            .collect();
        assert_eq!(got, want);
        padded += want.iter().filter(|&&v| v == 0.0).count();
    }
    assert!(padded > 0, "the captions gave no padding to mask");
    // Without the masking encoder there is no mask.
    let plain = tempfile::tempdir().unwrap();
    let mut src_plain = source(plain.path(), &write_dataset(plain.path()), 3);
    assert!(BatchSource::<AB>::next_batch(&mut src_plain, &dev)
        .unwrap()
        .txt_mask
        .is_none());

    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_train_config(out.path(), 2);
    cfg.apply_t5_attn_mask = true;
    let mut t = Trainer::new(cfg, tiny_flux(1), dev)
        .unwrap()
        .with_progress(false);
    let summary = t.run(&mut src).unwrap();
    assert!(summary.last_loss.is_some_and(f32::is_finite));
}

/// Kontext: `write_dataset_with`'s images as targets, each with a control of the same name (the
/// target mirrored and darkened) in `ctl/`.
fn write_pairs(dir: &Path) -> (Arc<Dataset>, DatasetConfig) {
    write_dataset_with(dir, false);
    let (imgs, ctl) = (dir.join("imgs"), dir.join("ctl"));
    std::fs::create_dir_all(&ctl).unwrap();
    for i in 0..4 {
        let target = image::open(imgs.join(format!("img{i}.png")))
            .unwrap()
            .to_rgb8();
        let control = ImageBuffer::from_fn(64, 64, |x, y| {
            let p = target.get_pixel(63 - x, y).0;
            Rgb(p.map(|v| v / 2))
        });
        control.save(ctl.join(format!("img{i}.png"))).unwrap();
    }
    let text = format!(
        "[general]\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = \
         128\n[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = {:?}\n\
         control_directory = \"ctl\"\n",
        imgs.display().to_string()
    );
    let cfg = DatasetConfig::from_toml_str(&text, &dir.join("d.toml")).unwrap();
    (
        Arc::new(Dataset::open(&cfg, &Progress::hidden()).unwrap()),
        cfg,
    )
}

#[test]
fn edit_pairs_bring_their_control_latents_and_a_kontext_run_trains() {
    let _g = backend_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (ds, cfg) = write_pairs(tmp.path());
    let mut src = source(tmp.path(), &ds, 3);
    let dev = Default::default();
    let plan = fluxlora_data::epoch_plan(&ds, 3, 0);
    let batch = BatchSource::<AB>::next_batch(&mut src, &dev).unwrap();
    let control = batch.control.clone().expect("edit pairs carry controls");
    assert_eq!(
        (control.latents.dims(), control.grid),
        ([2, 16, 16], (4, 4))
    );
    // The control tokens are the cached control latents, packed like the targets'.
    let cache = LatentCache::open(&tmp.path().join("lat"), &Pool4.identity()).unwrap();
    let got: Vec<f32> = control.latents.clone().into_data().to_vec().unwrap();
    for (i, s) in plan[0].samples.iter().enumerate() {
        let lat = cache.load(&LatentKey::of(&ds, s)).unwrap().control.unwrap();
        for (r, c, ch) in [(0, 0, 0), (1, 3, 2), (3, 2, 3)] {
            let want = lat.data[ch * 64 + (2 * r) * 8 + 2 * c];
            assert_eq!(got[((i * 16) + r * 4 + c) * 16 + ch * 4], want);
        }
        assert_ne!(
            lat,
            cache.load(&LatentKey::of(&ds, s)).unwrap().latent,
            "the control is another image"
        );
    }
    // The control conditions the prediction: the same batch without it has another loss.
    let settings =
        fluxlora_train::StepSettings::from_config(&tiny_train_config(tmp.path(), 1)).unwrap();
    let flux = tiny_flux(2);
    let draw = fluxlora_train::noise::draw_noise(1, 0, 0, &settings.sampler, 2, 16, 16);
    let with = fluxlora_train::training_step(&flux, &batch, &draw, &settings).unwrap();
    let without = fluxlora_train::training_step(
        &flux,
        &fluxlora_train::TrainBatch {
            control: None,
            ..batch.clone()
        },
        &draw,
        &settings,
    )
    .unwrap();
    assert!(
        (with.loss - without.loss).abs() > 1e-6,
        "{} {}",
        with.loss,
        without.loss
    );

    // The base and the dataset must agree on pairs.
    use fluxlora_train::orchestration::prepare::check_edit_pairs;
    assert!(check_edit_pairs(&cfg, true).is_ok());
    let e = check_edit_pairs(&cfg, false).unwrap_err().to_string();
    assert!(e.contains("model_type = \"kontext\""), "{e}");
    let mut plain = cfg.clone();
    plain.datasets[0].subsets[0].control_dir = None;
    let e = check_edit_pairs(&plain, true).unwrap_err().to_string();
    assert!(e.contains("control_directory") && e.contains("imgs"), "{e}");

    // A short run trains on the pairs.
    let mut t = Trainer::new(tiny_train_config(&tmp.path().join("out"), 2), flux, dev)
        .unwrap()
        .with_progress(false);
    let s = t.run(&mut src).unwrap();
    assert!(s.last_loss.is_some_and(f32::is_finite));
}
