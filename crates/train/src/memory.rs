//! The memory planner: peak device and host memory of a training run, estimated from the
//! config and the base's shapes before anything is loaded; the refusal when it does not fit,
//! and `auto_memory`'s choice of settings that do.
//!
//! The estimate adds up (all in bytes):
//! - **base weights** on the device: each linear's `d_in · d_out` at the base dtype's width
//!   (plus an f32 scale per output channel for fp8 / int8, and f32 biases); streamed blocks
//!   (`blocks_to_swap`) count on the host instead, with one linear in flight on the device;
//! - **decode transient**: the largest linear decoded for its matmul (index, f32 values and the
//!   compute copy on the composed path: 10 bytes a weight; 4 on the CPU kernel's tiles: 0);
//! - **LoRA**: parameters, gradients, optimizer state (AdamW 8 bytes a parameter, AdamW8bit 2,
//!   Prodigy 16, Adafactor 4) and EMA (4);
//! - **activations**: `ACT_PER_TOKEN` f32 values per token and hidden unit for every block
//!   without checkpointing; with block checkpointing each block keeps only its input (1 per
//!   token and hidden unit) plus one block's activations during its recompute; plus the
//!   query-blocked attention's live scores (its score budget, or the whole score matrix when
//!   that is smaller), three times over (scores, probabilities, their gradient);
//! - **runtime**: a fixed allowance for the process, allocator and caches: `HOST_RUNTIME_BYTES`
//!   when the device is the host (measured on the tiny world), `RUNTIME_BYTES` on a GPU (not yet
//!   measured).

use burn::tensor::backend::Backend;
use fluxlora_flux::FluxConfig;
use fluxlora_lora::{BaseDtype, TargetSelector};

use crate::config::{OptimizerType, TrainConfig};
use crate::error::TrainError;
use crate::orchestration::base::BaseModel;

/// f32 activations a block keeps per token and hidden unit under autodiff, with the fused ops
/// (LoRA inputs, modulated inputs, q/k/v, attention output, MLP hidden and GELU input).
pub const ACT_PER_TOKEN: f64 = 26.0;

/// The device runtime's allowance outside the model on a GPU (allocator pools and caches; a
/// first guess, not yet measured on a GPU).
pub const RUNTIME_BYTES: f64 = 160.0 * 1024.0 * 1024.0;

/// The process outside the model when the device is the host (binary, libraries, allocator,
/// data caches): the tiny world's peak RSS less its modelled parts, NdArray, release build.
pub const HOST_RUNTIME_BYTES: f64 = 48.0 * 1024.0 * 1024.0;

/// What a run trains with, as far as memory goes.
#[derive(Debug, Clone)]
pub struct MemoryInputs {
    /// The transformer's shapes.
    pub flux: FluxConfig,
    /// Storage of the frozen base.
    pub base: BaseDtype,
    /// Blocks streamed from host memory (kohya's count).
    pub blocks_to_swap: usize,
    /// LoRA parameters.
    pub lora_params: usize,
    /// Optimizer state bytes per LoRA parameter.
    pub optimizer_bytes: f64,
    /// Whether an EMA copy of the LoRA is kept.
    pub ema: bool,
    /// Images per step.
    pub batch: usize,
    /// Image tokens per image (`(H/16)·(W/16)`).
    pub image_tokens: usize,
    /// Text tokens per caption.
    pub text_tokens: usize,
    /// Block-level gradient checkpointing.
    pub checkpointing: bool,
    /// The device is host memory (NdArray): device and host estimates are one.
    pub host_device: bool,
}

/// An estimate, split into named parts.
#[derive(Debug, Clone, Default)]
pub struct MemoryEstimate {
    /// Peak device bytes.
    pub device: f64,
    /// Peak host bytes.
    pub host: f64,
    /// `(part, bytes)` of the device peak.
    pub parts: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {:.3} GiB, host {:.3} GiB (",
            gib(self.device),
            gib(self.host)
        )?;
        for (i, (name, b)) in self.parts.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {:.3}", gib(*b))?;
        }
        write!(f, ")")
    }
}

/// Bytes as GiB.
pub fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

/// Every linear of the transformer: `(BFL path, d_in, d_out)`.
fn linears(c: &FluxConfig) -> Vec<(String, usize, usize)> {
    let dims = fluxlora_io::FluxDims {
        hidden: c.hidden_size,
        mlp: c.mlp_hidden_dim,
        in_channels: c.in_channels,
        out_channels: c.out_channels,
        context_in: c.context_in_dim,
        vec_in: c.vec_in_dim,
        depth: c.depth,
        depth_single: c.depth_single_blocks,
        guidance: c.guidance_embed,
    };
    fluxlora_io::flux_module_paths(c.depth, c.depth_single_blocks, c.guidance_embed)
        .into_iter()
        .filter_map(|p| dims.module_shape(&p).map(|(i, o)| (p, i, o)))
        .collect()
}

/// Adapter parameters `selector` adds to a model of shapes `c`: `rank · (d_in + rows)` per
/// LoRA adapter, `rows` being its output rows, and what [`Network::num_params`] counts for
/// the LyCORIS kinds.
///
/// [`Network::num_params`]: fluxlora_lora::Network::num_params
pub fn lora_params(c: &FluxConfig, selector: &TargetSelector) -> usize {
    linears(c)
        .iter()
        .filter_map(|(p, i, o)| selector.select(p, *i, *o).map(|t| (t, *i, *o)))
        .flat_map(|(t, i, o)| {
            t.adapters.into_iter().map(move |a| {
                a.network
                    .num_params(a.rank, i, a.rows.map_or(o, |(s, e)| e - s))
            })
        })
        .sum()
}

/// Optimizer state bytes per parameter.
pub fn optimizer_bytes(o: OptimizerType) -> f64 {
    match o {
        OptimizerType::AdamW => 8.0,
        OptimizerType::AdamW8bit => 2.0 + 8.0 / 256.0,
        OptimizerType::Prodigy => 16.0,
        OptimizerType::Adafactor => 4.0,
    }
}

/// The estimate for `m`.
pub fn estimate(m: &MemoryInputs) -> Result<MemoryEstimate, TrainError> {
    let c = &m.flux;
    let plan = fluxlora_flux::transformer::swap::SwapPlan::kohya(
        m.blocks_to_swap,
        c.depth,
        c.depth_single_blocks,
    )?;
    let (mut resident, mut streamed, mut largest) = (0.0f64, 0.0f64, 0usize);
    let quantized = matches!(m.base, BaseDtype::Fp8 | BaseDtype::Int8);
    for (path, i, o) in linears(c) {
        let w = (i * o * m.base.bytes()) as f64 + 4.0 * o as f64 * (1.0 + quantized as u8 as f64);
        if plan.covers(&path, c.depth, c.depth_single_blocks) {
            streamed += w;
        } else {
            resident += w;
        }
        largest = largest.max(i * o);
    }
    let decode = if m.host_device || m.base == BaseDtype::F32 {
        0.0
    } else {
        10.0 * largest as f64
    };
    let in_flight = if streamed > 0.0 {
        (largest * m.base.bytes()) as f64
    } else {
        0.0
    };
    let p = m.lora_params as f64;
    let lora = p * (4.0 + 4.0 + m.optimizer_bytes + if m.ema { 4.0 } else { 0.0 });
    let tokens = (m.batch * (m.image_tokens + m.text_tokens)) as f64;
    let h = c.hidden_size as f64;
    let blocks = (c.depth + c.depth_single_blocks) as f64;
    let act = if m.checkpointing {
        4.0 * tokens * h * (blocks + ACT_PER_TOKEN)
    } else {
        4.0 * tokens * h * ACT_PER_TOKEN * blocks
    };
    let seq = (m.image_tokens + m.text_tokens) as f64;
    let whole_scores = 4.0 * m.batch as f64 * c.num_heads as f64 * seq * seq;
    let budget = fluxlora_flux::fused::attention::DEFAULT_SCORE_BUDGET_BYTES as f64;
    let scores = 3.0 * whole_scores.min(budget);
    let mut parts = vec![
        ("base", resident + in_flight),
        ("decode", decode),
        ("lora+optimizer", lora),
        ("activations", act + scores),
    ];
    let device_only: f64 = parts.iter().map(|(_, b)| b).sum();
    let (device, host) = if m.host_device {
        parts.push(("streamed", streamed));
        parts.push(("runtime", HOST_RUNTIME_BYTES));
        let all = device_only + streamed + HOST_RUNTIME_BYTES;
        (all, all)
    } else {
        // The host holds the streamed blocks and one tensor being loaded (f32).
        parts.push(("runtime", RUNTIME_BYTES));
        (
            device_only + RUNTIME_BYTES,
            streamed + 4.0 * largest as f64 + HOST_RUNTIME_BYTES,
        )
    };
    Ok(MemoryEstimate {
        device,
        host,
        parts,
    })
}

/// The settings a run's memory depends on, resolved from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Storage of the frozen base.
    pub base_dtype: BaseDtype,
    /// Blocks streamed from host memory.
    pub blocks_to_swap: usize,
    /// Block-level gradient checkpointing.
    pub checkpointing: bool,
}

/// The base dtype the config asks for on a backend with (or without) native bf16.
pub fn requested_base(config: &TrainConfig, native_bf16: bool) -> Result<BaseDtype, TrainError> {
    let from_key = config.base_dtype.map(BaseDtype::from);
    match (from_key, config.fp8_base) {
        (Some(d), true) if d != BaseDtype::Fp8 => Err(TrainError::Invalid {
            key: "fp8_base".into(),
            message: format!(
                "fp8_base = true asks for an fp8 base but base_dtype = \"{}\"; keep one of the \
                 two (base_dtype = \"fp8\" is the same as fp8_base = true)",
                d.name()
            ),
        }),
        (Some(d), _) => Ok(d),
        (None, true) => Ok(BaseDtype::Fp8),
        (None, false) if config.base_bf16 && native_bf16 => Ok(BaseDtype::Bf16),
        (None, false) => Ok(BaseDtype::F32),
    }
}

/// Device memory available to the run: `device_memory_gb`, else host RAM for a host device,
/// else unknown.
fn capacity(config: &TrainConfig, host_device: bool) -> Option<f64> {
    if let Some(g) = config.device_memory_gb {
        return Some(g * (1u64 << 30) as f64);
    }
    if !host_device {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// The inputs of a run on backend `B`, for `plan`.
pub fn inputs_for<B: Backend>(
    config: &TrainConfig,
    flux: &FluxConfig,
    plan: MemoryPlan,
    device: &B::Device,
) -> Result<MemoryInputs, TrainError> {
    let selector = crate::run::target_selector(config)?;
    let side = config.resolution as usize / 16;
    let text = config
        .t5xxl_max_token_length
        .unwrap_or(if flux.guidance_embed { 512 } else { 256 });
    Ok(MemoryInputs {
        flux: flux.clone(),
        base: plan.base_dtype,
        blocks_to_swap: plan.blocks_to_swap,
        lora_params: lora_params(flux, &selector),
        optimizer_bytes: optimizer_bytes(config.optimizer_type),
        ema: config.ema_decay.is_some(),
        batch: config.train_batch_size,
        image_tokens: side * side,
        text_tokens: text,
        checkpointing: plan.checkpointing,
        host_device: is_host_device::<B>(device),
    })
}

/// Whether `B`'s device is host memory (NdArray and the other CPU backends).
fn is_host_device<B: Backend>(device: &B::Device) -> bool {
    format!("{device:?}").to_ascii_lowercase().contains("cpu")
}

/// Resolves the run's memory settings, prints the estimate, and refuses a run that does not
/// fit the device (or, with `auto_memory`, picks settings that do).
pub fn plan_for_run<B: Backend>(
    config: &TrainConfig,
    base: &BaseModel,
    device: &B::Device,
) -> Result<MemoryPlan, TrainError> {
    let native_bf16 = fluxlora_flux::bf16_if_supported::<B>(device).is_some();
    let requested = MemoryPlan {
        base_dtype: requested_base(config, native_bf16)?,
        blocks_to_swap: config.blocks_to_swap,
        checkpointing: config.gradient_checkpointing,
    };
    let flux = base.transformer_config()?;
    let est = |p: MemoryPlan| -> Result<MemoryEstimate, TrainError> {
        estimate(&inputs_for::<B>(config, &flux, p, device)?)
    };
    let first = est(requested)?;
    let host_device = is_host_device::<B>(device);
    let cap = capacity(config, host_device);
    eprintln!("memory plan: estimated peak {first}");
    let Some(cap) = cap else {
        return Ok(requested);
    };
    if first.device <= cap {
        return Ok(requested);
    }
    // Settings in the order they cost speed: checkpointing, fp8, then streaming.
    let mut candidates = Vec::new();
    for base_dtype in [requested.base_dtype, BaseDtype::Fp8] {
        let max_swap = (0..=(flux.depth * 2).max(1))
            .take_while(|&n| {
                fluxlora_flux::transformer::swap::SwapPlan::kohya(
                    n,
                    flux.depth,
                    flux.depth_single_blocks,
                )
                .is_ok()
            })
            .last()
            .unwrap_or(0);
        for blocks_to_swap in (requested.blocks_to_swap..=max_swap).step_by(2) {
            candidates.push(MemoryPlan {
                base_dtype,
                blocks_to_swap,
                checkpointing: true,
            });
        }
    }
    let fit = candidates
        .iter()
        .map(|&p| est(p).map(|e| (p, e)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|(_, e)| e.device <= cap);
    match fit {
        Some((p, e)) if config.auto_memory => {
            eprintln!(
                "memory plan: auto_memory picked base_dtype = \"{}\", blocks_to_swap = {}, \
                 gradient_checkpointing = {}: {e}",
                p.base_dtype.name(),
                p.blocks_to_swap,
                p.checkpointing
            );
            Ok(p)
        }
        Some((p, e)) => Err(TrainError::Invalid {
            key: "memory".into(),
            message: format!(
                "the estimated peak ({first}) exceeds the device's {:.2} GiB. These settings \
                 fit ({e}): base_dtype = \"{}\", blocks_to_swap = {}, gradient_checkpointing = \
                 {} — set them, or set auto_memory = true to let the planner choose",
                gib(cap),
                p.base_dtype.name(),
                p.blocks_to_swap,
                p.checkpointing
            ),
        }),
        None => Err(TrainError::Invalid {
            key: "memory".into(),
            message: format!(
                "the estimated peak ({first}) exceeds the device's {:.2} GiB, and no setting \
                 fits (fp8 base, all blocks streamed, checkpointing on); lower resolution or \
                 train_batch_size, or use a larger device",
                gib(cap)
            ),
        }),
    }
}
