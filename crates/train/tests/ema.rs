//! EMA of the LoRA weights (`ema_decay`): the shadow follows diffusers' schedule (checked
//! against a closed form computed here from the recorded live weights), saved LoRA files hold
//! the averages, and resume stays bit-exact with EMA on.

use crate::common;

use common::*;
use fluxlora_io::{read_lora, LoraWeights};
use fluxlora_train::{
    export_lora, LrScheduler, RunObserver, RunSummary, ShownModel, StepRecord, TrainConfig,
    TrainError, Trainer,
};

fn ema_config(out: &std::path::Path, steps: usize, decay: f32) -> TrainConfig {
    TrainConfig {
        ema_decay: Some(decay),
        lr_scheduler: LrScheduler::Cosine,
        gradient_accumulation_steps: 2,
        network_dropout: 0.1,
        seed: 13,
        ..tiny_train_config(out, steps)
    }
}

/// The shadow as (path, lora_a, lora_b) per adapter, in `adapter_values` order.
fn shadow_values(t: &Trainer<AB>) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let s = t.ema().expect("EMA on").shadow();
    assert_eq!(s.len() % 2, 0);
    s.chunks(2)
        .map(|p| {
            assert!(
                p[0].0.ends_with(".lora_a") && p[1].0.ends_with(".lora_b"),
                "{} / {}",
                p[0].0,
                p[1].0
            );
            let path = p[0].0.rsplitn(3, '.').nth(2).unwrap().to_string();
            (path, p[0].1.data.clone(), p[1].1.data.clone())
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn ema_of_a_constant_weight_is_that_constant() {
    let _guard = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        ema_config(d.path(), 4, 0.9),
        tiny_flux(4),
        Default::default(),
    )
    .unwrap()
    .with_progress(false);
    let mut src = RandomBatches::new(4);
    t.step_once(&mut src).unwrap();
    let live = adapter_values(t.model_mut());
    // Further updates from the same (constant) weights leave the shadow at exactly those weights.
    let mut ema = t.ema().unwrap().clone();
    for _ in 0..5 {
        ema.update(t.model_mut()).unwrap();
    }
    assert_eq!(ema.updates(), 6);
    let shadow: Vec<_> = ema.shadow().iter().map(|(_, h)| bits(&h.data)).collect();
    let want: Vec<_> = live
        .iter()
        .flat_map(|(_, a, b)| [bits(a), bits(b)])
        .collect();
    assert_eq!(shadow, want);
}

#[test]
fn shadow_follows_the_closed_form_of_the_recorded_weights() {
    let _guard = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    // small, so the target decay is reached within the run (k/(k+9) ≥ 0.3 from k = 4)
    let decay = 0.3f32;
    let mut t = Trainer::new(
        ema_config(d.path(), 6, decay),
        tiny_flux(5),
        Default::default(),
    )
    .unwrap()
    .with_progress(false);
    let mut src = RandomBatches::new(5);
    let mut history = Vec::new();
    for _ in 0..6 {
        t.step_once(&mut src).unwrap();
        history.push(adapter_values(t.model_mut()));
    }
    // Independent reference in f64: e_1 = w_1; e_k = d_k·e_{k−1} + (1 − d_k)·w_k with
    // d_k = min(decay, k/(k + 9)) (diffusers: (1 + s)/(10 + s), s = k − 1).
    let flat = |v: &Vec<(String, Vec<f32>, Vec<f32>)>| -> Vec<f64> {
        v.iter()
            .flat_map(|(_, a, b)| a.iter().chain(b).map(|&x| f64::from(x)))
            .collect()
    };
    let mut e = flat(&history[0]);
    for (i, w) in history.iter().enumerate().skip(1) {
        let k = (i + 1) as f64;
        let dk = (k / (k + 9.0)).min(f64::from(decay));
        for (e, w) in e.iter_mut().zip(flat(w)) {
            *e = dk * *e + (1.0 - dk) * w;
        }
    }
    let got: Vec<f64> = shadow_values(&t)
        .iter()
        .flat_map(|(_, a, b)| a.iter().chain(b).map(|&x| f64::from(x)))
        .collect();
    assert_eq!(got.len(), e.len());
    for (i, (g, w)) in got.iter().zip(&e).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1e-2),
            "element {i}: {g} vs {w}"
        );
    }
    // The average must differ from the live weights, or the test would prove little.
    let live = flat(history.last().unwrap());
    assert!(live.iter().zip(&e).any(|(l, e)| (l - e).abs() > 1e-4));
    assert_eq!(t.ema().unwrap().updates(), 6);
}

fn same_modules(a: &LoraWeights, b: &LoraWeights) -> bool {
    a.modules.len() == b.modules.len()
        && a.modules
            .iter()
            .zip(&b.modules)
            .all(|((ka, ma), (kb, mb))| {
                ka == kb
                    && bits(&ma.down.data) == bits(&mb.down.data)
                    && bits(&ma.up.data) == bits(&mb.up.data)
            })
}

/// Records the adapter values an observer is shown after each step and at the end.
#[derive(Default)]
struct Shown(Vec<AdapterValues>);

/// Every adapter's (path, A, B) values at one moment.
type AdapterValues = Vec<(String, Vec<f32>, Vec<f32>)>;

impl RunObserver<AB> for Shown {
    fn on_step(
        &mut self,
        _r: &StepRecord,
        model: &ShownModel<'_, AB>,
    ) -> Result<Vec<String>, TrainError> {
        self.0.push(adapter_values(&mut model.get()?.clone()));
        Ok(Vec::new())
    }
    fn on_end(&mut self, _s: &RunSummary, model: &ShownModel<'_, AB>) -> Result<(), TrainError> {
        self.0.push(adapter_values(&mut model.get()?.clone()));
        Ok(())
    }
}

#[test]
fn observers_and_so_samples_see_the_ema_weights() {
    let _guard = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        ema_config(d.path(), 3, 0.5),
        tiny_flux(8),
        Default::default(),
    )
    .unwrap()
    .with_progress(false);
    let mut shown = Shown::default();
    t.run_observed(&mut RandomBatches::new(8), &mut shown)
        .unwrap();
    assert_eq!(shown.0.len(), 4);
    let last = shown.0.last().unwrap();
    let shadow = shadow_values(&t);
    assert_eq!(last.len(), shadow.len());
    for ((p, a, b), (q, sa, sb)) in last.iter().zip(&shadow) {
        assert_eq!(p, q);
        assert_eq!(
            (bits(a), bits(b)),
            (bits(sa), bits(sb)),
            "{p}: the observer must see the averages"
        );
    }
    assert_ne!(
        last,
        &adapter_values(t.model_mut()),
        "the averages must differ from the live weights"
    );
}

#[test]
fn saved_loras_hold_the_ema_weights_not_the_live_ones() {
    let _guard = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        save_every_n_steps: Some(2),
        ..ema_config(d.path(), 3, 0.5)
    };
    let mut t = Trainer::new(cfg, tiny_flux(6), Default::default())
        .unwrap()
        .with_progress(false);
    let summary = t.run(&mut RandomBatches::new(6)).unwrap();
    let (file, _) = read_lora(summary.lora.as_ref().unwrap()).unwrap();
    assert_eq!(
        file.metadata.get("fluxlora_ema_decay").map(String::as_str),
        Some("0.5")
    );
    let ema = t.ema().unwrap().clone();
    let model = t.model_mut();
    let averaged = export_lora(&mut ema.averaged(model).unwrap()).unwrap();
    let live = export_lora(model).unwrap();
    assert!(
        same_modules(&file, &averaged),
        "the final LoRA must hold the EMA weights"
    );
    assert!(
        !same_modules(&file, &live),
        "the EMA weights must differ from the live ones"
    );
    // The last checkpoint's LoRA holds them too; its live.safetensors holds the live weights.
    let ckpt = summary.checkpoint.unwrap();
    let (in_ckpt, _) = read_lora(ckpt.join("tiny.safetensors")).unwrap();
    assert!(same_modules(&in_ckpt, &averaged));
    assert!(ckpt.join("ema.safetensors").exists() && ckpt.join("live.safetensors").exists());
    // The intermediate checkpoint (step 2) is marked as EMA too.
    let (step2, _) = read_lora(d.path().join("tiny-step00000002/tiny.safetensors")).unwrap();
    assert_eq!(
        step2.metadata.get("fluxlora_ema_decay").map(String::as_str),
        Some("0.5")
    );
}

#[test]
fn resume_is_bit_exact_with_ema() {
    let _guard = backend_rng_lock();
    let base = tiny_flux(7);
    let dev = Default::default();
    let d1 = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(ema_config(d1.path(), 4, 0.6), base.clone(), dev)
        .unwrap()
        .with_progress(false);
    let a = straight.run(&mut RandomBatches::new(7)).unwrap();
    assert_eq!(a.steps, 4);

    let d2 = tempfile::tempdir().unwrap();
    let cfg = ema_config(d2.path(), 4, 0.6);
    let mut first = Trainer::new(cfg.clone(), base.clone(), dev)
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(7);
    first.step_once(&mut src).unwrap();
    first.step_once(&mut src).unwrap();
    let ckpt = first.save_checkpoint(&src).unwrap();
    drop(first);

    let mut second = Trainer::new(cfg.clone(), base.clone(), dev)
        .unwrap()
        .with_progress(false);
    let mut src2 = RandomBatches::new(7);
    assert_eq!(second.resume(&ckpt, &mut src2).unwrap().step, 2);
    assert_eq!(second.ema().unwrap().updates(), 2);
    let b = second.run(&mut src2).unwrap();
    assert_eq!(b.steps, 4);

    let (sa, sb) = (shadow_values(&straight), shadow_values(&second));
    assert_eq!(sa.len(), sb.len());
    for ((pa, aa, ba), (pb, ab, bb)) in sa.iter().zip(&sb) {
        assert_eq!(pa, pb);
        assert_eq!(bits(aa), bits(ab), "{pa}: EMA lora_a differs after resume");
        assert_eq!(bits(ba), bits(bb), "{pa}: EMA lora_b differs after resume");
    }
    let (va, vb) = (
        adapter_values(&mut straight.into_model()),
        adapter_values(&mut second.into_model()),
    );
    for ((pa, aa, ba), (_, ab, bb)) in va.iter().zip(&vb) {
        assert_eq!(bits(aa), bits(ab), "{pa}: live lora_a differs after resume");
        assert_eq!(bits(ba), bits(bb), "{pa}: live lora_b differs after resume");
    }
    assert!(va.iter().any(|(_, _, b)| b.iter().any(|&x| x != 0.0)));
    let (fa, _) = read_lora(a.lora.as_ref().unwrap()).unwrap();
    let (fb, _) = read_lora(b.lora.as_ref().unwrap()).unwrap();
    assert!(same_modules(&fa, &fb), "the final EMA LoRA files differ");

    // A checkpoint that lost its EMA state is refused with the file named.
    std::fs::remove_file(ckpt.join("ema.safetensors")).unwrap();
    let mut third = Trainer::new(cfg, base, dev).unwrap();
    let err = third.resume(&ckpt, &mut RandomBatches::new(7)).unwrap_err();
    assert!(
        matches!(err, TrainError::Checkpoint { .. }) && err.to_string().contains("ema.safetensors"),
        "{err}"
    );
}
