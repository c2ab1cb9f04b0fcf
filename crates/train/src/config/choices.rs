//! The enumerated settings of [`super::TrainConfig`]: each variant is a config spelling.

use serde::{Deserialize, Serialize};

/// Which Flux.1 variant the base is (inferred from the checkpoint when `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    /// Inferred from the weights: guidance embedder present ⇒ dev.
    #[default]
    Auto,
    /// Guidance-distilled Flux.1-dev.
    Dev,
    /// Timestep-distilled Flux.1-schnell (no guidance embedder).
    Schnell,
    /// FLUX.1 Kontext [dev]: dev's transformer conditioned on a control image (edit pairs; see
    /// `fluxlora_flux::kontext`). Its weights cannot tell it from dev, so `auto` goes by the
    /// name (see `BaseModel::is_kontext_as`).
    Kontext,
}

/// The config spelling of the frozen base's storage (`base_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtypeKey {
    /// f32.
    F32,
    /// bf16.
    Bf16,
    /// fp8 E4M3 with a scale per output channel.
    Fp8,
    /// int8 with a scale per output channel.
    Int8,
}

impl From<BaseDtypeKey> for fluxlora_lora::BaseDtype {
    fn from(k: BaseDtypeKey) -> Self {
        match k {
            BaseDtypeKey::F32 => fluxlora_lora::BaseDtype::F32,
            BaseDtypeKey::Bf16 => fluxlora_lora::BaseDtype::Bf16,
            BaseDtypeKey::Fp8 => fluxlora_lora::BaseDtype::Fp8,
            BaseDtypeKey::Int8 => fluxlora_lora::BaseDtype::Int8,
        }
    }
}

/// Optimizer, by kohya's `optimizer_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OptimizerType {
    /// AdamW with f32 state.
    AdamW,
    /// AdamW with block-wise 8-bit state (bitsandbytes-style).
    #[default]
    AdamW8bit,
    /// Prodigy (learning rate 1.0 is the normal setting).
    Prodigy,
    /// Adafactor (factored second moments).
    Adafactor,
}

/// Learning-rate schedule, by diffusers/kohya names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Constant after warmup.
    #[default]
    Constant,
    /// Alias of constant with warmup steps.
    ConstantWithWarmup,
    /// Linear decay to 0.
    Linear,
    /// Half-cosine decay to 0.
    Cosine,
    /// Cosine with hard restarts (`lr_scheduler_num_cycles`).
    CosineWithRestarts,
    /// Polynomial decay (`lr_scheduler_power`).
    Polynomial,
}

/// How training noise levels σ are drawn (kohya's `timestep_sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSampling {
    /// σ from the shifted discrete table (kohya `sigma`).
    Sigma,
    /// σ = u, u ~ U(0,1).
    Uniform,
    /// σ = sigmoid(scale·n), n ~ N(0,1).
    Sigmoid,
    /// σ = s·q / (1 + (s−1)·q), q = sigmoid(scale·n) (kohya `shift`).
    #[default]
    Shift,
    /// BFL time shift with μ from the image's token count (kohya `flux_shift`).
    FluxShift,
    /// σ = sigmoid(N(logit_mean, logit_std)).
    LogitNormal,
}

/// What the transformer's output is compared with (kohya's `model_prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModelPredictionType {
    /// The raw prediction, target ε − x0 (recommended for Flux).
    #[default]
    Raw,
    /// prediction + x_t (kohya `additive`).
    Additive,
    /// prediction·(−σ) + x_t, with the loss weighting applied (kohya `sigma_scaled`).
    SigmaScaled,
}

/// Per-sample loss weighting by σ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WeightingScheme {
    /// Weight 1.
    #[default]
    None,
    /// w = σ⁻².
    SigmaSqrt,
    /// w = 2 / (π(1 − 2σ + 2σ²)).
    Cosmap,
}

/// Per-element loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean squared error.
    #[default]
    L2,
    /// Mean absolute error.
    L1,
    /// Pseudo-Huber with `huber_c`.
    Huber,
}

/// LoRA file layout written at each save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SaveFormat {
    /// `lora_unet_*` with `.alpha` (ComfyUI, Forge, kohya tools).
    #[default]
    Kohya,
    /// `transformer.*.lora_A/B`, scale folded (diffusers, ai-toolkit).
    Peft,
    /// `diffusion_model.*` (ComfyUI native).
    Comfyui,
}
