//! Loading the T5 encoder from a transformers checkpoint (`encoder.block.N.layer.…` and
//! `shared.weight`, optionally prefixed: ComfyUI's `t5xxl_*.safetensors`, a diffusers
//! `text_encoder_2/` sharded folder, or a full T5 whose decoder is ignored).

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType};
use fluxlora_io::text_encoder_keys::T5_KEYS;
use fluxlora_io::Checkpoint;

use crate::error::{FluxError, Result};
use crate::frozen::{
    model_subfolder, open_checkpoint, storage_dtype, text_encoder_prefix, WeightReader,
};
use crate::t5::{T5Block, T5Config, T5Encoder};

/// How to load a T5 encoder. The defaults are T5 v1.1's (what Flux uses).
#[derive(Debug, Clone)]
pub struct T5LoadOptions {
    /// Storage (and compute) dtype; `None` = f32. Use [`crate::frozen::bf16_if_supported`] for
    /// bf16 where the backend allows it (T5-XXL: 9.5 GB instead of 19 GB). Outputs are f32.
    pub dtype: Option<DType>,
    /// `relative_attention_max_distance` (128; not stored in the weights).
    pub max_distance: usize,
    /// `layer_norm_epsilon` (1e-6).
    pub eps: f64,
}

impl Default for T5LoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            max_distance: 128,
            eps: 1e-6,
        }
    }
}

/// The weights of `path`: a Flux model folder's `text_encoder_2/`, otherwise `path` itself.
pub fn resolve_t5_path(path: &Path) -> PathBuf {
    model_subfolder(path, "text_encoder_2")
}

impl<B: Backend> T5Encoder<B> {
    /// Loads a T5 encoder; the architecture is inferred from the tensor shapes.
    pub fn load(
        path: impl AsRef<Path>,
        options: &T5LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let path = resolve_t5_path(path.as_ref());
        let ckpt = open_checkpoint(&path)?;
        Self::from_checkpoint(&ckpt, &path, options, device)
    }

    /// Loads from an opened checkpoint (`path` is used in messages).
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        path: &Path,
        options: &T5LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let prefix = text_encoder_prefix(ckpt, path, &T5_KEYS)?;
        let dtype = storage_dtype::<B>(device, options.dtype)?;
        let pre = prefix.clone();
        let mut w = WeightReader::<B>::new(ckpt, path, move |n| format!("{pre}{n}"), device, dtype);
        // `shared.weight` and `encoder.embed_tokens.weight` are the same tied tensor; files keep
        // either or both.
        let embed = if w.shape("shared.weight").is_some() {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let config = infer_config(&w, embed, options)?;
        let (d, inner, ff) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
        let shared = w.tensor(embed, [config.vocab_size, d])?;
        let relative_attention_bias = w.tensor(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            [config.num_buckets, config.num_heads],
        )?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let a = format!("encoder.block.{i}.layer.0");
            let f = format!("encoder.block.{i}.layer.1");
            if w.shape(&format!("{f}.DenseReluDense.wi.weight")).is_some() {
                return Err(FluxError::Config(format!(
                    "{}: `{}` is a T5 v1.0 (ReLU, ungated) feed-forward; Flux needs T5 v1.1 (gated \
                     GELU, `wi_0`/`wi_1`)",
                    path.display(),
                    w.key(&format!("{f}.DenseReluDense.wi.weight"))
                )));
            }
            blocks.push(T5Block {
                attn_norm: w.tensor(&format!("{a}.layer_norm.weight"), [d])?,
                q: w.linear(&format!("{a}.SelfAttention.q"), d, inner, false, false)?,
                k: w.linear(&format!("{a}.SelfAttention.k"), d, inner, false, false)?,
                v: w.linear(&format!("{a}.SelfAttention.v"), d, inner, false, false)?,
                o: w.linear(&format!("{a}.SelfAttention.o"), inner, d, false, false)?,
                ff_norm: w.tensor(&format!("{f}.layer_norm.weight"), [d])?,
                wi_0: w.linear(&format!("{f}.DenseReluDense.wi_0"), d, ff, false, false)?,
                wi_1: w.linear(&format!("{f}.DenseReluDense.wi_1"), d, ff, false, false)?,
                wo: w.linear(&format!("{f}.DenseReluDense.wo"), ff, d, false, false)?,
            });
        }
        let final_layer_norm = w.tensor("encoder.final_layer_norm.weight", [d])?;
        Ok(Self {
            shared,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            config,
        })
    }
}

fn infer_config<B: Backend>(
    w: &WeightReader<'_, B>,
    embed: &str,
    options: &T5LoadOptions,
) -> Result<T5Config> {
    let need = |name: &str| w.require_shape(name, 2, "T5 encoder");
    let shared = need(embed)?;
    let q = need("encoder.block.0.layer.0.SelfAttention.q.weight")?;
    let rel = need("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
    let num_layers = (0..)
        .take_while(|i| {
            w.shape(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight"))
                .is_some()
        })
        .count();
    let ff = w
        .shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
        .or_else(|| w.shape("encoder.block.0.layer.1.DenseReluDense.wi.weight"))
        .map_or(0, |s| s[0]);
    let (num_buckets, num_heads) = (rel[0], rel[1]);
    if num_heads == 0 || q[0] % num_heads != 0 || num_buckets < 4 {
        return Err(FluxError::Config(format!(
            "T5 attention width {} is not divisible by the {num_heads} heads of the \
             relative-attention bias (buckets {num_buckets}); the file is damaged or not T5",
            q[0]
        )));
    }
    Ok(T5Config {
        vocab_size: shared[0],
        d_model: shared[1],
        d_kv: q[0] / num_heads,
        num_heads,
        d_ff: ff,
        num_layers,
        num_buckets,
        max_distance: options.max_distance,
        eps: options.eps,
    })
}
