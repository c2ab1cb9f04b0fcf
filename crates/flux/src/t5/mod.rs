//! The T5 v1.1 encoder (`google/t5-v1_1-xxl`, transformers `T5EncoderModel`): shared token
//! embedding → pre-RMSNorm blocks of self-attention (no scaling, a relative-position bias
//! computed by the first block and shared by all) and gated-GELU feed-forward, no biases →
//! final RMSNorm. Flux uses the last hidden state `[B, 512, 4096]` (dev) or `[B, 256, 4096]`
//! (schnell), with no attention mask by default (as the reference inference does).
//!
//! Memory: T5-XXL's encoder is ~4.7 B parameters (19 GB in f32, 9.5 GB in bf16). Load it (in bf16
//! where [`crate::frozen::bf16_if_supported`] allows), encode every caption once, store the
//! embeddings, and drop the [`T5Encoder`]: dropping it frees its weights.

pub mod buckets;
pub mod load;

use burn::module::Module;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

pub use load::T5LoadOptions;

use crate::error::{FluxError, Result};
use crate::frozen::{cast_to, host_ids, to_f32, Linear};

/// Architecture of a T5 v1.1 encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Vocabulary size (32128).
    pub vocab_size: usize,
    /// Width (4096 for XXL).
    pub d_model: usize,
    /// Per-head width (64).
    pub d_kv: usize,
    /// Heads (64).
    pub num_heads: usize,
    /// Feed-forward width (10240).
    pub d_ff: usize,
    /// Blocks (24).
    pub num_layers: usize,
    /// Relative-position buckets (32).
    pub num_buckets: usize,
    /// Distance beyond which all positions share a bucket (128).
    pub max_distance: usize,
    /// RMSNorm epsilon (1e-6).
    pub eps: f64,
}

/// One encoder block (`encoder.block.N`).
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    /// `layer.0.layer_norm.weight` `[d_model]`.
    pub attn_norm: Tensor<B, 1>,
    /// `layer.0.SelfAttention.q`: query projection `d_model → heads·d_kv`, no bias.
    pub q: Linear<B>,
    /// `layer.0.SelfAttention.k`: key projection `d_model → heads·d_kv`, no bias.
    pub k: Linear<B>,
    /// `layer.0.SelfAttention.v`: value projection `d_model → heads·d_kv`, no bias.
    pub v: Linear<B>,
    /// `layer.0.SelfAttention.o`: output projection `heads·d_kv → d_model`, no bias.
    pub o: Linear<B>,
    /// `layer.1.layer_norm.weight` `[d_model]`.
    pub ff_norm: Tensor<B, 1>,
    /// `layer.1.DenseReluDense.wi_0`: the GELU-gated branch `d_model → d_ff`, no bias.
    pub wi_0: Linear<B>,
    /// `layer.1.DenseReluDense.wi_1`: the linear branch `d_model → d_ff`, no bias.
    pub wi_1: Linear<B>,
    /// `layer.1.DenseReluDense.wo`: the output projection `d_ff → d_model`, no bias.
    pub wo: Linear<B>,
}

/// The T5 encoder. Frozen: all weights are module constants.
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    /// `shared.weight` `[vocab, d_model]`.
    pub shared: Tensor<B, 2>,
    /// `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight` `[buckets, heads]`.
    pub relative_attention_bias: Tensor<B, 2>,
    /// `encoder.block.N`, `num_layers` of them.
    pub blocks: Vec<T5Block<B>>,
    /// `encoder.final_layer_norm.weight`.
    pub final_layer_norm: Tensor<B, 1>,
    /// The architecture (not a parameter).
    #[module(skip)]
    pub config: T5Config,
}

impl<B: Backend> T5Encoder<B> {
    /// The architecture.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The storage (and compute) dtype.
    pub fn dtype(&self) -> DType {
        self.shared.dtype()
    }

    /// The last hidden state `[B, L, d_model]` (f32) of token ids `[B, L]`. `attention_mask`
    /// (`[B, L]`, 1 = token, 0 = padding) hides padding keys; Flux passes `None`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Tensor<B, 3>> {
        let c = &self.config;
        let [b, l] = input_ids.dims();
        if b == 0 || l == 0 {
            return Err(FluxError::Input {
                name: "input_ids".into(),
                message: format!("shape [{b}, {l}] is empty"),
            });
        }
        host_ids(&input_ids, c.vocab_size)?;
        let device = input_ids.device();
        let dtype = self.dtype();
        let mut bias = self.position_bias(l, &device);
        if let Some(mask) = attention_mask {
            if mask.dims() != [b, l] {
                return Err(FluxError::Input {
                    name: "attention_mask".into(),
                    message: format!(
                        "shape {:?}, expected [{b}, {l}] like input_ids",
                        mask.dims()
                    ),
                });
            }
            // transformers adds finfo(f32).min at padding keys.
            let masked = mask.equal_elem(0).float().reshape([b, 1, 1, l]) * f32::MIN as f64;
            bias = bias.expand([b, c.num_heads, l, l]) + masked.expand([b, c.num_heads, l, l]);
        }
        let bias = cast_to(bias.expand([b, c.num_heads, l, l]), dtype);
        let mut x = embedding(self.shared.clone(), input_ids);
        for block in &self.blocks {
            x = self.block_forward(block, x, &bias);
        }
        Ok(to_f32(rms_norm(x, &self.final_layer_norm, c.eps)))
    }

    /// The relative-position bias `[1, heads, L, L]` in f32.
    fn position_bias(&self, l: usize, device: &B::Device) -> Tensor<B, 4> {
        let c = &self.config;
        let table = buckets::bucket_table(l, l, c.num_buckets, c.max_distance);
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(table, [1, l * l]), device);
        let values = embedding(to_f32(self.relative_attention_bias.clone()), idx); // [1, L·L, H]
        values
            .reshape([l, l, c.num_heads])
            .permute([2, 0, 1])
            .unsqueeze_dim(0)
    }

    fn block_forward(
        &self,
        blk: &T5Block<B>,
        x: Tensor<B, 3>,
        bias: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, l, _] = x.dims();
        let n = rms_norm(x.clone(), &blk.attn_norm, c.eps);
        let split = |t: Tensor<B, 3>| t.reshape([b, l, c.num_heads, c.d_kv]).swap_dims(1, 2);
        let (q, k, v) = (
            split(blk.q.forward(n.clone())),
            split(blk.k.forward(n.clone())),
            split(blk.v.forward(n)),
        );
        let options = AttentionModuleOptions {
            scale: Some(1.0),
            ..Default::default()
        };
        let a = attention(q, k, v, None, Some(bias.clone()), options)
            .swap_dims(1, 2)
            .reshape([b, l, c.num_heads * c.d_kv]);
        let x = x + blk.o.forward(a);
        let n = rms_norm(x.clone(), &blk.ff_norm, c.eps);
        let gated = gelu_new(blk.wi_0.forward(n.clone())) * blk.wi_1.forward(n);
        x + blk.wo.forward(gated)
    }
}

/// T5 LayerNorm: `weight · x / √(mean(x²) + eps)`, statistics in f32, result in `x`'s dtype.
fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let xf = to_f32(x);
    let rrms = (xf.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    cast_to(xf * rrms * to_f32(weight.clone()).unsqueeze::<D>(), dtype)
}

/// `gelu_new` (GELU, tanh approximation): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}
