//! LoKr, LoHa and DoRA on `LoraLinear`: ΔW against plain f64 host arithmetic, the forward
//! against `x·(W + ΔW)`, merge = unmerged forward, unmerge restores W, fresh adapters leave the
//! base output unchanged, gradients reach the adapter (DoRA's magnitude too), and the LyCORIS /
//! PEFT fixture (`fixtures/parity/lycoris/`, `make_lycoris_cases.py`) gives the same ΔW.

use crate::common;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use common::*;
use fluxlora_io::SafeTensorsFile;
use fluxlora_lora::lokr::factorization;
use fluxlora_lora::{
    AdapterSpec, DoraAdapter, Factor, LohaAdapter, LokrAdapter, LoraAdapter, LoraLinear,
    LycorisAdapter, Network,
};
use proptest::prelude::*;

/// f64 `[n,k]·[k,m]`.
fn mm(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            for t in 0..k {
                out[i * m + j] += f64::from(a[i * k + t]) * f64::from(b[t * m + j]);
            }
        }
    }
    out
}

/// f64 `kron(a [p,q], b [r,s])`.
fn kron(a: &[f64], b: &[f64], [p, q]: [usize; 2], [r, s]: [usize; 2]) -> Vec<f64> {
    let mut out = vec![0.0; p * r * q * s];
    for i in 0..p {
        for j in 0..q {
            for k in 0..r {
                for l in 0..s {
                    out[(i * r + k) * (q * s) + j * s + l] = a[i * q + j] * b[k * s + l];
                }
            }
        }
    }
    out
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| f64::from(*x)).collect()
}

/// `[rows, cols]` (file layout) → `[cols, rows]` (Burn layout), f64.
fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

fn close(got: &[f32], want: &[f64], rel: f64) -> Result<(), String> {
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max);
    if got.len() == want.len() && diff <= rel * scale {
        Ok(())
    } else {
        Err(format!(
            "max diff {diff} (scale {scale}, lengths {} {})",
            got.len(),
            want.len()
        ))
    }
}

/// A LoKr with random factors (W1 `[l, m]`, W2 `[k, n]` low-rank when `low`) and its ΔW in
/// Burn layout `[m·n, l·k]`, in f64.
fn lokr(
    seed: u64,
    [l, m, k, n]: [usize; 4],
    r: usize,
    low: bool,
    alpha: f32,
    mult: f32,
) -> (LokrAdapter<B>, Vec<f64>) {
    let w1 = values(seed, l * m);
    let mut spec = AdapterSpec::new(r, alpha);
    spec.multiplier = mult;
    let (w2_t, w2, scale) = if low {
        let (a, b) = (values(seed + 1, k * r), values(seed + 2, r * n));
        (
            Factor::LowRank(tensor2(&a, k, r), tensor2(&b, r, n)),
            mm(&a, &b, k, r, n),
            f64::from(alpha) / r as f64,
        )
    } else {
        let w2 = values(seed + 3, k * n);
        (Factor::Full(tensor2(&w2, k, n)), f64s(&w2), 1.0)
    };
    let adapter = LokrAdapter::from_factors("k", Factor::Full(tensor2(&w1, l, m)), w2_t, &spec);
    let d = kron(&f64s(&w1), &w2, [l, m], [k, n]);
    let d: Vec<f64> = d.iter().map(|v| v * scale * f64::from(mult)).collect();
    (adapter, transpose(&d, l * k, m * n))
}

fn loha(seed: u64, rows: usize, d_in: usize, r: usize, alpha: f32) -> (LohaAdapter<B>, Vec<f64>) {
    let f: Vec<Vec<f32>> = (0..4)
        .map(|i| values(seed + i, if i % 2 == 0 { rows * r } else { r * d_in }))
        .collect();
    let adapter = LohaAdapter::from_factors(
        "h",
        [
            tensor2(&f[0], rows, r),
            tensor2(&f[1], r, d_in),
            tensor2(&f[2], rows, r),
            tensor2(&f[3], r, d_in),
        ],
        &AdapterSpec::new(r, alpha),
    );
    let m1 = mm(&f[0], &f[1], rows, r, d_in);
    let m2 = mm(&f[2], &f[3], rows, r, d_in);
    let s = f64::from(alpha) / r as f64;
    let d: Vec<f64> = m1.iter().zip(&m2).map(|(a, b)| a * b * s).collect();
    (adapter, transpose(&d, rows, d_in))
}

/// A DoRA with random LoRA factors and magnitudes over `w` (`[d_in, d_out]`); its merged weight
/// (Burn layout) in f64: `W + m_u·(g⊙(W + ΔW) − W)` with the per-output-channel norm, and
/// each column's factor on `W`, `1 + m_u·(g − 1)`, which unmerge divides by.
fn dora(
    seed: u64,
    w: &[f32],
    d_in: usize,
    d_out: usize,
    r: usize,
    alpha: f32,
    mult: f32,
) -> (DoraAdapter<B>, Vec<f64>, Vec<f64>) {
    let (a, b) = (values(seed, d_in * r), values(seed + 1, r * d_out));
    let mag: Vec<f32> = values(seed + 2, d_out)
        .iter()
        .map(|v| 1.0 + v.abs())
        .collect();
    let mut spec = AdapterSpec::new(r, alpha);
    spec.multiplier = mult;
    spec.network = Network::Dora;
    let lora = LoraAdapter::from_factors("d", tensor2(&a, d_in, r), tensor2(&b, r, d_out), &spec);
    let adapter = DoraAdapter::from_parts(
        "d",
        lora,
        Tensor::from_data(TensorData::new(mag.clone(), [d_out]), &dev()),
        None,
    );
    let s = f64::from(alpha) / r as f64;
    let dw = mm(&a, &b, d_in, r, d_out);
    let wc: Vec<f64> = w
        .iter()
        .zip(&dw)
        .map(|(w, d)| f64::from(*w) + s * d)
        .collect();
    let mut out = f64s(w);
    let mut factors = Vec::with_capacity(d_out);
    for c in 0..d_out {
        let norm = (0..d_in)
            .map(|i| wc[i * d_out + c].powi(2))
            .sum::<f64>()
            .sqrt();
        let g = f64::from(mag[c]) / (norm + f64::from(f32::EPSILON));
        factors.push(1.0 + f64::from(mult) * (g - 1.0));
        for i in 0..d_in {
            let k = i * d_out + c;
            out[k] += f64::from(mult) * (g * wc[k] - f64::from(w[k]));
        }
    }
    (adapter, out, factors)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// LoKr and LoHa ΔW (and the whole change of a linear) equal f64 host arithmetic; the
    /// forward is `x·(W + ΔW)`, without forming ΔW for LoKr.
    #[test]
    fn lokr_and_loha_delta_and_forward_match_host_arithmetic(
        seed in 0u64..1000, l in 1usize..4, m in 1usize..4, k in 1usize..4, n in 1usize..4,
        r in 1usize..4, low: bool, alpha in 0.5f32..8.0, mult in -2.0f32..2.0, batch in 1usize..4,
    ) {
        let (d_in, d_out) = (m * n, l * k);
        let (kr, kr_ref) = lokr(seed, [l, m, k, n], r, low, alpha, mult);
        close(&to_vec(kr.delta_weight(d_out)), &kr_ref, 1e-5).map_err(TestCaseError::fail)?;
        let (ha, ha_ref) = loha(seed + 9, d_out, d_in, r, alpha);
        close(&to_vec(ha.delta_weight(d_out)), &ha_ref, 1e-5).map_err(TestCaseError::fail)?;
        let w = values(seed + 20, d_in * d_out);
        let x = values(seed + 21, batch * d_in);
        for (adapter, delta) in [(LycorisAdapter::Lokr(kr), kr_ref), (LycorisAdapter::Loha(ha), ha_ref)] {
            let mut lin = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
            lin.push_lycoris("m", adapter).unwrap();
            let wm: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| (f64::from(*w) + d) as f32).collect();
            let want = mm(&x, &wm, batch, d_in, d_out);
            close(&to_vec(lin.forward(tensor2(&x, batch, d_in))), &want, 1e-4).map_err(TestCaseError::fail)?;
            close(&to_vec(lin.delta_weight()), &delta, 1e-5).map_err(TestCaseError::fail)?;
        }
    }

    /// DoRA's merged weight equals the host formula; a stack of LoRA + DoRA + LoKr + LoHa gives
    /// the same output merged and unmerged, and unmerge restores W.
    #[test]
    fn merge_equals_the_unmerged_forward_for_a_lycoris_stack(
        seed in 0u64..1000, r in 1usize..4, alpha in 0.5f32..8.0, mult in -1.5f32..1.5,
        with_bias: bool,
    ) {
        let (l, m, k, n) = (2, 3, 3, 2);
        let (d_in, d_out) = (m * n, l * k);
        let w = values(seed, d_in * d_out);
        let bias = values(seed + 1, d_out);
        let bias_t = with_bias.then(|| Tensor::from_data(TensorData::new(bias.clone(), [d_out]), &dev()));
        let (da, dora_ref, factors) = dora(seed + 2, &w, d_in, d_out, r, alpha, mult);
        let mut only = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
        only.push_lycoris("d", LycorisAdapter::Dora(da.clone())).unwrap();
        only.merge();
        close(&to_vec(only.weight.as_ref().unwrap().val()), &dora_ref, 1e-5).map_err(TestCaseError::fail)?;

        let mut lin = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), bias_t);
        let (a, b) = (values(seed + 5, d_in * r), values(seed + 6, r * d_out));
        lin.push_adapter("p", LoraAdapter::from_factors("p", tensor2(&a, d_in, r), tensor2(&b, r, d_out), &AdapterSpec::new(r, alpha))).unwrap();
        lin.push_lycoris("d", LycorisAdapter::Dora(da)).unwrap();
        lin.push_lycoris("k", LycorisAdapter::Lokr(lokr(seed + 7, [l, m, k, n], r, true, alpha, mult).0)).unwrap();
        lin.push_lycoris("h", LycorisAdapter::Loha(loha(seed + 8, d_out, d_in, r, alpha).0)).unwrap();
        let x = tensor2(&values(seed + 9, 3 * d_in), 3, d_in);
        let unmerged = to_vec(lin.forward(x.clone()));
        let delta = to_vec(lin.delta_weight());
        lin.merge();
        let merged = to_vec(lin.forward(x.clone()));
        let scale = 1.0 + unmerged.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        prop_assert!(max_abs_diff(&merged, &unmerged) <= 1e-4 * scale, "merged vs unmerged {}", max_abs_diff(&merged, &unmerged));
        let merged_delta = to_vec(lin.delta_weight());
        prop_assert!(max_abs_diff(&merged_delta, &delta) <= 1e-4 * scale);
        lin.unmerge();
        // Unmerge divides by DoRA's factor on W, so its rounding grows as that factor nears 0
        // (PEFT's unmerge divides the same way).
        let smallest = factors.iter().fold(f64::INFINITY, |m, f| m.min(f.abs())) as f32;
        let restored = max_abs_diff(&to_vec(lin.weight.as_ref().unwrap().val()), &w);
        prop_assert!(restored <= 1e-5 * scale / smallest.min(1.0), "unmerge off by {restored}, smallest factor {smallest}");
        prop_assert!(max_abs_diff(&to_vec(lin.forward(x)), &unmerged) <= 1e-4 * scale);
    }

    /// Fresh LoKr / LoHa (ΔW = 0) and DoRA (magnitude ‖W‖, B = 0) leave the base output
    /// unchanged (DoRA up to the norm's eps).
    #[test]
    fn fresh_adapters_leave_the_base_output_unchanged(
        seed in 0u64..1000, d_in in 2usize..10, d_out in 2usize..10, r in 1usize..4, factor in -1i64..4,
        full_rank: bool,
    ) {
        let w = values(seed, d_in * d_out);
        let bias = Tensor::from_data(TensorData::new(values(seed + 1, d_out), [d_out]), &dev());
        let x = tensor2(&values(seed + 2, 2 * d_in), 2, d_in);
        let base = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), Some(bias));
        let before = to_vec(base.forward(x.clone()));
        for network in [Network::Lokr { factor, full_rank }, Network::Loha, Network::Dora] {
            let mut lin = base.clone();
            let mut spec = AdapterSpec::new(r, 2.0 * r as f32);
            spec.network = network;
            lin.add_adapter("f", &spec, &dev()).unwrap();
            prop_assert_eq!(lin.lycoris.len(), 1);
            let after = to_vec(lin.forward(x.clone()));
            let scale = 1.0 + before.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            prop_assert!(max_abs_diff(&before, &after) <= 1e-6 * scale, "{network}: {}", max_abs_diff(&before, &after));
        }
    }
}

#[test]
fn dora_row_range_touches_only_its_rows() {
    let (d_in, d_out) = (4, 9);
    let w = values(3, d_in * d_out);
    let mut spec = AdapterSpec::new(2, 2.0).with_rows(3, 6);
    spec.network = Network::Dora;
    let mut lin = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
    lin.add_adapter("qkv", &spec, &dev()).unwrap();
    let LycorisAdapter::Dora(d) = &mut lin.lycoris[0] else {
        panic!("a DoRA")
    };
    d.lora.lora_b = d.lora.lora_b.clone().map(|b| b + 0.5);
    let delta = to_vec(lin.delta_weight());
    for i in 0..d_in {
        for c in 0..d_out {
            let inside = (3..6).contains(&c);
            assert_eq!(delta[i * d_out + c] != 0.0, inside, "row {i} col {c}");
        }
    }
}

#[test]
fn gradients_reach_the_lycoris_factors_and_the_dora_magnitude() {
    type AB = Autodiff<B>;
    let d = dev();
    let (d_in, d_out) = (6, 4);
    let w = Tensor::<AB, 2>::from_data(TensorData::new(values(4, d_in * d_out), [d_in, d_out]), &d);
    for network in [
        Network::Lokr {
            factor: -1,
            full_rank: false,
        },
        Network::Loha,
        Network::Dora,
    ] {
        let mut lin = LoraLinear::<AB>::from_weights(w.clone(), None).freeze_base();
        let mut spec = AdapterSpec::new(2, 2.0);
        spec.network = network;
        lin.add_adapter("g", &spec, &d).unwrap();
        let x = Tensor::<AB, 2>::from_data(TensorData::new(values(6, 3 * d_in), [3, d_in]), &d);
        let y = lin.forward(x);
        let target =
            Tensor::<AB, 2>::from_data(TensorData::new(values(7, 3 * d_out), [3, d_out]), &d);
        let grads = (y - target).powi_scalar(2).sum().backward();
        assert!(
            lin.weight.as_ref().unwrap().val().grad(&grads).is_none(),
            "{network}: base got a gradient"
        );
        let some = |p: &burn::module::Param<Tensor<AB, 2>>| {
            p.val()
                .grad(&grads)
                .map(|g| g.abs().sum().into_scalar())
                .unwrap_or(0.0)
        };
        let total = match &lin.lycoris[0] {
            LycorisAdapter::Lokr(a) => [&a.w1, &a.w2, &a.w2_a, &a.w2_b]
                .iter()
                .filter_map(|p| p.as_ref())
                .map(some)
                .sum::<f32>(),
            LycorisAdapter::Loha(a) => some(&a.w2_a),
            LycorisAdapter::Dora(a) => {
                let gm = a
                    .magnitude
                    .val()
                    .grad(&grads)
                    .expect("magnitude has a gradient");
                assert!(gm.abs().sum().into_scalar() > 0.0);
                some(&a.lora.lora_b)
            }
        };
        assert!(total > 0.0, "{network}: no gradient reached the adapter");
    }
}

fn fixture() -> SafeTensorsFile {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/parity/lycoris/expected.safetensors");
    SafeTensorsFile::open(p).expect("fixture present (fixtures/parity/make_lycoris_cases.py)")
}

#[test]
fn factorization_matches_lycoris() {
    let t = fixture().read_f32("factorization").unwrap();
    assert_eq!(t.shape[1], 4);
    for row in t.data.chunks(4) {
        let (dim, factor) = (row[0] as usize, row[1] as i64);
        assert_eq!(
            factorization(dim, factor),
            (row[2] as usize, row[3] as usize),
            "{dim} {factor}"
        );
    }
}

/// The LoKr and DoRA modules LyCORIS wrote (`lokr.safetensors`, `dora_lycoris.safetensors`),
/// placed on a `LoraLinear` over their base, merge to the weight LyCORIS's forward gives.
#[test]
fn lycoris_fixture_modules_give_the_reference_merged_weight() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/lycoris");
    let expected = fixture();
    let lokr = SafeTensorsFile::open(dir.join("lokr.safetensors")).unwrap();
    let dora = SafeTensorsFile::open(dir.join("dora_lycoris.safetensors")).unwrap();
    let host = |f: &SafeTensorsFile, k: &str| {
        let t = f.read_f32(k).unwrap();
        let s = t.shape.clone();
        (
            Tensor::<B, 2>::from_data(TensorData::new(t.data, [s[0], s[1]]), &dev()),
            s,
        )
    };
    let mut checked = 0;
    for (path, stem) in [
        (
            "double_blocks.0.img_attn.proj",
            "lora_unet_double_blocks_0_img_attn_proj",
        ),
        (
            "double_blocks.0.txt_attn.proj",
            "lora_unet_double_blocks_0_txt_attn_proj",
        ),
        (
            "single_blocks.0.linear2",
            "lora_unet_single_blocks_0_linear2",
        ),
        (
            "double_blocks.1.img_attn.proj",
            "lora_unet_double_blocks_1_img_attn_proj",
        ),
    ] {
        let base = expected.read_f32(&format!("{path}.base")).unwrap();
        let want = expected.read_f32(&format!("{path}.merged")).unwrap();
        let (o, i) = (base.shape[0], base.shape[1]);
        let w = Tensor::<B, 2>::from_data(TensorData::new(base.data.clone(), [o, i]), &dev())
            .transpose();
        let mut lin = LoraLinear::<B>::from_weights(w, None);
        let names: Vec<&str> = lokr.names().chain(dora.names()).collect();
        let has = |role: &str| names.contains(&format!("{stem}.{role}").as_str());
        let file = if has("lokr_w1") || has("lokr_w1_a") {
            &lokr
        } else {
            &dora
        };
        let alpha = file.read_scalar(&format!("{stem}.alpha")).unwrap();
        let factor = |name: &str| {
            if has(name) {
                Factor::Full(host(file, &format!("{stem}.{name}")).0)
            } else {
                Factor::LowRank(
                    host(file, &format!("{stem}.{name}_a")).0,
                    host(file, &format!("{stem}.{name}_b")).0,
                )
            }
        };
        let adapter = if has("lokr_w1") || has("lokr_w1_a") {
            LycorisAdapter::Lokr(LokrAdapter::from_factors(
                path,
                factor("lokr_w1"),
                factor("lokr_w2"),
                &AdapterSpec::new(1, alpha),
            ))
        } else {
            let (down, s) = host(file, &format!("{stem}.lora_down.weight"));
            let (up, _) = host(file, &format!("{stem}.lora_up.weight"));
            let lora = LoraAdapter::from_factors(
                path,
                down.transpose(),
                up.transpose(),
                &AdapterSpec::new(s[0], alpha),
            );
            let mag = file.read_f32(&format!("{stem}.dora_scale")).unwrap();
            assert_eq!(mag.shape, vec![o, 1], "per-output-channel dora_scale");
            let mag = Tensor::<B, 1>::from_data(TensorData::new(mag.data, [o]), &dev());
            LycorisAdapter::Dora(DoraAdapter::from_parts(path, lora, mag, None))
        };
        lin.push_lycoris(path, adapter).unwrap();
        lin.merge();
        let got = to_vec(lin.weight.as_ref().unwrap().val().transpose());
        close(&got, &f64s(&want.data), 2e-5).unwrap_or_else(|e| panic!("{path}: {e}"));
        checked += 1;
    }
    assert_eq!(checked, 4);
}
