//! Shared test fixtures: a tiny random Flux and a seeded random batch source.

#![allow(dead_code)]

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_data::SplitMix64;
use fluxlora_flux::{Flux, FluxConfig};
use fluxlora_train::{
    BatchSource, ControlLatents, OptimizerType, TrainBatch, TrainConfig, TrainError,
};

pub type AB = Autodiff<NdArray>;

/// NdArray's random generator is process-global: tests that seed it and expect reproducible
/// draws (model init, adapter init, dropout) hold this lock so parallel tests cannot interleave.
pub fn backend_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// hidden 32, 2 heads, 1 double + 1 single block, 16-channel tokens, guidance embedder.
pub fn tiny_config() -> FluxConfig {
    FluxConfig {
        in_channels: 16,
        out_channels: 16,
        vec_in_dim: 8,
        context_in_dim: 8,
        hidden_size: 32,
        mlp_hidden_dim: 64,
        num_heads: 2,
        depth: 1,
        depth_single_blocks: 1,
        axes_dim: vec![4, 6, 6],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

/// The tiny model, deterministic from `seed`.
pub fn tiny_flux(seed: u64) -> Flux<AB> {
    let dev = Default::default();
    AB::seed(&dev, seed);
    Flux::init(&tiny_config(), &dev).unwrap()
}

/// A small training config writing into `out`.
pub fn tiny_train_config(out: &std::path::Path, steps: usize) -> TrainConfig {
    TrainConfig {
        output_dir: out.to_path_buf(),
        output_name: "tiny".into(),
        network_dim: 4,
        network_alpha: 2.0,
        optimizer_type: OptimizerType::AdamW,
        learning_rate: 1e-2,
        max_train_steps: Some(steps),
        resolution: 256,
        ..TrainConfig::default()
    }
}

/// Micro-batches per epoch of [`RandomBatches`].
pub const BATCHES_PER_EPOCH: u64 = 4;

/// Batches of `batch` random samples on a `grid` token grid, batch `k` derived from
/// `(seed, k)`; sample 1 of every batch is a regularisation image. An epoch is
/// [`BATCHES_PER_EPOCH`] batches.
#[derive(Debug, Clone)]
pub struct RandomBatches {
    pub seed: u64,
    pub next: u64,
    pub batch: usize,
    pub grid: (usize, usize),
    pub with_mask: bool,
    pub poison: bool,
    /// Kontext batches: a control of another grid (1×3) appended to each sample.
    pub with_control: bool,
}

impl RandomBatches {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            next: 0,
            batch: 2,
            grid: (2, 2),
            with_mask: true,
            poison: false,
            with_control: false,
        }
    }
}

fn values(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

impl<B: Backend> BatchSource<B> for RandomBatches {
    fn next_batch(&mut self, device: &B::Device) -> Result<TrainBatch<B>, TrainError> {
        let mut rng = SplitMix64::derive(self.seed, &[self.next]);
        self.next += 1;
        let (b, l) = (self.batch, self.grid.0 * self.grid.1);
        let t = |data: Vec<f32>, shape: Vec<usize>| TensorData::new(data, shape);
        let mut lat = values(&mut rng, b * l * 16);
        if self.poison {
            lat[0] = f32::NAN;
        }
        let mask = self.with_mask.then(|| {
            let m: Vec<f32> = (0..b * l).map(|_| rng.next_f64() as f32).collect();
            Tensor::from_data(t(m, vec![b, l, 1]), device)
        });
        Ok(TrainBatch {
            latents: Tensor::from_data(t(lat, vec![b, l, 16]), device),
            grid: self.grid,
            txt: Tensor::from_data(t(values(&mut rng, b * 3 * 8), vec![b, 3, 8]), device),
            y: Tensor::from_data(t(values(&mut rng, b * 8), vec![b, 8]), device),
            mask,
            txt_mask: None,
            control: self.with_control.then(|| ControlLatents {
                latents: Tensor::from_data(t(values(&mut rng, b * 3 * 16), vec![b, 3, 16]), device),
                grid: (1, 3),
            }),
            is_reg: (0..b).map(|i| i == 1).collect(),
        })
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "next": self.next })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<(), TrainError> {
        self.next = position["next"].as_u64().ok_or_else(|| TrainError::Shape {
            what: "position".into(),
            message: "no `next`".into(),
        })?;
        Ok(())
    }

    fn epochs_completed(&self) -> u64 {
        self.next / BATCHES_PER_EPOCH
    }
}

/// Every adapter factor of the model, by linear path, as host vectors.
pub fn adapter_values(model: &mut Flux<AB>) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let mut out = Vec::new();
    for (path, lin) in model.linears_mut() {
        for a in &lin.adapters {
            out.push((
                path.clone(),
                a.lora_a.val().into_data().to_vec::<f32>().unwrap(),
                a.lora_b.val().into_data().to_vec::<f32>().unwrap(),
            ));
        }
    }
    out
}
