//! The fused ops written as compositions of Burn tensor ops: each forward is the unfused
//! composition the model used before the fused ops (and the oracle their tests compare against),
//! and each backward is the hand-derived gradient of that forward.
//!
//! These are the [`FluxBackend`](super::FluxBackend) defaults, so they run on every backend
//! (CUDA, wgpu, Flex). Run on an inner backend under [`Autodiff`](burn::backend::Autodiff) they
//! record no tape: the autodiff impl keeps only the inputs it names and calls the backward here.

use burn::tensor::{activation, backend::Backend, Tensor};

use crate::fused::RopeTables;

/// `2·√(2/π)`: GELU-tanh written as `x·σ(k·(x + 0.044715·x³))`.
pub(crate) const GELU_K: f64 = 1.595_769_121_605_730_7;
/// The cubic coefficient of GELU-tanh.
pub(crate) const GELU_C: f64 = 0.044_715;

/// `(x − mean) / √(var + eps)` over the last dimension (biased variance), and `1/√(var + eps)`.
fn normalized<B: Backend>(x: Tensor<B, 3>, eps: f64) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let (var, mean) = x.clone().var_mean_bias(2);
    let rstd = (var + eps).sqrt().recip();
    ((x - mean) * rstd.clone(), rstd)
}

/// `(1 + scale)·LayerNorm(x) + shift`; `x: [B, L, C]`, `shift`, `scale: [B, 1, C]`.
pub fn modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    eps: f64,
) -> Tensor<B, 3> {
    normalized(x, eps).0 * (scale + 1.0) + shift
}

/// Gradients `(dx, dshift, dscale)` of [`modulate`] for the output gradient `dy`.
///
/// With `n = LayerNorm(x)` and `g = dy·(1 + scale)`: `dshift = Σ_L dy`, `dscale = Σ_L dy·n`,
/// `dx = rstd·(g − mean_C(g) − n·mean_C(g·n))`.
pub fn modulate_backward<B: Backend>(
    x: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    dy: Tensor<B, 3>,
    eps: f64,
) -> [Tensor<B, 3>; 3] {
    let (n, rstd) = normalized(x, eps);
    let dshift = dy.clone().sum_dim(1);
    let dscale = (dy.clone() * n.clone()).sum_dim(1);
    let g = dy * (scale + 1.0);
    let mean_g = g.clone().mean_dim(2);
    let mean_gn = (g.clone() * n.clone()).mean_dim(2);
    let dx = (g - mean_g - n * mean_gn) * rstd;
    [dx, dshift, dscale]
}

/// `1/√(mean(x²) + eps)` over the last dimension.
fn rrms<B: Backend>(x: Tensor<B, 4>, eps: f64) -> Tensor<B, 4> {
    (x.square().mean_dim(3) + eps).sqrt().recip()
}

/// RMSNorm with a learned scale: `x / √(mean(x²) + eps) · scale`; `x: [B, H, L, D]`,
/// `scale: [D]` (cast to `x`'s dtype).
pub fn rms_norm<B: Backend>(x: Tensor<B, 4>, scale: Tensor<B, 1>, eps: f64) -> Tensor<B, 4> {
    let scale = scale.cast(x.dtype());
    x.clone() * rrms(x, eps) * scale.unsqueeze::<4>()
}

/// Gradients `(dx, dscale)` of [`rms_norm`]: with `g = dy·scale`,
/// `dx = rrms·(g − x·rrms²·mean_D(g·x))` and `dscale = Σ dy·x·rrms` over all but the last axis.
pub fn rms_norm_backward<B: Backend>(
    x: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    dy: Tensor<B, 4>,
    eps: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>) {
    let d = x.dims()[3];
    let scale_dtype = scale.dtype();
    let scale = scale.cast(x.dtype());
    let r = rrms(x.clone(), eps);
    let g = dy.clone() * scale.unsqueeze::<4>();
    let mean_gx = (g.clone() * x.clone()).mean_dim(3);
    let dx = (g - x.clone() * r.clone().square() * mean_gx) * r.clone();
    let dscale = (dy * x * r).reshape([-1, d as i32]).sum_dim(0).reshape([d]);
    (dx, dscale.cast(scale_dtype))
}

/// Rotates consecutive pairs of `x: [B, H, L, D]` by the tables' angles (the inverse rotation
/// when `inverse`): `x·cos + (x·P)·sin` with `P` the signed pair swap.
pub fn rope<B: Backend>(x: Tensor<B, 4>, t: &RopeTables<B>, inverse: bool) -> Tensor<B, 4> {
    let swapped = x.clone().matmul(t.swap.clone().unsqueeze::<4>());
    let sin = if inverse {
        t.sin_full.clone().neg()
    } else {
        t.sin_full.clone()
    };
    x * t.cos_full.clone() + swapped * sin
}

/// `B L (H D) -> B H L D`.
pub fn to_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, l, hd] = x.dims();
    x.reshape([b, l, heads, hd / heads.max(1)]).swap_dims(1, 2)
}

/// `B H L D -> B L (H D)`.
pub fn from_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, l, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, l, h * d])
}

/// `σ(k·(x + c·x³))`, the gate of GELU-tanh.
fn gelu_gate<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cube = x.clone() * x.clone() * x.clone();
    activation::sigmoid((x + cube * GELU_C).mul_scalar(GELU_K))
}

/// GELU with the tanh approximation, `x·σ(2·√(2/π)·(x + 0.044715·x³))` (equal to
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * gelu_gate(x)
}

/// Gradient of [`gelu_tanh`]: `dy·(σ + x·σ·(1 − σ)·k·(1 + 3c·x²))`.
pub fn gelu_tanh_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    dy: Tensor<B, D>,
) -> Tensor<B, D> {
    let s = gelu_gate(x.clone());
    let du = (x.clone().square() * (3.0 * GELU_C) + 1.0).mul_scalar(GELU_K);
    let ds = s.clone() * (s.clone().neg() + 1.0);
    dy * (s + x * ds * du)
}

/// The gated residual `x + gate·y`; `x`, `y: [B, L, C]`, `gate: [B, 1, C]`.
pub fn gated_residual<B: Backend>(
    x: Tensor<B, 3>,
    gate: Tensor<B, 3>,
    y: Tensor<B, 3>,
) -> Tensor<B, 3> {
    x + gate * y
}
