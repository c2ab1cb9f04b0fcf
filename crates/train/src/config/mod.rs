//! `TrainConfig`: one TOML file, kohya's key names where they exist, every key also settable
//! from the command line.
//!
//! Layers, later ones winning: built-in defaults (safe Flux defaults: guidance 1.0, raw
//! prediction, `shift` sampling at the resolution's BFL shift, rank 16 / alpha 16, AdamW8bit,
//! LR 1e-4, no T5 mask) → the `--preset`'s values → the TOML file → command-line overrides
//! (`--network_dim 32`, `--network-dim=32`, `--set key=value`). Unknown keys are errors with a
//! "did you mean" hint; values are checked by [`TrainConfig::validate`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::preset::TrainingPreset;

mod choices;
mod cli;

pub use choices::*;
use cli::{cli_table, parse_table, parse_value};

/// Every training setting. Field names follow kohya sd-scripts where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Training preset whose values sit under the file's: character, style or concept.
    pub preset: Option<TrainingPreset>,
    /// Backend: `auto`, `cuda`, `wgpu` or `ndarray`.
    pub backend: String,

    /// Flux transformer checkpoint (BFL file, ComfyUI file or diffusers folder).
    pub pretrained_model_name_or_path: Option<PathBuf>,
    /// Autoencoder weights (`ae.safetensors` or a diffusers `vae/` folder).
    pub ae: Option<PathBuf>,
    /// CLIP-L text encoder folder or file.
    pub clip_l: Option<PathBuf>,
    /// T5-XXL text encoder folder or file.
    pub t5xxl: Option<PathBuf>,
    /// Model variant.
    pub model_type: ModelType,
    /// Store the frozen base in bf16 where the backend computes it (never on wgpu); used when
    /// `base_dtype` is not given.
    pub base_bf16: bool,
    /// Storage of the frozen base: `f32`, `bf16`, `fp8` (E4M3, scale per output channel) or
    /// `int8`; unset = `base_bf16`'s choice. See [`crate::memory`].
    pub base_dtype: Option<BaseDtypeKey>,
    /// kohya's synonym for `base_dtype = "fp8"`.
    pub fp8_base: bool,
    /// kohya's block swap: stream the frozen weights of this many blocks (double-block
    /// equivalents) from host memory.
    pub blocks_to_swap: usize,
    /// Let the memory planner pick `base_dtype`, `blocks_to_swap` and checkpointing so the
    /// run fits the device.
    pub auto_memory: bool,
    /// Device memory the planner may use, in GiB (unset: the device's own size where the
    /// backend reports it, else no limit).
    pub device_memory_gb: Option<f64>,

    /// kohya dataset TOML (several datasets / subsets).
    pub dataset_config: Option<PathBuf>,
    /// A single image folder (used when `dataset_config` is not given).
    pub train_data_dir: Option<PathBuf>,
    /// Kontext edit pairs: the folder of control images, one per training image with the same
    /// stem (musubi-tuner's `control_directory`). Applies to every subset that sets none of its
    /// own (a dataset TOML's subsets take `control_directory` / `control_path`).
    pub control_directory: Option<PathBuf>,
    /// Trigger word inserted into captions that lack it.
    pub trigger_word: Option<String>,
    /// Caption file extension.
    pub caption_extension: String,
    /// Largest image accepted, in pixels (`None`: the dataset config's `max_image_pixels`,
    /// 64 MP by default); larger files are refused from their header, before any decoding.
    pub max_image_pixels: Option<u64>,
    /// Largest image width or height accepted (`None`: the dataset config's `max_image_side`).
    pub max_image_side: Option<u32>,
    /// Training resolution (bucket area ≤ resolution²).
    pub resolution: u32,
    /// Images per step.
    pub train_batch_size: usize,

    /// LoRA rank.
    pub network_dim: usize,
    /// LoRA alpha (scale = alpha / rank).
    pub network_alpha: f32,
    /// Adapter input dropout.
    pub network_dropout: f64,
    /// Rank dropout.
    pub rank_dropout: f64,
    /// Module dropout.
    pub module_dropout: f64,
    /// Adapter algorithm: `lora`, `lokr`, `loha` or `dora` (unset: `network_args`'s `algo`,
    /// else `lora`; see [`crate::network`]).
    pub network_type: Option<String>,
    /// LoKr's Kronecker factor (LyCORIS `factor`; unset = -1, as balanced as possible).
    pub lokr_factor: Option<i64>,
    /// LoKr with a full-rank W2 (LyCORIS `full_matrix`).
    pub lokr_full_rank: Option<bool>,
    /// kohya's `network_module`: `networks.lora_flux`, or `lycoris.kohya` with `algo=` in
    /// `network_args`.
    pub network_module: Option<String>,
    /// kohya / LyCORIS network arguments `key=value`: `algo=lokr|loha|lora`, `factor=8`,
    /// `full_matrix=true`, `dora_wd=true`.
    pub network_args: Vec<String>,
    /// Target preset: `kohya`, `aitoolkit` or `attention`.
    pub lora_targets: String,
    /// Double blocks to train, e.g. `"0-18"` or `"all"`.
    pub train_double_block_indices: String,
    /// Single blocks to train.
    pub train_single_block_indices: String,
    /// LoRA+ ratio: B matrices learn this many times faster.
    pub loraplus_lr_ratio: Option<f32>,

    /// Base learning rate.
    pub learning_rate: f64,
    /// Optimizer.
    pub optimizer_type: OptimizerType,
    /// Extra optimizer arguments as `key=value` (kohya style), e.g. `["weight_decay=0.01"]`.
    pub optimizer_args: Vec<String>,
    /// LR schedule.
    pub lr_scheduler: LrScheduler,
    /// Warmup steps.
    pub lr_warmup_steps: usize,
    /// Cycles for `cosine_with_restarts`.
    pub lr_scheduler_num_cycles: usize,
    /// Power for `polynomial`.
    pub lr_scheduler_power: f64,
    /// Total optimizer steps (`None`: from `max_train_epochs`, else from the preset and dataset
    /// size).
    pub max_train_steps: Option<usize>,
    /// Train for this many epochs (kohya's name): `max_train_steps` becomes epochs × optimizer
    /// steps per epoch (micro-batches per epoch over `gradient_accumulation_steps`, rounded up).
    /// Refused together with `max_train_steps`.
    pub max_train_epochs: Option<usize>,
    /// Micro-batches averaged per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// Seed for noise, σ, data order and dropout.
    pub seed: u64,
    /// Recompute each block's forward in backward to save memory.
    pub gradient_checkpointing: bool,
    /// EMA decay of LoRA weights (`None`: no EMA).
    pub ema_decay: Option<f32>,
    /// Weight of regularisation-image loss.
    pub prior_loss_weight: f32,

    /// Guidance value fed to dev's guidance embedder while training (1.0 is safe).
    pub guidance_scale: f32,
    /// σ sampling.
    pub timestep_sampling: TimestepSampling,
    /// Scale inside sigmoid for `sigmoid` / `shift`.
    pub sigmoid_scale: f32,
    /// Shift s for `shift` / `sigma` (`None`: BFL's shift for the resolution).
    pub discrete_flow_shift: Option<f32>,
    /// Mean for `logit_normal`.
    pub logit_mean: f32,
    /// Std for `logit_normal`.
    pub logit_std: f32,
    /// Prediction type.
    pub model_prediction_type: ModelPredictionType,
    /// Loss weighting.
    pub weighting_scheme: WeightingScheme,
    /// Per-element loss.
    pub loss_type: LossType,
    /// Huber parameter.
    pub huber_c: f32,
    /// Mask T5 padding: in T5's own attention and in the transformer's, where no token attends
    /// to the padding (kohya's `apply_t5_attn_mask`; BFL inference does not).
    pub apply_t5_attn_mask: bool,
    /// T5 tokens (`None`: 512 for dev, 256 for schnell).
    pub t5xxl_max_token_length: Option<usize>,

    /// Output folder.
    pub output_dir: PathBuf,
    /// File stem of the LoRA.
    pub output_name: String,
    /// Save every N steps (`None`: only at the end).
    pub save_every_n_steps: Option<usize>,
    /// Also save at the end of every N-th epoch (kohya's name; `None`: not by epochs). Such a
    /// save is a checkpoint folder named by its step like any other, its `ss_epoch` the epoch.
    pub save_every_n_epochs: Option<usize>,
    /// Keep only the last K intermediate saves (`None`: keep all); the save with the lowest
    /// validation loss is kept as well.
    pub save_last_n_saves: Option<usize>,
    /// File layout.
    pub save_format: SaveFormat,
    /// TensorBoard logs (kohya's name): each step's loss, lr, σ mean and validation loss also go
    /// to event files in `<logging_dir>/<output_name>/` (`None`: CSV log only).
    pub logging_dir: Option<PathBuf>,
    /// Latent and text-embedding caches (`None`: `<output_dir>/cache`); valid entries are reused
    /// across runs.
    pub cache_dir: Option<PathBuf>,

    /// Prompts file for samples (kohya per-line flags `--w --h --s --d --g --n`).
    pub sample_prompts: Option<PathBuf>,
    /// Sample every N steps.
    pub sample_every_n_steps: Option<usize>,
    /// Also sample before training.
    pub sample_at_first: bool,
    /// Fraction in [0, 1) of the training images (regularisation images never) held out for the
    /// validation loss: `round(fraction · images)`, at least 1 when above 0; they are never
    /// trained on. 0 (default) disables validation. Refused when nothing would be left to train.
    pub validation_split: f32,
    /// Seed of the validation split (which images are held out) and of the held-out images'
    /// fixed σ and noise, identical at every evaluation, across runs and after `--resume`.
    pub validation_seed: u64,
    /// Compute the validation loss every N steps and at the end (`None`: at each save —
    /// `save_every_n_steps` — and at the end). Needs `validation_split > 0`.
    pub validate_every_n_steps: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: None,
            backend: "auto".into(),
            pretrained_model_name_or_path: None,
            ae: None,
            clip_l: None,
            t5xxl: None,
            model_type: ModelType::Auto,
            base_bf16: true,
            base_dtype: None,
            fp8_base: false,
            blocks_to_swap: 0,
            auto_memory: false,
            device_memory_gb: None,
            dataset_config: None,
            train_data_dir: None,
            control_directory: None,
            trigger_word: None,
            caption_extension: ".txt".into(),
            max_image_pixels: None,
            max_image_side: None,
            resolution: 1024,
            train_batch_size: 1,
            network_dim: 16,
            network_alpha: 16.0,
            network_dropout: 0.0,
            rank_dropout: 0.0,
            module_dropout: 0.0,
            network_type: None,
            lokr_factor: None,
            lokr_full_rank: None,
            network_module: None,
            network_args: Vec::new(),
            lora_targets: "kohya".into(),
            train_double_block_indices: "all".into(),
            train_single_block_indices: "all".into(),
            loraplus_lr_ratio: None,
            learning_rate: 1e-4,
            optimizer_type: OptimizerType::AdamW8bit,
            optimizer_args: Vec::new(),
            lr_scheduler: LrScheduler::Constant,
            lr_warmup_steps: 0,
            lr_scheduler_num_cycles: 1,
            lr_scheduler_power: 1.0,
            max_train_steps: None,
            max_train_epochs: None,
            gradient_accumulation_steps: 1,
            max_grad_norm: 1.0,
            seed: 42,
            gradient_checkpointing: false,
            ema_decay: None,
            prior_loss_weight: 1.0,
            guidance_scale: 1.0,
            timestep_sampling: TimestepSampling::Shift,
            sigmoid_scale: 1.0,
            discrete_flow_shift: None,
            logit_mean: 0.0,
            logit_std: 1.0,
            model_prediction_type: ModelPredictionType::Raw,
            weighting_scheme: WeightingScheme::None,
            loss_type: LossType::L2,
            huber_c: 0.1,
            apply_t5_attn_mask: false,
            t5xxl_max_token_length: None,
            output_dir: PathBuf::from("output"),
            output_name: "lora".into(),
            save_every_n_steps: None,
            save_every_n_epochs: None,
            save_last_n_saves: None,
            save_format: SaveFormat::Kohya,
            logging_dir: None,
            cache_dir: None,
            sample_prompts: None,
            sample_every_n_steps: None,
            sample_at_first: true,
            validation_split: 0.0,
            validation_seed: 1234,
            validate_every_n_steps: None,
        }
    }
}

impl TrainConfig {
    /// Every key a config file may use, in declaration order.
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(TrainConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Builds the config from an optional TOML file and command-line arguments.
    ///
    /// `args` are `--key value`, `--key=value` or `--set key=value`; dashes in keys may be
    /// underscores or hyphens; values are TOML (`32`, `true`, `"text"`, `[1, 2]`) or bare words.
    pub fn load(file: Option<&Path>, args: &[String]) -> Result<Self, TrainError> {
        let file_table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })?;
                parse_table(&text, &path.display().to_string())?
            }
            None => toml::Table::new(),
        };
        let cli = cli_table(args)?;
        let origin = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "command line".into());
        check_keys(&file_table, &origin)?;
        check_keys(&cli, "command line")?;
        // The preset may come from the file or the command line; its values go underneath both.
        let preset = cli
            .get("preset")
            .or_else(|| file_table.get("preset"))
            .cloned();
        let mut merged = match preset {
            Some(v) => {
                let p: TrainingPreset =
                    v.try_into()
                        .map_err(|e: toml::de::Error| TrainError::Config {
                            origin: origin.clone(),
                            message: e.to_string(),
                        })?;
                p.defaults()
            }
            None => toml::Table::new(),
        };
        merged.extend(file_table);
        merged.extend(cli);
        let config: TrainConfig =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| TrainError::Config {
                    origin,
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and combinations; each error names the key and the fix.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |key: &str, message: String| {
            Err(TrainError::Invalid {
                key: key.to_string(),
                message,
            })
        };
        if let Err(why) = check_file_stem(&self.output_name) {
            return bad(
                "output_name",
                format!(
                    "{:?} {why}; use a plain name such as `my_lora`",
                    self.output_name
                ),
            );
        }
        if self.network_dim == 0 {
            return bad("network_dim", "must be at least 1 (typical: 8–64)".into());
        }
        if !(self.network_alpha > 0.0 && self.network_alpha.is_finite()) {
            return bad(
                "network_alpha",
                format!(
                    "{} must be positive (usually = network_dim)",
                    self.network_alpha
                ),
            );
        }
        crate::network::network(self)?;
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(
                "learning_rate",
                format!(
                    "{} must be positive (1e-4 for AdamW, 1.0 for Prodigy)",
                    self.learning_rate
                ),
            );
        }
        for (k, p) in [
            ("network_dropout", self.network_dropout),
            ("rank_dropout", self.rank_dropout),
            ("module_dropout", self.module_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(k, format!("{p} must be in [0, 1)"));
            }
        }
        if self.resolution < 64 || !self.resolution.is_multiple_of(16) {
            return bad(
                "resolution",
                format!(
                    "{} must be a multiple of 16 and at least 64",
                    self.resolution
                ),
            );
        }
        if self.train_batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return bad(
                "train_batch_size",
                "batch size and gradient_accumulation_steps must be ≥ 1".into(),
            );
        }
        if self.max_train_steps == Some(0) {
            return bad("max_train_steps", "must be at least 1".into());
        }
        match (self.max_train_epochs, self.max_train_steps) {
            (Some(0), _) => return bad("max_train_epochs", "must be at least 1".into()),
            (Some(e), Some(s)) => {
                return bad(
                    "max_train_epochs",
                    format!(
                        "{e} epochs and max_train_steps = {s} both set the run's length; keep one \
                         of them"
                    ),
                )
            }
            _ => {}
        }
        for (key, n) in [
            ("save_every_n_steps", self.save_every_n_steps),
            ("save_every_n_epochs", self.save_every_n_epochs),
        ] {
            if n == Some(0) {
                return bad(key, "must be at least 1, or unset".into());
            }
        }
        if self.max_grad_norm < 0.0 {
            return bad("max_grad_norm", "must be ≥ 0 (0 disables clipping)".into());
        }
        if !(0.0..1.0).contains(&self.validation_split) {
            return bad(
                "validation_split",
                format!(
                    "{} must be in [0, 1), e.g. 0.1 to hold out a tenth of the images",
                    self.validation_split
                ),
            );
        }
        match self.validate_every_n_steps {
            Some(0) => {
                return bad(
                    "validate_every_n_steps",
                    "must be at least 1, or unset to validate at each save".into(),
                )
            }
            // Refused rather than ignored: the user expects a validation loss that would never
            // come.
            Some(n) if self.validation_split == 0.0 => {
                return bad(
                    "validate_every_n_steps",
                    format!(
                        "{n} has no effect without a validation split; set validation_split (e.g. \
                         0.1) or unset it"
                    ),
                )
            }
            _ => {}
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad("ema_decay", format!("{d} must be in [0, 1), e.g. 0.999"));
            }
        }
        if let Some(s) = self.discrete_flow_shift {
            if !(s > 0.0) {
                return bad("discrete_flow_shift", format!("{s} must be positive"));
            }
        }
        if self.optimizer_type == OptimizerType::Prodigy && self.learning_rate < 0.1 {
            return bad(
                "learning_rate",
                format!(
                    "{} is far below Prodigy's normal 1.0 (Prodigy estimates the step size \
                     itself); set learning_rate = 1.0",
                    self.learning_rate
                ),
            );
        }
        if self.lr_scheduler == LrScheduler::CosineWithRestarts && self.lr_scheduler_num_cycles == 0
        {
            return bad("lr_scheduler_num_cycles", "must be ≥ 1".into());
        }
        if self.dataset_config.is_some() && self.train_data_dir.is_some() {
            return bad(
                "train_data_dir",
                "give either dataset_config or train_data_dir, not both".into(),
            );
        }
        Ok(())
    }

    /// The config as TOML (printed at start and stored in the output folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
    }

    /// The effective T5 token count for a model that has (`true`) or lacks a guidance embedder.
    pub fn t5_tokens(&self, guidance: bool) -> usize {
        self.t5xxl_max_token_length
            .unwrap_or(if guidance { 512 } else { 256 })
    }

    /// Parsed `optimizer_args` (`key=value` strings) as a map of TOML values.
    pub fn optimizer_arg_map(&self) -> Result<BTreeMap<String, toml::Value>, TrainError> {
        self.optimizer_args
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').ok_or_else(|| TrainError::Invalid {
                    key: "optimizer_args".into(),
                    message: format!("{kv:?} is not key=value, e.g. \"weight_decay=0.01\""),
                })?;
                Ok((k.trim().to_string(), parse_value(v.trim())))
            })
            .collect()
    }
}

/// Why `name` cannot be the stem of the run's files: every file is `<output_dir>/<name>…`, so a
/// separator, `..`, a drive or root would put them outside `output_dir`.
fn check_file_stem(name: &str) -> Result<(), &'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("is empty");
    }
    if trimmed != name {
        return Err("starts or ends with whitespace");
    }
    if name.contains(['/', '\\']) {
        return Err(
            "contains a path separator (the files go to output_dir; set output_dir for the folder)",
        );
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err("contains `..`");
    }
    if name.contains(':') || name.chars().any(char::is_control) {
        return Err("contains `:` or a control character");
    }
    Ok(())
}

fn check_keys(table: &toml::Table, origin: &str) -> Result<(), TrainError> {
    let known = TrainConfig::keys();
    for key in table.keys() {
        if !known.iter().any(|k| k == key) {
            let suggestion = known
                .iter()
                .map(|k| (strsim::jaro_winkler(k, key), k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k.clone());
            return Err(TrainError::UnknownKey {
                origin: origin.to_string(),
                key: key.clone(),
                suggestion,
            });
        }
    }
    Ok(())
}
