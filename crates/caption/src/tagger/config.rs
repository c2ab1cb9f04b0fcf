//! The ViT's settings, inferred from the weights and completed by timm's `config.json`.
//!
//! From the weights (timm key names): patch size and width (`patch_embed.proj.weight`
//! `[dim, 3, p, p]`), depth (`blocks.N`), MLP width (`blocks.0.mlp.fc1.weight`), classes
//! (`head.weight`), class/register tokens, image size (`pos_embed` length = patches + prefix
//! tokens, or patches alone for `no_embed_class` models), which norms exist (`norm_pre`, `norm`,
//! `fc_norm`), q/k norms, layer scale and biases.
//!
//! Not in the weights, so taken from `config.json` (`model_args`, `architecture`,
//! `pretrained_cfg`) or an explicit override, else a default:
//! - heads: `model_args.num_heads`, the standard size in the architecture name
//!   (`vit_base_…` → 12), the q-norm width, else width / 64;
//! - global pool: `model_args.global_pool` (wd-vit-tagger-v3: `avg`), else `token` with a class
//!   token and `avg` without;
//! - activation: `model_args.act_layer` (`gelu` exact erf, or `gelu_tanh`), else `gelu`;
//! - normalisation: `pretrained_cfg.mean/std`, else 0.5/0.5 (inputs in [-1, 1], the WD taggers').
//!
//! LayerNorm eps is timm's 1e-6.

use std::path::{Path, PathBuf};

use fluxlora_io::SafeTensorsFile;
use serde_json::Value;

use crate::error::{CaptionError, Result};

/// How the token sequence becomes one feature vector (timm `global_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalPool {
    /// The class token.
    Token,
    /// Mean of the patch tokens (prefix tokens excluded).
    Avg,
    /// Max of the patch tokens.
    Max,
    /// `0.5 · (max + mean)` of the patch tokens.
    AvgMax,
}

impl GlobalPool {
    /// Parses timm's name (`token`, `avg`, `max`, `avgmax`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "token" => Some(Self::Token),
            "avg" => Some(Self::Avg),
            "max" => Some(Self::Max),
            "avgmax" => Some(Self::AvgMax),
            _ => None,
        }
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with erf (timm `gelu`, PyTorch `nn.GELU()`).
    Gelu,
    /// Tanh-approximated GELU (timm `gelu_tanh`).
    GeluTanh,
}

impl Activation {
    /// Parses timm's name (`gelu`, `gelu_tanh`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Self::Gelu),
            "gelu_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }
}

/// Settings not in the weights, to force instead of reading `config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VitOverrides {
    /// Attention heads per block; `None` reads `config.json` or infers them.
    pub num_heads: Option<usize>,
    /// How tokens are pooled before the head; `None` reads `config.json` or picks a default.
    pub global_pool: Option<GlobalPool>,
    /// The MLP activation; `None` reads `config.json`, else exact GELU.
    pub activation: Option<Activation>,
}

/// Everything needed to build the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// Side of the square input image, in pixels (patch grid × patch size).
    pub img_size: usize,
    /// Side of one square patch, in pixels.
    pub patch_size: usize,
    /// Token width (hidden size).
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block; divides `embed_dim`.
    pub num_heads: usize,
    /// Hidden width of each block's MLP (`fc1` outputs).
    pub mlp_hidden: usize,
    /// Classifier outputs, one per tag in `selected_tags.csv`.
    pub num_classes: usize,
    /// Whether a class token (`cls_token`) is prepended to the patch tokens.
    pub class_token: bool,
    /// Number of register tokens (`reg_token`) prepended after the class token.
    pub reg_tokens: usize,
    /// Position embeddings cover the patches only (prefix tokens get none).
    pub no_embed_class: bool,
    /// How the token sequence becomes the head's input vector.
    pub global_pool: GlobalPool,
    /// The MLP activation.
    pub activation: Activation,
    /// A LayerNorm (`norm_pre`) is applied after the position embeddings, before the blocks.
    pub pre_norm: bool,
    /// A LayerNorm (`norm`) is applied after the blocks, before pooling.
    pub final_norm: bool,
    /// A LayerNorm (`fc_norm`) is applied to the pooled vector, before the head.
    pub fc_norm: bool,
    /// Queries and keys are LayerNorm-ed per head (`attn.q_norm` / `attn.k_norm`).
    pub qk_norm: bool,
    /// Attention and MLP outputs are scaled per channel (`ls1.gamma` / `ls2.gamma`).
    pub layer_scale: bool,
    /// The LayerNorm epsilon (timm's 1e-6).
    pub norm_eps: f64,
    /// Per-channel normalisation of RGB values in [0, 1]: `(v − mean) / std`.
    pub mean: [f32; 3],
    /// Per-channel divisor of that normalisation (see `mean`).
    pub std: [f32; 3],
}

impl VitConfig {
    /// Prefix tokens (class + registers).
    pub fn prefix_tokens(&self) -> usize {
        usize::from(self.class_token) + self.reg_tokens
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Length of `pos_embed`.
    pub fn pos_embed_len(&self) -> usize {
        let patches = self.grid() * self.grid();
        if self.no_embed_class {
            patches
        } else {
            patches + self.prefix_tokens()
        }
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
}

/// The parts of a timm `config.json` (as shipped beside hub weights) that matter here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimmConfig {
    /// The `config.json` this was read from (named in errors).
    pub path: PathBuf,
    /// `architecture`, e.g. `vit_base_patch16_224` (gives the head count of standard sizes).
    pub architecture: Option<String>,
    /// `model_args.num_heads`.
    pub num_heads: Option<usize>,
    /// `model_args.img_size` (a number, or a square `[h, w]` pair).
    pub img_size: Option<usize>,
    /// `model_args.class_token`: whether the model has a class token.
    pub class_token: Option<bool>,
    /// `model_args.no_embed_class`: whether position embeddings skip the prefix tokens.
    pub no_embed_class: Option<bool>,
    /// `model_args.global_pool` (else top-level `global_pool`), e.g. `avg` or `token`.
    pub global_pool: Option<String>,
    /// `model_args.act_layer`, e.g. `gelu` or `gelu_tanh`.
    pub act_layer: Option<String>,
    /// `pretrained_cfg.mean`: per-channel normalisation mean.
    pub mean: Option<[f32; 3]>,
    /// `pretrained_cfg.std`: per-channel normalisation divisor.
    pub std: Option<[f32; 3]>,
}

fn triple(v: Option<&Value>) -> Option<[f32; 3]> {
    let a = v?.as_array()?;
    match a.as_slice() {
        [r, g, b] => Some([r.as_f64()? as f32, g.as_f64()? as f32, b.as_f64()? as f32]),
        _ => None,
    }
}

impl TimmConfig {
    /// Reads a timm `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaptionError::io(path, "reading the timm config", e))?;
        Self::parse(path, &text)
    }

    /// Parses a timm `config.json` text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |message: String| CaptionError::ModelConfig {
            path: path.to_path_buf(),
            message,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not valid JSON ({e}); restore the config.json that ships with the weights or \
                 delete it"
            ))
        })?;
        let args = v.get("model_args").cloned().unwrap_or(Value::Null);
        let cfg = v.get("pretrained_cfg").cloned().unwrap_or(Value::Null);
        let usize_of = |x: Option<&Value>| x.and_then(Value::as_u64).map(|n| n as usize);
        let img_size = match args.get("img_size") {
            Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => usize_of(a.first()),
            Some(Value::Array(_)) => {
                return Err(bad(
                    "model_args.img_size is not square; only square ViT inputs are supported"
                        .into(),
                ))
            }
            other => usize_of(other),
        };
        let string_of = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_string);
        Ok(TimmConfig {
            path: path.to_path_buf(),
            architecture: string_of(v.get("architecture")),
            num_heads: usize_of(args.get("num_heads")),
            img_size,
            class_token: args.get("class_token").and_then(Value::as_bool),
            no_embed_class: args.get("no_embed_class").and_then(Value::as_bool),
            global_pool: string_of(args.get("global_pool"))
                .or_else(|| string_of(v.get("global_pool"))),
            act_layer: string_of(args.get("act_layer")),
            mean: triple(cfg.get("mean")),
            std: triple(cfg.get("std")),
        })
    }
}

/// Heads of timm's standard ViT sizes, from an architecture name such as `vit_base_patch16_224`.
pub fn heads_from_architecture(name: &str) -> Option<usize> {
    let size = name.strip_prefix("vit_")?.split('_').next()?;
    match size {
        "tiny" => Some(3),
        "small" => Some(6),
        "medium" => Some(8),
        "base" => Some(12),
        "large" | "huge" => Some(16),
        _ => None,
    }
}

fn shape_of<'a>(file: &'a SafeTensorsFile, name: &str) -> Option<&'a [usize]> {
    file.info(name).ok().map(|(_, s)| s)
}

fn require<'a>(file: &'a SafeTensorsFile, name: &str) -> Result<&'a [usize]> {
    shape_of(file, name).ok_or_else(|| CaptionError::MissingTensor {
        path: file.path().to_path_buf(),
        name: name.into(),
        fix: "the file is not a timm ViT classifier (wd-vit-tagger-v3 layout); use its \
              model.safetensors",
    })
}

fn isqrt_exact(n: usize) -> Option<usize> {
    let r = (n as f64).sqrt().round() as usize;
    (r * r == n && r > 0).then_some(r)
}

/// Infers the configuration from the weights, completed by `timm` and `overrides`.
pub fn infer_config(
    file: &SafeTensorsFile,
    timm: Option<&TimmConfig>,
    overrides: &VitOverrides,
) -> Result<VitConfig> {
    let path = file.path().to_path_buf();
    let bad_shape = |name: &str, expected: &str, found: &[usize]| CaptionError::TensorShape {
        path: path.clone(),
        name: name.into(),
        expected: expected.into(),
        found: found.to_vec(),
    };
    let config_path = timm.map_or_else(|| path.clone(), |t| t.path.clone());
    let bad_config = |message: String| CaptionError::ModelConfig {
        path: config_path.clone(),
        message,
    };

    let patch = require(file, "patch_embed.proj.weight")?;
    let (embed_dim, patch_size) = match *patch {
        [d, 3, p, q] if p == q && p > 0 && d > 0 => (d, p),
        _ => {
            return Err(bad_shape(
                "patch_embed.proj.weight",
                "[dim, 3, p, p]",
                patch,
            ))
        }
    };
    let mut depth = 0;
    while file.contains(&format!("blocks.{depth}.norm1.weight")) {
        depth += 1;
    }
    if depth == 0 {
        require(file, "blocks.0.norm1.weight")?;
    }
    let fc1 = require(file, "blocks.0.mlp.fc1.weight")?;
    let mlp_hidden = match *fc1 {
        [h, d] if d == embed_dim => h,
        _ => {
            return Err(bad_shape(
                "blocks.0.mlp.fc1.weight",
                &format!("[hidden, {embed_dim}]"),
                fc1,
            ))
        }
    };
    let head = require(file, "head.weight")?;
    let num_classes = match *head {
        [c, d] if d == embed_dim && c > 0 => c,
        _ => {
            return Err(bad_shape(
                "head.weight",
                &format!("[classes, {embed_dim}]"),
                head,
            ))
        }
    };
    let class_token = file.contains("cls_token");
    if let Some(expected) = timm.and_then(|t| t.class_token) {
        if expected != class_token {
            return Err(bad_config(format!(
                "model_args.class_token is {expected} but the weights {} `cls_token`; the config \
                 belongs to other weights",
                if class_token { "have" } else { "lack" }
            )));
        }
    }
    let reg_tokens = match shape_of(file, "reg_token") {
        Some(&[1, r, d]) if d == embed_dim => r,
        Some(s) => return Err(bad_shape("reg_token", &format!("[1, n, {embed_dim}]"), s)),
        None => 0,
    };
    let prefix = usize::from(class_token) + reg_tokens;
    let pos = require(file, "pos_embed")?;
    let pos_len = match *pos {
        [1, l, d] if d == embed_dim => l,
        _ => {
            return Err(bad_shape(
                "pos_embed",
                &format!("[1, tokens, {embed_dim}]"),
                pos,
            ))
        }
    };
    let with_prefix = pos_len.checked_sub(prefix).and_then(isqrt_exact);
    let without_prefix = isqrt_exact(pos_len);
    let (grid, no_embed_class) = match (
        timm.and_then(|t| t.no_embed_class),
        with_prefix,
        without_prefix,
    ) {
        (Some(false) | None, Some(g), _) => (g, false),
        (Some(true) | None, _, Some(g)) => (g, true),
        _ => {
            return Err(bad_shape(
                "pos_embed",
                &format!("a square grid of patches plus {prefix} prefix token(s)"),
                pos,
            ));
        }
    };
    let img_size = grid * patch_size;
    if let Some(cfg_size) = timm.and_then(|t| t.img_size) {
        if cfg_size != img_size {
            return Err(bad_config(format!(
                "model_args.img_size is {cfg_size} but pos_embed holds a {grid}×{grid} grid of \
                 {patch_size}-pixel patches ({img_size} px)"
            )));
        }
    }

    let q_norm = shape_of(file, "blocks.0.attn.q_norm.weight").map(|s| s.iter().product::<usize>());
    let num_heads = overrides
        .num_heads
        .or_else(|| timm.and_then(|t| t.num_heads))
        .or_else(|| {
            timm.and_then(|t| t.architecture.as_deref())
                .and_then(heads_from_architecture)
        })
        .or_else(|| {
            q_norm
                .filter(|&w| w > 0 && embed_dim % w == 0)
                .map(|w| embed_dim / w)
        })
        .unwrap_or_else(|| (embed_dim / 64).max(1));
    if num_heads == 0 || embed_dim % num_heads != 0 {
        return Err(bad_config(format!(
            "{num_heads} heads do not divide the width {embed_dim}; set the head count explicitly"
        )));
    }

    let global_pool = match overrides.global_pool {
        Some(p) => p,
        None => match timm.and_then(|t| t.global_pool.as_deref()) {
            Some(name) => GlobalPool::parse(name).ok_or_else(|| {
                bad_config(format!(
                    "global_pool `{name}` is not supported (token, avg, max, avgmax are)"
                ))
            })?,
            None if class_token => GlobalPool::Token,
            None => GlobalPool::Avg,
        },
    };
    if global_pool == GlobalPool::Token && !class_token {
        return Err(bad_config(
            "global_pool `token` needs a class token, and the weights have no `cls_token`; use avg"
                .into(),
        ));
    }
    let activation = match overrides.activation {
        Some(a) => a,
        None => match timm.and_then(|t| t.act_layer.as_deref()) {
            Some(name) => Activation::parse(name).ok_or_else(|| {
                bad_config(format!(
                    "act_layer `{name}` is not supported (gelu, gelu_tanh are)"
                ))
            })?,
            None => Activation::Gelu,
        },
    };
    let mean = timm.and_then(|t| t.mean).unwrap_or([0.5; 3]);
    let std = timm.and_then(|t| t.std).unwrap_or([0.5; 3]);
    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
        return Err(bad_config(format!(
            "pretrained_cfg mean {mean:?} / std {std:?} are not usable"
        )));
    }

    Ok(VitConfig {
        img_size,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_hidden,
        num_classes,
        class_token,
        reg_tokens,
        no_embed_class,
        global_pool,
        activation,
        pre_norm: file.contains("norm_pre.weight"),
        final_norm: file.contains("norm.weight"),
        fc_norm: file.contains("fc_norm.weight"),
        qk_norm: q_norm.is_some(),
        layer_scale: file.contains("blocks.0.ls1.gamma"),
        norm_eps: 1e-6,
        mean,
        std,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wd_style_config() {
        let text = r#"{"architecture": "vit_base_patch16_224", "num_classes": 10861,
            "model_args": {"img_size": 448, "class_token": false, "global_pool": "avg",
                           "fc_norm": false, "act_layer": "gelu_tanh"},
            "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#;
        let c = TimmConfig::parse(Path::new("config.json"), text).unwrap();
        assert_eq!(c.architecture.as_deref(), Some("vit_base_patch16_224"));
        assert_eq!(c.img_size, Some(448));
        assert_eq!(c.class_token, Some(false));
        assert_eq!(c.global_pool.as_deref(), Some("avg"));
        assert_eq!(c.act_layer.as_deref(), Some("gelu_tanh"));
        assert_eq!(c.mean, Some([0.5; 3]));
        assert_eq!(c.num_heads, None);
        assert_eq!(heads_from_architecture("vit_base_patch16_224"), Some(12));
        assert_eq!(
            heads_from_architecture("vit_large_patch14_clip_224"),
            Some(16)
        );
        assert_eq!(heads_from_architecture("swinv2_base"), None);
    }

    #[test]
    fn bad_config_json_names_the_file() {
        let err = TimmConfig::parse(Path::new("dir/config.json"), "{nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dir/config.json"), "{err}");
        let err = TimmConfig::parse(
            Path::new("c.json"),
            r#"{"model_args": {"img_size": [448, 224]}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not square"), "{err}");
    }

    #[test]
    fn names_parse() {
        assert_eq!(GlobalPool::parse("avg"), Some(GlobalPool::Avg));
        assert_eq!(GlobalPool::parse("map"), None);
        assert_eq!(Activation::parse("gelu_tanh"), Some(Activation::GeluTanh));
        assert_eq!(Activation::parse("relu"), None);
    }
}
