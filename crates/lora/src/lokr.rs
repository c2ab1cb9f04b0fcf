//! LoKr (LyCORIS `kron`): `ΔW = m · scale · kron(W1, W2)`.
//!
//! Factors are kept in the file's (PyTorch) layout, as LyCORIS and ComfyUI store them:
//! `W1 [out_l, in_m]` (or `W1a [out_l, r]·W1b [r, in_m]`), `W2 [out_k, in_n]` (or
//! `W2a [out_k, r]·W2b [r, in_n]`), so `ΔW [out_l·out_k, in_m·in_n]` has the base's
//! `[d_out, d_in]` shape, with `ΔW[i·out_k + p, j·in_n + q] = W1[i, j]·W2[p, q]`.
//!
//! Scale, as ComfyUI's `weight_adapter/lokr.py` applies it (and LyCORIS's `LokrModule` trains
//! it): `alpha / r` where `r` is the inner dimension of the decomposed factor (W2's when W2 is
//! decomposed, else W1's); `1` when both factors are full (LyCORIS then stores `alpha = r`).
//!
//! Dropouts as LyCORIS defines them for LoKr/LoHa: `dropout` drops elements of the adapter's
//! output `ΔW·x`, `rank_dropout` whole output channels of ΔW (both rescaled by `1/(1-p)`, as
//! `nn.Dropout`), `module_dropout` skips the adapter for a step.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adapter::AdapterSpec;
use crate::error::LoraError;
use crate::lycoris::{self, kron};
use crate::param_id::stable_param_id;

/// LyCORIS's `factorization(dimension, factor)`: `(m, n)` with `m·n = dimension`, `m ≤ n`.
///
/// With `factor > 0` dividing `dimension`, `m = factor` (swapped if larger than `n`); else the
/// most balanced split whose smaller part does not exceed `factor` (`-1` = no limit):
/// `128 → (8, 16)`, `360 → (18, 20)` for `-1`, `512 → (4, 128)` for 4.
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        let m = factor as usize;
        let n = dimension / m;
        return if m > n { (n, m) } else { (m, n) };
    }
    let limit = if factor < 0 {
        dimension
    } else {
        factor as usize
    };
    let (mut m, mut n) = (1usize, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dimension.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > limit {
            break;
        }
        m = new_m;
        n = new_n;
    }
    if m > n {
        (n, m)
    } else {
        (m, n)
    }
}

/// One Kronecker factor: full, or the product of two low-rank matrices.
#[derive(Debug, Clone)]
pub enum Factor<B: Backend> {
    /// The whole matrix.
    Full(Tensor<B, 2>),
    /// `a [rows, r] · b [r, cols]`.
    LowRank(Tensor<B, 2>, Tensor<B, 2>),
}

/// A LoKr adapter.
#[derive(Module, Debug)]
pub struct LokrAdapter<B: Backend> {
    /// `lokr_w1 [out_l, in_m]`, when W1 is full.
    pub w1: Option<Param<Tensor<B, 2>>>,
    /// `lokr_w1_a [out_l, r]`, when W1 is decomposed.
    pub w1_a: Option<Param<Tensor<B, 2>>>,
    /// `lokr_w1_b [r, in_m]`, when W1 is decomposed.
    pub w1_b: Option<Param<Tensor<B, 2>>>,
    /// `lokr_w2 [out_k, in_n]`, when W2 is full.
    pub w2: Option<Param<Tensor<B, 2>>>,
    /// `lokr_w2_a [out_k, r]`, when W2 is decomposed.
    pub w2_a: Option<Param<Tensor<B, 2>>>,
    /// `lokr_w2_b [r, in_n]`, when W2 is decomposed.
    pub w2_b: Option<Param<Tensor<B, 2>>>,
    /// Alpha (see the module docs for the scale).
    pub alpha: f32,
    /// Forward-time multiplier.
    pub multiplier: f32,
    /// Output dropout probability.
    pub dropout: f64,
    /// Output-channel dropout probability.
    pub rank_dropout: f64,
    /// Module dropout probability.
    pub module_dropout: f64,
    /// Output rows written, `None` = all.
    #[module(skip)]
    pub rows: Option<(usize, usize)>,
}

fn param<B: Backend>(tag: &str, role: &str, t: Tensor<B, 2>) -> Param<Tensor<B, 2>> {
    Param::initialized(stable_param_id(tag, role), t.require_grad())
}

impl<B: Backend> LokrAdapter<B> {
    /// A fresh adapter for a linear `d_in → d_out`, initialised as LyCORIS does: W1 full and
    /// kaiming-uniform; W2 zero when full (`full_rank`, or a rank of at least half W2's larger
    /// side), else W2a kaiming-uniform and W2b zero — so ΔW starts at zero.
    pub fn init(
        path: &str,
        d_in: usize,
        d_out: usize,
        spec: &AdapterSpec,
        factor: i64,
        full_rank: bool,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        spec.validate(path)?;
        let (start, end) = lycoris::check_rows(path, spec.rows, d_out)?;
        let rows = end - start;
        let (in_m, in_n) = factorization(d_in, factor);
        let (out_l, out_k) = factorization(rows, factor);
        let r = spec.rank;
        let w1 = lycoris::kaiming([out_l, in_m], device);
        let full_w2 = full_rank || 2 * r >= out_k.max(in_n);
        let w2 = if full_w2 {
            Factor::Full(Tensor::zeros([out_k, in_n], device))
        } else {
            Factor::LowRank(
                lycoris::kaiming([out_k, r], device),
                Tensor::zeros([r, in_n], device),
            )
        };
        let mut spec = spec.clone();
        if full_w2 {
            // LyCORIS stores alpha = lora_dim when both factors are full (scale 1).
            spec.alpha = r as f32;
        }
        Ok(Self::from_factors(path, Factor::Full(w1), w2, &spec))
    }

    /// An adapter from given factors (file layout); ids derive from `path` and the row range.
    pub fn from_factors(path: &str, w1: Factor<B>, w2: Factor<B>, spec: &AdapterSpec) -> Self {
        let tag = lycoris::tag(path, spec.rows);
        let (w1, w1_a, w1_b) = match w1 {
            Factor::Full(w) => (Some(param(&tag, "lokr_w1", w)), None, None),
            Factor::LowRank(a, b) => (
                None,
                Some(param(&tag, "lokr_w1_a", a)),
                Some(param(&tag, "lokr_w1_b", b)),
            ),
        };
        let (w2, w2_a, w2_b) = match w2 {
            Factor::Full(w) => (Some(param(&tag, "lokr_w2", w)), None, None),
            Factor::LowRank(a, b) => (
                None,
                Some(param(&tag, "lokr_w2_a", a)),
                Some(param(&tag, "lokr_w2_b", b)),
            ),
        };
        Self {
            w1,
            w1_a,
            w1_b,
            w2,
            w2_a,
            w2_b,
            alpha: spec.alpha,
            multiplier: spec.multiplier,
            dropout: spec.dropout,
            rank_dropout: spec.rank_dropout,
            module_dropout: spec.module_dropout,
            rows: spec.rows,
        }
    }

    /// The inner dimension the scale divides by: W2's when decomposed, else W1's; `None` when
    /// both factors are full.
    pub fn rank(&self) -> Option<usize> {
        match (&self.w2_b, &self.w1_b) {
            (Some(b), _) | (None, Some(b)) => Some(b.dims()[0]),
            (None, None) => None,
        }
    }

    /// `alpha / rank`, or 1 when both factors are full.
    pub fn scale(&self) -> f32 {
        self.rank().map_or(1.0, |r| self.alpha / r as f32)
    }

    fn dense(
        full: &Option<Param<Tensor<B, 2>>>,
        a: &Option<Param<Tensor<B, 2>>>,
        b: &Option<Param<Tensor<B, 2>>>,
    ) -> Tensor<B, 2> {
        match (full, a, b) {
            (Some(w), _, _) => w.val(),
            (None, Some(a), Some(b)) => a.val().matmul(b.val()),
            _ => unreachable!("a LoKr factor is full or has both halves (from_factors)"),
        }
    }

    /// W1 as one matrix `[out_l, in_m]`.
    pub fn w1_dense(&self) -> Tensor<B, 2> {
        Self::dense(&self.w1, &self.w1_a, &self.w1_b)
    }

    /// W2 as one matrix `[out_k, in_n]`.
    pub fn w2_dense(&self) -> Tensor<B, 2> {
        Self::dense(&self.w2, &self.w2_a, &self.w2_b)
    }

    /// `m·scale·kron(W1, W2)` in the file's `[rows, d_in]` layout (no padding).
    pub fn delta_rows(&self) -> Tensor<B, 2> {
        kron(self.w1_dense(), self.w2_dense()) * (self.multiplier * self.scale())
    }

    /// The weight change in Burn layout `[d_in, d_out]`, zero outside `rows`.
    pub fn delta_weight(&self, d_out: usize) -> Tensor<B, 2> {
        lycoris::pad_last(self.delta_rows().transpose(), self.rows, d_out)
    }

    /// The adapter's contribution `ΔW·x` to a linear output of width `d_out`, computed without
    /// forming ΔW: `x` as `[n, in_m, in_n]`, times W2ᵀ, then W1ᵀ across the groups.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, d_out: usize) -> Tensor<B, D> {
        let training = B::ad_enabled(&x.device());
        let w1 = self.w1_dense();
        let w2 = self.w2_dense();
        let [out_l, in_m] = w1.dims();
        let [out_k, in_n] = w2.dims();
        let x = lycoris::cast_like(x, &w1);
        let mut dims = x.dims();
        let n: usize = dims[..D - 1].iter().product();
        let h = x.reshape([n * in_m, in_n]).matmul(w2.transpose());
        let h = h
            .reshape([n, in_m, out_k])
            .swap_dims(1, 2)
            .reshape([n * out_k, in_m])
            .matmul(w1.transpose());
        let h = h
            .reshape([n, out_k, out_l])
            .swap_dims(1, 2)
            .reshape([n, out_l * out_k]);
        let h = lycoris::output_dropouts(h, self.dropout, self.rank_dropout, training)
            * f64::from(self.multiplier * self.scale());
        dims[D - 1] = out_l * out_k;
        let y = lycoris::module_dropout(h.reshape(dims), self.module_dropout, training);
        lycoris::pad_last(y, self.rows, d_out)
    }

    /// Number of stored values.
    pub fn num_params(&self) -> usize {
        [
            &self.w1, &self.w1_a, &self.w1_b, &self.w2, &self.w2_a, &self.w2_b,
        ]
        .iter()
        .filter_map(|p| p.as_ref().map(|p| p.shape().num_elements()))
        .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::factorization;

    #[test]
    fn factorization_matches_the_lycoris_docstring_table() {
        // Rows of the table in lycoris/functional/general.py (factor -1, 2, 4, 8, 16). Two
        // cells of its 360 row disagree with the function printed under it (whose `length`
        // never shrinks, so the search runs on to the most balanced split): the code, which is
        // what shapes the files, gives (18, 20) for -1 and (15, 24) for 16, worked by hand.
        let table: &[(usize, [(usize, usize); 5])] = &[
            (127, [(1, 127); 5]),
            (128, [(8, 16), (2, 64), (4, 32), (8, 16), (8, 16)]),
            (250, [(10, 25), (2, 125), (2, 125), (5, 50), (10, 25)]),
            (360, [(18, 20), (2, 180), (4, 90), (8, 45), (15, 24)]),
            (512, [(16, 32), (2, 256), (4, 128), (8, 64), (16, 32)]),
            (1024, [(32, 32), (2, 512), (4, 256), (8, 128), (16, 64)]),
        ];
        for (dim, row) in table {
            for (factor, want) in [-1i64, 2, 4, 8, 16].iter().zip(row) {
                assert_eq!(factorization(*dim, *factor), *want, "{dim} factor {factor}");
            }
        }
    }
}
