//! The optimizer and learning-rate schedule a [`TrainConfig`] asks for, behind one enum the loop
//! drives: `optimizer_type` (AdamW, AdamW8bit, Prodigy, Adafactor) with kohya-style
//! `optimizer_args` (`weight_decay=0.01`, `betas=0.9,0.999`, `eps=1e-8`, `d_coef=1.0`, …),
//! LoRA+ (`loraplus_lr_ratio`), global-norm clipping (`max_grad_norm`, 0 = off), and the
//! diffusers-style schedule (`lr_scheduler`, `lr_warmup_steps`, `lr_scheduler_num_cycles`,
//! `lr_scheduler_power`) over `max_train_steps`.

use fluxlora_flux::FluxAutodiffBackend;
use std::collections::BTreeMap;
use std::path::Path;

use burn::optim::{GradientsParams, Optimizer};
use fluxlora_flux::Flux;
use fluxlora_optim::{
    Adafactor, AdafactorConfig, AdamW, AdamW8bit, AdamW8bitConfig, AdamWConfig, LoraOptimizer,
    LrSchedule, ParamGroups, Prodigy, ProdigyConfig,
};

use crate::config::{LrScheduler, OptimizerType, TrainConfig};
use crate::error::TrainError;

/// The configured optimizer over a LoRA-wrapped [`Flux`].
// One per run, never moved in a loop: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum TrainOptimizer<B: FluxAutodiffBackend> {
    /// f32 AdamW.
    AdamW(LoraOptimizer<AdamW, Flux<B>, B>),
    /// 8-bit AdamW.
    AdamW8bit(LoraOptimizer<AdamW8bit, Flux<B>, B>),
    /// Prodigy.
    Prodigy(LoraOptimizer<Prodigy, Flux<B>, B>),
    /// Adafactor.
    Adafactor(LoraOptimizer<Adafactor, Flux<B>, B>),
}

macro_rules! each {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            TrainOptimizer::AdamW($o) => $e,
            TrainOptimizer::AdamW8bit($o) => $e,
            TrainOptimizer::Prodigy($o) => $e,
            TrainOptimizer::Adafactor($o) => $e,
        }
    };
}

impl<B: FluxAutodiffBackend> TrainOptimizer<B> {
    /// Builds the optimizer from the config.
    pub fn from_config(c: &TrainConfig) -> Result<Self, TrainError> {
        let mut args = Args::new(c)?;
        let groups = match c.loraplus_lr_ratio {
            Some(r) => ParamGroups::lora_plus(f64::from(r))?,
            None => ParamGroups::new(),
        };
        let clip = c.max_grad_norm;
        macro_rules! finish {
            ($rule:expr, $variant:ident) => {{
                args.done()?;
                let mut o = LoraOptimizer::new($rule).with_groups(groups);
                if clip > 0.0 {
                    o = o.with_max_grad_norm(clip)?;
                }
                Ok(TrainOptimizer::$variant(o))
            }};
        }
        match c.optimizer_type {
            OptimizerType::AdamW => {
                let d = AdamWConfig::default();
                let (beta1, beta2) = args.betas(d.beta1, d.beta2)?;
                let cfg = AdamWConfig {
                    beta1,
                    beta2,
                    eps: args.f64("eps", d.eps)?,
                    weight_decay: args.f64("weight_decay", d.weight_decay)?,
                };
                finish!(cfg.init()?, AdamW)
            }
            OptimizerType::AdamW8bit => {
                let d = AdamW8bitConfig::default();
                let (beta1, beta2) = args.betas(d.beta1, d.beta2)?;
                let cfg = AdamW8bitConfig {
                    beta1,
                    beta2,
                    eps: args.f64("eps", d.eps)?,
                    weight_decay: args.f64("weight_decay", d.weight_decay)?,
                    min_8bit_size: args.f64("min_8bit_size", d.min_8bit_size as f64)? as usize,
                };
                finish!(cfg.init()?, AdamW8bit)
            }
            OptimizerType::Prodigy => {
                let d = ProdigyConfig::default();
                let (beta1, beta2) = args.betas(d.beta1, d.beta2)?;
                let beta3 = match args.take("beta3") {
                    Some(v) => Some(as_f64("beta3", &v)?),
                    None => d.beta3,
                };
                let cfg = ProdigyConfig {
                    beta1,
                    beta2,
                    beta3,
                    eps: args.f64("eps", d.eps)?,
                    weight_decay: args.f64("weight_decay", d.weight_decay)?,
                    decouple: args.bool("decouple", d.decouple)?,
                    use_bias_correction: args.bool("use_bias_correction", d.use_bias_correction)?,
                    safeguard_warmup: args.bool("safeguard_warmup", d.safeguard_warmup)?,
                    d0: args.f64("d0", d.d0)?,
                    d_coef: args.f64("d_coef", d.d_coef)?,
                    growth_rate: args.f64("growth_rate", d.growth_rate)?,
                    slice_p: args.f64("slice_p", d.slice_p as f64)? as usize,
                };
                finish!(cfg.init()?, Prodigy)
            }
            OptimizerType::Adafactor => {
                let d = AdafactorConfig::default();
                let beta1 = match args.take("beta1") {
                    Some(v) => Some(as_f64("beta1", &v)?),
                    None => d.beta1,
                };
                let cfg = AdafactorConfig {
                    eps1: args.f64("eps1", d.eps1)?,
                    eps2: args.f64("eps2", d.eps2)?,
                    clip_threshold: args.f64("clip_threshold", d.clip_threshold)?,
                    decay_rate: args.f64("decay_rate", d.decay_rate)?,
                    beta1,
                    weight_decay: args.f64("weight_decay", d.weight_decay)?,
                    scale_parameter: args.bool("scale_parameter", d.scale_parameter)?,
                    relative_step: args.bool("relative_step", d.relative_step)?,
                    warmup_init: args.bool("warmup_init", d.warmup_init)?,
                };
                finish!(cfg.init()?, Adafactor)
            }
        }
    }

    /// One update with learning rate `lr`; returns the updated model.
    pub fn step(&mut self, lr: f64, model: Flux<B>, grads: GradientsParams) -> Flux<B> {
        each!(self, o => o.step(lr, model, grads))
    }

    /// The optimizer's name as written in state files and metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AdamW(_) => "AdamW",
            Self::AdamW8bit(_) => "AdamW8bit",
            Self::Prodigy(_) => "Prodigy",
            Self::Adafactor(_) => "Adafactor",
        }
    }

    /// Updates taken so far (restored with the state).
    pub fn steps_taken(&self) -> u64 {
        each!(self, o => o.steps_taken())
    }

    /// Global gradient norm before clipping at the last step (`None` when clipping is off).
    pub fn last_grad_norm(&self) -> Option<f64> {
        each!(self, o => o.last_grad_norm())
    }

    /// The learning rate actually applied for a scheduled `lr` (Prodigy multiplies by its `d`).
    pub fn effective_lr(&self, lr: f64) -> f64 {
        match self {
            Self::Prodigy(o) => o.rule().effective_lr(lr),
            _ => lr,
        }
    }

    /// Writes the state atomically (see `fluxlora_optim::state_file`).
    pub fn save_state(&self, path: &Path) -> Result<(), TrainError> {
        Ok(each!(self, o => o.save_state_file(path))?)
    }

    /// Loads state saved by [`save_state`](Self::save_state), validated against `model`.
    pub fn load_state(&mut self, path: &Path, model: &Flux<B>) -> Result<(), TrainError> {
        Ok(each!(self, o => o.load_state_file(path, model))?)
    }
}

/// The learning-rate schedule of the config over `total_steps` optimizer steps.
pub fn lr_schedule(c: &TrainConfig, total_steps: u64) -> Result<LrSchedule, TrainError> {
    let name = match c.lr_scheduler {
        // diffusers ignores warmup for `constant`; kohya users expect their warmup honoured.
        LrScheduler::Constant if c.lr_warmup_steps > 0 => "constant_with_warmup",
        LrScheduler::Constant => "constant",
        LrScheduler::ConstantWithWarmup => "constant_with_warmup",
        LrScheduler::Linear => "linear",
        LrScheduler::Cosine => "cosine",
        LrScheduler::CosineWithRestarts => "cosine_with_restarts",
        LrScheduler::Polynomial => "polynomial",
    };
    // diffusers' polynomial default lr_end (1e-7), kept below the base rate.
    let lr_end = if c.learning_rate > 1e-7 { 1e-7 } else { 0.0 };
    let cycles = u32::try_from(c.lr_scheduler_num_cycles).unwrap_or(u32::MAX);
    Ok(LrSchedule::from_name(
        name,
        c.learning_rate,
        c.lr_warmup_steps as u64,
        total_steps,
        cycles,
        c.lr_scheduler_power,
        lr_end,
    )?)
}

/// `optimizer_args`, consumed key by key so leftovers can be reported.
struct Args {
    map: BTreeMap<String, toml::Value>,
    optimizer: OptimizerType,
}

fn as_f64(key: &str, v: &toml::Value) -> Result<f64, TrainError> {
    match v {
        toml::Value::Float(f) => Ok(*f),
        toml::Value::Integer(i) => Ok(*i as f64),
        toml::Value::String(s) if s.eq_ignore_ascii_case("inf") => Ok(f64::INFINITY),
        other => Err(TrainError::Invalid {
            key: "optimizer_args".into(),
            message: format!("`{key}={other}` is not a number, e.g. \"{key}=0.01\""),
        }),
    }
}

impl Args {
    fn new(c: &TrainConfig) -> Result<Self, TrainError> {
        Ok(Self {
            map: c.optimizer_arg_map()?,
            optimizer: c.optimizer_type,
        })
    }

    fn take(&mut self, key: &str) -> Option<toml::Value> {
        self.map.remove(key)
    }

    fn f64(&mut self, key: &str, default: f64) -> Result<f64, TrainError> {
        self.take(key).map_or(Ok(default), |v| as_f64(key, &v))
    }

    fn bool(&mut self, key: &str, default: bool) -> Result<bool, TrainError> {
        match self.take(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(b),
            Some(toml::Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(toml::Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(TrainError::Invalid {
                key: "optimizer_args".into(),
                message: format!("`{key}={other}` is not true/false"),
            }),
        }
    }

    /// `betas=0.9,0.999` (kohya), `betas=[0.9, 0.999]`, or `beta1=` / `beta2=`.
    fn betas(&mut self, d1: f64, d2: f64) -> Result<(f64, f64), TrainError> {
        let bad = |v: String| TrainError::Invalid {
            key: "optimizer_args".into(),
            message: format!("`betas={v}` must be two numbers, e.g. \"betas=0.9,0.999\""),
        };
        let (mut b1, mut b2) = match self.take("betas") {
            None => (d1, d2),
            Some(toml::Value::Array(a)) if a.len() == 2 => {
                (as_f64("betas", &a[0])?, as_f64("betas", &a[1])?)
            }
            Some(toml::Value::String(s)) => {
                let parts: Vec<&str> = s
                    .trim_matches(['(', ')', '[', ']'])
                    .split(',')
                    .map(str::trim)
                    .collect();
                match parts.as_slice() {
                    [a, b] => (
                        a.parse().map_err(|_| bad(s.clone()))?,
                        b.parse().map_err(|_| bad(s.clone()))?,
                    ),
                    _ => return Err(bad(s)),
                }
            }
            Some(other) => return Err(bad(other.to_string())),
        };
        b1 = self.f64("beta1", b1)?;
        b2 = self.f64("beta2", b2)?;
        Ok((b1, b2))
    }

    fn done(self) -> Result<(), TrainError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(TrainError::Invalid {
                key: "optimizer_args".into(),
                message: format!(
                    "`{k}` is not an argument of {:?} (valid: {})",
                    self.optimizer,
                    match self.optimizer {
                        OptimizerType::AdamW => "betas, beta1, beta2, eps, weight_decay",
                        OptimizerType::AdamW8bit =>
                            "betas, beta1, beta2, eps, weight_decay, min_8bit_size",
                        OptimizerType::Prodigy =>
                            "betas, beta1, beta2, beta3, eps, weight_decay, decouple, \
                             use_bias_correction, safeguard_warmup, d0, d_coef, growth_rate, \
                             slice_p",
                        OptimizerType::Adafactor =>
                            "eps1, eps2, clip_threshold, decay_rate, beta1, weight_decay, \
                             scale_parameter, relative_step, warmup_init",
                    }
                ),
            }),
        }
    }
}
