//! Loading the CLIP text model from a transformers checkpoint: `text_model.embeddings.…`
//! (FLUX.1's `text_encoder/`, ComfyUI's `clip_l.safetensors`, transformers < 5), `embeddings.…`
//! (transformers ≥ 5 `save_pretrained`), or either under a further prefix (ComfyUI bundles'
//! `text_encoders.clip_l.transformer.`).

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor};
use fluxlora_io::text_encoder_keys::CLIP_KEYS;
use fluxlora_io::Checkpoint;

use crate::clip::{ClipActivation, ClipConfig, ClipLayer, ClipPooling, ClipTextModel};
use crate::error::{FluxError, Result};
use crate::frozen::{
    model_subfolder, open_checkpoint, storage_dtype, text_encoder_prefix, WeightReader,
};

/// How to load a CLIP text model. The defaults are CLIP-L's (what Flux uses).
#[derive(Debug, Clone)]
pub struct ClipLoadOptions {
    /// Storage (and compute) dtype; `None` = f32. Use [`crate::frozen::bf16_if_supported`] to
    /// get bf16 where the backend allows it. Outputs are returned in f32.
    pub dtype: Option<DType>,
    /// Attention heads (not stored in the weights); `None` = hidden / 64 (12 for CLIP-L).
    pub num_heads: Option<usize>,
    /// MLP activation (quick-GELU for CLIP-L).
    pub activation: ClipActivation,
    /// LayerNorm epsilon (1e-5).
    pub layer_norm_eps: f64,
    /// Pooling rule (argmax of the ids for CLIP-L).
    pub pooling: ClipPooling,
}

impl Default for ClipLoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            num_heads: None,
            activation: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            pooling: ClipPooling::ArgmaxId,
        }
    }
}

/// The weights of `path`: a Flux model folder's `text_encoder/`, otherwise `path` itself.
pub fn resolve_clip_path(path: &Path) -> PathBuf {
    model_subfolder(path, "text_encoder")
}

impl<B: Backend> ClipTextModel<B> {
    /// Loads a CLIP text model; the architecture is inferred from the tensor shapes (heads from
    /// `options`).
    pub fn load(
        path: impl AsRef<Path>,
        options: &ClipLoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let path = resolve_clip_path(path.as_ref());
        let ckpt = open_checkpoint(&path)?;
        Self::from_checkpoint(&ckpt, &path, options, device)
    }

    /// Loads from an opened checkpoint (`path` is used in messages).
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        path: &Path,
        options: &ClipLoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let prefix = text_encoder_prefix(ckpt, path, &CLIP_KEYS)?;
        let dtype = storage_dtype::<B>(device, options.dtype)?;
        let pre = prefix.clone();
        let mut w = WeightReader::<B>::new(ckpt, path, move |n| format!("{pre}{n}"), device, dtype);
        let config = infer_config(&w, options)?;
        let (d, f) = (config.hidden_size, config.intermediate_size);
        let token_embedding =
            w.tensor("embeddings.token_embedding.weight", [config.vocab_size, d])?;
        let position_embedding = w.tensor(
            "embeddings.position_embedding.weight",
            [config.max_positions, d],
        )?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("encoder.layers.{i}");
            layers.push(ClipLayer {
                layer_norm1: norm(&mut w, &format!("{p}.layer_norm1"), d)?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, d, true, false)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, d, true, false)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, d, true, false)?,
                out_proj: w.linear(&format!("{p}.self_attn.out_proj"), d, d, true, false)?,
                layer_norm2: norm(&mut w, &format!("{p}.layer_norm2"), d)?,
                fc1: w.linear(&format!("{p}.mlp.fc1"), d, f, true, false)?,
                fc2: w.linear(&format!("{p}.mlp.fc2"), f, d, true, false)?,
            });
        }
        let final_layer_norm = norm(&mut w, "final_layer_norm", d)?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            config,
        })
    }
}

fn norm<B: Backend>(
    w: &mut WeightReader<'_, B>,
    name: &str,
    d: usize,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
    Ok((
        w.tensor(&format!("{name}.weight"), [d])?,
        w.tensor(&format!("{name}.bias"), [d])?,
    ))
}

fn infer_config<B: Backend>(
    w: &WeightReader<'_, B>,
    options: &ClipLoadOptions,
) -> Result<ClipConfig> {
    let need = |name: &str| w.require_shape(name, 2, "CLIP text model");
    let tok = need("embeddings.token_embedding.weight")?;
    let pos = need("embeddings.position_embedding.weight")?;
    let fc1 = need("encoder.layers.0.mlp.fc1.weight")?;
    let num_layers = (0..)
        .take_while(|i| {
            w.shape(&format!("encoder.layers.{i}.mlp.fc1.weight"))
                .is_some()
        })
        .count();
    let hidden = tok[1];
    let num_heads = match options.num_heads {
        Some(h) => h,
        None if hidden % 64 == 0 => hidden / 64,
        None => {
            return Err(FluxError::Config(format!(
                "CLIP width {hidden} is not a multiple of 64; set ClipLoadOptions::num_heads"
            )))
        }
    };
    if num_heads == 0 || hidden % num_heads != 0 {
        return Err(FluxError::Config(format!(
            "CLIP width {hidden} is not divisible by {num_heads} heads"
        )));
    }
    Ok(ClipConfig {
        vocab_size: tok[0],
        hidden_size: hidden,
        intermediate_size: fc1[0],
        num_layers,
        num_heads,
        max_positions: pos[0],
        layer_norm_eps: options.layer_norm_eps,
        activation: options.activation,
        pooling: options.pooling,
    })
}
