//! The full-size bench: LoRA training steps on a real-size Flux transformer (a checkpoint, or
//! random weights of the real shapes) with random latents and text embeddings, no encoders.
//! It prints the load time, each step's seconds, the peak host memory and the planner's
//! estimate. `--write-random FILE` writes a random full-size checkpoint instead.

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{AdamWConfig, Optimizer};
use burn::tensor::{Distribution, ElementConversion, Tensor};
use fluxlora_flux::{
    forward_backward, latents, Checkpointing, Flux, FluxAutodiffBackend, FluxCheckpoint,
    FluxConfig, FluxInputs, LoadOptions,
};
use fluxlora_lora::{BaseDtype, Preset, TargetSelector};
use fluxlora_train::config::OptimizerType;
use fluxlora_train::memory::{estimate, gib, lora_params, optimizer_bytes, MemoryInputs};

use crate::backend;
use crate::error::Error;

#[derive(clap::Parser, Debug, Clone, Default)]
#[command(about = "LoRA training steps on a full-size Flux transformer (no encoders needed)")]
/// The bench's arguments.
pub struct BenchArgs {
    /// A Flux checkpoint (BFL, ComfyUI or diffusers layout).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Random weights of the real shapes instead of a file: `dev` or `schnell`.
    #[arg(long)]
    pub random: Option<String>,
    /// Write a random full-size checkpoint (BFL layout, fp8 weights) of `--random`'s variant
    /// (default dev) to this file, then stop.
    #[arg(long)]
    pub write_random: Option<PathBuf>,
    /// Base storage: f32, bf16, fp8, int8.
    #[arg(long, default_value = "fp8")]
    pub base_dtype: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub resolution: usize,
    /// T5 tokens.
    #[arg(long, default_value_t = 256)]
    pub text_tokens: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Blocks streamed from host memory (kohya's count).
    #[arg(long, default_value_t = 0)]
    pub blocks_to_swap: usize,
    /// LoRA rank (alpha = rank) on kohya's targets.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// cuda, wgpu, ndarray or auto.
    #[arg(long)]
    pub backend: Option<String>,
}

/// What the bench measured.
#[derive(Debug, Clone, Default)]
pub struct BenchOutcome {
    /// Seconds to build or load the model.
    pub load_seconds: f64,
    /// Seconds of each step.
    pub step_seconds: Vec<f64>,
    /// Peak resident host memory (VmHWM), bytes.
    pub peak_host_bytes: Option<u64>,
    /// The planner's estimate, as text.
    pub estimate: String,
    /// The backend it ran on.
    pub backend: String,
    /// LoRA parameters trained.
    pub lora_params: usize,
    /// The file written (`--write-random`).
    pub written: Option<PathBuf>,
}

impl fmt::Display for BenchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.written {
            return writeln!(f, "wrote {} in {:.1} s", p.display(), self.load_seconds);
        }
        writeln!(f, "backend: {}", self.backend)?;
        writeln!(f, "load: {:.1} s", self.load_seconds)?;
        for (i, s) in self.step_seconds.iter().enumerate() {
            writeln!(f, "step {}: {s:.1} s", i + 1)?;
        }
        writeln!(f, "LoRA parameters: {}", self.lora_params)?;
        if let Some(b) = self.peak_host_bytes {
            writeln!(f, "peak host RSS: {:.2} GiB", gib(b as f64))?;
        }
        writeln!(f, "planner estimate: {}", self.estimate)
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn variant(name: Option<&str>) -> Result<FluxConfig, Error> {
    match name.unwrap_or("dev") {
        "dev" => Ok(FluxConfig::dev()),
        "schnell" => Ok(FluxConfig::schnell()),
        other => Err(Error::Usage(format!(
            "--random {other:?}: use `dev` or `schnell`"
        ))),
    }
}

/// Runs the bench.
pub fn bench(args: &BenchArgs) -> Result<BenchOutcome, Error> {
    if let Some(path) = &args.write_random {
        let c = variant(args.random.as_deref())?;
        let t0 = Instant::now();
        fluxlora_io::random_flux::write_random_flux(path, &io_dims(&c), c.head_dim(), 0x5EED)?;
        return Ok(BenchOutcome {
            load_seconds: t0.elapsed().as_secs_f64(),
            written: Some(path.clone()),
            ..Default::default()
        });
    }
    let base = BaseDtype::parse(&args.base_dtype).ok_or_else(|| {
        Error::Usage(format!(
            "--base-dtype {:?}: use f32, bf16, fp8 or int8",
            args.base_dtype
        ))
    })?;
    let kind = backend::select(args.backend.as_deref())?;
    backend::with_backend!(kind, |B, dev| run::<burn::backend::Autodiff<B>>(
        args,
        base,
        kind.name(),
        &dev
    ))
}

fn io_dims(c: &FluxConfig) -> fluxlora_io::FluxDims {
    fluxlora_io::FluxDims {
        hidden: c.hidden_size,
        mlp: c.mlp_hidden_dim,
        in_channels: c.in_channels,
        out_channels: c.out_channels,
        context_in: c.context_in_dim,
        vec_in: c.vec_in_dim,
        depth: c.depth,
        depth_single: c.depth_single_blocks,
        guidance: c.guidance_embed,
    }
}

fn run<B: FluxAutodiffBackend>(
    args: &BenchArgs,
    base: BaseDtype,
    backend_name: &str,
    dev: &B::Device,
) -> Result<BenchOutcome, Error> {
    let t0 = Instant::now();
    let (mut model, config) = match (&args.model, &args.random) {
        (Some(path), _) => {
            let ckpt = FluxCheckpoint::open(path).map_err(fluxlora_train::TrainError::from)?;
            let config = ckpt
                .infer_config(None)
                .map_err(fluxlora_train::TrainError::from)?;
            let options = LoadOptions {
                base_dtype: base,
                blocks_to_swap: args.blocks_to_swap,
                ..Default::default()
            };
            let m = Flux::<B>::from_checkpoint(&ckpt, &config, &options, dev)
                .map_err(fluxlora_train::TrainError::from)?;
            (m, config)
        }
        (None, Some(v)) => {
            let config = variant(Some(v))?;
            let m = Flux::<B>::init_frozen(&config, base, args.blocks_to_swap, dev)
                .map_err(fluxlora_train::TrainError::from)?;
            (m, config)
        }
        (None, None) => {
            return Err(Error::Usage(
                "give --model FILE or --random dev|schnell".into(),
            ))
        }
    };
    let selector = TargetSelector::new(Preset::Kohya, args.rank, args.rank as f32);
    model
        .apply_lora(&selector, dev)
        .map_err(fluxlora_train::TrainError::from)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let side = args.resolution / 16;
    let inputs = MemoryInputs {
        flux: config.clone(),
        base,
        blocks_to_swap: args.blocks_to_swap,
        lora_params: lora_params(&config, &selector),
        optimizer_bytes: optimizer_bytes(OptimizerType::AdamW),
        ema: false,
        batch: 1,
        image_tokens: side * side,
        text_tokens: args.text_tokens,
        checkpointing: true,
        host_device: backend_name == "ndarray",
    };
    let est = estimate(&inputs)?;
    let mut optim = AdamWConfig::new().init::<B, Flux<B>>();
    let n = Distribution::Normal(0.0, 1.0);
    let l_img = side * side;
    let x0: Tensor<B, 3> = Tensor::random([1, l_img, config.in_channels], n, dev);
    let txt: Tensor<B, 3> = Tensor::random([1, args.text_tokens, config.context_in_dim], n, dev);
    let y: Tensor<B, 2> = Tensor::random([1, config.vec_in_dim], n, dev);
    let mut step_seconds = Vec::new();
    for _ in 0..args.steps.max(1) {
        let t = Instant::now();
        let ts: Tensor<B, 1> = Tensor::random([1], Distribution::Uniform(0.0, 1.0), dev);
        let noise: Tensor<B, 3> = Tensor::random([1, l_img, config.in_channels], n, dev);
        let tt: Tensor<B, 3> = ts.clone().reshape([1, 1, 1]);
        let xt = x0.clone() * (tt.clone().neg() + 1.0) + noise.clone() * tt;
        let x = FluxInputs {
            txt_mask: None,
            img_cond_seq: None,
            img: xt,
            img_ids: latents::img_ids::<B>(1, side, side, dev),
            txt: txt.clone(),
            txt_ids: latents::txt_ids::<B>(1, args.text_tokens, dev),
            timesteps: ts,
            y: y.clone(),
            guidance: config.guidance_embed.then(|| Tensor::full([1], 3.5, dev)),
        };
        let target = noise - x0.clone();
        let step = forward_backward(&model, &x, Checkpointing::Blocks, |out| {
            (out - target.clone()).powi_scalar(2).mean()
        })
        .map_err(fluxlora_train::TrainError::from)?;
        model = optim.step(1e-4, model, step.grads);
        let _loss: f32 = step.loss.into_scalar().elem();
        step_seconds.push(t.elapsed().as_secs_f64());
    }
    Ok(BenchOutcome {
        load_seconds,
        step_seconds,
        peak_host_bytes: peak_rss_bytes(),
        estimate: est.to_string(),
        backend: backend_name.to_string(),
        lora_params: lora_params(&config, &selector),
        written: None,
    })
}
