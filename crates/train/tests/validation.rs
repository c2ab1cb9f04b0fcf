//! The validation split and its loss: fixed σ/ε per held-out item, the loss against an
//! independent computation, CSV / plot / progress, the best checkpoint, resume, config errors,
//! and the data side end to end (held-out images never reach the loader).

use crate::common;

use std::path::Path;

use burn::backend::NdArray;
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use common::*;
use fluxlora_flux::{latents, FluxInputs};
use fluxlora_render::plot::VAL_COLOR;
use fluxlora_train::orchestration::monitor::Monitor;
use fluxlora_train::save::{checkpoint_dir_name, list_checkpoints};
use fluxlora_train::validation::ValidationSet;
use fluxlora_train::{BatchSource, StepSettings, TrainBatch, TrainConfig, TrainError, Trainer};

/// Two random batches of two samples (sample 1 of each is a regularisation image) as named
/// one-sample validation items.
fn batches(seed: u64, with_mask: bool) -> Vec<(String, TrainBatch<NdArray>)> {
    let dev = Default::default();
    let mut src = RandomBatches {
        with_mask,
        ..RandomBatches::new(seed)
    };
    (0..2)
        .map(|k| {
            (
                format!("b{k}"),
                BatchSource::<NdArray>::next_batch(&mut src, &dev).unwrap(),
            )
        })
        .collect()
}

fn set_for(c: &TrainConfig, seed: u64) -> ValidationSet {
    let sampler = StepSettings::from_config(c).unwrap().sampler;
    ValidationSet::from_batches(batches(seed, true), &sampler, c.validation_seed).unwrap()
}

fn config(out: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        validation_split: 0.25,
        ..tiny_train_config(out, steps)
    }
}

/// `(step, val_loss)` of the rows whose `val_loss` cell is filled, after checking the header.
fn csv_validation(csv: &Path) -> Vec<(u64, f32)> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "step,loss,lr,sigma_mean,seconds,val_loss"
    );
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            (!f[5].is_empty()).then(|| (f[0].parse().unwrap(), f[5].parse().unwrap()))
        })
        .collect()
}

#[test]
fn validation_loss_is_fixed_equals_an_independent_mean_and_moves_with_training() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        guidance_scale: 3.5,
        prior_loss_weight: 0.5,
        ..config(d.path(), 3)
    };
    let sampler = StepSettings::from_config(&cfg).unwrap().sampler;
    let named = batches(77, false);
    let set = ValidationSet::from_batches(named.clone(), &sampler, cfg.validation_seed).unwrap();
    assert_eq!(set.len(), 4);
    let sigmas: Vec<f32> = set.items().iter().map(|i| i.draw.sigmas[0]).collect();
    let mut distinct = sigmas.clone();
    distinct.sort_by(f32::total_cmp);
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "every item has its own noise level: {sigmas:?}"
    );
    // The same items and seed give the same draws (what a resumed run rebuilds).
    let again = ValidationSet::from_batches(named.clone(), &sampler, cfg.validation_seed).unwrap();
    assert!(set
        .items()
        .iter()
        .zip(again.items())
        .all(|(a, b)| a.draw == b.draw));

    let dev = Default::default();
    let mut t = Trainer::new(cfg.clone(), tiny_flux(21), dev)
        .unwrap()
        .with_progress(false)
        .with_validation(set.clone());
    // Non-zero B so the adapters take part in the forward.
    for (_, lin) in t.model_mut().linears_mut() {
        for a in &mut lin.adapters {
            let v = a.lora_b.val().ones_like() * 0.05;
            a.lora_b = burn::module::Param::initialized(a.lora_b.id, v.require_grad());
        }
    }
    let v1 = t.validation_loss().unwrap();
    assert_eq!(
        v1.to_bits(),
        t.validation_loss().unwrap().to_bits(),
        "fixed σ/ε: the same number twice"
    );

    // Independent: x_t = (1 − σ)·x0 + σ·ε and the target ε − x0 by hand, the plain
    // forward, the l2 mean per item × its weight (prior_loss_weight for regularisation images),
    // the mean.
    let valid = t.model_mut().clone().valid();
    let mut want = 0.0f64;
    for (k, (_, batch)) in named.iter().enumerate() {
        let [b, l, c] = batch.dims().unwrap();
        let x0: Vec<f32> = batch.latents.clone().into_data().to_vec().unwrap();
        for i in 0..b {
            let item = &set.items()[k * b + i];
            let (s, eps) = (item.draw.sigmas[0], &item.draw.noise);
            let n = l * c;
            let xt: Vec<f32> = (0..n)
                .map(|j| (1.0 - s) * x0[i * n + j] + s * eps[j])
                .collect();
            let target: Vec<f32> = (0..n).map(|j| eps[j] - x0[i * n + j]).collect();
            let inputs = FluxInputs {
                txt_mask: None,
                img_cond_seq: None,
                img: Tensor::from_data(TensorData::new(xt, vec![1, l, c]), &dev),
                img_ids: latents::img_ids(1, 2, 2, &dev),
                txt: batch.txt.clone().narrow(0, i, 1),
                txt_ids: latents::txt_ids(1, 3, &dev),
                timesteps: Tensor::from_data(TensorData::new(vec![s], vec![1]), &dev),
                y: batch.y.clone().narrow(0, i, 1),
                guidance: Some(Tensor::from_data(
                    TensorData::new(vec![3.5f32], vec![1]),
                    &dev,
                )),
            };
            let pred: Vec<f32> = valid
                .forward(&inputs)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            let mse = pred
                .iter()
                .zip(&target)
                .map(|(p, y)| (f64::from(*p) - f64::from(*y)).powi(2))
                .sum::<f64>()
                / n as f64;
            want += mse * if batch.is_reg[i] { 0.5 } else { 1.0 };
        }
    }
    want /= 4.0;
    assert!(
        (f64::from(v1) - want).abs() < 1e-5 * want.max(1.0),
        "validation {v1} vs independent {want}"
    );

    // Training moves it; it stays fixed for the new weights.
    let mut src = RandomBatches::new(5);
    t.step_once(&mut src).unwrap();
    t.step_once(&mut src).unwrap();
    let v2 = t.validation_loss().unwrap();
    assert_ne!(v1, v2, "the validation loss must follow the weights");
    assert_eq!(v2.to_bits(), t.validation_loss().unwrap().to_bits());
}

#[test]
fn a_run_logs_validation_at_saves_and_the_end_and_names_the_best_save() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        save_every_n_steps: Some(2),
        ..config(d.path(), 5)
    };
    let mut t = Trainer::new(cfg.clone(), tiny_flux(4), Default::default())
        .unwrap()
        .with_progress(false)
        .with_validation(set_for(&cfg, 40));
    let mut monitor = Monitor::<AB>::new(&cfg, None, Vec::new());
    let s = t
        .run_observed(&mut RandomBatches::new(4), &mut monitor)
        .unwrap();
    // validate_every_n_steps unset: at each save (2, 4) and at the end (5).
    let vals = csv_validation(&s.csv);
    assert_eq!(vals.iter().map(|v| v.0).collect::<Vec<_>>(), vec![2, 4, 5]);
    assert_eq!(s.last_val_loss, Some(vals[2]));
    // The logged value of the last step is the loss of the final weights.
    assert_eq!(t.validation_loss().unwrap().to_bits(), vals[2].1.to_bits());
    // Best: the lowest logged value; step 5 is the final LoRA, the others their folders.
    let &(step, loss) = vals.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let want = if step == 5 {
        s.lora.clone().unwrap()
    } else {
        d.path().join(checkpoint_dir_name("tiny", step))
    };
    let best = s.best_checkpoint.clone().unwrap();
    assert_eq!(
        (best.step, best.val_loss, best.path.clone()),
        (step, loss, want)
    );
    assert!(best.path.exists());
    // The monitor plots exactly the logged points, in the validation colour.
    let logged: Vec<(u64, f64)> = vals.iter().map(|&(s, v)| (s, f64::from(v))).collect();
    assert_eq!(monitor.validation(), &logged[..]);
    let png = image::open(monitor.loss_curve.clone().unwrap())
        .unwrap()
        .to_rgb8();
    assert!(
        png.pixels().any(|p| *p == VAL_COLOR),
        "no validation points in the loss curve"
    );

    // Validation never touches the training: the same run without it trains the same weights,
    // and its curve has no validation points.
    let d0 = tempfile::tempdir().unwrap();
    let cfg0 = TrainConfig {
        validation_split: 0.0,
        output_dir: d0.path().to_path_buf(),
        ..cfg
    };
    let mut t0 = Trainer::new(cfg0.clone(), tiny_flux(4), Default::default())
        .unwrap()
        .with_progress(false);
    let mut m0 = Monitor::<AB>::new(&cfg0, None, Vec::new());
    let s0 = t0
        .run_observed(&mut RandomBatches::new(4), &mut m0)
        .unwrap();
    let text0 = std::fs::read_to_string(&s0.csv).unwrap();
    assert!(
        text0.lines().all(|l| l.split(',').count() == 5),
        "no val_loss column without validation: {text0}"
    );
    assert_eq!((s0.last_val_loss, s0.best_checkpoint), (None, None));
    let png0 = image::open(m0.loss_curve.clone().unwrap())
        .unwrap()
        .to_rgb8();
    assert!(!png0.pixels().any(|p| *p == VAL_COLOR));
    assert_eq!(
        adapter_values(&mut t.into_model()),
        adapter_values(&mut t0.into_model())
    );
}

#[test]
fn validate_every_n_steps_and_retention_decide_what_is_logged_and_named() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        validate_every_n_steps: Some(2),
        save_every_n_steps: Some(1),
        save_last_n_saves: Some(2),
        ..config(d.path(), 5)
    };
    let mut t = Trainer::new(cfg.clone(), tiny_flux(7), Default::default())
        .unwrap()
        .with_progress(false)
        .with_validation(set_for(&cfg, 70));
    let s = t.run(&mut RandomBatches::new(7)).unwrap();
    let vals = csv_validation(&s.csv);
    assert_eq!(
        vals.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![2, 4, 5],
        "every 2 steps and the end"
    );
    // Retention keeps the last two saves and the one with the lowest validation loss of all.
    let &(step, loss) = vals
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        .unwrap();
    let best = s.best_checkpoint.unwrap();
    assert_eq!((best.step, best.val_loss), (step, loss));
    assert!(best.path.exists(), "{}", best.path.display());
    let mut expected = vec![step, 4, 5];
    expected.sort();
    expected.dedup();
    let left: Vec<u64> = list_checkpoints(d.path(), "tiny")
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(left, expected);
}

#[test]
fn resume_continues_with_the_same_validation_numbers_and_history() {
    let _g = backend_rng_lock();
    let base = tiny_flux(3);
    let dev = Default::default();
    let cfg = |out: &Path, steps| TrainConfig {
        validate_every_n_steps: Some(1),
        save_every_n_steps: Some(2),
        seed: 11,
        ..config(out, steps)
    };

    let d1 = tempfile::tempdir().unwrap();
    let c1 = cfg(d1.path(), 4);
    let mut straight = Trainer::new(c1.clone(), base.clone(), dev)
        .unwrap()
        .with_progress(false)
        .with_validation(set_for(&c1, 9));
    let a = straight.run(&mut RandomBatches::new(5)).unwrap();

    // 2 steps (a finished run of 2), then a new trainer with a freshly built set resumes to 4.
    let d2 = tempfile::tempdir().unwrap();
    let c2 = cfg(d2.path(), 2);
    let mut first = Trainer::new(c2.clone(), base.clone(), dev)
        .unwrap()
        .with_progress(false)
        .with_validation(set_for(&c2, 9));
    let mut src = RandomBatches::new(5);
    first.run(&mut src).unwrap();
    drop(first);
    let c3 = cfg(d2.path(), 4);
    let mut second = Trainer::new(c3.clone(), base, dev)
        .unwrap()
        .with_progress(false)
        .with_validation(set_for(&c3, 9));
    let mut src = RandomBatches::new(5);
    second
        .resume(&d2.path().join(checkpoint_dir_name("tiny", 2)), &mut src)
        .unwrap();
    let b = second.run(&mut src).unwrap();

    let bits = |v: Vec<(u64, f32)>| {
        v.into_iter()
            .map(|(s, x)| (s, x.to_bits()))
            .collect::<Vec<_>>()
    };
    let (va, vb) = (csv_validation(&a.csv), csv_validation(&b.csv));
    assert_eq!(va.len(), 4);
    assert_eq!(bits(va), bits(vb), "validation losses differ after resume");
    // Both runs name the same save (step and value), the resumed one counting the logged history.
    let (ba, bb) = (a.best_checkpoint.unwrap(), b.best_checkpoint.unwrap());
    assert_eq!(
        (ba.step, ba.val_loss.to_bits()),
        (bb.step, bb.val_loss.to_bits())
    );
    assert_eq!(ba.path.file_name(), bb.path.file_name());
}

#[test]
fn bad_validation_settings_are_refused_with_the_key_named() {
    let d = tempfile::tempdir().unwrap();
    let key_of = |c: TrainConfig| match c.validate() {
        Err(TrainError::Invalid { key, message }) => (key, message),
        other => panic!("expected an invalid key, got {other:?}"),
    };
    let base = tiny_train_config(d.path(), 2);
    for (c, key) in [
        (
            TrainConfig {
                validation_split: 1.0,
                ..base.clone()
            },
            "validation_split",
        ),
        (
            TrainConfig {
                validation_split: -0.1,
                ..base.clone()
            },
            "validation_split",
        ),
        (
            TrainConfig {
                validation_split: f32::NAN,
                ..base.clone()
            },
            "validation_split",
        ),
        (
            TrainConfig {
                validation_split: 0.1,
                validate_every_n_steps: Some(0),
                ..base.clone()
            },
            "validate_every_n_steps",
        ),
        (
            TrainConfig {
                validate_every_n_steps: Some(5),
                ..base.clone()
            },
            "validate_every_n_steps",
        ),
    ] {
        let (k, m) = key_of(c);
        assert_eq!(k, key, "{m}");
    }
    // Implemented now: a split with a period validates.
    assert!(TrainConfig {
        validation_split: 0.2,
        validate_every_n_steps: Some(5),
        ..base.clone()
    }
    .validate()
    .is_ok());
    let args: Vec<String> = [
        "--validation_split",
        "0.1",
        "--validate_every_n_steps",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let loaded = TrainConfig::load(None, &args).unwrap();
    assert_eq!(
        (loaded.validation_split, loaded.validate_every_n_steps),
        (0.1, Some(50))
    );

    // A split without a validation set is an error, not a silent run without validation.
    let _g = backend_rng_lock();
    let mut t = Trainer::new(config(d.path(), 1), tiny_flux(1), Default::default())
        .unwrap()
        .with_progress(false);
    match t.run(&mut RandomBatches::new(1)) {
        Err(TrainError::Invalid { key, message }) => {
            assert_eq!(key, "validation_split");
            assert!(message.contains("with_validation"), "{message}");
        }
        other => panic!("expected a missing-validation-set error, got {other:?}"),
    }
}

/// Six 64×64 images with distinct captions.
fn write_images(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::ImageBuffer::from_fn(64, 64, |x, y| {
            image::Rgb([
                ((x * 7 + i * 40) % 256) as u8,
                ((y * 3 + i * 11) % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
        std::fs::write(
            dir.join(format!("img{i}.txt")),
            format!("a patterned square number {i}"),
        )
        .unwrap();
    }
}

fn pipeline_config(tmp: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        pretrained_model_name_or_path: Some(crate::pipeline::tiny_base()),
        train_data_dir: Some(tmp.join("images")),
        trigger_word: Some("sks".into()),
        resolution: 64,
        t5xxl_max_token_length: Some(16),
        base_bf16: false,
        validation_split: 0.34,
        save_every_n_steps: Some(2),
        ..tiny_train_config(&tmp.join("out"), steps)
    }
}

#[test]
fn held_out_images_never_reach_the_loader_and_the_session_names_the_best_checkpoint() {
    use fluxlora_train::{prepare_data, train_session, BaseModel, SessionOptions};

    let _g = backend_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    write_images(&tmp.path().join("images"), 6);
    let c = pipeline_config(tmp.path(), 3);
    let base = BaseModel::resolve(&c).unwrap();
    let dev = Default::default();
    let data = prepare_data::<NdArray>(&c, &base, &dev, false).unwrap();
    // round(0.34 · 6) = 2 held out, 4 trained on, together the 6 images.
    let held = data.validation.clone().unwrap();
    let held_paths: Vec<_> = held.items.iter().map(|i| i.path.clone()).collect();
    let held_hashes: Vec<_> = held
        .items
        .iter()
        .map(|i| i.info.content_hash.clone())
        .collect();
    assert_eq!((held.items.len(), data.dataset.items.len()), (2, 4));
    assert!(
        std::sync::Arc::ptr_eq(data.source.loader().dataset(), &data.dataset),
        "the loader trains on the split's training part"
    );
    // No batch of the first ten epochs holds a held-out image (by path or by content).
    for epoch in 0..10 {
        for batch in fluxlora_data::epoch_plan(&data.dataset, c.seed, epoch) {
            for s in batch.samples {
                let it = &data.dataset.items[s.item];
                assert!(
                    !held_paths.contains(&it.path) && !held_hashes.contains(&it.info.content_hash),
                    "{} is held out",
                    it.path.display()
                );
            }
        }
    }
    // The held-out items' cache entries were built: the set reads both of them.
    let set = data.validation_set::<NdArray>(&c, &dev).unwrap().unwrap();
    let names: Vec<String> = set.items().iter().map(|i| i.name.clone()).collect();
    assert_eq!(
        names,
        held_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    );
    // The split is the same when prepared again (what a resumed session sees).
    let again = prepare_data::<NdArray>(&c, &base, &dev, false).unwrap();
    assert_eq!(
        again
            .validation
            .as_ref()
            .unwrap()
            .items
            .iter()
            .map(|i| i.path.clone())
            .collect::<Vec<_>>(),
        held_paths
    );
    drop((data, again));

    let report = train_session::<AB>(c.clone(), &dev, SessionOptions::default()).unwrap();
    assert_eq!((report.images, report.validation_images), (4, 2));
    let vals = csv_validation(&report.run.csv);
    assert_eq!(vals.iter().map(|v| v.0).collect::<Vec<_>>(), vec![2, 3]);
    let best = report.best_checkpoint().unwrap();
    let &(step, loss) = vals.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!((best.step, best.val_loss), (step, loss));
    let line = report.best_checkpoint_line().unwrap();
    assert!(
        line.contains(&best.path.display().to_string()) && line.contains("2 held-out"),
        "{line}"
    );
    let png = image::open(report.loss_curve.clone().unwrap())
        .unwrap()
        .to_rgb8();
    assert!(png.pixels().any(|p| *p == VAL_COLOR));

    // A split that leaves nothing to train on is refused before any model is loaded.
    let small = tempfile::tempdir().unwrap();
    write_images(&small.path().join("images"), 1);
    let e = prepare_data::<NdArray>(&pipeline_config(small.path(), 1), &base, &dev, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("validation_split") && e.contains("leaves none to train on"),
        "{e}"
    );
}
