//! The loop end to end on a tiny random Flux: outputs, saving formats and self-check, LoRA
//! export/import, the step against an independent computation, and the NaN guard.

use crate::common;

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use common::*;
use fluxlora_flux::{latents, Checkpointing, FluxInputs};
use fluxlora_io::{read_lora, LoraFormat};
use fluxlora_train::noise::draw_noise;
use fluxlora_train::save::list_checkpoints;
use fluxlora_train::{
    export_lora, import_lora, lr_schedule, training_step, BatchSource, LrScheduler, SaveFormat,
    StepSettings, TrainConfig, TrainError, TrainOptimizer, Trainer,
};

#[test]
fn a_run_writes_config_log_lora_and_keeps_the_last_checkpoints() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        save_every_n_steps: Some(2),
        save_last_n_saves: Some(1),
        optimizer_type: fluxlora_train::OptimizerType::AdamW8bit,
        ..tiny_train_config(d.path(), 5)
    };
    let mut t = Trainer::new(cfg, tiny_flux(4), Default::default())
        .unwrap()
        .with_progress(false);
    let s = t.run(&mut RandomBatches::new(4)).unwrap();
    assert_eq!((s.steps, s.stopped), (5, false));
    assert!(d.path().join("tiny-config.toml").exists());
    let csv = std::fs::read_to_string(&s.csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,loss,lr,sigma_mean,seconds");
    assert_eq!(lines.len(), 6);
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<f64> = l.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(f[0] as usize, i + 1);
        assert!(
            f[1].is_finite()
                && f[1] > 0.0
                && (f[2] - 1e-2).abs() < 1e-12
                && (0.0..1.0).contains(&f[3])
        );
    }
    // Retention: only the newest checkpoint folder (the final step) is left.
    let kept: Vec<u64> = list_checkpoints(d.path(), "tiny")
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, vec![5]);
    let lora = s.lora.unwrap();
    let (w, fmt) = read_lora(&lora).unwrap();
    assert_eq!(fmt, LoraFormat::Kohya);
    // kohya targets: 10 linears of the double block + 3 of the single block.
    assert_eq!(w.len(), 13);
    assert_eq!(s.self_check.unwrap().modules, 13);
    assert_eq!(
        w.metadata.get("ss_network_dim").map(String::as_str),
        Some("4")
    );
    assert_eq!(
        w.metadata.get("ss_network_module").map(String::as_str),
        Some("networks.lora_flux")
    );
    assert!(w.metadata.contains_key("modelspec.architecture"));
    let m = &w.modules["double_blocks.0.img_attn.qkv"];
    assert_eq!(
        (m.down.shape.clone(), m.up.shape.clone(), m.alpha),
        (vec![4, 32], vec![96, 4], 2.0)
    );
}

#[test]
fn epoch_saves_come_at_the_step_that_ends_the_epoch() {
    let _g = backend_rng_lock();
    // 3 micro-batches per step and 4 per epoch: epochs 1, 2 and 3 end during steps 2, 3 and 4.
    let run = |every: usize| {
        let d = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            save_every_n_epochs: Some(every),
            gradient_accumulation_steps: 3,
            ..tiny_train_config(d.path(), 5)
        };
        let mut t = Trainer::new(cfg, tiny_flux(4), Default::default())
            .unwrap()
            .with_progress(false);
        t.run(&mut RandomBatches::new(4)).unwrap();
        let saves = list_checkpoints(d.path(), "tiny").unwrap();
        let epoch_of = |dir: &std::path::Path| {
            let (w, _) = read_lora(dir.join("tiny.safetensors")).unwrap();
            w.metadata["ss_epoch"].parse::<u64>().unwrap()
        };
        saves
            .iter()
            .map(|(step, dir)| (*step, epoch_of(dir)))
            .collect::<Vec<_>>()
    };
    assert_eq!(BATCHES_PER_EPOCH, 4);
    // (step, whole epochs read); the last save is the end of the run (15 micro-batches).
    assert_eq!(run(1), vec![(2, 1), (3, 2), (4, 3), (5, 3)]);
    assert_eq!(run(2), vec![(3, 2), (5, 3)]);
}

#[test]
fn every_save_format_reloads_to_the_trained_delta() {
    let _g = backend_rng_lock();
    for (format, want) in [
        (SaveFormat::Peft, LoraFormat::Peft),
        (SaveFormat::Comfyui, LoraFormat::ComfyUi),
    ] {
        let d = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            save_format: format,
            ..tiny_train_config(d.path(), 2)
        };
        let mut t = Trainer::new(cfg, tiny_flux(6), Default::default())
            .unwrap()
            .with_progress(false);
        let s = t.run(&mut RandomBatches::new(6)).unwrap();
        let path = s.lora.unwrap();
        let (w, fmt) = read_lora(&path).unwrap();
        assert_eq!(fmt, want);
        // Load into a fresh model without adapters and compare ΔW linear by linear.
        let mut fresh = tiny_flux(6);
        assert_eq!(import_lora(&mut fresh, &w, &path).unwrap(), 13);
        let mut trained = t.into_model();
        let deltas = |m: &mut fluxlora_flux::Flux<AB>| -> Vec<Vec<f32>> {
            m.linears_mut()
                .into_iter()
                .map(|(_, l)| l.delta_weight().into_data().to_vec::<f32>().unwrap())
                .collect()
        };
        let (a, b) = (deltas(&mut trained), deltas(&mut fresh));
        let max = a.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.0, "the adapters must have trained");
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!(
                (x - y).abs() <= 1e-6 * max.max(1.0),
                "{format:?}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn a_kontext_run_saves_every_format_and_each_reloads_to_the_trained_delta() {
    // Kontext LoRAs are Flux.1-dev LoRAs: trained with control tokens appended, saved in the
    // same three formats, each read back into a fresh model to the same ΔW. Their architecture
    // says Kontext, whether by `model_type` (kohya) or by the base's name (`for_kontext`, which
    // the session sets for `model_type = "auto"`).
    let _g = backend_rng_lock();
    for (format, want) in [
        (SaveFormat::Kohya, LoraFormat::Kohya),
        (SaveFormat::Peft, LoraFormat::Peft),
        (SaveFormat::Comfyui, LoraFormat::ComfyUi),
    ] {
        let d = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            save_format: format,
            model_type: if format == SaveFormat::Kohya {
                fluxlora_train::ModelType::Kontext
            } else {
                fluxlora_train::ModelType::Auto
            },
            ..tiny_train_config(d.path(), 2)
        };
        let mut t = Trainer::new(cfg, tiny_flux(9), Default::default())
            .unwrap()
            .with_progress(false)
            .for_kontext(format != SaveFormat::Kohya);
        let mut batches = RandomBatches {
            with_control: true,
            ..RandomBatches::new(9)
        };
        let s = t.run(&mut batches).unwrap();
        let path = s.lora.unwrap();
        let (w, fmt) = read_lora(&path).unwrap();
        assert_eq!(fmt, want, "{format:?}");
        assert_eq!(
            w.metadata["modelspec.architecture"], "flux-1-kontext-dev/lora",
            "{format:?}"
        );
        let mut fresh = tiny_flux(9);
        assert_eq!(import_lora(&mut fresh, &w, &path).unwrap(), 13);
        let mut trained = t.into_model();
        let deltas = |m: &mut fluxlora_flux::Flux<AB>| -> Vec<f32> {
            m.linears_mut()
                .into_iter()
                .flat_map(|(_, l)| l.delta_weight().into_data().to_vec::<f32>().unwrap())
                .collect()
        };
        let (a, b) = (deltas(&mut trained), deltas(&mut fresh));
        let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.0, "{format:?}: the adapters must have trained");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-6 * max.max(1.0),
                "{format:?}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn split_adapters_export_fused_and_import_back_exactly() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        lora_targets: "aitoolkit".into(),
        ..tiny_train_config(d.path(), 2)
    };
    let mut t = Trainer::new(cfg.clone(), tiny_flux(8), Default::default())
        .unwrap()
        .with_progress(false);
    t.run(&mut RandomBatches::new(8)).unwrap();
    let mut trained = t.into_model();
    let w = export_lora(&mut trained).unwrap();
    // qkv keeps one fused module of rank 3·4 (q, k, v adapters), linear1 of rank 4·4.
    assert_eq!(w.modules["double_blocks.0.img_attn.qkv"].rank(), 12);
    assert_eq!(w.modules["single_blocks.0.linear1"].rank(), 16);
    // A second trainer with the same targets receives the values back unchanged.
    let mut other = Trainer::new(cfg, tiny_flux(8), Default::default()).unwrap();
    import_lora(other.model_mut(), &w, std::path::Path::new("<memory>")).unwrap();
    assert_eq!(
        adapter_values(&mut trained),
        adapter_values(other.model_mut())
    );
}

/// The step's loss equals an independent computation: the same draws applied on the host, the
/// model run without autodiff, and the l2 loss averaged by hand.
#[test]
fn step_loss_matches_an_independent_forward_and_checkpointing_agrees() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        guidance_scale: 3.5,
        ..tiny_train_config(d.path(), 1)
    };
    let t = Trainer::new(cfg.clone(), tiny_flux(9), Default::default()).unwrap();
    let mut model = t.into_model();
    // Give B non-zero values so the adapters matter.
    for (_, lin) in model.linears_mut() {
        for a in &mut lin.adapters {
            let v = a.lora_b.val().ones_like() * 0.05;
            a.lora_b = burn::module::Param::initialized(a.lora_b.id, v.require_grad());
        }
    }
    let dev = Default::default();
    let mut src = RandomBatches {
        with_mask: false,
        ..RandomBatches::new(9)
    };
    let batch = BatchSource::<AB>::next_batch(&mut src, &dev).unwrap();
    let [b, l, c] = batch.dims().unwrap();
    let settings = StepSettings::from_config(&cfg).unwrap();
    let draw = draw_noise(1, 0, 0, &settings.sampler, b, l, c);
    let out = training_step(&model, &batch, &draw, &settings).unwrap();

    let x0: Vec<f32> = batch.latents.clone().into_data().to_vec().unwrap();
    let mut xt = vec![0f32; x0.len()];
    let mut target = vec![0f32; x0.len()];
    for i in 0..x0.len() {
        let s = draw.sigmas[i / (l * c)];
        xt[i] = (1.0 - s) * x0[i] + s * draw.noise[i];
        target[i] = draw.noise[i] - x0[i];
    }
    let valid = model.valid();
    let inner = |v: Vec<f32>, shape: Vec<usize>| TensorData::new(v, shape);
    let inputs = FluxInputs {
        txt_mask: None,
        img_cond_seq: None,
        img: Tensor::from_data(inner(xt, vec![b, l, c]), &dev),
        img_ids: latents::img_ids(b, 2, 2, &dev),
        txt: batch.txt.clone().inner(),
        txt_ids: latents::txt_ids(b, 3, &dev),
        timesteps: Tensor::from_data(inner(draw.sigmas.clone(), vec![b]), &dev),
        y: batch.y.clone().inner(),
        guidance: Some(Tensor::from_data(inner(vec![3.5; b], vec![b]), &dev)),
    };
    let pred: Vec<f32> = valid
        .forward(&inputs)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let mut want = 0.0f64;
    for i in 0..b {
        let w = if batch.is_reg[i] {
            f64::from(cfg.prior_loss_weight)
        } else {
            1.0
        };
        let n = l * c;
        let se: f64 = (0..n)
            .map(|j| (f64::from(pred[i * n + j]) - f64::from(target[i * n + j])).powi(2))
            .sum();
        want += se / n as f64 * w;
    }
    want /= b as f64;
    assert!(
        (f64::from(out.loss) - want).abs() < 1e-5 * want.max(1.0),
        "{} vs {want}",
        out.loss
    );

    // Block checkpointing gives the same loss and gradients.
    let ck = StepSettings {
        checkpointing: Checkpointing::Blocks,
        ..settings
    };
    let out2 = training_step(&model, &batch, &draw, &ck).unwrap();
    assert!((out.loss - out2.loss).abs() < 1e-6);
    let mut n_grads = 0;
    for (_, lin) in model.linears_mut() {
        for a in &lin.adapters {
            for p in [&a.lora_a, &a.lora_b] {
                let g1 = out
                    .grads
                    .get::<burn::backend::NdArray, 2>(p.id)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                let g2 = out2
                    .grads
                    .get::<burn::backend::NdArray, 2>(p.id)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                for (x, y) in g1.iter().zip(&g2) {
                    assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-2), "{x} vs {y}");
                }
                n_grads += 1;
            }
        }
    }
    assert_eq!(n_grads, 26);
}

#[test]
fn a_nan_loss_stops_the_run_at_its_step() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        tiny_train_config(d.path(), 3),
        tiny_flux(1),
        Default::default(),
    )
    .unwrap()
    .with_progress(false);
    let mut src = RandomBatches {
        poison: true,
        ..RandomBatches::new(1)
    };
    match t.run(&mut src) {
        Err(TrainError::NonFiniteLoss { step, .. }) => assert_eq!(step, 1),
        other => panic!("expected a NaN error, got {other:?}"),
    }
}

#[test]
fn optimizer_args_are_parsed_and_unknown_ones_rejected() {
    let d = tempfile::tempdir().unwrap();
    let ok = TrainConfig {
        optimizer_args: vec!["betas=0.8,0.99".into(), "weight_decay=0".into()],
        ..tiny_train_config(d.path(), 1)
    };
    let o = TrainOptimizer::<AB>::from_config(&ok).unwrap();
    assert_eq!(o.name(), "AdamW");
    let bad = TrainConfig {
        optimizer_args: vec!["d_coef=2".into()],
        ..ok.clone()
    };
    let e = TrainOptimizer::<AB>::from_config(&bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("d_coef") && e.contains("weight_decay"), "{e}");
    let prodigy = TrainConfig {
        optimizer_type: fluxlora_train::OptimizerType::Prodigy,
        learning_rate: 1.0,
        ..bad
    };
    assert_eq!(
        TrainOptimizer::<AB>::from_config(&prodigy).unwrap().name(),
        "Prodigy"
    );
}

#[test]
fn constant_schedule_honours_warmup() {
    let d = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        lr_scheduler: LrScheduler::Constant,
        lr_warmup_steps: 4,
        ..tiny_train_config(d.path(), 10)
    };
    let s = lr_schedule(&c, 10).unwrap();
    // diffusers constant_with_warmup: lr·step/warmup, then lr.
    assert_eq!(
        [s.lr(0), s.lr(2), s.lr(4), s.lr(9)],
        [0.0, 0.5e-2, 1e-2, 1e-2]
    );
}
