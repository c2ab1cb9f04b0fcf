//! Rank resizing by SVD, as kohya's `networks/resize_lora.py` does, without forming ΔW.
//!
//! For `ΔW = s·up·down` (`up: [out, r]`, `down: [r, in]`): QR-factor `up = Q_u·R_u` and
//! `downᵀ = Q_d·R_d`, take the SVD of the small core `s·R_u·R_dᵀ = U·Σ·Vᵀ`, so
//! `ΔW = (Q_u·U)·Σ·(Q_d·V)ᵀ`. Keeping the top `r'` singular values gives the best rank-`r'`
//! approximation (Eckart–Young); the new module is `up = Q_u·U·√Σ`,
//! `down = √Σ·Vᵀ·Q_dᵀ`, `alpha = r'` (scale 1, kohya's convention). The output-bias delta
//! is kept unchanged.
//!
//! [`ResizeTarget::FroFraction`] keeps the fewest singular values whose Frobenius norm is at
//! least the given fraction of the module's (kohya `sv_fro`; kohya's index arithmetic keeps
//! one value more than the criterion needs, this keeps exactly what it needs).
//!
//! LoKr / LoHa modules become LoRA modules the same way, from the SVD of their dense ΔW
//! ([`super::to_lora`]); their "old rank" is the most ΔW's rank can be
//! ([`rank_bound`]). DoRA modules are refused: their merged weight
//! `m ⊙ (W + ΔW)/‖W + ΔW‖` depends on the base weight, which no LoRA can express.

use std::collections::BTreeMap;
use std::path::Path;

use super::linalg::{qr_thin, svd, Mat};
use super::to_lora::{lycoris_to_lora, rank_bound};
use super::{op_error, output_format};
use crate::error::Result;
use crate::lora::{read_lora, write_lora_as, LoraFormat, LoraModule, LoraWeights};
use crate::safetensors::Dtype;
use crate::tensor::HostTensor;

/// What rank to resize to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeTarget {
    /// Every module gets rank `min(rank, its rank)`; `rank` must not exceed the LoRA's
    /// largest rank (resizing only lowers rank). A LoKr / LoHa module's rank here is the most
    /// its ΔW's rank can be ([`rank_bound`]).
    Rank(usize),
    /// Per module, the fewest singular values keeping `fraction` (in `(0, 1]`) of ΔW's
    /// Frobenius norm, at most `max_rank` when given.
    FroFraction {
        /// Share of ΔW's Frobenius norm to keep, in `(0, 1]`.
        fraction: f64,
        /// Upper bound on the chosen rank; `None` for no bound.
        max_rank: Option<usize>,
    },
}

/// What happened to one module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleResize {
    /// Canonical module key.
    pub key: String,
    /// What the module was: `lora`, `lokr` or `loha` (it is a LoRA module after the resize).
    pub kind: &'static str,
    /// Rank before the resize (for LoKr / LoHa the most their ΔW's rank can be).
    pub old_rank: usize,
    /// Rank after the resize.
    pub new_rank: usize,
    /// `‖ΔW_new‖_F / ‖ΔW_old‖_F` (1 for a zero module).
    pub fro_retained: f64,
    /// Largest singular value of ΔW.
    pub sigma_max: f64,
}

/// Per-module results of a resize, in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResizeReport {
    /// One entry per module.
    pub modules: Vec<ModuleResize>,
}

impl ResizeReport {
    /// Mean of the modules' `fro_retained` (1 when there are none).
    pub fn mean_fro_retained(&self) -> f64 {
        if self.modules.is_empty() {
            return 1.0;
        }
        self.modules.iter().map(|m| m.fro_retained).sum::<f64>() / self.modules.len() as f64
    }
}

/// The SVD of one module's ΔW in factored form: `ΔW = left·diag(s)·rightᵀ`.
struct FactoredSvd {
    left: Mat,
    s: Vec<f64>,
    right: Mat,
}

fn factored_svd(m: &LoraModule) -> FactoredSvd {
    let r = m.rank();
    let up = Mat::from_f32(m.out_features(), r, &m.up.data);
    let down_t = Mat::from_f32(r, m.in_features(), &m.down.data).t();
    let (qu, ru) = qr_thin(&up);
    let (qd, rd) = qr_thin(&down_t);
    let mut core = ru.matmul(&rd.t());
    let scale = f64::from(m.alpha) / r as f64;
    core.data.iter_mut().for_each(|v| *v *= scale);
    let d = svd(&core);
    FactoredSvd {
        left: qu.matmul(&d.u),
        s: d.s,
        right: qd.matmul(&d.v),
    }
}

/// The first module carrying a DoRA magnitude as an error, if any.
fn refuse_dora(lora: &LoraWeights, source: &Path) -> Result<()> {
    match lora.dora.keys().next() {
        None => Ok(()),
        Some(key) => Err(op_error(
            source,
            "resize the LoRA",
            format!(
                "module `{key}` carries a DoRA magnitude ({} DoRA modules in all): its merged \
                 weight m ⊙ (W + ΔW)/‖W + ΔW‖ depends on the base weight W, so no LoRA expresses \
                 it and resizing would drop the magnitude; keep the DoRA file, or merge it into \
                 the base (`lora merge`) and extract a LoRA from the result (`lora extract`)",
                lora.dora.len()
            ),
        )),
    }
}

/// Number of leading singular values whose norm reaches `fraction` of the total.
fn fro_rank(s: &[f64], fraction: f64) -> usize {
    let total: f64 = s.iter().map(|v| v * v).sum();
    if total == 0.0 {
        return 1;
    }
    let goal = fraction * fraction * total;
    let mut acc = 0.0;
    for (i, v) in s.iter().enumerate() {
        acc += v * v;
        // Relative slack so `fraction = 1` is met despite rounding in the sum.
        if acc >= goal * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    s.len()
}

/// Resizes every module of `lora`, turning LoKr / LoHa modules into LoRA modules (see the
/// module docs); a LoRA with DoRA magnitudes is refused. `source` names the file the LoRA came
/// from, for error messages. The metadata's `ss_network_dim`/`ss_network_alpha` are updated
/// and a note is prepended to `ss_training_comment`, as kohya does; a LyCORIS
/// `ss_network_module` becomes `networks.lora` and its `ss_network_args` are dropped.
pub fn resize_lora(
    lora: &LoraWeights,
    target: ResizeTarget,
    source: &Path,
) -> Result<(LoraWeights, ResizeReport)> {
    let err = |problem: String| op_error(source, "resize the LoRA", problem);
    refuse_dora(lora, source)?;
    let bounds = lora
        .modules
        .iter()
        .map(|(k, m)| (k, m.rank()))
        .chain(lora.lycoris.iter().map(|(k, m)| (k, rank_bound(m))));
    let (max_key, max_rank) = bounds
        .max_by_key(|(_, r)| *r)
        .map_or((None, 0), |(k, r)| (Some(k), r));
    match target {
        ResizeTarget::Rank(0)
        | ResizeTarget::FroFraction {
            max_rank: Some(0), ..
        } => {
            return Err(err("rank 0 is not a LoRA; ask for rank 1 or more".into()));
        }
        ResizeTarget::Rank(r) if r > max_rank => {
            let key = max_key.ok_or_else(|| err("the LoRA has no modules".into()))?;
            return Err(err(format!(
                "rank {r} > the LoRA's rank {max_rank} (module `{key}`); resize only lowers rank \
                 — ask for {max_rank} or less"
            )));
        }
        ResizeTarget::FroFraction { fraction, .. } if !(fraction > 0.0 && fraction <= 1.0) => {
            return Err(err(format!(
                "Frobenius fraction {fraction} is outside (0, 1]; e.g. 0.9 keeps 90% of each \
                 module's norm"
            )));
        }
        _ => {}
    }
    let mut out = LoraWeights {
        modules: BTreeMap::new(),
        metadata: lora.metadata.clone(),
        ..Default::default()
    };
    let mut report = ResizeReport::default();
    for (key, m) in &lora.modules {
        m.check().map_err(|p| err(format!("module `{key}`: {p}")))?;
        let f = factored_svd(m);
        let k = match target {
            ResizeTarget::Rank(r) => r.min(f.s.len()),
            ResizeTarget::FroFraction { fraction, max_rank } => {
                fro_rank(&f.s, fraction).min(max_rank.unwrap_or(usize::MAX))
            }
        }
        .clamp(1, f.s.len().max(1));
        let sqrt_s: Vec<f64> = f.s[..k].iter().map(|v| v.sqrt()).collect();
        let up = f.left.first_cols(k).scale_cols(&sqrt_s);
        let down = f.right.first_cols(k).scale_cols(&sqrt_s).t();
        let total: f64 = f.s.iter().map(|v| v * v).sum();
        let kept: f64 = f.s[..k].iter().map(|v| v * v).sum();
        let new = LoraModule {
            down: HostTensor {
                shape: vec![k, m.in_features()],
                data: down.to_f32(),
            },
            up: HostTensor {
                shape: vec![m.out_features(), k],
                data: up.to_f32(),
            },
            alpha: k as f32,
            up_bias: m.delta_bias(),
        };
        report.modules.push(ModuleResize {
            key: key.clone(),
            kind: "lora",
            old_rank: m.rank(),
            new_rank: k,
            fro_retained: if total > 0.0 {
                (kept / total).sqrt()
            } else {
                1.0
            },
            sigma_max: f.s.first().copied().unwrap_or(0.0),
        });
        out.modules.insert(key.clone(), new);
    }
    for (key, m) in &lora.lycoris {
        let module_err =
            |p: crate::error::IoError| err(format!("{} module `{key}`: {p}", m.kind()));
        m.check().map_err(module_err)?;
        let (new, st) = lycoris_to_lora(m, target).map_err(module_err)?;
        if out.modules.insert(key.clone(), new).is_some() {
            return Err(err(format!(
                "`{key}` is both a LoRA and a {} module; keep one",
                m.kind()
            )));
        }
        report.modules.push(ModuleResize {
            key: key.clone(),
            kind: m.kind(),
            old_rank: st.rank_bound,
            new_rank: st.rank,
            fro_retained: st.fro_retained,
            sigma_max: st.sigma_max,
        });
    }
    report.modules.sort_by(|a, b| a.key.cmp(&b.key));
    let comment = lora
        .metadata
        .get("ss_training_comment")
        .cloned()
        .unwrap_or_default();
    let (dim, alpha, mut note) = match target {
        ResizeTarget::Rank(r) => (
            r.to_string(),
            format!("{r}.0"),
            format!("dimension is resized from {max_rank} to {r}"),
        ),
        ResizeTarget::FroFraction { fraction, .. } => (
            "Dynamic".to_string(),
            "Dynamic".to_string(),
            format!("Dynamic resize with sv_fro: {fraction} from {max_rank}"),
        ),
    };
    if !lora.lycoris.is_empty() {
        note = format!(
            "{} LoKr/LoHa modules converted to LoRA by SVD, {note}",
            lora.lycoris.len()
        );
        if out
            .metadata
            .get("ss_network_module")
            .is_some_and(|v| v.starts_with("lycoris"))
        {
            out.metadata
                .insert("ss_network_module".into(), "networks.lora".into());
            out.metadata.remove("ss_network_args");
        }
    }
    out.metadata.insert("ss_network_dim".into(), dim);
    out.metadata.insert("ss_network_alpha".into(), alpha);
    out.metadata
        .insert("ss_training_comment".into(), format!("{note}; {comment}"));
    Ok((out, report))
}

/// Reads `input`, resizes it and writes `output` in `format` (default: the input's format when
/// writable, else kohya) with weights stored as `dtype` (default F32).
pub fn resize_lora_file(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    target: ResizeTarget,
    format: Option<LoraFormat>,
    dtype: Option<Dtype>,
) -> Result<ResizeReport> {
    let input = input.as_ref();
    let (lora, from) = read_lora(input)?;
    let (resized, report) = resize_lora(&lora, target, input)?;
    write_lora_as(
        output,
        &resized,
        output_format(format, from),
        &BTreeMap::new(),
        dtype.unwrap_or(Dtype::F32),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::linalg::GaussianRng;
    use super::*;
    use proptest::prelude::*;

    fn module(out: usize, inp: usize, r: usize, alpha: f32, seed: u64) -> LoraModule {
        let mut g = GaussianRng::new(seed);
        let down = g.matrix(r, inp).to_f32();
        let up = g.matrix(out, r).to_f32();
        LoraModule::new(
            HostTensor::new(vec![r, inp], down).unwrap(),
            HostTensor::new(vec![out, r], up).unwrap(),
            alpha,
        )
        .unwrap()
    }

    fn dense(m: &LoraModule) -> Mat {
        let d = m.delta().unwrap();
        Mat::from_f32(d.shape[0], d.shape[1], &d.data)
    }

    fn lora_of(m: LoraModule) -> LoraWeights {
        LoraWeights {
            modules: [("double_blocks.0.img_attn.proj".to_string(), m)].into(),
            metadata: BTreeMap::new(),
            ..Default::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Same rank: ΔW is unchanged (the new factors are an exact re-factorisation).
        #[test]
        fn same_rank_keeps_delta(out in 1usize..40, inp in 1usize..40, r in 1usize..12,
                                 alpha in 0.5f32..64.0, seed in any::<u64>()) {
            let m = module(out, inp, r, alpha, seed);
            let (res, rep) =
                resize_lora(&lora_of(m.clone()), ResizeTarget::Rank(r), Path::new("x")).unwrap();
            let n = &res.modules["double_blocks.0.img_attn.proj"];
            prop_assert_eq!(n.rank(), r.min(out).min(inp));
            prop_assert_eq!(n.alpha, n.rank() as f32);
            let (a, b) = (dense(&m), dense(n));
            let err = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
            prop_assert!(err <= 1e-4 * a.fro().max(1e-30), "relative error {}", err / a.fro());
            prop_assert!((rep.modules[0].fro_retained - 1.0).abs() < 1e-9);
        }

        /// Lower rank: the result equals the best rank-r' approximation from the dense SVD
        /// (an independent path: Jacobi SVD on the formed ΔW).
        #[test]
        fn lower_rank_is_best_approximation(out in 4usize..40, inp in 4usize..40, r in 3usize..10,
                                            seed in any::<u64>()) {
            let m = module(out, inp, r, 8.0, seed);
            let k = r.min(out).min(inp);
            let rp = k - 2;
            let (res, rep) =
                resize_lora(&lora_of(m.clone()), ResizeTarget::Rank(rp), Path::new("x")).unwrap();
            let n = &res.modules["double_blocks.0.img_attn.proj"];
            prop_assert_eq!(n.rank(), rp);
            let a = dense(&m);
            let best = svd(&a);
            // Singular values distinct enough for the best approximation to be unique.
            prop_assume!(best.s[rp - 1] - best.s[rp] > 1e-3 * best.s[0]);
            let want = best.reconstruct(rp);
            let got = dense(n);
            let diff =
                want.data.iter().zip(&got.data).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
            prop_assert!(diff <= 1e-4 * a.fro(), "{}", diff / a.fro());
            let kept: f64 = best.s[..rp].iter().map(|s| s * s).sum();
            let total: f64 = best.s.iter().map(|s| s * s).sum();
            prop_assert!((rep.modules[0].fro_retained - (kept / total).sqrt()).abs() < 1e-5);
        }
    }

    /// Known singular values: truncation error is √(Σ dropped σ²); the dynamic criterion keeps
    /// exactly the count the energies call for.
    #[test]
    fn known_singular_values() {
        let s = [10.0f64, 5.0, 2.0, 1.0];
        let (u, _) = qr_thin(&GaussianRng::new(1).matrix(12, 4));
        let (v, _) = qr_thin(&GaussianRng::new(2).matrix(9, 4));
        // alpha 2 at rank 4 ⇒ scale 0.5, so up carries 2·σ.
        let up = u.scale_cols(&s.map(|x| 2.0 * x));
        let m = LoraModule::new(
            HostTensor::new(vec![4, 9], v.t().to_f32()).unwrap(),
            HostTensor::new(vec![12, 4], up.to_f32()).unwrap(),
            2.0,
        )
        .unwrap();
        let (res, _) =
            resize_lora(&lora_of(m.clone()), ResizeTarget::Rank(2), Path::new("x")).unwrap();
        let n = &res.modules["double_blocks.0.img_attn.proj"];
        let diff = dense(&m)
            .data
            .iter()
            .zip(&dense(n).data)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((diff - (4.0f64 + 1.0).sqrt()).abs() < 1e-4, "{diff}");
        // Energies: 100, 125, 129, 130. 0.98² · 130 = 124.85 ⇒ 2 values; 0.99² · 130 = 127.4
        // ⇒ 3.
        let dynamic = |f: f64, cap| {
            resize_lora(
                &lora_of(m.clone()),
                ResizeTarget::FroFraction {
                    fraction: f,
                    max_rank: cap,
                },
                Path::new("x"),
            )
            .unwrap()
            .1
            .modules[0]
                .new_rank
        };
        assert_eq!(dynamic(0.98, None), 2);
        assert_eq!(dynamic(0.99, None), 3);
        assert_eq!(dynamic(1.0, None), 4);
        assert_eq!(dynamic(0.99, Some(2)), 2);
        assert_eq!(dynamic(0.5, None), 1);
    }

    #[test]
    fn rejects_raising_rank_and_bad_targets() {
        let lora = lora_of(module(8, 8, 4, 4.0, 3));
        let e =
            resize_lora(&lora, ResizeTarget::Rank(16), Path::new("in.safetensors")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("in.safetensors") && msg.contains("rank 16 > the LoRA's rank 4"),
            "{msg}"
        );
        assert!(msg.contains("double_blocks.0.img_attn.proj"), "{msg}");
        assert!(resize_lora(&lora, ResizeTarget::Rank(0), Path::new("x")).is_err());
        let bad = ResizeTarget::FroFraction {
            fraction: 1.5,
            max_rank: None,
        };
        assert!(resize_lora(&lora, bad, Path::new("x")).is_err());
    }

    #[test]
    fn keeps_bias_delta_and_updates_metadata() {
        let mut m = module(6, 5, 3, 6.0, 9);
        m.up_bias = Some(HostTensor::new(vec![6], vec![1., 2., 3., 4., 5., 6.]).unwrap());
        let mut lora = lora_of(m.clone());
        lora.metadata
            .insert("ss_training_comment".into(), "orig".into());
        let (res, _) = resize_lora(&lora, ResizeTarget::Rank(2), Path::new("x")).unwrap();
        let n = &res.modules["double_blocks.0.img_attn.proj"];
        // Δb = (6/3)·b before; alpha = rank after, so scale 1.
        assert_eq!(n.delta_bias().unwrap().data, vec![2., 4., 6., 8., 10., 12.]);
        assert_eq!(res.metadata["ss_network_dim"], "2");
        assert_eq!(res.metadata["ss_network_alpha"], "2.0");
        assert_eq!(
            res.metadata["ss_training_comment"],
            "dimension is resized from 3 to 2; orig"
        );
    }
}
