//! The CLIP-L text model (`openai/clip-vit-large-patch14` text tower, transformers
//! `CLIPTextModel`): token + position embeddings → pre-LN transformer layers with causal
//! self-attention and quick-GELU MLPs → final LayerNorm. Flux uses the pooled output: the final
//! hidden state at the first position of the largest token id (the EOS; Flux pads with EOS too).
//!
//! Memory: the model is ~123 M parameters (0.5 GB in f32, 0.25 GB in bf16). Encode the captions,
//! keep the pooled vectors and drop the model: dropping it frees its weights.

pub mod load;

use burn::module::Module;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, backend::Backend, DType, Int, Tensor};

pub use load::ClipLoadOptions;

use crate::error::{FluxError, Result};
use crate::frozen::{host_ids, layer_norm, to_f32, Linear};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 x)` (`quick_gelu`, CLIP-L).
    QuickGelu,
    /// Exact (erf) GELU (`gelu`).
    Gelu,
}

/// How the pooled vector is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPooling {
    /// First position of the largest id in each row (transformers' path for configs with
    /// `eos_token_id == 2`, which openai CLIP-L and Flux's `text_encoder/` have).
    ArgmaxId,
    /// First position of this id (transformers' path for any other `eos_token_id`).
    FirstId(u32),
}

/// Architecture of a CLIP text model.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Vocabulary size (49408).
    pub vocab_size: usize,
    /// Width (768).
    pub hidden_size: usize,
    /// MLP width (3072).
    pub intermediate_size: usize,
    /// Layers (12).
    pub num_layers: usize,
    /// Attention heads (12).
    pub num_heads: usize,
    /// Longest input (77).
    pub max_positions: usize,
    /// LayerNorm epsilon (1e-5).
    pub layer_norm_eps: f64,
    /// MLP activation.
    pub activation: ClipActivation,
    /// Pooling rule.
    pub pooling: ClipPooling,
}

/// Outputs of [`ClipTextModel::forward`], in f32.
#[derive(Debug, Clone)]
pub struct ClipOutput<B: Backend> {
    /// `last_hidden_state` `[B, L, hidden]` (after the final LayerNorm).
    pub hidden: Tensor<B, 3>,
    /// `pooler_output` `[B, hidden]`: what Flux feeds its `vector_in`.
    pub pooled: Tensor<B, 2>,
}

/// One pre-LN encoder layer (`text_model.encoder.layers.N`).
#[derive(Module, Debug)]
pub struct ClipLayer<B: Backend> {
    /// `….layer_norm1` (weight, bias) `[hidden]`: the LayerNorm before self-attention.
    pub layer_norm1: (Tensor<B, 1>, Tensor<B, 1>),
    /// `….self_attn.q_proj`: query projection `hidden → hidden`.
    pub q_proj: Linear<B>,
    /// `….self_attn.k_proj`: key projection `hidden → hidden`.
    pub k_proj: Linear<B>,
    /// `….self_attn.v_proj`: value projection `hidden → hidden`.
    pub v_proj: Linear<B>,
    /// `….self_attn.out_proj`: attention output projection `hidden → hidden`.
    pub out_proj: Linear<B>,
    /// `….layer_norm2` (weight, bias) `[hidden]`: the LayerNorm before the MLP.
    pub layer_norm2: (Tensor<B, 1>, Tensor<B, 1>),
    /// `….mlp.fc1`: MLP input layer `hidden → intermediate`.
    pub fc1: Linear<B>,
    /// `….mlp.fc2`: MLP output layer `intermediate → hidden`.
    pub fc2: Linear<B>,
}

/// The CLIP text model. Frozen: all weights are module constants.
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// `[vocab, hidden]`.
    pub token_embedding: Tensor<B, 2>,
    /// `[max_positions, hidden]`.
    pub position_embedding: Tensor<B, 2>,
    /// `encoder.layers.N`, `num_layers` of them.
    pub layers: Vec<ClipLayer<B>>,
    /// `final_layer_norm` (weight, bias) `[hidden]`, applied after the last layer.
    pub final_layer_norm: (Tensor<B, 1>, Tensor<B, 1>),
    /// The architecture (not a parameter).
    #[module(skip)]
    pub config: ClipConfig,
}

impl<B: Backend> ClipTextModel<B> {
    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The storage (and compute) dtype.
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// Runs the model on token ids `[B, L]` (L ≤ 77; Flux always passes exactly 77).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<ClipOutput<B>> {
        let c = &self.config;
        let [b, l] = input_ids.dims();
        if b == 0 || l == 0 || l > c.max_positions {
            return Err(FluxError::Input {
                name: "input_ids".into(),
                message: format!(
                    "shape [{b}, {l}]: expected a non-empty batch of at most {} tokens",
                    c.max_positions
                ),
            });
        }
        let ids = host_ids(&input_ids, c.vocab_size)?;
        let pos = self
            .position_embedding
            .clone()
            .narrow(0, 0, l)
            .unsqueeze_dim::<3>(0);
        let mut x = embedding(self.token_embedding.clone(), input_ids) + pos;
        for layer in &self.layers {
            x = self.layer_forward(layer, x);
        }
        let (g, bt) = &self.final_layer_norm;
        let hidden = to_f32(layer_norm(x, g, bt, c.layer_norm_eps));
        let rows = (0..b)
            .map(|r| {
                let row = &ids[r * l..(r + 1) * l];
                let p = pooled_position(row, c.pooling);
                hidden.clone().narrow(0, r, 1).narrow(1, p, 1)
            })
            .collect();
        let pooled = Tensor::cat(rows, 0).squeeze_dim::<2>(1);
        Ok(ClipOutput { hidden, pooled })
    }

    fn layer_forward(&self, layer: &ClipLayer<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, l, d] = x.dims();
        let (h, hd) = (c.num_heads, d / c.num_heads);
        let n = layer_norm(
            x.clone(),
            &layer.layer_norm1.0,
            &layer.layer_norm1.1,
            c.layer_norm_eps,
        );
        let split = |t: Tensor<B, 3>| t.reshape([b, l, h, hd]).swap_dims(1, 2);
        let (q, k, v) = (
            split(layer.q_proj.forward(n.clone())),
            split(layer.k_proj.forward(n.clone())),
            split(layer.v_proj.forward(n)),
        );
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let a = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, l, d]);
        let x = x + layer.out_proj.forward(a);
        let n = layer_norm(
            x.clone(),
            &layer.layer_norm2.0,
            &layer.layer_norm2.1,
            c.layer_norm_eps,
        );
        let m = layer.fc1.forward(n);
        let m = match c.activation {
            ClipActivation::QuickGelu => m.clone() * activation::sigmoid(m * 1.702),
            ClipActivation::Gelu => activation::gelu(m),
        };
        x + layer.fc2.forward(m)
    }
}

/// The pooled position of one row of ids (first occurrence, as `torch.argmax` returns).
pub fn pooled_position(row: &[i64], pooling: ClipPooling) -> usize {
    match pooling {
        ClipPooling::ArgmaxId => {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        }
        ClipPooling::FirstId(id) => row.iter().position(|&v| v == id as i64).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_takes_the_first_largest_id() {
        // BOS 49406, two words, EOS 49407 then EOS padding: the first EOS (index 3) is pooled.
        let row = [49406, 320, 1125, 49407, 49407, 49407];
        assert_eq!(pooled_position(&row, ClipPooling::ArgmaxId), 3);
        assert_eq!(pooled_position(&row, ClipPooling::FirstId(1125)), 2);
        assert_eq!(pooled_position(&[5, 9, 9], ClipPooling::ArgmaxId), 1);
    }
}
