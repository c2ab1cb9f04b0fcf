//! One LoRA training step of a small Flux (forward, backward, AdamW) on NdArray and Wgpu.
//!
//! Bench config (issue 3): hidden 256, 4 heads, 2 double + 4 single blocks, 16×16 image tokens,
//! 64 text tokens, context 256, vector 128, guidance on, LoRA rank 16 (alpha 16) on every block
//! linear (diffusers granularity, as the PEFT targets of the PyTorch script, plus `proj_out`:
//! 758,784 trainable parameters in both), AdamW (lr 1e-4, eps 1e-8, weight decay 0.01),
//! flow-matching MSE. Same step as
//! `shared/bench/torch_step_bench.py`. Prints the median and minimum of the timed steps.
//!
//! Environment: `FLUXLORA_BENCH_STEPS` (timed steps, default 10; 2 warm-up steps come first),
//! `FLUXLORA_BENCH_BACKENDS` (comma list of `ndarray`, `wgpu`; default both),
//! `FLUXLORA_BENCH_GLIBC_DEFAULTS=1` to keep glibc's allocator defaults (the NdArray run calls
//! `fused::retain_freed_host_memory` as the jobs do), `FLUXLORA_BENCH_CHECKPOINTING=1` to
//! recompute blocks in backward; `FLUXLORA_BENCH_HIDDEN`,
//! `FLUXLORA_BENCH_HEADS` and `FLUXLORA_BENCH_GRID` (image tokens per side) change the shape, as
//! the PyTorch script's `--hidden`, `--heads` and `--img` do (context width = hidden).
//!
//! Run: `cargo bench -p fluxlora-flux --bench train_step`.

use std::time::Instant;

use burn::backend::{Autodiff, NdArray, Wgpu};
use burn::optim::{AdamWConfig, Optimizer};
use burn::tensor::{Distribution, ElementConversion, Tensor};
use fluxlora_flux::{
    forward_backward, latents, Checkpointing, Flux, FluxAutodiffBackend, FluxConfig, FluxInputs,
};
use fluxlora_lora::{Preset, RuleOverride, TargetSelector};

/// `name`'s value from the environment, or `default`.
fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bench_config() -> FluxConfig {
    let hidden = env("FLUXLORA_BENCH_HIDDEN", 256);
    let heads = env("FLUXLORA_BENCH_HEADS", 4);
    let hd = hidden / heads;
    FluxConfig {
        in_channels: 64,
        out_channels: 64,
        vec_in_dim: 128,
        context_in_dim: hidden,
        hidden_size: hidden,
        mlp_hidden_dim: 4 * hidden,
        num_heads: heads,
        depth: 2,
        depth_single_blocks: 4,
        axes_dim: vec![hd / 4, 3 * hd / 8, 3 * hd / 8],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

fn run<B: FluxAutodiffBackend>(name: &str, steps: usize, checkpointing: Checkpointing) {
    let dev = B::Device::default();
    B::seed(&dev, 0);
    let c = bench_config();
    let mut model = Flux::<B>::init(&c, &dev).expect("valid bench config");
    let rank = 16;
    // The PyTorch script's PEFT targets: diffusers granularity (separate q/k/v/proj_mlp adapters)
    // on every block linear, plus the top-level `proj_out` (= `final_layer.linear`).
    let mut selector = TargetSelector::new(Preset::AiToolkit, rank, rank as f32)
        .with_rule(
            r"^final_layer\.adaLN_modulation",
            RuleOverride {
                rank: Some(0),
                ..Default::default()
            },
        )
        .expect("valid regex");
    selector.train_final_layer = true;
    model.apply_lora(&selector, &dev).expect("targets");
    let trainable = model.lora_param_count();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init::<B, Flux<B>>();
    let (grid, l_txt) = (env("FLUXLORA_BENCH_GRID", 16), 64);
    let n = Distribution::Normal(0.0, 1.0);
    let x0: Tensor<B, 3> = Tensor::random([1, grid * grid, 64], n, &dev);
    let txt: Tensor<B, 3> = Tensor::random([1, l_txt, c.context_in_dim], n, &dev);
    let y: Tensor<B, 2> = Tensor::random([1, c.vec_in_dim], n, &dev);
    let img_ids = latents::img_ids::<B>(1, grid, grid, &dev);
    let txt_ids = latents::txt_ids::<B>(1, l_txt, &dev);
    let mut times = Vec::new();
    let mut last_loss = 0.0f32;
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let t: Tensor<B, 1> = Tensor::random([1], Distribution::Uniform(0.0, 1.0), &dev);
        let noise: Tensor<B, 3> = Tensor::random([1, grid * grid, 64], n, &dev);
        let tt: Tensor<B, 3> = t.clone().reshape([1, 1, 1]);
        let xt = x0.clone() * (tt.clone().neg() + 1.0) + noise.clone() * tt;
        let inputs = FluxInputs {
            txt_mask: None,
            img_cond_seq: None,
            img: xt,
            img_ids: img_ids.clone(),
            txt: txt.clone(),
            txt_ids: txt_ids.clone(),
            timesteps: t,
            y: y.clone(),
            guidance: Some(Tensor::full([1], 3.5, &dev)),
        };
        let target = noise - x0.clone();
        let step = forward_backward(&model, &inputs, checkpointing, |out| {
            (out - target.clone()).powi_scalar(2).mean()
        })
        .expect("valid inputs");
        model = optim.step(1e-4, model, step.grads);
        last_loss = step.loss.into_scalar().elem::<f32>(); // syncs the device
        let dt = t0.elapsed().as_secs_f64();
        if i >= 2 {
            times.push(dt);
        } else {
            eprintln!("{name}: warm-up step {i}: {dt:.3} s");
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    println!(
        "{name}: trainable={trainable} step_s median={median:.4} min={:.4} (n={}, \
         checkpointing={checkpointing:?}, last loss {last_loss:.4})",
        times[0],
        times.len()
    );
}

fn main() {
    let steps: usize = std::env::var("FLUXLORA_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let backends =
        std::env::var("FLUXLORA_BENCH_BACKENDS").unwrap_or_else(|_| "ndarray,wgpu".into());
    let ckpt = if std::env::var("FLUXLORA_BENCH_CHECKPOINTING").is_ok_and(|v| v == "1") {
        Checkpointing::Blocks
    } else {
        Checkpointing::Off
    };
    for b in backends.split(',').map(str::trim) {
        match b {
            "ndarray" => {
                // As the jobs do for NdArray (set FLUXLORA_BENCH_GLIBC_DEFAULTS to compare).
                if std::env::var_os("FLUXLORA_BENCH_GLIBC_DEFAULTS").is_none() {
                    fluxlora_flux::fused::retain_freed_host_memory();
                }
                run::<Autodiff<NdArray>>("ndarray", steps, ckpt)
            }
            "wgpu" => run::<Autodiff<Wgpu>>("wgpu", steps, ckpt),
            "" => {}
            other => eprintln!("unknown backend {other:?} (ndarray, wgpu)"),
        }
    }
}
