//! The ViT image classifier of the WD taggers, in Burn (inference only), following timm's
//! `VisionTransformer` (`timm/models/vision_transformer.py`):
//!
//! ```text
//! pixels [B,3,S,S] → patch_embed.proj (conv p×p stride p, done as patchify + matmul)
//!   → [cls_token, reg_token] ++ patches, + pos_embed (before or after the concat)
//!   → norm_pre? → blocks × depth: x + ls1·attn(norm1 x);  x + ls2·mlp(norm2 x)
//!   → norm? → pool (token | avg | max | avgmax over patch tokens) → fc_norm? → head
//!   → logits
//! ```
//!
//! Attention: `qkv` → `[B,N,3,H,hd]`, softmax(q·kᵀ/√hd)·v, `proj`. MLP: `fc1` → GELU →
//! `fc2`. LayerNorms use eps 1e-6. Linear weights are stored `[in, out]` (transposed from the
//! file's PyTorch `[out, in]` on load).

use burn::tensor::activation::{gelu, gelu_approximate, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_io::{HostTensor, SafeTensorsFile};

use crate::error::{CaptionError, Result};
use crate::tagger::config::{Activation, GlobalPool, VitConfig};

/// Reads named tensors from the weights file onto a device, checking shapes.
struct Loader<'a, B: Backend> {
    file: &'a SafeTensorsFile,
    device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        if !self.file.contains(name) {
            return Err(CaptionError::MissingTensor {
                path: self.file.path().to_path_buf(),
                name: name.into(),
                fix:
                    "the file is not a complete timm ViT checkpoint; re-download model.safetensors",
            });
        }
        let t = self.file.read_f32(name)?;
        // Scalars-as-[1,1,d] and friends must match exactly.
        if t.shape != expected {
            return Err(CaptionError::TensorShape {
                path: self.file.path().to_path_buf(),
                name: name.into(),
                expected: format!("{expected:?}"),
                found: t.shape,
            });
        }
        Ok(t)
    }

    fn tensor<const D: usize>(&self, name: &str, expected: [usize; D]) -> Result<Tensor<B, D>> {
        let t = self.host(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, expected),
            self.device,
        ))
    }

    fn optional<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Option<Tensor<B, D>>> {
        if self.file.contains(name) {
            self.tensor(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A linear `prefix.weight [out, in]` (+ optional `prefix.bias`).
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        let w = self
            .host(&format!("{prefix}.weight"), &[d_out, d_in])?
            .transpose()?;
        Ok(Linear {
            weight: Tensor::from_data(TensorData::new(w.data, [d_in, d_out]), self.device),
            bias: self.optional(&format!("{prefix}.bias"), [d_out])?,
        })
    }

    fn layer_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm<B>> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{prefix}.weight"), [dim])?,
            bias: self.tensor(&format!("{prefix}.bias"), [dim])?,
            eps,
        })
    }
}

/// `y = x·W + b` with `W: [in, out]`.
#[derive(Debug, Clone)]
struct Linear<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d_in] = x.dims();
        let d_out = self.weight.dims()[1];
        let mut y = x.reshape([b * n, d_in]).matmul(self.weight.clone());
        if let Some(bias) = &self.bias {
            y = y + bias.clone().unsqueeze::<2>();
        }
        y.reshape([b, n, d_out])
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch).
#[derive(Debug, Clone)]
struct LayerNorm<B: Backend> {
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = centered / var.add_scalar(self.eps).sqrt();
        normed * self.weight.clone().unsqueeze::<D>() + self.bias.clone().unsqueeze::<D>()
    }
}

#[derive(Debug, Clone)]
struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    qkv: Linear<B>,
    q_norm: Option<LayerNorm<B>>,
    k_norm: Option<LayerNorm<B>>,
    proj: Linear<B>,
    ls1: Option<Tensor<B, 1>>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    ls2: Option<Tensor<B, 1>>,
}

/// A timm ViT classifier with loaded weights.
#[derive(Debug, Clone)]
pub struct VitClassifier<B: Backend> {
    config: VitConfig,
    /// Patch projection `[3·p·p, dim]` (the conv kernel flattened as `(c, kh, kw)`).
    patch_weight: Tensor<B, 2>,
    patch_bias: Option<Tensor<B, 1>>,
    cls_token: Option<Tensor<B, 3>>,
    reg_token: Option<Tensor<B, 3>>,
    pos_embed: Tensor<B, 3>,
    norm_pre: Option<LayerNorm<B>>,
    blocks: Vec<Block<B>>,
    norm: Option<LayerNorm<B>>,
    fc_norm: Option<LayerNorm<B>>,
    head: Linear<B>,
}

impl<B: Backend> VitClassifier<B> {
    /// Loads every tensor `config` calls for from `file` (timm key names).
    pub fn load(file: &SafeTensorsFile, config: VitConfig, device: &B::Device) -> Result<Self> {
        let l = Loader::<B> { file, device };
        let c = &config;
        let (d, p, eps) = (c.embed_dim, c.patch_size, c.norm_eps);
        let conv = l.host("patch_embed.proj.weight", &[d, 3, p, p])?;
        let conv = HostTensor::new(vec![d, 3 * p * p], conv.data)?.transpose()?;
        let patch_weight = Tensor::from_data(TensorData::new(conv.data, [3 * p * p, d]), device);
        let head_dim = c.head_dim();
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = format!("blocks.{i}");
            let norm_if = |name: &str, dim: usize| -> Result<Option<LayerNorm<B>>> {
                if file.contains(&format!("{b}.{name}.weight")) {
                    l.layer_norm(&format!("{b}.{name}"), dim, eps).map(Some)
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                norm1: l.layer_norm(&format!("{b}.norm1"), d, eps)?,
                qkv: l.linear(&format!("{b}.attn.qkv"), d, 3 * d)?,
                q_norm: norm_if("attn.q_norm", head_dim)?,
                k_norm: norm_if("attn.k_norm", head_dim)?,
                proj: l.linear(&format!("{b}.attn.proj"), d, d)?,
                ls1: l.optional(&format!("{b}.ls1.gamma"), [d])?,
                norm2: l.layer_norm(&format!("{b}.norm2"), d, eps)?,
                fc1: l.linear(&format!("{b}.mlp.fc1"), d, c.mlp_hidden)?,
                fc2: l.linear(&format!("{b}.mlp.fc2"), c.mlp_hidden, d)?,
                ls2: l.optional(&format!("{b}.ls2.gamma"), [d])?,
            });
        }
        let norm_if = |name: &str, present: bool| -> Result<Option<LayerNorm<B>>> {
            if present {
                l.layer_norm(name, d, eps).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            patch_weight,
            patch_bias: l.optional("patch_embed.proj.bias", [d])?,
            cls_token: if c.class_token {
                Some(l.tensor("cls_token", [1, 1, d])?)
            } else {
                None
            },
            reg_token: if c.reg_tokens > 0 {
                Some(l.tensor("reg_token", [1, c.reg_tokens, d])?)
            } else {
                None
            },
            pos_embed: l.tensor("pos_embed", [1, c.pos_embed_len(), d])?,
            norm_pre: norm_if("norm_pre", c.pre_norm)?,
            blocks,
            norm: norm_if("norm", c.final_norm)?,
            fc_norm: norm_if("fc_norm", c.fc_norm)?,
            head: l.linear("head", d, c.num_classes)?,
            config,
        })
    }

    /// The model's settings.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Logits `[B, classes]` for normalised pixels `[B, 3, S, S]` (channel order as trained:
    /// BGR for the WD taggers; see [`crate::tagger::preprocess`]).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        let c = &self.config;
        let [b, ch, h, w] = pixels.dims();
        if b == 0 || ch != 3 || h != c.img_size || w != c.img_size {
            return Err(CaptionError::InputShape {
                found: vec![b, ch, h, w],
                size: c.img_size,
            });
        }
        let (p, g, d) = (c.patch_size, c.grid(), c.embed_dim);
        // Conv with kernel = stride = p ≡ per-patch matmul over (c, kh, kw), patches row-major.
        let patches = pixels
            .reshape([b, 3, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * g * g, 3 * p * p]);
        let mut x = patches.matmul(self.patch_weight.clone());
        if let Some(bias) = &self.patch_bias {
            x = x + bias.clone().unsqueeze::<2>();
        }
        let mut x = x.reshape([b, g * g, d]);

        let mut prefix = Vec::new();
        if let Some(t) = &self.cls_token {
            prefix.push(t.clone().expand([b, 1, d]));
        }
        if let Some(t) = &self.reg_token {
            prefix.push(t.clone().expand([b, c.reg_tokens, d]));
        }
        let with_prefix = |x: Tensor<B, 3>, prefix: Vec<Tensor<B, 3>>| {
            if prefix.is_empty() {
                x
            } else {
                Tensor::cat(prefix.into_iter().chain([x]).collect(), 1)
            }
        };
        if c.no_embed_class {
            x = with_prefix(x + self.pos_embed.clone(), prefix);
        } else {
            x = with_prefix(x, prefix) + self.pos_embed.clone();
        }
        if let Some(n) = &self.norm_pre {
            x = n.forward(x);
        }
        for block in &self.blocks {
            x = self.block(block, x);
        }
        if let Some(n) = &self.norm {
            x = n.forward(x);
        }
        let pooled = self.pool(x);
        let pooled = match &self.fc_norm {
            Some(n) => n.forward(pooled),
            None => pooled,
        };
        let [b, d] = pooled.dims();
        Ok(self
            .head
            .forward(pooled.reshape([b, 1, d]))
            .reshape([b, c.num_classes]))
    }

    fn block(&self, blk: &Block<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let attn = self.attention(blk, blk.norm1.forward(x.clone()));
        let attn = match &blk.ls1 {
            Some(g) => attn * g.clone().unsqueeze::<3>(),
            None => attn,
        };
        let x = x + attn;
        let hidden = blk.fc1.forward(blk.norm2.forward(x.clone()));
        let hidden = match self.config.activation {
            Activation::Gelu => gelu(hidden),
            Activation::GeluTanh => gelu_approximate(hidden),
        };
        let mlp = blk.fc2.forward(hidden);
        let mlp = match &blk.ls2 {
            Some(g) => mlp * g.clone().unsqueeze::<3>(),
            None => mlp,
        };
        x + mlp
    }

    fn attention(&self, blk: &Block<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let heads = self.config.num_heads;
        let hd = self.config.head_dim();
        let qkv = blk
            .qkv
            .forward(x)
            .reshape([b, n, 3, heads, hd])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, hd]);
        let (mut q, mut k, v) = (part(0), part(1), part(2));
        if let Some(qn) = &blk.q_norm {
            q = qn.forward(q);
        }
        if let Some(kn) = &blk.k_norm {
            k = kn.forward(k);
        }
        let scores = (q * (hd as f64).powf(-0.5)).matmul(k.swap_dims(2, 3));
        let out = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, n, d]);
        blk.proj.forward(out)
    }

    fn pool(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, n, d] = x.dims();
        let prefix = self.config.prefix_tokens();
        let patches = || x.clone().narrow(1, prefix, n - prefix);
        let pooled = match self.config.global_pool {
            GlobalPool::Token => x.clone().narrow(1, 0, 1),
            GlobalPool::Avg => patches().mean_dim(1),
            GlobalPool::Max => patches().max_dim(1),
            GlobalPool::AvgMax => (patches().max_dim(1) + patches().mean_dim(1)) * 0.5,
        };
        pooled.reshape([b, d])
    }
}
