//! Host (CPU) kernels of the fused training ops: what the NdArray backend runs for each fused op.
//!
//! Each function is the exact math of the unfused Burn composition it replaces (the formula is in
//! its doc), written as plain loops over row-major (C-contiguous) `&[f32]` slices with every
//! shape passed explicitly. Work is split over rows with rayon; inputs under [`PAR_THRESHOLD`]
//! elements run on the calling thread. Inner loops walk zipped slices (`chunks_exact`, no indexing)
//! so that LLVM can vectorise them, and row sums are kept in eight lanes for the same reason.
//!
//! The reductions over rows in the backward passes (`dshift`, `dscale`) are summed in blocks whose
//! size depends only on the shape, and the block partials are then added in a fixed order, so the
//! result is bit-identical whatever the number of threads (and on the sequential path).
//!
//! Length mismatches are caught by `debug_assert`s only; `eps` is always passed in.

use rayon::prelude::*;

/// Inputs with fewer elements than this run sequentially (rayon's overhead would dominate).
pub const PAR_THRESHOLD: usize = 16 * 1024;

/// Target number of elements per block of rows (the unit of parallel work and of partial sums).
const BLOCK_ELEMS: usize = 8 * 1024;

/// Lanes of the row accumulators (one AVX register of f32).
const LANES: usize = 8;

/// `2·√(2/π)`: the gelu tanh form written through the logistic function, `0.5(1+tanh(a)) = σ(2a)`.
const GELU_K: f32 = 1.595_769_2;
/// The cubic coefficient of the gelu tanh approximation.
const GELU_C: f32 = 0.044_715;
/// Past this |x|, σ(u) is exactly 0 or 1 in f32, so clamping x there changes nothing but keeps
/// `x³` and `e^(−u)` finite (no `0·∞`).
const GELU_CLAMP: f32 = 30.0;

/// Whether an input of `n` elements takes the parallel path.
fn parallel(n: usize) -> bool {
    n >= PAR_THRESHOLD
}

/// Rows per block for rows of `width` elements (at least one).
fn block_rows(width: usize) -> usize {
    (BLOCK_ELEMS / width.max(1)).max(1)
}

/// Calls `f(index, chunk)` on each `chunk`-sized piece of `data` (in parallel when `par`) and
/// returns the results in chunk order.
fn map_chunks<T, F>(data: &mut [f32], chunk: usize, par: bool, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, &mut [f32]) -> T + Sync + Send,
{
    if data.is_empty() {
        return Vec::new();
    }
    if par {
        let min = (BLOCK_ELEMS / chunk).max(1);
        data.par_chunks_mut(chunk)
            .with_min_len(min)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    } else {
        data.chunks_mut(chunk)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    }
}

/// Adds eight lane accumulators and a tail in a fixed (pairwise) order.
#[inline(always)]
fn fold_lanes(acc: [f32; LANES], tail: f32) -> f32 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// `Σ f(a_i)`, accumulated in eight lanes.
#[inline(always)]
fn reduce1(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(0.0, |s, &v| s + f(v));
    for c in chunks {
        for (s, &v) in acc.iter_mut().zip(c) {
            *s += f(v);
        }
    }
    fold_lanes(acc, tail)
}

/// `Σ f(a_i, b_i)`, accumulated in eight lanes.
#[inline(always)]
fn reduce2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(0.0, |s, (&u, &v)| s + f(u, v));
    for (ca, cb) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(ca).zip(cb) {
            *s += f(u, v);
        }
    }
    fold_lanes(acc, tail)
}

/// Mean and `1/√(var + eps)` of a row (biased variance, two passes).
#[inline(always)]
fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = reduce1(x, |v| v) / n;
    let var = reduce1(x, |v| (v - mean) * (v - mean)) / n;
    (mean, (var + eps).sqrt().recip())
}

/// `1/√(mean(x²) + eps)` of a row.
#[inline(always)]
fn rrms(x: &[f32], eps: f32) -> f32 {
    (reduce1(x, |v| v * v) / x.len() as f32 + eps)
        .sqrt()
        .recip()
}

/// Adds the partials (each `[a | b]`, `2·width` long) into `a` and `b` in order.
fn add_partials(parts: &[Vec<f32>], a: &mut [f32], b: &mut [f32]) {
    for p in parts {
        let (pa, pb) = p.split_at(a.len());
        a.iter_mut().zip(pa).for_each(|(s, &v)| *s += v);
        b.iter_mut().zip(pb).for_each(|(s, &v)| *s += v);
    }
}

/// Modulated layer norm (no affine), the replacement of `layer_norm(x)·(1 + scale) + shift`.
///
/// `x` is `[batch, len, ch]`; `shift` and `scale` are `[batch, ch]`, broadcast over `len`. Per
/// row: `mean = Σx/ch`, `var = Σ(x − mean)²/ch` (biased, two-pass), `rstd = 1/√(var + eps)`,
/// `n = (x − mean)·rstd`, `y = n·(1 + scale) + shift`.
pub fn modulate_forward(
    x: &[f32],
    shift: &[f32],
    scale: &[f32],
    batch: usize,
    len: usize,
    ch: usize,
    eps: f32,
) -> Vec<f32> {
    debug_assert_eq!(x.len(), batch * len * ch);
    debug_assert_eq!(shift.len(), batch * ch);
    debug_assert_eq!(scale.len(), batch * ch);
    let mut out = vec![0.0; x.len()];
    map_chunks(&mut out, ch, parallel(x.len()), |r, y| {
        let b = r / len;
        let x = &x[r * ch..][..ch];
        let (sh, sc) = (&shift[b * ch..][..ch], &scale[b * ch..][..ch]);
        let (mean, rstd) = mean_rstd(x, eps);
        for (((y, &x), &sh), &sc) in y.iter_mut().zip(x).zip(sh).zip(sc) {
            *y = (x - mean) * rstd * (1.0 + sc) + sh;
        }
    });
    out
}

/// Backward of [`modulate_forward`]: returns `(dx [batch, len, ch], dshift [batch, ch],
/// dscale [batch, ch])`.
///
/// `n` and `rstd` are recomputed per row. `dshift = Σ_len dy`, `dscale = Σ_len dy·n`,
/// `g = dy·(1 + scale)`, `dx = rstd·(g − mean_ch(g) − n·mean_ch(g·n))`. The sums over `len` are
/// taken per block of rows and the partials added in block order (deterministic).
pub fn modulate_backward(
    x: &[f32],
    scale: &[f32],
    dy: &[f32],
    batch: usize,
    len: usize,
    ch: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    debug_assert_eq!(x.len(), batch * len * ch);
    debug_assert_eq!(dy.len(), x.len());
    debug_assert_eq!(scale.len(), batch * ch);
    let mut dx = vec![0.0; x.len()];
    let mut dshift = vec![0.0; batch * ch];
    let mut dscale = vec![0.0; batch * ch];
    let (par, rows) = (parallel(x.len()), block_rows(ch));
    let per_batch = map_chunks(&mut dx, len * ch, par, |b, dxb| {
        let sc = &scale[b * ch..][..ch];
        map_chunks(dxb, rows * ch, par, |k, blk| {
            let mut part = vec![0.0; 2 * ch];
            let (ps, pc) = part.split_at_mut(ch);
            for (i, g) in blk.chunks_exact_mut(ch).enumerate() {
                let r = b * len + k * rows + i;
                let (x, dy) = (&x[r * ch..][..ch], &dy[r * ch..][..ch]);
                let (mean, rstd) = mean_rstd(x, eps);
                for ((ps, pc), (&x, &dy)) in ps.iter_mut().zip(pc.iter_mut()).zip(x.iter().zip(dy))
                {
                    *ps += dy;
                    *pc += dy * ((x - mean) * rstd);
                }
                for ((g, &dy), &s) in g.iter_mut().zip(dy).zip(sc) {
                    *g = dy * (1.0 + s);
                }
                let mg = reduce1(g, |v| v) / ch as f32;
                let mgn = reduce2(g, x, |g, x| g * ((x - mean) * rstd)) / ch as f32;
                for (g, &x) in g.iter_mut().zip(x) {
                    *g = rstd * (*g - mg - (x - mean) * rstd * mgn);
                }
            }
            part
        })
    });
    for ((parts, ds), dc) in per_batch
        .iter()
        .zip(dshift.chunks_mut(ch))
        .zip(dscale.chunks_mut(ch))
    {
        add_partials(parts, ds, dc);
    }
    (dx, dshift, dscale)
}

/// RMS norm with a learned scale, the replacement of `x·rsqrt(mean(x²) + eps)·scale`.
///
/// `x` is `[rows, d]`, `scale` is `[d]`. Per row: `rrms = 1/√(Σx²/d + eps)`, `y = x·rrms·scale`.
pub fn rms_norm_forward(x: &[f32], scale: &[f32], rows: usize, d: usize, eps: f32) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * d);
    debug_assert_eq!(scale.len(), d);
    let mut out = vec![0.0; x.len()];
    map_chunks(&mut out, d, parallel(x.len()), |r, y| {
        let x = &x[r * d..][..d];
        let rr = rrms(x, eps);
        for ((y, &x), &s) in y.iter_mut().zip(x).zip(scale) {
            *y = x * rr * s;
        }
    });
    out
}

/// Backward of [`rms_norm_forward`]: returns `(dx [rows, d], dscale [d])`.
///
/// `g = dy·scale`, `dx = rrms·(g − x·rrms²·mean_d(g·x))`, `dscale = Σ_rows dy·x·rrms` (summed per
/// block of rows, partials added in block order: deterministic).
pub fn rms_norm_backward(
    x: &[f32],
    scale: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    debug_assert_eq!(x.len(), rows * d);
    debug_assert_eq!(dy.len(), x.len());
    debug_assert_eq!(scale.len(), d);
    let mut dx = vec![0.0; x.len()];
    let mut dscale = vec![0.0; d];
    let block = block_rows(d);
    let parts = map_chunks(&mut dx, block * d, parallel(x.len()), |k, blk| {
        let mut part = vec![0.0; d];
        for (i, g) in blk.chunks_exact_mut(d).enumerate() {
            let r = k * block + i;
            let (x, dy) = (&x[r * d..][..d], &dy[r * d..][..d]);
            let rr = rrms(x, eps);
            for ((p, &x), &dy) in part.iter_mut().zip(x).zip(dy) {
                *p += dy * x * rr;
            }
            for ((g, &dy), &s) in g.iter_mut().zip(dy).zip(scale) {
                *g = dy * s;
            }
            let c = rr * rr * reduce2(g, x, |g, x| g * x) / d as f32;
            for (g, &x) in g.iter_mut().zip(x) {
                *g = rr * (*g - x * c);
            }
        }
        part
    });
    for p in &parts {
        dscale.iter_mut().zip(p).for_each(|(s, &v)| *s += v);
    }
    (dx, dscale)
}

/// Rotary position embedding on interleaved pairs, the replacement of the pair-reshape,
/// rotate and flatten composition.
///
/// `x` is `[batch, heads, len, d]` with `d` even; `cos` and `sin` are `[batch, len, d/2]`, one
/// angle per consecutive pair, shared by all heads. For pair `j` of a row, with
/// `(x0, x1) = (x[2j], x[2j+1])`: `out[2j] = c·x0 − s·x1`, `out[2j+1] = s·x0 + c·x1`, where `s` is
/// negated when `inverse` (the inverse rotation, which is also the backward pass).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    batch: usize,
    heads: usize,
    len: usize,
    d: usize,
    inverse: bool,
) -> Vec<f32> {
    debug_assert_eq!(d % 2, 0);
    debug_assert_eq!(x.len(), batch * heads * len * d);
    debug_assert_eq!(cos.len(), batch * len * (d / 2));
    debug_assert_eq!(sin.len(), cos.len());
    let half = d / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    let mut out = vec![0.0; x.len()];
    map_chunks(&mut out, d, parallel(x.len()), |r, o| {
        let a = (r / (heads * len) * len + r % len) * half;
        let (c, s) = (&cos[a..][..half], &sin[a..][..half]);
        let xr = &x[r * d..][..d];
        for (((o, p), &c), &s) in o.chunks_exact_mut(2).zip(xr.chunks_exact(2)).zip(c).zip(s) {
            let s = sign * s;
            o[0] = c * p[0] - s * p[1];
            o[1] = s * p[0] + c * p[1];
        }
    });
    out
}

/// `σ(u)` of gelu-tanh with `u = k·(x + 0.044715·x³)`, x clamped where σ is already 0 or 1.
#[inline(always)]
fn gelu_sigma(x: f32) -> (f32, f32) {
    let xc = x.clamp(-GELU_CLAMP, GELU_CLAMP);
    let u = GELU_K * (xc + GELU_C * xc * xc * xc);
    (xc, 1.0 / (1.0 + (-u).exp()))
}

/// `f(x_i, dy_i)` elementwise, in parallel blocks of `BLOCK_ELEMS`.
fn elementwise(x: &[f32], dy: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    map_chunks(&mut out, BLOCK_ELEMS, parallel(x.len()), |k, o| {
        let (x, dy) = (
            &x[k * BLOCK_ELEMS..][..o.len()],
            &dy[k * BLOCK_ELEMS..][..o.len()],
        );
        for ((o, &x), &dy) in o.iter_mut().zip(x).zip(dy) {
            *o = f(x, dy);
        }
    });
    out
}

/// Gelu, tanh approximation, the replacement of `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// Computed as `y = x·σ(u)`, `u = k·(x + 0.044715·x³)`, `k = 2·√(2/π) = 1.5957691216057308`,
/// `σ(u) = 1/(1 + e^(−u))` (equal to the tanh form). Finite for any finite `x`: for large |x|,
/// σ comes out exactly 0 or 1, so `gelu(1e4) = 1e4` and `gelu(−1e4) = 0`.
pub fn gelu_tanh_forward(x: &[f32]) -> Vec<f32> {
    elementwise(x, x, |x, _| x * gelu_sigma(x).1)
}

/// Backward of [`gelu_tanh_forward`].
///
/// `dx = dy·(σ(u) + x·σ(u)·(1 − σ(u))·k·(1 + 3·0.044715·x²))`, with `u`, `k` and `σ` as in the
/// forward. Finite for any finite `x` (the second term is exactly 0 where σ saturates).
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert_eq!(x.len(), dy.len());
    elementwise(x, dy, |x, dy| {
        let (xc, s) = gelu_sigma(x);
        dy * (s + xc * s * (1.0 - s) * GELU_K * (1.0 + 3.0 * GELU_C * xc * xc))
    })
}

/// Gated residual, the replacement of `x + gate.unsqueeze(1)·y`.
///
/// `x` and `y` are `[batch, len, ch]`, `gate` is `[batch, ch]`, broadcast over `len`:
/// `out = x + gate·y`.
pub fn gated_residual(
    x: &[f32],
    gate: &[f32],
    y: &[f32],
    batch: usize,
    len: usize,
    ch: usize,
) -> Vec<f32> {
    debug_assert_eq!(x.len(), batch * len * ch);
    debug_assert_eq!(y.len(), x.len());
    debug_assert_eq!(gate.len(), batch * ch);
    let mut out = vec![0.0; x.len()];
    map_chunks(&mut out, ch, parallel(x.len()), |r, o| {
        let g = &gate[r / len * ch..][..ch];
        let (x, y) = (&x[r * ch..][..ch], &y[r * ch..][..ch]);
        for (((o, &x), &g), &y) in o.iter_mut().zip(x).zip(g).zip(y) {
            *o = x + g * y;
        }
    });
    out
}

/// Row softmax of one attention block in place: each row of `s` (`cols` wide, row-major)
/// becomes `exp(s − m) / l` with `m` its maximum and `l = Σ exp(s − m)`; returns each row's
/// log-sum-exp `m + ln l`. Rows are independent and run in parallel.
pub fn softmax_rows(s: &mut [f32], cols: usize) -> Vec<f32> {
    let par = parallel(s.len());
    map_chunks(s, cols.max(1), par, |_, row| {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut l = 0.0f32;
        for x in row.iter_mut() {
            *x = (*x - m).exp();
            l += *x;
        }
        let inv = 1.0 / l;
        for x in row.iter_mut() {
            *x *= inv;
        }
        m + l.ln()
    })
}

/// A row of scores and a row of their gradient, with the row's log-sum-exp and delta.
type RowPair<'a> = ((&'a mut [f32], &'a mut [f32]), (&'a f32, &'a f32));

/// One attention block's backward elementwise step, in place: each row of `s` becomes
/// `P = exp(s − lse)` and each row of `dp` becomes `dS = P ∘ (dp − delta)` (`lse`, `delta`: one
/// value a row). Rows run in parallel.
pub fn softmax_rows_backward(
    s: &mut [f32],
    lse: &[f32],
    dp: &mut [f32],
    delta: &[f32],
    cols: usize,
) {
    debug_assert_eq!(s.len(), dp.len());
    debug_assert_eq!(lse.len() * cols, s.len());
    debug_assert_eq!(delta.len(), lse.len());
    let cols = cols.max(1);
    let step = |((row, drow), (&lse, &delta)): RowPair<'_>| {
        for (p, d) in row.iter_mut().zip(drow.iter_mut()) {
            *p = (*p - lse).exp();
            *d = *p * (*d - delta);
        }
    };
    if parallel(s.len()) {
        let min = block_rows(cols);
        s.par_chunks_mut(cols)
            .zip(dp.par_chunks_mut(cols))
            .zip(lse.par_iter().zip(delta.par_iter()))
            .with_min_len(min)
            .for_each(step);
    } else {
        s.chunks_mut(cols)
            .zip(dp.chunks_mut(cols))
            .zip(lse.iter().zip(delta.iter()))
            .for_each(step);
    }
}

#[cfg(test)]
#[path = "cpu_tests.rs"]
mod tests;
