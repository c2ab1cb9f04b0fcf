//! Fused training ops with their own backward: memory-efficient attention, adaLN modulation,
//! QK RMSNorm, RoPE, GELU-tanh and the gated residual.
//!
//! [`FluxBackend`] is a [`Backend`] that has these ops. Each op is one method for its forward and
//! one for its backward; the defaults (in [`composed`] and [`attention`]) are compositions of
//! Burn tensor ops, so every backend has them:
//!
//! - on a plain backend (inference, sampling) an op is just its forward;
//! - on [`Autodiff`](burn::backend::Autodiff) an op is **one** tape node that keeps only the
//!   inputs its backward needs (attention: `q`, `k`, `v`, the output and the row log-sum-exp,
//!   never the `L×L` scores) and runs the inner backend's backward method (see `autodiff.rs`);
//! - NdArray overrides the elementwise ops with the rayon kernels of `cpu.rs` (`ndarray.rs`).
//!
//! The model calls the free functions below ([`modulate`], [`attention`], …). Every op equals the
//! composition it replaces in value and in gradient: `crates/flux/tests/fused_ops.rs` proves it
//! with proptest against [`composed`]'s forwards differentiated by Burn's own autodiff.

pub mod attention;
mod autodiff;
pub mod composed;
#[cfg(feature = "ndarray")]
mod cpu;
mod impls;
#[cfg(feature = "ndarray")]
mod ndarray;

#[cfg(feature = "ndarray")]
pub use ndarray::retain_freed_host_memory;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// A [`Backend`] with Flux's fused ops. Implemented for NdArray, Flex, the CubeCL backends (CUDA,
/// wgpu), `Fusion` of those and `Autodiff` of any of them, as far as the crate's features
/// (`ndarray`, `flex`, `cubecl`, `fusion`) compile them in.
pub trait FluxBackend: fluxlora_lora::FrozenLinearBackend {
    /// `(1 + scale)·LayerNorm(x) + shift` (LayerNorm without affine, biased variance);
    /// `x: [B, L, C]`, `shift`, `scale: [B, 1, C]`.
    fn modulate(
        x: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        composed::modulate(x, shift, scale, eps)
    }

    /// `(dx, dshift, dscale)` of [`FluxBackend::modulate`] (`dshift`, `dscale: [B, 1, C]`).
    fn modulate_backward(
        x: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        dy: Tensor<Self, 3>,
        eps: f64,
    ) -> [Tensor<Self, 3>; 3] {
        composed::modulate_backward(x, scale, dy, eps)
    }

    /// RMSNorm with a learned scale over the last axis; `x: [B, H, L, D]`, `scale: [D]`.
    fn rms_norm(x: Tensor<Self, 4>, scale: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 4> {
        composed::rms_norm(x, scale, eps)
    }

    /// `(dx, dscale)` of [`FluxBackend::rms_norm`].
    fn rms_norm_backward(
        x: Tensor<Self, 4>,
        scale: Tensor<Self, 1>,
        dy: Tensor<Self, 4>,
        eps: f64,
    ) -> (Tensor<Self, 4>, Tensor<Self, 1>) {
        composed::rms_norm_backward(x, scale, dy, eps)
    }

    /// Rotates the pairs of `x: [B, H, L, D]` (the inverse rotation, which is also the backward,
    /// when `inverse`).
    fn rope(x: Tensor<Self, 4>, tables: &RopeTables<Self>, inverse: bool) -> Tensor<Self, 4> {
        composed::rope(x, tables, inverse)
    }

    /// `x: [B, L, H·D]` as heads `[B, H, L, D]` (`B L (H D) -> B H L D`), laid out contiguously.
    fn to_heads(x: Tensor<Self, 3>, heads: usize) -> Tensor<Self, 4> {
        composed::to_heads(x, heads)
    }

    /// Heads `[B, H, L, D]` back to `[B, L, H·D]`, laid out contiguously (the inverse of
    /// [`FluxBackend::to_heads`], and its backward).
    fn from_heads(x: Tensor<Self, 4>) -> Tensor<Self, 3> {
        composed::from_heads(x)
    }

    /// GELU-tanh of `x: [B, L, C]`.
    fn gelu_tanh(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        composed::gelu_tanh(x)
    }

    /// `dx` of [`FluxBackend::gelu_tanh`].
    fn gelu_tanh_backward(x: Tensor<Self, 3>, dy: Tensor<Self, 3>) -> Tensor<Self, 3> {
        composed::gelu_tanh_backward(x, dy)
    }

    /// `x + gate·y`; `x`, `y: [B, L, C]`, `gate: [B, 1, C]`.
    fn gated_residual(
        x: Tensor<Self, 3>,
        gate: Tensor<Self, 3>,
        y: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        composed::gated_residual(x, gate, y)
    }

    /// Attention output `[B, H, L_q, D]` and row log-sum-exp `[B, H, L_q, 1]`, `block_rows`
    /// query rows at a time (see [`attention::forward`]).
    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
        block_rows: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        attention::forward(q, k, v, bias, scale, block_rows)
    }

    /// `(dq, dk, dv)` of [`FluxBackend::attention_forward`] (see [`attention::backward`]).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 4>,
        dout: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
        block_rows: usize,
    ) -> [Tensor<Self, 4>; 3] {
        attention::backward(q, k, v, out, lse, dout, bias, scale, block_rows)
    }
}

/// An [`AutodiffBackend`] whose inner backend is a [`FluxBackend`] too (training code's bound:
/// the model trains on `B` and samples on `B::InnerBackend`).
pub trait FluxAutodiffBackend: AutodiffBackend<InnerBackend: FluxBackend> + FluxBackend {}

impl<B> FluxAutodiffBackend for B
where
    B: AutodiffBackend + FluxBackend,
    B::InnerBackend: FluxBackend,
{
}

/// RoPE rotation tables for one forward pass, in the layouts the kernels want.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `[B, L, D/2]`: cos of each pair's angle.
    pub cos: Tensor<B, 3>,
    /// `[B, L, D/2]`: sin of each pair's angle.
    pub sin: Tensor<B, 3>,
    /// `[B, 1, L, D]`: `cos` repeated for both members of each pair.
    pub cos_full: Tensor<B, 4>,
    /// `[B, 1, L, D]`: `sin` repeated for both members of each pair.
    pub sin_full: Tensor<B, 4>,
    /// `[D, D]`: the signed pair swap, `x·P = (−x₁, x₀, −x₃, x₂, …)`.
    pub swap: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables from pair angles `[B, L, D/2]` (radians).
    pub fn from_angles(angles: Tensor<B, 3>) -> Self {
        let [b, l, half] = angles.dims();
        let dim = 2 * half;
        let full: Tensor<B, 4> = angles
            .clone()
            .unsqueeze_dim::<4>(3)
            .repeat_dim(3, 2)
            .reshape([b, 1, l, dim]);
        let mut p = vec![0.0f32; dim * dim];
        for j in 0..half {
            // column 2j gets −x[2j+1]; column 2j+1 gets x[2j]  (P[row, col], row-major)
            p[(2 * j + 1) * dim + 2 * j] = -1.0;
            p[(2 * j) * dim + 2 * j + 1] = 1.0;
        }
        let device = angles.device();
        Self {
            cos: angles.clone().cos(),
            sin: angles.sin(),
            cos_full: full.clone().cos(),
            sin_full: full.sin(),
            swap: Tensor::from_data(TensorData::new(p, [dim, dim]), &device),
        }
    }

    /// Head dimension the tables rotate.
    pub fn head_dim(&self) -> usize {
        self.swap.dims()[0]
    }
}

/// Epsilon of every LayerNorm and RMSNorm in Flux.
pub const NORM_EPS: f64 = 1e-6;

/// `(1 + scale)·LayerNorm(x) + shift`, the adaLN modulation of every Flux block (eps 1e-6).
pub fn modulate<B: FluxBackend>(
    x: Tensor<B, 3>,
    shift: &Tensor<B, 3>,
    scale: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    B::modulate(x, shift.clone(), scale.clone(), NORM_EPS)
}

/// GELU with the tanh approximation.
pub fn gelu_tanh<B: FluxBackend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    B::gelu_tanh(x)
}

/// The gated residual `x + gate·y`.
pub fn gated_residual<B: FluxBackend>(
    x: Tensor<B, 3>,
    gate: &Tensor<B, 3>,
    y: Tensor<B, 3>,
) -> Tensor<B, 3> {
    B::gated_residual(x, gate.clone(), y)
}

/// Scaled dot-product attention `softmax(q·kᵀ/√D + bias)·v` over `[B, H, L, D]`, with query
/// blocks sized by [`attention::score_budget`]. Under autodiff it keeps no scores.
pub fn attention<B: FluxBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let [b, h, _, d] = q.dims();
    let l_k = k.dims()[2];
    let elem = q.dtype().size();
    let rows = attention::query_block_rows(b, h, l_k, elem, attention::score_budget());
    B::attention_forward(q, k, v, bias, 1.0 / (d as f64).sqrt(), rows).0
}
