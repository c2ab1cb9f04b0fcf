//! State memory and step time of the four optimizers on NdArray.
//!
//! Workload: LoRA rank 16 on ten 3072×3072 projections (the Flux hidden size): ten `lora_a`
//! `[3072, 16]` (random init) and ten `lora_b` `[16, 3072]` (zero init, like real LoRA), 983,040
//! trainable parameters, random gradients. Reports bytes of optimizer state per trainable
//! parameter and the median step time scaled to one million parameters.
//!
//! Run: `cargo bench -p fluxlora-optim --bench optim_step` (env `OPTIM_BENCH_STEPS`, default 10).

use std::time::Instant;

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use fluxlora_optim::*;

type AB = Autodiff<NdArray<f32>>;
type Inner = NdArray<f32>;

const HIDDEN: usize = 3072;
const RANK: usize = 16;
const LAYERS: usize = 10;

#[derive(Module, Debug)]
struct Adapter<B: Backend> {
    lora_a: Param<Tensor<B, 2>>,
    lora_b: Param<Tensor<B, 2>>,
}

#[derive(Module, Debug)]
struct Adapters<B: Backend> {
    layers: Vec<Adapter<B>>,
}

fn model(device: &NdArrayDevice) -> Adapters<AB> {
    Adapters {
        layers: (0..LAYERS)
            .map(|_| Adapter {
                lora_a: Param::from_tensor(Tensor::random(
                    [HIDDEN, RANK],
                    Distribution::Normal(0.0, 0.02),
                    device,
                )),
                lora_b: Param::from_tensor(Tensor::zeros([RANK, HIDDEN], device)),
            })
            .collect(),
    }
}

fn grads(m: &Adapters<AB>, device: &NdArrayDevice) -> GradientsParams {
    let mut g = GradientsParams::new();
    for l in &m.layers {
        g.register::<Inner, 2>(
            l.lora_a.id,
            Tensor::random([HIDDEN, RANK], Distribution::Normal(0.0, 1e-3), device),
        );
        g.register::<Inner, 2>(
            l.lora_b.id,
            Tensor::random([RANK, HIDDEN], Distribution::Normal(0.0, 1e-3), device),
        );
    }
    g
}

fn bench<R: OptimizerRule<Inner>>(name: &str, rule: R, lr: f64, steps: usize) {
    let device = Default::default();
    let mut m = model(&device);
    let params = (2 * LAYERS * HIDDEN * RANK) as f64;
    let mut opt: LoraOptimizer<R, Adapters<AB>, AB> =
        LoraOptimizer::new(rule).with_max_grad_norm(1.0).unwrap();
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let g = grads(&m, &device);
        let t = Instant::now();
        m = opt.step(lr, m, g);
        // Force the lazy work to finish: read one value back.
        let _ = m.layers[0]
            .lora_b
            .val()
            .inner()
            .slice([0..1, 0..1])
            .into_data();
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mem = opt.state_memory();
    println!(
        "{name:<10} {:>8.3} B/param  {:>9.1} ms/step per 1M params  (median of {steps}, {:.0} \
         params, {} state bytes)",
        mem.bytes_per_param(),
        median * 1e3 * 1e6 / params,
        params,
        mem.bytes
    );
}

fn main() {
    let steps: usize = std::env::var("OPTIM_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!(
        "optimizer state and step time, NdArray, {LAYERS} × LoRA rank {RANK} on \
         {HIDDEN}×{HIDDEN}, global-norm clipping on"
    );
    bench("AdamW", AdamWConfig::default().init().unwrap(), 1e-4, steps);
    bench(
        "AdamW8bit",
        AdamW8bitConfig::default().init().unwrap(),
        1e-4,
        steps,
    );
    bench(
        "Prodigy",
        ProdigyConfig::default().init().unwrap(),
        1.0,
        steps,
    );
    bench(
        "Adafactor",
        AdafactorConfig::default().init().unwrap(),
        0.0,
        steps,
    );
}
