//! The test backend: AdamW8bit (the op-heaviest rule: gathers, masks, integer codes) through
//! `LoraOptimizer` on wgpu gives the NdArray result. Kept to one tiny case (lavapipe is slow).

mod common;

use burn::backend::{Autodiff, Wgpu};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use common::*;
use fluxlora_optim::*;

fn run<AB: AutodiffBackend>(steps: usize) -> (std::collections::HashMap<&'static str, Vec<f32>>, f64) {
    let fx = Fixture::load();
    let mut toy = Toy::<AB>::from_fixture(&fx);
    let rule = AdamW8bitConfig { min_8bit_size: 256, ..Default::default() }.init().unwrap();
    let mut opt: LoraOptimizer<AdamW8bit, Toy<AB>, AB> = LoraOptimizer::new(rule);
    for k in 0..steps {
        let mut g = GradientsParams::new();
        g.register::<AB::InnerBackend, 2>(toy.w.id, fx.tensor(&format!("grad.{k}.w")));
        g.register::<AB::InnerBackend, 1>(toy.v.id, fx.tensor(&format!("grad.{k}.v")));
        g.register::<AB::InnerBackend, 3>(toy.t3.id, fx.tensor(&format!("grad.{k}.t3")));
        g.register::<AB::InnerBackend, 2>(toy.z.id, fx.tensor(&format!("grad.{k}.z")));
        toy = opt.step(1e-2, toy, g);
    }
    (toy.values(), opt.state_memory().bytes_per_param())
}

#[test]
fn adamw8bit_on_wgpu_matches_ndarray() {
    let (gpu, gpu_bpp) = run::<Autodiff<Wgpu>>(2);
    let (cpu, _) = run::<AD>(2);
    for name in NAMES {
        let (r, i) = worst_ratio(&gpu[name], &cpu[name], 1e-6, 1e-5);
        assert!(r <= 1.0, "{name}[{i}]: wgpu {} ndarray {}", gpu[name][i], cpu[name][i]);
    }
    assert!(gpu_bpp > 0.0);
}
