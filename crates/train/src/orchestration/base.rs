//! The base model of a run: where its five parts live (transformer, autoencoder, CLIP-L, T5 and
//! the two tokenizers) and how to load each with the options its folder declares.
//!
//! `pretrained_model_name_or_path` is either a diffusers-layout model folder (`transformer/`,
//! `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`) or a single
//! transformer file (BFL / ComfyUI, kohya-style), with `ae`, `clip_l` and `t5xxl` naming the
//! other parts. Explicit `ae` / `clip_l` / `t5xxl` always win over the folder's. A part's
//! `config.json` (diffusers / transformers), when present, supplies what the weights do not
//! record: the autoencoder's group count and scale/shift, CLIP's head count, activation and
//! epsilon, and the transformer's RoPE axes.

use fluxlora_flux::FluxBackend;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use fluxlora_flux::clip::{ClipActivation, ClipPooling};
use fluxlora_flux::tokenizer::{T5_MAX_LENGTH_DEV, T5_MAX_LENGTH_SCHNELL};
use fluxlora_flux::{
    Autoencoder, AutoencoderLoadOptions, ClipLoadOptions, ClipTextModel, Flux, FluxCheckpoint,
    LoadOptions, T5Encoder, T5LoadOptions, TextTokenizer,
};
use serde_json::Value;

use crate::config::{ModelType, TrainConfig};
use crate::error::TrainError;

/// Paths of every part of a base model.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseModel {
    /// Transformer file, sharded index, or folder.
    pub transformer: PathBuf,
    /// Autoencoder file or folder.
    pub ae: PathBuf,
    /// CLIP-L text model file or folder.
    pub clip: PathBuf,
    /// T5 encoder file or folder.
    pub t5: PathBuf,
    /// CLIP `tokenizer.json`.
    pub clip_tokenizer: PathBuf,
    /// T5 `tokenizer.json`.
    pub t5_tokenizer: PathBuf,
}

/// Where a base model's parts were named: the config's `pretrained_model_name_or_path`, `ae`,
/// `clip_l` and `t5xxl`, or the same flags of the `sample` job. [`BaseModel::from_paths`]
/// finds every part from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPaths {
    /// The model folder (diffusers layout) or transformer file.
    pub model: Option<PathBuf>,
    /// The autoencoder, when not the folder's `vae/`.
    pub ae: Option<PathBuf>,
    /// CLIP-L, when not the folder's `text_encoder/`.
    pub clip_l: Option<PathBuf>,
    /// T5-XXL, when not the folder's `text_encoder_2/`.
    pub t5xxl: Option<PathBuf>,
}

impl From<&TrainConfig> for ModelPaths {
    fn from(c: &TrainConfig) -> Self {
        Self {
            model: c.pretrained_model_name_or_path.clone(),
            ae: c.ae.clone(),
            clip_l: c.clip_l.clone(),
            t5xxl: c.t5xxl.clone(),
        }
    }
}

fn missing(key: &str, message: String) -> TrainError {
    TrainError::Invalid {
        key: key.into(),
        message,
    }
}

/// `folder/sub` when it exists.
fn sub(folder: Option<&Path>, name: &str) -> Option<PathBuf> {
    folder.map(|f| f.join(name)).filter(|p| p.exists())
}

/// The `tokenizer.json` for a text encoder: the model folder's `sub/`, else one beside `weights`.
fn tokenizer(
    folder: Option<&Path>,
    sub_name: &str,
    weights: &Path,
    which: &str,
) -> Result<PathBuf, TrainError> {
    let beside = if weights.is_dir() {
        weights.join("tokenizer.json")
    } else {
        weights.with_file_name("tokenizer.json")
    };
    let candidates: Vec<PathBuf> = [
        sub(folder, sub_name).map(|d| d.join("tokenizer.json")),
        Some(beside),
    ]
    .into_iter()
    .flatten()
    .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            missing(
                "pretrained_model_name_or_path",
                format!(
                    "no {which} tokenizer.json (looked at {}); put the model's tokenizer.json at \
                     {} (from the black-forest-labs/FLUX.1-dev repository's `{sub_name}/`)",
                    tried.join(", "),
                    tried
                        .first()
                        .map(String::as_str)
                        .unwrap_or("tokenizer.json"),
                ),
            )
        })
}

impl BaseModel {
    /// Finds every part from the config (see the module docs for the rules).
    pub fn resolve(c: &TrainConfig) -> Result<Self, TrainError> {
        Self::from_paths(&ModelPaths::from(c))
    }

    /// Finds every part from the named paths (see the module docs for the rules).
    pub fn from_paths(c: &ModelPaths) -> Result<Self, TrainError> {
        let root = c.model.as_deref().ok_or_else(|| {
            missing(
                "pretrained_model_name_or_path",
                "not set; give a Flux model folder (diffusers layout) or a transformer .safetensors"
                    .into(),
            )
        })?;
        if !root.exists() {
            return Err(missing(
                "pretrained_model_name_or_path",
                format!(
                    "{} does not exist; give a Flux model folder or a transformer .safetensors",
                    root.display()
                ),
            ));
        }
        let folder = root.is_dir().then_some(root);
        let part = |explicit: &Option<PathBuf>,
                    folder_sub: &str,
                    key: &str|
         -> Result<PathBuf, TrainError> {
            match explicit {
                Some(p) if p.exists() => Ok(p.clone()),
                Some(p) => Err(missing(key, format!("{} does not exist", p.display()))),
                None => sub(folder, folder_sub).ok_or_else(|| {
                    missing(
                        key,
                        format!(
                            "not set, and {} has no `{folder_sub}/`; set `{key}` to the \
                             {folder_sub} weights file",
                            root.display()
                        ),
                    )
                }),
            }
        };
        let ae = part(&c.ae, "vae", "ae")?;
        let clip = part(&c.clip_l, "text_encoder", "clip_l")?;
        let t5 = part(&c.t5xxl, "text_encoder_2", "t5xxl")?;
        Ok(Self {
            transformer: root.to_path_buf(),
            clip_tokenizer: tokenizer(folder, "tokenizer", &clip, "CLIP")?,
            t5_tokenizer: tokenizer(folder, "tokenizer_2", &t5, "T5")?,
            ae,
            clip,
            t5,
        })
    }

    /// Whether the transformer is Flux.1-dev (has a guidance embedder), per `model_type` or the
    /// weights.
    pub fn is_dev(&self, c: &TrainConfig) -> Result<bool, TrainError> {
        self.is_dev_as(c.model_type)
    }

    /// Whether the transformer is Flux.1-dev: `model_type`, or for `Auto` the weights.
    pub fn is_dev_as(&self, model_type: ModelType) -> Result<bool, TrainError> {
        Ok(match model_type {
            ModelType::Dev | ModelType::Kontext => true,
            ModelType::Schnell => false,
            ModelType::Auto => FluxCheckpoint::open(&self.transformer)?
                .shape("guidance_in.in_layer.weight")
                .is_some(),
        })
    }

    /// Whether the transformer is FLUX.1 Kontext: `model_type`, or for `Auto` its name. Kontext's
    /// weights have Flux.1-dev's keys and shapes, so `auto` looks at the transformer file's name
    /// (BFL's `flux1-kontext-dev.safetensors`, also inside a model folder's `transformer/`), the
    /// model folder's (`FLUX.1-Kontext-dev`), and a diffusers `model_index.json` naming
    /// `FluxKontextPipeline`.
    pub fn is_kontext_as(&self, model_type: ModelType) -> bool {
        match model_type {
            ModelType::Kontext => true,
            ModelType::Dev | ModelType::Schnell => false,
            ModelType::Auto => {
                let named = |p: &Path| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("kontext"))
                };
                // A diffusers model folder, or its `transformer/` subfolder.
                let t = &self.transformer;
                let folder = t.is_dir().then(|| {
                    if t.file_name().is_some_and(|n| n == "transformer") {
                        t.parent().unwrap_or(t)
                    } else {
                        t.as_path()
                    }
                });
                let pipeline = folder
                    .map(|f| f.join("model_index.json"))
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v.get("_class_name")?.as_str().map(str::to_owned))
                    .is_some_and(|c| c.contains("Kontext"));
                // The weight files of a folder (`transformer/flux1-kontext-….safetensors`).
                let files = folder.is_some_and(|f| {
                    [f.to_path_buf(), f.join("transformer")].iter().any(|d| {
                        std::fs::read_dir(d)
                            .is_ok_and(|entries| entries.flatten().any(|e| named(&e.path())))
                    })
                });
                named(&self.transformer) || folder.is_some_and(named) || pipeline || files
            }
        }
    }

    /// T5 tokens: the config's, else 512 for dev and 256 for schnell.
    pub fn t5_max_length(&self, c: &TrainConfig) -> Result<usize, TrainError> {
        self.t5_tokens(c.t5xxl_max_token_length, c.model_type)
    }

    /// T5 tokens: `explicit`, else 512 for dev and 256 for schnell.
    pub fn t5_tokens(
        &self,
        explicit: Option<usize>,
        model_type: ModelType,
    ) -> Result<usize, TrainError> {
        match explicit {
            Some(n) => Ok(n),
            None => Ok(if self.is_dev_as(model_type)? {
                T5_MAX_LENGTH_DEV
            } else {
                T5_MAX_LENGTH_SCHNELL
            }),
        }
    }

    /// The RoPE split from the transformer's `config.json` (`axes_dims_rope`), when given.
    fn axes_dim(&self) -> Result<Option<Vec<usize>>, TrainError> {
        Ok(read_config(&self.transformer, "transformer")?
            .and_then(|v| v.get("axes_dims_rope").cloned())
            .and_then(|v| serde_json::from_value::<Vec<usize>>(v).ok()))
    }

    /// The transformer's architecture, from its checkpoint's shapes (headers only).
    pub fn transformer_config(&self) -> Result<fluxlora_flux::FluxConfig, TrainError> {
        let ckpt = fluxlora_flux::FluxCheckpoint::open(&self.transformer)?;
        Ok(ckpt.infer_config(self.axes_dim()?)?)
    }

    /// Loads the transformer with a frozen base stored as `base_dtype`, streaming
    /// `blocks_to_swap` blocks from host memory.
    pub fn load_transformer<B: FluxBackend>(
        &self,
        base_dtype: fluxlora_lora::BaseDtype,
        blocks_to_swap: usize,
        device: &B::Device,
    ) -> Result<Flux<B>, TrainError> {
        let axes_dim = self.axes_dim()?;
        let options = LoadOptions {
            axes_dim,
            base_dtype,
            blocks_to_swap,
            trainable_base: false,
        };
        Ok(Flux::load(&self.transformer, &options, device)?)
    }

    /// Loads the autoencoder, with group count and scale/shift from `vae/config.json` if present.
    pub fn load_autoencoder<B: Backend>(
        &self,
        dtype: Option<burn::tensor::DType>,
        device: &B::Device,
    ) -> Result<Autoencoder<B>, TrainError> {
        load_autoencoder(&self.ae, dtype, device)
    }

    /// Loads CLIP-L, with heads / activation / epsilon / pooling from `config.json` if present.
    pub fn load_clip<B: Backend>(
        &self,
        dtype: Option<burn::tensor::DType>,
        device: &B::Device,
    ) -> Result<ClipTextModel<B>, TrainError> {
        let mut o = ClipLoadOptions {
            dtype,
            ..Default::default()
        };
        if let Some(cfg) = read_config(&self.clip, "text_encoder")? {
            o.num_heads = cfg
                .get("num_attention_heads")
                .and_then(Value::as_u64)
                .map(|h| h as usize);
            if let Some(act) = cfg.get("hidden_act").and_then(Value::as_str) {
                o.activation = match act {
                    "quick_gelu" => ClipActivation::QuickGelu,
                    "gelu" => ClipActivation::Gelu,
                    other => {
                        return Err(missing(
                            "clip_l",
                            format!(
                                "{}: hidden_act `{other}` is not supported (quick_gelu or gelu)",
                                self.clip.display()
                            ),
                        ))
                    }
                };
            }
            if let Some(eps) = cfg.get("layer_norm_eps").and_then(Value::as_f64) {
                o.layer_norm_eps = eps;
            }
            if let Some(eos) = cfg.get("eos_token_id").and_then(Value::as_u64) {
                o.pooling = if eos == 2 {
                    ClipPooling::ArgmaxId
                } else {
                    ClipPooling::FirstId(eos as u32)
                };
            }
        }
        Ok(ClipTextModel::load(&self.clip, &o, device)?)
    }

    /// Loads the T5 encoder.
    pub fn load_t5<B: Backend>(
        &self,
        dtype: Option<burn::tensor::DType>,
        device: &B::Device,
    ) -> Result<T5Encoder<B>, TrainError> {
        let mut o = T5LoadOptions {
            dtype,
            ..Default::default()
        };
        if let Some(cfg) = read_config(&self.t5, "text_encoder_2")? {
            if let Some(d) = cfg
                .get("relative_attention_max_distance")
                .and_then(Value::as_u64)
            {
                o.max_distance = d as usize;
            }
            if let Some(eps) = cfg.get("layer_norm_epsilon").and_then(Value::as_f64) {
                o.eps = eps;
            }
        }
        Ok(T5Encoder::load(&self.t5, &o, device)?)
    }

    /// The CLIP and T5 tokenizers (T5 padded to `t5_max_length`).
    pub fn tokenizers(
        &self,
        t5_max_length: usize,
    ) -> Result<(TextTokenizer, TextTokenizer), TrainError> {
        Ok((
            TextTokenizer::clip(&self.clip_tokenizer)?,
            TextTokenizer::t5(&self.t5_tokenizer, t5_max_length)?,
        ))
    }
}

/// The `config.json` of a part: `path/config.json` or `path/sub/config.json` for a folder; for
/// a file, the one beside it only inside a diffusers part folder named `sub`. `None` otherwise.
/// Loads an autoencoder file or `vae/` folder (`ae`), with group count and scale/shift from its
/// `config.json` if present: [`BaseModel::load_autoencoder`], for an autoencoder on its own.
pub fn load_autoencoder<B: Backend>(
    ae: &Path,
    dtype: Option<burn::tensor::DType>,
    device: &B::Device,
) -> Result<Autoencoder<B>, TrainError> {
    let mut o = AutoencoderLoadOptions {
        dtype,
        ..Default::default()
    };
    if let Some(cfg) = read_config(ae, "vae")? {
        if let Some(g) = cfg.get("norm_num_groups").and_then(Value::as_u64) {
            o.norm_groups = g as usize;
        }
        if let Some(s) = cfg.get("scaling_factor").and_then(Value::as_f64) {
            o.scale_factor = s;
        }
        if let Some(s) = cfg.get("shift_factor").and_then(Value::as_f64) {
            o.shift_factor = s;
        }
    }
    Ok(Autoencoder::load(ae, &o, device)?)
}

fn read_config(path: &Path, sub_name: &str) -> Result<Option<Value>, TrainError> {
    let candidates: Vec<PathBuf> = if path.is_dir() {
        vec![
            path.join("config.json"),
            path.join(sub_name).join("config.json"),
        ]
    } else if path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == sub_name)
    {
        vec![path.with_file_name("config.json")]
    } else {
        Vec::new()
    };
    let Some(file) = candidates.iter().find(|p| p.is_file()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|e| TrainError::io(file, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainError::Config {
            origin: file.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(parts: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for p in parts {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"{}").unwrap();
        }
        d
    }

    #[test]
    fn a_diffusers_folder_resolves_every_part() {
        let d = folder_with(&[
            "transformer/x.safetensors",
            "vae/x.safetensors",
            "text_encoder/x.safetensors",
            "text_encoder_2/x.safetensors",
            "tokenizer/tokenizer.json",
            "tokenizer_2/tokenizer.json",
        ]);
        let c = TrainConfig {
            pretrained_model_name_or_path: Some(d.path().into()),
            ..Default::default()
        };
        let b = BaseModel::resolve(&c).unwrap();
        assert_eq!(b.ae, d.path().join("vae"));
        assert_eq!(b.t5, d.path().join("text_encoder_2"));
        assert_eq!(b.t5_tokenizer, d.path().join("tokenizer_2/tokenizer.json"));
        // Kontext: only by name or by the pipeline class (the weights are dev's).
        assert!(!b.is_kontext_as(ModelType::Auto));
        assert!(b.is_kontext_as(ModelType::Kontext));
        std::fs::write(
            d.path().join("model_index.json"),
            r#"{"_class_name": "FluxKontextPipeline"}"#,
        )
        .unwrap();
        assert!(b.is_kontext_as(ModelType::Auto));
        assert!(!b.is_kontext_as(ModelType::Dev));
        let file = BaseModel {
            transformer: d.path().join("flux1-kontext-dev.safetensors"),
            ..b.clone()
        };
        assert!(file.is_kontext_as(ModelType::Auto));
        let dev = BaseModel {
            transformer: d.path().join("flux1-dev.safetensors"),
            ..b
        };
        assert!(!dev.is_kontext_as(ModelType::Auto));
    }

    #[test]
    fn missing_parts_are_named_with_the_key_to_set() {
        let d = folder_with(&[
            "flux1-dev.safetensors",
            "clip_l.safetensors",
            "t5xxl.safetensors",
        ]);
        let file = d.path().join("flux1-dev.safetensors");
        let mut c = TrainConfig {
            pretrained_model_name_or_path: Some(file.clone()),
            ..Default::default()
        };
        let e = BaseModel::resolve(&c).unwrap_err().to_string();
        assert!(e.contains("`ae`") && e.contains("vae"), "{e}");
        c.ae = Some(d.path().join("ae.safetensors"));
        let e = BaseModel::resolve(&c).unwrap_err().to_string();
        assert!(e.contains("ae.safetensors does not exist"), "{e}");
        std::fs::write(d.path().join("ae.safetensors"), b"x").unwrap();
        c.clip_l = Some(d.path().join("clip_l.safetensors"));
        c.t5xxl = Some(d.path().join("t5xxl.safetensors"));
        let e = BaseModel::resolve(&c).unwrap_err().to_string();
        assert!(e.contains("CLIP tokenizer.json"), "{e}");
        std::fs::write(d.path().join("tokenizer.json"), b"{}").unwrap();
        let b = BaseModel::resolve(&c).unwrap();
        assert_eq!(b.clip_tokenizer, d.path().join("tokenizer.json"));
        assert_eq!(b.transformer, file);
    }
}
