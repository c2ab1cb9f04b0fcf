//! LoKr / LoHa → LoRA ("extract ΔW"): the module's dense `ΔW` ([`LycorisModule::delta`]),
//! truncated by SVD, becomes `up = U·√Σ`, `down = √Σ·Vᵀ`, `alpha = k` (scale 1), the best
//! rank-`k` approximation of ΔW (Eckart–Young) — a plain LoRA every tool loads.
//!
//! Matrices whose smaller side is at most [`EXACT_SVD_MAX_DIM`] get the exact Jacobi [`svd`];
//! larger ones (Flux's 3072-wide linears) the seeded [`randomized_svd`] at the rank asked for
//! (exact when ΔW's rank is within the sketch). With a Frobenius-fraction target and no rank cap
//! the sketch doubles until the kept singular values reach the fraction of `‖ΔW‖_F` (computed
//! from the dense ΔW), which for a full-rank change can mean the whole spectrum: give a cap to
//! bound the work.
//!
//! ΔW's rank is at most `rank(W1)·rank(W2)` for LoKr (the rank of a Kronecker product is the
//! product of the ranks) and `r₁·r₂` for LoHa (the rank of a Hadamard product is at most the
//! product of the ranks), and at most `min(out, in)` ([`rank_bound`]); no module is given more.

use super::linalg::{randomized_svd, svd, F32Matrix, Mat, Svd};
use super::resize::ResizeTarget;
use crate::error::Result;
use crate::lora::{KronFactor, LoraModule, LycorisModule};
use crate::tensor::HostTensor;

/// Largest `min(out, in)` for which the exact Jacobi SVD of the dense ΔW is used.
pub const EXACT_SVD_MAX_DIM: usize = 256;
/// Extra sketch columns of the randomized SVD.
const OVERSAMPLE: usize = 16;
/// Power iterations of the randomized SVD.
const POWER_ITERATIONS: usize = 4;
/// First sketch rank of the doubling search for a Frobenius fraction without a cap.
const FIRST_SKETCH: usize = 64;

/// The most ΔW's rank can be (see the module docs).
pub fn rank_bound(m: &LycorisModule) -> usize {
    let (out, inp) = m.dims();
    let factor_rank = |f: &KronFactor| {
        let (rows, cols) = f.dims().unwrap_or((0, 0));
        f.rank().unwrap_or(usize::MAX).min(rows).min(cols)
    };
    let product = match m {
        LycorisModule::Lokr { w1, w2, .. } => factor_rank(w1).saturating_mul(factor_rank(w2)),
        LycorisModule::Loha { w1_b, w2_b, .. } => {
            let r = |t: &HostTensor| t.shape.first().copied().unwrap_or(0);
            r(w1_b).saturating_mul(r(w2_b))
        }
    };
    product.min(out).min(inp)
}

/// What [`lycoris_to_lora`] kept of one module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToLoraStats {
    /// [`rank_bound`] of the LoKr / LoHa module.
    pub rank_bound: usize,
    /// Rank of the LoRA module.
    pub rank: usize,
    /// `‖ΔW_lora‖_F / ‖ΔW‖_F` (1 for a zero change).
    pub fro_retained: f64,
    /// Largest singular value of ΔW.
    pub sigma_max: f64,
}

/// Number of leading singular values whose energy reaches `fraction²·total`, or `None`.
fn reaches(s: &[f64], fraction: f64, total: f64) -> Option<usize> {
    if total == 0.0 {
        return Some(1);
    }
    let goal = fraction * fraction * total;
    let mut acc = 0.0;
    for (i, v) in s.iter().enumerate() {
        acc += v * v;
        // Relative slack so `fraction = 1` is met despite rounding in the sums.
        if acc >= goal * (1.0 - 1e-9) {
            return Some(i + 1);
        }
    }
    None
}

/// The top-`k` (or, on the exact path, every) singular triplets of `delta` `[out, inp]`.
fn top_svd(delta: &HostTensor, out: usize, inp: usize, k: usize) -> Svd {
    if out.min(inp) <= EXACT_SVD_MAX_DIM {
        return svd(&Mat::from_f32(out, inp, &delta.data));
    }
    let op = F32Matrix {
        rows: out,
        cols: inp,
        data: &delta.data,
    };
    randomized_svd(op, k, OVERSAMPLE, POWER_ITERATIONS, 0)
}

/// The LoRA module closest to `m`'s ΔW at the rank `target` asks for: `Rank(r)` gives rank
/// `min(r, rank_bound)`; `FroFraction` the fewest singular values keeping the fraction of
/// `‖ΔW‖_F`, at most the cap. The caller checks `target` itself (rank ≥ 1, fraction in
/// `(0, 1]`).
pub fn lycoris_to_lora(
    m: &LycorisModule,
    target: ResizeTarget,
) -> Result<(LoraModule, ToLoraStats)> {
    let delta = m.delta()?;
    let (out, inp) = m.dims();
    let bound = rank_bound(m).max(1);
    let total: f64 = delta.data.iter().map(|v| f64::from(*v).powi(2)).sum();
    let (d, k) = match target {
        ResizeTarget::Rank(r) => {
            let k = r.clamp(1, bound);
            (top_svd(&delta, out, inp, k), k)
        }
        ResizeTarget::FroFraction { fraction, max_rank } => {
            let cap = max_rank.unwrap_or(bound).clamp(1, bound);
            let mut sketch = if max_rank.is_some() {
                cap
            } else {
                FIRST_SKETCH.min(cap)
            };
            loop {
                let d = top_svd(&delta, out, inp, sketch);
                match reaches(&d.s, fraction, total) {
                    Some(k) => break (d, k.min(cap)),
                    None if sketch >= cap || d.s.len() >= out.min(inp) => break (d, cap),
                    None => sketch = (2 * sketch).min(cap),
                }
            }
        }
    };
    let k = k.min(d.s.len()).max(1);
    let s: Vec<f64> = (0..k).map(|i| d.s.get(i).copied().unwrap_or(0.0)).collect();
    let sqrt_s: Vec<f64> = s.iter().map(|v| v.sqrt()).collect();
    let up = d.u.first_cols(k).scale_cols(&sqrt_s);
    let down = d.v.first_cols(k).scale_cols(&sqrt_s).t();
    let kept: f64 = s.iter().map(|v| v * v).sum();
    let module = LoraModule::new(
        HostTensor::new(vec![k, inp], down.to_f32())?,
        HostTensor::new(vec![out, k], up.to_f32())?,
        k as f32,
    )?;
    let stats = ToLoraStats {
        rank_bound: bound,
        rank: k,
        fro_retained: if total > 0.0 {
            (kept / total).sqrt().min(1.0)
        } else {
            1.0
        },
        sigma_max: s.first().copied().unwrap_or(0.0),
    };
    Ok((module, stats))
}

#[cfg(test)]
mod tests {
    use super::super::linalg::GaussianRng;
    use super::*;

    fn t(rows: usize, cols: usize, seed: u64) -> HostTensor {
        HostTensor::new(
            vec![rows, cols],
            GaussianRng::new(seed).matrix(rows, cols).to_f32(),
        )
        .unwrap()
    }

    #[test]
    fn rank_bounds_follow_the_factors() {
        let lokr = LycorisModule::Lokr {
            w1: KronFactor::Full(t(4, 3, 1)),
            w2: KronFactor::LowRank {
                a: t(5, 2, 2),
                b: t(2, 6, 3),
            },
            alpha: Some(1.0),
        };
        // rank(W1) ≤ 3, rank(W2) ≤ 2 ⇒ 6 ≤ min(20, 18).
        assert_eq!(rank_bound(&lokr), 6);
        let loha = LycorisModule::Loha {
            w1_a: t(3, 4, 4),
            w1_b: t(4, 7, 5),
            w2_a: t(3, 4, 6),
            w2_b: t(4, 7, 7),
            alpha: None,
        };
        // 4·4 = 16, capped by min(3, 7).
        assert_eq!(rank_bound(&loha), 3);
    }

    /// A 320×288 LoKr (past the exact-SVD size) of rank 2·3 = 6: the randomized path recovers
    /// it exactly at rank 6, and at rank 2 keeps the two largest products σᵢ(W1)·σⱼ(W2).
    #[test]
    fn large_modules_use_the_randomized_path() {
        let m = LycorisModule::Lokr {
            w1: KronFactor::LowRank {
                a: t(16, 2, 14),
                b: t(2, 16, 15),
            },
            w2: KronFactor::LowRank {
                a: t(20, 3, 12),
                b: t(3, 18, 13),
            },
            alpha: Some(3.0),
        };
        assert!(m.dims().0.min(m.dims().1) > EXACT_SVD_MAX_DIM);
        let want = m.delta().unwrap();
        let (full, st) = lycoris_to_lora(&m, ResizeTarget::Rank(64)).unwrap();
        assert_eq!((st.rank_bound, st.rank), (6, 6));
        let err = full.delta().unwrap().max_abs_diff(&want).unwrap();
        assert!(err <= 1e-5 * want.max_abs(), "{err}");
        assert!((st.fro_retained - 1.0).abs() < 1e-6);
        let (low, st) = lycoris_to_lora(&m, ResizeTarget::Rank(2)).unwrap();
        assert_eq!(low.rank(), 2);
        // Singular values of the Kronecker product: products of the factors' ones.
        let dense = |f: &KronFactor| {
            let d = f.dense().unwrap();
            svd(&Mat::from_f32(d.shape[0], d.shape[1], &d.data)).s
        };
        let LycorisModule::Lokr { w1, w2, .. } = &m else {
            unreachable!()
        };
        let (s1, s2, scale) = (dense(w1), dense(w2), f64::from(m.scale()));
        let mut s: Vec<f64> = s1
            .iter()
            .flat_map(|a| s2.iter().map(move |b| a * b * scale))
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        let dropped: f64 = s[2..].iter().map(|v| v * v).sum();
        let got = low.delta().unwrap();
        let e: f64 = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        assert!(
            (e.sqrt() - dropped.sqrt()).abs() <= 1e-4 * s[0],
            "{} vs {}",
            e.sqrt(),
            dropped.sqrt()
        );
        assert!((st.sigma_max - s[0]).abs() <= 1e-4 * s[0]);
        // Frobenius fraction without a cap: the doubling search stops at the needed count.
        let (_, st) = lycoris_to_lora(
            &m,
            ResizeTarget::FroFraction {
                fraction: 1.0,
                max_rank: None,
            },
        )
        .unwrap();
        assert_eq!(st.rank, 6);
    }
}
