//! LyCORIS kinds through the trainer: each of LoKr (low-rank and full W2), LoHa and DoRA
//! trains (its tensors move), saves in kohya and ComfyUI layouts under the keys ComfyUI reads
//! (the self-check passes), reloads into a fresh model with the same weight change, resumes bit
//! for bit (with and without EMA), and applies to / comes off a model for sampling.

use crate::common;

use burn::tensor::Tensor;
use common::*;
use fluxlora_flux::Flux;
use fluxlora_io::{read_lora, SafeTensorsFile};
use fluxlora_train::sampling::inference::{apply_named_loras, remove_named_loras};
use fluxlora_train::{import_lora, SaveFormat, TrainConfig, Trainer};

/// A change to the test config.
type Tweak = fn(&mut TrainConfig);

/// The kinds tested: name, config tweak, the role a saved module must carry.
fn kinds() -> Vec<(&'static str, Tweak, &'static str)> {
    vec![
        (
            "lokr (low-rank W2)",
            |c| {
                c.network_type = Some("lokr".into());
                c.network_dim = 2;
            },
            "lokr_w2_a",
        ),
        (
            "lokr (full W2, factor 4)",
            |c| {
                c.network_args = vec!["algo=lokr".into(), "factor=4".into()];
                c.network_module = Some("lycoris.kohya".into());
                c.lokr_full_rank = Some(true);
            },
            "lokr_w2",
        ),
        (
            "loha",
            |c| c.network_type = Some("loha".into()),
            "hada_w2_b",
        ),
        (
            "dora",
            |c| c.network_type = Some("dora".into()),
            "dora_scale",
        ),
    ]
}

/// Every linear's whole weight change `W' − W` (`[d_in, d_out]` values), by path.
fn deltas(model: &mut Flux<AB>) -> Vec<(String, Vec<f32>)> {
    model
        .linears_mut()
        .into_iter()
        .filter(|(_, l)| !l.adapters.is_empty() || !l.lycoris.is_empty())
        .map(|(p, l)| (p, l.delta_weight().into_data().to_vec::<f32>().unwrap()))
        .collect()
}

/// Every LyCORIS tensor of the model, by path and role, as bits.
fn lycoris_bits(model: &mut Flux<AB>) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    for (p, l) in model.linears_mut() {
        for a in &l.lycoris {
            for (role, t) in a.tensors() {
                let v = t.into_data().to_vec::<f32>().unwrap();
                out.push((
                    format!("{p}.{role}"),
                    v.iter().map(|x| x.to_bits()).collect(),
                ));
            }
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_lycoris_kind_trains_saves_and_reloads() {
    let _guard = backend_rng_lock();
    for (name, tweak, role) in kinds() {
        // DoRA also goes to PEFT / diffusers (`lora_magnitude_vector`); LoKr / LoHa cannot.
        let formats: &[SaveFormat] = if name == "dora" {
            &[SaveFormat::Kohya, SaveFormat::Comfyui, SaveFormat::Peft]
        } else {
            &[SaveFormat::Kohya, SaveFormat::Comfyui]
        };
        for &format in formats {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = tiny_train_config(dir.path(), 3);
            cfg.save_format = format;
            tweak(&mut cfg);
            cfg.validate().unwrap();
            let mut t = Trainer::new(cfg, tiny_flux(7), Default::default())
                .unwrap()
                .with_progress(false);
            let init = lycoris_bits(t.model_mut());
            assert!(!init.is_empty(), "{name}: no LyCORIS adapters were added");
            assert!(t
                .model_mut()
                .linears_mut()
                .iter()
                .all(|(_, l)| l.adapters.is_empty()));
            let summary = t.run(&mut RandomBatches::new(3)).unwrap();
            let trained = lycoris_bits(t.model_mut());
            assert_ne!(init, trained, "{name}: training moved no tensor");
            let check = summary.self_check.clone().expect("a self-check ran");
            let adapted = t
                .model_mut()
                .linears_mut()
                .iter()
                .filter(|(_, l)| !l.lycoris.is_empty())
                .count();
            assert_eq!(check.modules, adapted, "{name}");

            // The file holds the roles ComfyUI's weight adapters read, under the layout's stems.
            let file = summary.lora.clone().unwrap();
            let st = SafeTensorsFile::open(&file).unwrap();
            let names: Vec<String> = st.names().map(str::to_string).collect();
            let key = match format {
                SaveFormat::Kohya => format!("lora_unet_double_blocks_0_img_attn_qkv.{role}"),
                SaveFormat::Comfyui => {
                    format!("diffusion_model.double_blocks.0.img_attn.qkv.{role}")
                }
                SaveFormat::Peft => {
                    "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector".into()
                }
            };
            assert!(names.contains(&key), "{name}: no {key} in {names:?}");
            let meta = st.metadata();
            assert_eq!(
                meta.get("ss_network_module").map(String::as_str),
                Some("lycoris.kohya")
            );

            // A fresh model of the same base takes the file back with the same change.
            let want = deltas(t.model_mut());
            let (weights, _) = read_lora(&file).unwrap();
            let mut fresh = tiny_flux(7);
            fresh.freeze_base();
            let used = import_lora(&mut fresh, &weights, &file).unwrap();
            assert_eq!(used, want.len(), "{name}");
            let got = deltas(&mut fresh);
            for ((pa, a), (pb, b)) in want.iter().zip(&got) {
                assert_eq!(pa, pb);
                let scale = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                assert!(
                    max_diff(a, b) <= 1e-5 * scale,
                    "{name} {pa}: ΔW differs after reload"
                );
            }
            assert!(
                want.iter().any(|(_, d)| d.iter().any(|&x| x != 0.0)),
                "{name}: ΔW = 0"
            );
        }
    }
}

fn straight_vs_resumed(tweak: Tweak, ema: bool) {
    let dev = Default::default();
    let config = |out: &std::path::Path| {
        let mut c = tiny_train_config(out, 4);
        c.gradient_accumulation_steps = 2;
        c.ema_decay = ema.then_some(0.9);
        tweak(&mut c);
        c
    };
    let d1 = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(config(d1.path()), tiny_flux(3), dev)
        .unwrap()
        .with_progress(false);
    straight.run(&mut RandomBatches::new(5)).unwrap();

    let d2 = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(config(d2.path()), tiny_flux(3), dev)
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(5);
    first.step_once(&mut src).unwrap();
    first.step_once(&mut src).unwrap();
    let ckpt = first.save_checkpoint(&src).unwrap();
    drop(first);
    let mut second = Trainer::new(config(d2.path()), tiny_flux(3), dev)
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(5);
    assert_eq!(second.resume(&ckpt, &mut src).unwrap().step, 2);
    second.run(&mut src).unwrap();
    let (a, b) = (
        lycoris_bits(straight.model_mut()),
        lycoris_bits(second.model_mut()),
    );
    assert!(!a.is_empty());
    assert_eq!(a, b, "the resumed run differs from the straight one");
    if ema {
        let (ea, eb) = (straight.ema().unwrap(), second.ema().unwrap());
        assert_eq!(ea.updates(), eb.updates());
    }
}

#[test]
fn lycoris_runs_resume_bit_for_bit() {
    let _guard = backend_rng_lock();
    for (name, tweak, _) in kinds() {
        eprintln!("resume: {name}");
        straight_vs_resumed(tweak, false);
    }
    straight_vs_resumed(|c| c.network_type = Some("dora".into()), true);
    straight_vs_resumed(|c| c.network_type = Some("loha".into()), true);
}

#[test]
fn lycoris_files_apply_for_sampling_and_come_off_again() {
    let _guard = backend_rng_lock();
    for (name, tweak, _) in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny_train_config(dir.path(), 2);
        tweak(&mut cfg);
        let mut t = Trainer::new(cfg, tiny_flux(9), Default::default())
            .unwrap()
            .with_progress(false);
        let file = t.run(&mut RandomBatches::new(2)).unwrap().lora.unwrap();
        let want = deltas(t.model_mut());
        let (weights, _) = read_lora(&file).unwrap();

        let mut flux = tiny_flux(9);
        flux.freeze_base();
        let weight_of = |f: &mut Flux<AB>, path: &str| -> Tensor<AB, 2> {
            let (_, l) = f
                .linears_mut()
                .into_iter()
                .find(|(p, _)| p == path)
                .unwrap();
            l.base_weight() + l.delta_weight()
        };
        let path = &want[0].0;
        let before = weight_of(&mut flux, path)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let named = [(file.as_path(), &weights, 0.5f32)];
        let report = apply_named_loras(&mut flux, &named).unwrap();
        assert_eq!(report.loras[0].matched.len(), want.len(), "{name}");
        let applied = weight_of(&mut flux, path)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            max_diff(&before, &applied) > 0.0,
            "{name}: applying changed nothing"
        );
        if !name.starts_with("dora") {
            // LoKr / LoHa are linear in their strength: half the trained ΔW.
            let half: Vec<f32> = before
                .iter()
                .zip(&want[0].1)
                .map(|(w, d)| w + 0.5 * d)
                .collect();
            assert!(max_diff(&half, &applied) <= 1e-5, "{name}: not W + 0.5·ΔW");
        }
        remove_named_loras(&mut flux, &named).unwrap();
        let after = weight_of(&mut flux, path)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            max_diff(&before, &after) <= 1e-6,
            "{name}: the LoRA did not come off"
        );
        assert!(flux.linears_mut().iter().all(|(_, l)| l.lycoris.is_empty()));
    }
}
