//! Memory-efficient attention from Burn tensor ops: `softmax(q·kᵀ·scale + bias)·v`, computed one
//! block of query rows at a time.
//!
//! The forward keeps only the output and each row's log-sum-exp (`[B, H, L]`); the backward
//! recomputes each block's scores from `q`, `k` and that log-sum-exp. The live score memory is one
//! block, `B·H·rows·L_k` values, whatever the sequence length: O(L·d) saved per head, never O(L²).
//!
//! This is the "query-chunked tensor ops" choice for every backend (CUDA and wgpu included), not a
//! CubeCL kernel: the block's two matmuls run on each backend's own tuned matmul, the code is the
//! same on all backends (so NdArray tests it), and it needs no kernel maintenance across cubecl
//! releases. The price is that each block's `[rows, L_k]` scores go through device memory once in
//! the forward and once in the backward, where a fused kernel would keep them on chip.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{backend::Backend, Tensor};

/// Score values one query block may hold live by default: 64 MiB of f32. At Flux.1's 1024²
/// (24 heads, 4,608 + 512 tokens) that is 136 query rows per block.
pub const DEFAULT_SCORE_BUDGET_BYTES: usize = 64 << 20;

static SCORE_BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_SCORE_BUDGET_BYTES);

/// Sets the process-wide score budget of [`crate::fused::attention()`]'s query blocks (at least
/// one row per block whatever the budget). Smaller budgets lower peak memory and add per-block
/// overhead; results do not change.
pub fn set_score_budget(bytes: usize) {
    SCORE_BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

/// The current score budget in bytes (see [`set_score_budget`]).
pub fn score_budget() -> usize {
    SCORE_BUDGET.load(Ordering::Relaxed)
}

/// Query rows per block so that one block's scores (`batch·heads·rows·keys` values of
/// `elem_bytes`) stay within `budget_bytes`; at least 1.
pub fn query_block_rows(
    batch: usize,
    heads: usize,
    keys: usize,
    elem_bytes: usize,
    budget_bytes: usize,
) -> usize {
    let per_row = (batch * heads * keys * elem_bytes).max(1);
    (budget_bytes / per_row).max(1)
}

/// The additive bias rows for queries `start..start + rows` (a bias broadcast over queries is
/// used whole).
fn bias_rows<B: Backend>(bias: &Tensor<B, 4>, start: usize, rows: usize) -> Tensor<B, 4> {
    if bias.dims()[2] == 1 {
        bias.clone()
    } else {
        bias.clone().narrow(2, start, rows)
    }
}

/// `q_block·kᵀ·scale (+ bias)`: `[B, H, rows, L_k]`.
fn scores<B: Backend>(
    q: Tensor<B, 4>,
    kt: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    start: usize,
    scale: f64,
) -> Tensor<B, 4> {
    let rows = q.dims()[2];
    let s = q.mul_scalar(scale).matmul(kt.clone());
    match bias {
        Some(b) => s + bias_rows(b, start, rows),
        None => s,
    }
}

/// Row blocks `(start, rows)` covering `0..len`.
fn blocks(len: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(rows.max(1))
        .map(move |s| (s, rows.min(len - s)))
}

/// The softmax of one block's scores `[B, H, rows, L_k]` over the keys, and each row's
/// log-sum-exp `[B, H, rows, 1]`, from Burn ops (the row maximum is subtracted first).
pub fn softmax_rows<B: Backend>(s: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let m = s.clone().max_dim(3);
    let e = (s - m.clone()).exp();
    let l = e.clone().sum_dim(3);
    (e / l.clone(), m + l.log())
}

/// The block's probabilities `P = exp(S − lse)` and score gradient `dS = P ∘ (dP − delta)`, from
/// Burn ops.
pub fn softmax_rows_backward<B: Backend>(
    s: Tensor<B, 4>,
    lse: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    delta: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let p = (s - lse).exp();
    let ds = p.clone() * (dp - delta);
    (p, ds)
}

/// Forward: the attention output `[B, H, L_q, D]` and each row's log-sum-exp `[B, H, L_q, 1]`.
///
/// `q: [B, H, L_q, D]`, `k`, `v: [B, H, L_k, D]`; `bias` broadcasts to `[B, H, L_q, L_k]` (use a
/// large negative value, or `-inf`, to mask a key; every row must keep at least one key).
pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
    block_rows: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    forward_with(q, k, v, bias, scale, block_rows, softmax_rows)
}

/// [`forward`] with the block softmax `softmax(S) → (P, lse)` supplied (a backend's own kernel).
pub fn forward_with<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
    block_rows: usize,
    softmax: impl Fn(Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>),
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let l_q = q.dims()[2];
    let kt = k.swap_dims(2, 3);
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for (start, rows) in blocks(l_q, block_rows) {
        let qb = take(&q, start, rows, l_q);
        let (p, lse) = softmax(scores(qb, &kt, bias.as_ref(), start, scale));
        outs.push(p.matmul(v.clone()));
        lses.push(lse);
    }
    (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
}

/// Rows `start..start + rows` of `t` along the query axis (all of it without a copy).
fn take<B: Backend>(t: &Tensor<B, 4>, start: usize, rows: usize, len: usize) -> Tensor<B, 4> {
    if rows == len {
        t.clone()
    } else {
        t.clone().narrow(2, start, rows)
    }
}

/// Backward: `(dq, dk, dv)` from the forward's inputs, its output and log-sum-exp, and the output
/// gradient `dout`, recomputing each block's probabilities `P = exp(S − lse)`:
/// `dv = Σ Pᵀ·dO`, `dS = P ∘ (dO·vᵀ − rowsum(dO ∘ O))`, `dq = dS·k·scale`, `dk = Σ dSᵀ·q·scale`.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 4>,
    dout: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
    block_rows: usize,
) -> [Tensor<B, 4>; 3] {
    let inputs = [q, k, v, out, lse, dout];
    backward_with(inputs, bias, scale, block_rows, softmax_rows_backward)
}

/// [`backward`] with the block step `(S, lse, dP, delta) → (P, dS)` supplied; `inputs` are
/// `[q, k, v, out, lse, dout]`.
pub fn backward_with<B: Backend>(
    inputs: [Tensor<B, 4>; 6],
    bias: Option<Tensor<B, 4>>,
    scale: f64,
    block_rows: usize,
    step: impl Fn(
        Tensor<B, 4>,
        Tensor<B, 4>,
        Tensor<B, 4>,
        Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>),
) -> [Tensor<B, 4>; 3] {
    let [q, k, v, out, lse, dout] = inputs;
    let l_q = q.dims()[2];
    let kt = k.clone().swap_dims(2, 3);
    let vt = v.clone().swap_dims(2, 3);
    let mut dq = Vec::new();
    let mut dk: Option<Tensor<B, 4>> = None;
    let mut dv: Option<Tensor<B, 4>> = None;
    for (start, rows) in blocks(l_q, block_rows) {
        let qb = take(&q, start, rows, l_q);
        let dob = take(&dout, start, rows, l_q);
        let delta = (dob.clone() * take(&out, start, rows, l_q)).sum_dim(3);
        let s = scores(qb.clone(), &kt, bias.as_ref(), start, scale);
        let dp = dob.clone().matmul(vt.clone());
        let (p, ds) = step(s, take(&lse, start, rows, l_q), dp, delta);
        let dvb = p.swap_dims(2, 3).matmul(dob);
        dq.push(ds.clone().matmul(k.clone()).mul_scalar(scale));
        let dkb = ds.swap_dims(2, 3).matmul(qb).mul_scalar(scale);
        dk = Some(match dk {
            Some(acc) => acc + dkb,
            None => dkb,
        });
        dv = Some(match dv {
            Some(acc) => acc + dvb,
            None => dvb,
        });
    }
    let dk = dk.unwrap_or_else(|| k.zeros_like());
    let dv = dv.unwrap_or_else(|| v.zeros_like());
    [Tensor::cat(dq, 2), dk, dv]
}
