//! N-d rotary position embedding (BFL `EmbedND` / `rope` / `apply_rope`) and attention.
//!
//! Each token has an id triple (for images `(0, row, col)`, for text zeros). Axis `i` of the
//! head dimension (width `axes_dim[i]`) rotates consecutive pairs `(x₂ⱼ, x₂ⱼ₊₁)` by the
//! angle `pos_i · ω_j`, `ω_j = θ^(−2j/axes_dim[i])`:
//!
//! `out₂ⱼ = cos·x₂ⱼ − sin·x₂ⱼ₊₁`,
//! `out₂ⱼ₊₁ = sin·x₂ⱼ + cos·x₂ⱼ₊₁`.
//!
//! The rotation and the attention are fused ops ([`crate::fused`]): RoPE is one op whose
//! backward is the inverse rotation, and attention keeps no score matrix for its backward.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::fused::{self, FluxBackend, RopeTables};

/// The score a hidden key gets in the attention bias (`exp` of it is 0 in f32 and bf16).
pub const MASKED_SCORE: f32 = -1.0e9;

/// Precomputed rotation tables for one forward pass, and the attention's key mask (hidden T5
/// padding, `apply_t5_attn_mask`) that every block shares with them.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    tables: RopeTables<B>,
    /// Additive bias `[B, 1, 1, L]` over the keys of `txt ‖ img`: 0, or [`MASKED_SCORE`] for
    /// a hidden key.
    key_bias: Option<Tensor<B, 4>>,
}

impl<B: Backend> Rope<B> {
    /// Tables for token ids `[B, L, n_axes]` (the concatenation `txt_ids ‖ img_ids`).
    ///
    /// `axes_dim` must have one entry per id axis, each even; they sum to the head dimension.
    pub fn new(ids: Tensor<B, 3>, axes_dim: &[usize], theta: f64) -> Self {
        let device = ids.device();
        let mut angles = Vec::with_capacity(axes_dim.len());
        for (axis, &d) in axes_dim.iter().enumerate() {
            // ω_j = 1 / θ^(2j/d), computed in f64 as the reference does.
            let omega: Vec<f32> = (0..d / 2)
                .map(|j| (1.0 / theta.powf((2 * j) as f64 / d as f64)) as f32)
                .collect();
            let omega: Tensor<B, 3> =
                Tensor::from_data(TensorData::new(omega, [1, 1, d / 2]), &device);
            let pos = ids.clone().narrow(2, axis, 1); // [B, L, 1]
            angles.push(pos * omega); // [B, L, d/2]
        }
        Self {
            tables: RopeTables::from_angles(Tensor::cat(angles, 2)),
            key_bias: None,
        }
    }

    /// Hides the keys where `mask` (`[B, L]` over `txt ‖ img`, 1 = attend, 0 = hide) is 0 from
    /// every attention that uses these tables (kohya's `txt_attention_mask`: queries still
    /// compute, no token attends to a hidden one).
    pub fn with_key_mask(mut self, mask: Tensor<B, 2>) -> Self {
        let [b, l] = mask.dims();
        let bias = (mask.neg() + 1.0) * MASKED_SCORE;
        self.key_bias = Some(bias.reshape([b, 1, 1, l]));
        self
    }

    /// Head dimension covered by the tables.
    pub fn head_dim(&self) -> usize {
        self.tables.head_dim()
    }
}

impl<B: FluxBackend> Rope<B> {
    /// Rotates `x: [B, H, L, head_dim]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        B::rope(x, &self.tables, false)
    }
}

/// Scaled dot-product attention over `[B, H, L, D]` tensors with RoPE on q and k, returning
/// `[B, L, H·D]` (BFL `attention`: `B H L D -> B L (H D)`).
pub fn attention<B: FluxBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: &Rope<B>,
) -> Tensor<B, 3> {
    let bias = rope.key_bias.clone().map(|b| b.cast(q.dtype()));
    B::from_heads(fused::attention(rope.apply(q), rope.apply(k), v, bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    #[test]
    fn rotation_matches_the_pairwise_formula() {
        let dev = Default::default();
        let axes = [2usize, 4, 2];
        let ids: Vec<f32> = vec![0.0, 3.0, 5.0, 1.0, 2.0, 7.0];
        let ids = Tensor::<B, 3>::from_data(TensorData::new(ids.clone(), [1, 2, 3]), &dev);
        let rope = Rope::new(ids, &axes, 10000.0);
        let x: Vec<f32> = (0..2 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        let xt = Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [1, 1, 2, 8]), &dev);
        let got = rope.apply(xt).into_data().into_vec::<f32>().unwrap();
        let pos = [[0.0f64, 3.0, 5.0], [1.0, 2.0, 7.0]];
        for t in 0..2 {
            let mut j = 0; // pair index over the whole head
            for (axis, &d) in axes.iter().enumerate() {
                for k in 0..d / 2 {
                    let ang = pos[t][axis] / 10000f64.powf(2.0 * k as f64 / d as f64);
                    let (x0, x1) = (x[t * 8 + 2 * j] as f64, x[t * 8 + 2 * j + 1] as f64);
                    let e0 = ang.cos() * x0 - ang.sin() * x1;
                    let e1 = ang.sin() * x0 + ang.cos() * x1;
                    assert!((got[t * 8 + 2 * j] as f64 - e0).abs() < 1e-5);
                    assert!((got[t * 8 + 2 * j + 1] as f64 - e1).abs() < 1e-5);
                    j += 1;
                }
            }
        }
    }

    #[test]
    fn attention_matches_a_direct_softmax() {
        // With all-zero ids RoPE is the identity; compare against a scalar implementation.
        let dev = Default::default();
        let (l, d) = (3, 4);
        let ids = Tensor::<B, 3>::zeros([1, l, 3], &dev);
        let rope = Rope::new(ids, &[2, 2], 10000.0);
        let f = |s: f32| {
            (0..l * d)
                .map(|i| ((i as f32 + s) * 0.7).cos())
                .collect::<Vec<f32>>()
        };
        let (q, k, v) = (f(0.0), f(1.0), f(2.0));
        let t = |x: &Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [1, 1, l, d]), &dev)
        };
        let got = attention(t(&q), t(&k), t(&v), &rope)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for i in 0..l {
            let s: Vec<f64> = (0..l)
                .map(|j| {
                    (0..d)
                        .map(|c| (q[i * d + c] * k[j * d + c]) as f64)
                        .sum::<f64>()
                        / 2.0
                })
                .collect();
            let z: f64 = s.iter().map(|x| x.exp()).sum();
            for c in 0..d {
                let want: f64 = (0..l).map(|j| s[j].exp() / z * v[j * d + c] as f64).sum();
                assert!((got[i * d + c] as f64 - want).abs() < 1e-5);
            }
        }
    }
}
