use super::*;
use burn::backend::NdArray;

type B = NdArray;

/// Independent host reference of the loss, written from the formulas in the module docs.
#[allow(clippy::too_many_arguments)]
fn host_loss(
    pred: &[f64],
    target: &[f64],
    xt: &[f64],
    sig: &[f64],
    mask: Option<&[f64]>,
    w: &[f64],
    dims: [usize; 3],
    s: &LossSettings,
) -> f64 {
    let [b, l, c] = dims;
    let mut total = 0.0;
    for i in 0..b {
        let mut acc = 0.0;
        for t in 0..l {
            for k in 0..c {
                let j = (i * l + t) * c + k;
                let p = match s.prediction {
                    ModelPredictionType::Raw => pred[j],
                    ModelPredictionType::Additive => pred[j] + xt[j],
                    ModelPredictionType::SigmaScaled => -sig[i] * pred[j] + xt[j],
                };
                let d = p - target[j];
                let hc = f64::from(s.huber_c);
                let mut e = match s.loss_type {
                    LossType::L2 => d * d,
                    LossType::L1 => d.abs(),
                    LossType::Huber => 2.0 * hc * ((d * d + hc * hc).sqrt() - hc),
                };
                e *= match s.weighting {
                    LossWeighting::None => 1.0,
                    LossWeighting::SigmaSqrt => sig[i].powi(-2),
                    LossWeighting::CosMap => {
                        2.0 / (std::f64::consts::PI * (1.0 - 2.0 * sig[i] + 2.0 * sig[i] * sig[i]))
                    }
                };
                if let Some(m) = mask {
                    e *= m[i * l + t];
                }
                acc += e;
            }
        }
        total += acc / (l * c) as f64 * w[i];
    }
    total / b as f64
}

fn vals(n: usize, k: u64) -> Vec<f32> {
    let mut r = fluxlora_data::SplitMix64::new(k);
    (0..n).map(|_| (r.next_f64() * 4.0 - 2.0) as f32).collect()
}

#[test]
fn loss_matches_host_reference_for_every_option() {
    let dims = [2usize, 3, 4];
    let n = 24;
    let (pred, target, xt) = (vals(n, 1), vals(n, 2), vals(n, 3));
    let sig = [0.3f32, 0.8];
    let mask = [1.0f32, 0.5, 0.0, 0.25, 1.0, 0.75];
    let w = [1.0f32, 0.4];
    let dev = Default::default();
    let t3 = |v: &Vec<f32>| host::tensor::<B, 3>(v.clone(), dims, &dev);
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    for loss_type in [LossType::L2, LossType::L1, LossType::Huber] {
        for prediction in [
            ModelPredictionType::Raw,
            ModelPredictionType::Additive,
            ModelPredictionType::SigmaScaled,
        ] {
            for weighting in [
                LossWeighting::None,
                LossWeighting::SigmaSqrt,
                LossWeighting::CosMap,
            ] {
                for masked in [false, true] {
                    let s = LossSettings {
                        loss_type,
                        huber_c: 0.3,
                        prediction,
                        weighting,
                        prior_loss_weight: 0.4,
                    };
                    let m = masked.then(|| host::tensor::<B, 3>(mask.to_vec(), [2, 3, 1], &dev));
                    let got = flow_matching_loss(
                        t3(&pred),
                        t3(&target),
                        t3(&xt),
                        host::tensor::<B, 1>(sig.to_vec(), [2], &dev),
                        m,
                        host::tensor::<B, 1>(w.to_vec(), [2], &dev),
                        &s,
                    )
                    .into_scalar();
                    let want = host_loss(
                        &f64s(&pred),
                        &f64s(&target),
                        &f64s(&xt),
                        &f64s(&sig),
                        masked.then(|| f64s(&mask)).as_deref(),
                        &f64s(&w),
                        dims,
                        &s,
                    );
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{loss_type:?} {prediction:?} {weighting:?} masked={masked}: {got} vs \
                         {want}"
                    );
                }
            }
        }
    }
}

/// `fixtures/train/flow_match_sigmas.json`, written by diffusers
/// (`fixtures/train/make_flow_match_sigmas.py`).
fn diffusers_tables() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/train/flow_match_sigmas.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn sigma_sampling_reproduces_the_diffusers_table_bit_for_bit() {
    let fixture = diffusers_tables();
    let tables = fixture["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 3);
    for t in tables {
        let shift = t["shift"].as_f64().unwrap();
        let want: Vec<f32> = t["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = fluxlora_flux::schedule::flow_match_sigmas(NUM_TRAIN_TIMESTEPS, shift);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "shift {shift} index {i}: {g} vs diffusers {w}"
            );
        }
        // kohya's timesteps[indices] → get_sigmas path lands on the same entries.
        let config = TrainConfig {
            timestep_sampling: TimestepSampling::Sigma,
            discrete_flow_shift: Some(shift as f32),
            ..TrainConfig::default()
        };
        let sampler = StepSettings::from_config(&config).unwrap().sampler;
        let idx = t["kohya_indices"].as_array().unwrap();
        for (i, k) in idx.iter().zip(t["kohya_sigmas"].as_array().unwrap()) {
            let i = i.as_u64().unwrap() as usize;
            let u = (i as f64 + 0.5) / NUM_TRAIN_TIMESTEPS as f64;
            let got = sampler.sigma(u, 0.0, 4096) as f32;
            // The config stores the shift as f32, so compare at f32 precision of the shift.
            assert!(
                (f64::from(got) - k.as_f64().unwrap()).abs() < 1e-6,
                "index {i}: {got} vs {k}"
            );
        }
    }
}

#[test]
fn sigma_sampling_defaults_to_kohyas_shift_of_three() {
    let config = TrainConfig {
        timestep_sampling: TimestepSampling::Sigma,
        ..TrainConfig::default()
    };
    let s = StepSettings::from_config(&config).unwrap().sampler;
    assert_eq!(
        s,
        SigmaSampler::Discrete {
            shift: 3.0,
            num_train_timesteps: 1000
        }
    );
    // The draws are seeded per (seed, step, micro-batch) and only take table values.
    let a = crate::noise::draw_noise(9, 4, 1, &s, 64, 1, 1);
    assert_eq!(a, crate::noise::draw_noise(9, 4, 1, &s, 64, 1, 1));
    assert_ne!(
        a.sigmas,
        crate::noise::draw_noise(9, 5, 1, &s, 64, 1, 1).sigmas
    );
    let table = fluxlora_flux::schedule::flow_match_sigmas(1000, 3.0);
    assert!(a.sigmas.iter().all(|v| table.contains(v)), "{:?}", a.sigmas);
}

#[test]
fn default_shift_is_bfl_at_1024() {
    // μ = 1.15 at 4096 tokens, so the shift is e^1.15 ≈ 3.158.
    assert!((bfl_shift(1024) - 1.15f64.exp()).abs() < 1e-12);
    assert!((bfl_shift(256) - 0.5f64.exp()).abs() < 1e-12);
}
