//! Peak memory of one double block's forward + backward at Flux.1's 1024² size: 4,096 image +
//! 512 text tokens (4,608 in all), hidden 3,072, 24 heads, batch 1, LoRA rank 16 on the block's
//! linears, the loss a plain MSE. The model is a Flux with one double block and no single block
//! (its embedders and final layer are small next to the block).
//!
//! Prints the resident memory after building the model (the weights), the process's peak (VmHWM)
//! after the step, and their difference: the step's own activations, scores and gradients. Run it
//! under `/usr/bin/time -v` for the kernel's own figure.
//!
//! `FLUXLORA_BENCH_PART=attention` measures the attention op alone instead (q, k, v of
//! `[1, 24, 4608, 128]`, RoPE'd q and k, loss `Σ out·w`), fused; `attention-unfused` measures
//! the unfused composition it replaced (scores, softmax and their gradients materialised).
//!
//! Environment: `FLUXLORA_BENCH_GRID` (image tokens per side, default 64),
//! `FLUXLORA_BENCH_TXT` (text tokens, default 512), `FLUXLORA_BENCH_BACKENDS` (`ndarray` or
//! `wgpu`, default `ndarray`), `FLUXLORA_BENCH_SCORE_MIB` (the attention score budget, default
//! 64).
//!
//! Run: `cargo bench -p fluxlora-flux --bench block_memory`.

use std::time::Instant;

use burn::backend::{Autodiff, NdArray, Wgpu};
use burn::tensor::{activation, Distribution, ElementConversion, Tensor};
use fluxlora_flux::fused::{self, RopeTables};
use fluxlora_flux::{
    forward_backward, latents, Checkpointing, Flux, FluxAutodiffBackend, FluxConfig, FluxInputs,
};
use fluxlora_lora::{Preset, TargetSelector};

/// A `/proc/self/status` field in MiB (Linux).
fn status_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run<B: FluxAutodiffBackend>(name: &str) {
    let dev = B::Device::default();
    B::seed(&dev, 0);
    let (grid, l_txt) = (
        env("FLUXLORA_BENCH_GRID", 64),
        env("FLUXLORA_BENCH_TXT", 512),
    );
    let c = FluxConfig {
        in_channels: 64,
        out_channels: 64,
        vec_in_dim: 768,
        context_in_dim: 4096,
        hidden_size: 3072,
        mlp_hidden_dim: 4 * 3072,
        num_heads: 24,
        depth: 1,
        depth_single_blocks: 0,
        axes_dim: vec![16, 56, 56],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: false,
    };
    let mut model = Flux::<B>::init(&c, &dev).expect("valid config");
    model
        .apply_lora(&TargetSelector::new(Preset::Kohya, 16, 16.0), &dev)
        .expect("targets");
    let n = Distribution::Normal(0.0, 1.0);
    let inputs = FluxInputs {
        txt_mask: None,
        img_cond_seq: None,
        img: Tensor::random([1, grid * grid, 64], n, &dev),
        img_ids: latents::img_ids::<B>(1, grid, grid, &dev),
        txt: Tensor::random([1, l_txt, c.context_in_dim], n, &dev),
        txt_ids: latents::txt_ids::<B>(1, l_txt, &dev),
        timesteps: Tensor::full([1], 0.5, &dev),
        y: Tensor::random([1, c.vec_in_dim], n, &dev),
        guidance: None,
    };
    let target: Tensor<B, 3> = Tensor::random([1, grid * grid, 64], n, &dev);
    let _ = B::sync(&dev);
    let weights = status_mib("VmRSS:");
    let t0 = Instant::now();
    let step = forward_backward(&model, &inputs, Checkpointing::Off, |out| {
        (out - target.clone()).powi_scalar(2).mean()
    })
    .expect("valid inputs");
    let loss = step.loss.into_scalar().elem::<f32>();
    let secs = t0.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM:");
    println!(
        "{name}: tokens={} step_s={secs:.2} loss={loss:.4} rss_after_init_mib={weights:.0} \
         peak_rss_mib={peak:.0} step_mib={:.0}",
        grid * grid + l_txt,
        peak - weights
    );
}

/// The attention op alone, fused or as the unfused composition.
fn run_attention<B: FluxAutodiffBackend>(name: &str, fused: bool) {
    let dev = B::Device::default();
    B::seed(&dev, 0);
    let l = env("FLUXLORA_BENCH_GRID", 64).pow(2) + env("FLUXLORA_BENCH_TXT", 512);
    let n = Distribution::Normal(0.0, 1.0);
    let t = |shape: [usize; 4]| Tensor::<B, 4>::random(shape, n, &dev).require_grad();
    let (q, k, v) = (t([1, 24, l, 128]), t([1, 24, l, 128]), t([1, 24, l, 128]));
    let w: Tensor<B, 4> = Tensor::random([1, 24, l, 128], n, &dev);
    let tables = RopeTables::from_angles(Tensor::random([1, l, 64], n, &dev));
    let _ = B::sync(&dev);
    let before = status_mib("VmRSS:");
    let t0 = Instant::now();
    let (qr, kr) = (
        B::rope(q.clone(), &tables, false),
        B::rope(k.clone(), &tables, false),
    );
    let out = if fused {
        fused::attention(qr, kr, v.clone(), None)
    } else {
        let s = qr
            .matmul(kr.swap_dims(2, 3))
            .mul_scalar(1.0 / 128f64.sqrt());
        activation::softmax(s, 3).matmul(v.clone())
    };
    let grads = (out * w).sum().backward();
    let dq = q
        .grad(&grads)
        .expect("dq")
        .sum()
        .into_scalar()
        .elem::<f32>();
    let secs = t0.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM:");
    println!(
        "{name}: attention fused={fused} tokens={l} step_s={secs:.2} sum_dq={dq:.4} \
         rss_before_mib={before:.0} peak_rss_mib={peak:.0} step_mib={:.0}",
        peak - before
    );
}

fn main() {
    if let Some(mib) = std::env::var("FLUXLORA_BENCH_SCORE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        fused::attention::set_score_budget(mib << 20);
    }
    let part = std::env::var("FLUXLORA_BENCH_PART").unwrap_or_default();
    let backends = std::env::var("FLUXLORA_BENCH_BACKENDS").unwrap_or_else(|_| "ndarray".into());
    for b in backends.split(',').map(str::trim) {
        match b {
            "ndarray" => match part.as_str() {
                "attention" => run_attention::<Autodiff<NdArray>>("ndarray", true),
                "attention-unfused" => run_attention::<Autodiff<NdArray>>("ndarray", false),
                _ => run::<Autodiff<NdArray>>("ndarray"),
            },
            "wgpu" => match part.as_str() {
                "attention" => run_attention::<Autodiff<Wgpu>>("wgpu", true),
                "attention-unfused" => run_attention::<Autodiff<Wgpu>>("wgpu", false),
                _ => run::<Autodiff<Wgpu>>("wgpu"),
            },
            "" => {}
            other => eprintln!("unknown backend {other:?} (ndarray, wgpu)"),
        }
    }
}
