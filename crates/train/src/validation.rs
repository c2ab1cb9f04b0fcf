//! The validation loss: held-out items (`validation_split`, chosen by
//! [`fluxlora_data::Dataset::split_validation`]) scored with FIXED noise levels σ and FIXED
//! noise ε, forward only, so that the number moves only when the weights do.
//!
//! Fixed draws, per held-out item `i` of `n` (its position in the held-out list, which follows
//! the dataset, never the training RNG):
//! - σ is a quantile of the configured timestep distribution: the items take the levels
//!   `u = (k + ½)/n`, `k = 0..n` (in an order shuffled by `validation_seed`), and σ =
//!   `sampler.sigma(u, Φ⁻¹(u), tokens)`. Every sampler is a monotone function of the uniform
//!   (`uniform`, `sigma`) or of the normal (`sigmoid`, `shift`, `flux_shift`, `logit_normal`) it
//!   is given, so this is exactly the distribution's `u`-quantile: the held-out set covers the
//!   noise levels training sees, evenly.
//! - ε is standard normal from the stream `(validation_seed, VALIDATION_STREAM, i)`.
//!
//! Both derive from `validation_seed` and the item's position alone, so they are identical at
//! every evaluation, in every run with the same data and seed, and after `--resume`.
//!
//! The loss of an item is [`evaluation_loss`] on a batch of that one item — the training loss
//! function, weighting, mask and guidance, without autodiff or dropout; the validation loss is
//! the mean over the items.

use fluxlora_flux::FluxBackend;
use std::path::PathBuf;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use fluxlora_data::{Dataset, LatentCache, SplitMix64, TextCache};
use fluxlora_flux::schedule::SigmaSampler;
use fluxlora_flux::Flux;

use crate::error::TrainError;
use crate::noise::{draw_noise, NoiseDraw};
use crate::source::cached_batch;
use crate::step::{evaluation_loss, ControlLatents, StepSettings, TrainBatch};

/// The "step" coordinate of the validation ε streams: far above any real step, so validation
/// noise never coincides with a training draw.
pub const VALIDATION_STREAM: u64 = 0x5641_4c49_4441_5445;
/// Purpose tag of the σ-slot shuffle.
const PURPOSE_SLOTS: u64 = 0x534c_4f54;

/// Φ⁻¹, the standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2·10⁻⁹ on (0, 1)). Returns ∓∞ at 0 and 1.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const P_LOW: f64 = 0.02425;
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - P_LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The fixed draws of held-out item `index` of `count`, with `tokens × channels` packed latents.
pub fn fixed_draw(
    seed: u64,
    index: usize,
    count: usize,
    sampler: &SigmaSampler,
    tokens: usize,
    channels: usize,
) -> NoiseDraw {
    let mut slots: Vec<usize> = (0..count.max(1)).collect();
    SplitMix64::derive(seed, &[PURPOSE_SLOTS, count as u64]).shuffle(&mut slots);
    let u = (slots[index.min(slots.len() - 1)] as f64 + 0.5) / slots.len() as f64;
    let sigma = sampler.sigma(u, normal_quantile(u), tokens) as f32;
    let noise = draw_noise(
        seed,
        VALIDATION_STREAM,
        index as u64,
        sampler,
        1,
        tokens,
        channels,
    )
    .noise;
    NoiseDraw {
        sigmas: vec![sigma],
        noise,
    }
}

/// One held-out item: its cached inputs (host copies, batch of 1) and its fixed draws.
#[derive(Debug, Clone)]
pub struct ValidationItem {
    /// What the item is (the image path for dataset items).
    pub name: String,
    latents: TensorData,
    grid: (usize, usize),
    txt: TensorData,
    y: TensorData,
    mask: Option<TensorData>,
    txt_mask: Option<TensorData>,
    control: Option<(TensorData, (usize, usize))>,
    is_reg: bool,
    /// σ and ε of this item, the same at every evaluation.
    pub draw: NoiseDraw,
}

impl ValidationItem {
    /// The item as a one-sample batch on `device`.
    pub fn batch<B: Backend>(&self, device: &B::Device) -> TrainBatch<B> {
        TrainBatch {
            latents: Tensor::from_data(self.latents.clone(), device),
            grid: self.grid,
            txt: Tensor::from_data(self.txt.clone(), device),
            y: Tensor::from_data(self.y.clone(), device),
            mask: self.mask.clone().map(|m| Tensor::from_data(m, device)),
            txt_mask: self.txt_mask.clone().map(|m| Tensor::from_data(m, device)),
            is_reg: vec![self.is_reg],
            control: self.control.clone().map(|(l, grid)| ControlLatents {
                latents: Tensor::from_data(l, device),
                grid,
            }),
        }
    }
}

/// The held-out items of a run, each with its fixed draws.
#[derive(Debug, Clone, Default)]
pub struct ValidationSet {
    items: Vec<ValidationItem>,
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    t.into_data().convert::<f32>()
}

impl ValidationSet {
    /// Every sample of `batches` (named `name/k`) becomes one item, numbered in order; its draws
    /// come from `seed` (the config's `validation_seed`) and its number.
    pub fn from_batches<B: Backend>(
        named: Vec<(String, TrainBatch<B>)>,
        sampler: &SigmaSampler,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let mut parts = Vec::new();
        for (name, batch) in named {
            let [b, _, _] = batch.dims()?;
            for i in 0..b {
                let one = |t: Tensor<B, 3>| t.narrow(0, i, 1);
                let label = if b == 1 {
                    name.clone()
                } else {
                    format!("{name}/{i}")
                };
                parts.push(ValidationItem {
                    name: label,
                    latents: host(one(batch.latents.clone())),
                    grid: batch.grid,
                    txt: host(one(batch.txt.clone())),
                    y: host(batch.y.clone().narrow(0, i, 1)),
                    mask: batch.mask.clone().map(|m| host(one(m))),
                    txt_mask: batch.txt_mask.clone().map(|m| host(m.narrow(0, i, 1))),
                    control: batch
                        .control
                        .as_ref()
                        .map(|ctl| (host(one(ctl.latents.clone())), ctl.grid)),
                    is_reg: batch.is_reg[i],
                    draw: NoiseDraw {
                        sigmas: Vec::new(),
                        noise: Vec::new(),
                    },
                });
            }
        }
        let count = parts.len();
        let items = parts
            .into_iter()
            .enumerate()
            .map(|(index, mut item)| {
                let (l, c) = (item.latents.shape[1], item.latents.shape[2]);
                item.draw = fixed_draw(seed, index, count, sampler, l, c);
                item
            })
            .collect();
        Ok(Self { items })
    }

    /// The held-out `dataset`'s items ([`Dataset::validation_sample`]: centred crop, no flip,
    /// no caption randomness) read from the run's caches.
    pub fn from_cache<B: Backend>(
        dataset: &Dataset,
        latents: &LatentCache,
        texts: &TextCache,
        sampler: &SigmaSampler,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let batches = (0..dataset.items.len())
            .map(|i| {
                let sample = dataset.validation_sample(i);
                let batch = cached_batch::<B>(dataset, &[sample], latents, texts, device)?;
                Ok((dataset.items[i].path.display().to_string(), batch))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Self::from_batches(batches, sampler, seed)
    }

    /// The items.
    pub fn items(&self) -> &[ValidationItem] {
        &self.items
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The mean loss over the items for `model` (a plain-backend model, e.g. `model.valid()`).
    pub fn loss<B: FluxBackend>(
        &self,
        model: &Flux<B>,
        settings: &StepSettings,
        device: &B::Device,
    ) -> Result<f32, TrainError> {
        if self.items.is_empty() {
            return Err(TrainError::Invalid {
                key: "validation_split".into(),
                message: "the validation set is empty; raise validation_split or set it to 0"
                    .into(),
            });
        }
        let mut sum = 0.0f64;
        for item in &self.items {
            sum += f64::from(evaluation_loss(
                model,
                &item.batch::<B>(device),
                &item.draw,
                settings,
            )?);
        }
        Ok((sum / self.items.len() as f64) as f32)
    }
}

/// The saved weights with the lowest validation loss.
#[derive(Debug, Clone, PartialEq)]
pub struct BestCheckpoint {
    /// Optimizer step of the save.
    pub step: u64,
    /// Its validation loss.
    pub val_loss: f32,
    /// The checkpoint folder, or the final LoRA file for the last step of a finished run.
    pub path: PathBuf,
}

impl std::fmt::Display for BestCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (step {}, validation loss {:.5})",
            self.path.display(),
            self.step,
            self.val_loss
        )
    }
}

/// The validation losses of a run and the saves they pair with.
#[derive(Debug, Clone, Default)]
pub struct ValidationHistory {
    /// `(step, validation loss, the save of that step)`.
    pub entries: Vec<(u64, f32, Option<PathBuf>)>,
}

impl ValidationHistory {
    /// Records a validation at `step`.
    pub fn push(&mut self, step: u64, loss: f32) {
        self.entries.push((step, loss, None));
    }

    /// Pairs the validation at `step` (if any) with the save at `path`.
    pub fn pair(&mut self, step: u64, path: PathBuf) {
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.0 == step) {
            e.2 = Some(path);
        }
    }

    /// The lowest validation loss among saves that still exist (retention may have removed
    /// some); ties go to the earlier step.
    pub fn best(&self) -> Option<BestCheckpoint> {
        self.entries
            .iter()
            .filter_map(|(step, loss, path)| {
                path.as_ref()
                    .filter(|p| p.exists())
                    .map(|p| (*step, *loss, p))
            })
            .filter(|(_, loss, _)| loss.is_finite())
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(step, val_loss, path)| BestCheckpoint {
                step,
                val_loss,
                path: path.clone(),
            })
    }

    /// The last validation loss.
    pub fn last(&self) -> Option<(u64, f32)> {
        self.entries.last().map(|e| (e.0, e.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ⁻¹ against tabulated quantiles (Abramowitz & Stegun table 26.5 / any statistics table).
    #[test]
    fn normal_quantile_matches_tabulated_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959963984540054),
            (0.9, 1.2815515655446004),
            (0.01, -2.3263478740408408),
            (0.001, -3.090232306167813),
            (1e-6, -4.753424308822899),
            (0.841344746068543, 1.0),
        ] {
            let got = normal_quantile(p);
            assert!(
                (got - z).abs() < 1e-8 * z.abs().max(1.0),
                "Φ⁻¹({p}) = {got}, want {z}"
            );
        }
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
    }

    #[test]
    fn fixed_sigmas_are_the_quantiles_of_the_distribution() {
        // Uniform: σ = u, so the n items take exactly (k + ½)/n, each once.
        let n = 8;
        let mut s: Vec<f32> = (0..n)
            .map(|i| fixed_draw(3, i, n, &SigmaSampler::Uniform, 4, 2).sigmas[0])
            .collect();
        s.sort_by(f32::total_cmp);
        let want: Vec<f32> = (0..n)
            .map(|k| ((k as f64 + 0.5) / n as f64) as f32)
            .collect();
        assert_eq!(s, want);
        // Sigmoid(scale·n): the median item (one item, u = ½) sits at σ = ½ for any scale.
        assert_eq!(
            fixed_draw(3, 0, 1, &SigmaSampler::Sigmoid { scale: 2.5 }, 4, 2).sigmas,
            vec![0.5]
        );
        // Logit-normal quantile: sigmoid(mean + std·Φ⁻¹(u)); with u = 0.9 of 5 items.
        let ln = SigmaSampler::LogitNormal {
            mean: 0.3,
            std: 1.2,
        };
        let all: Vec<f32> = (0..5)
            .map(|i| fixed_draw(9, i, 5, &ln, 4, 2).sigmas[0])
            .collect();
        let want = (1.0 / (1.0 + (-(0.3 + 1.2 * 1.2815515655446004f64)).exp())) as f32;
        assert!(
            all.iter().any(|&v| (v - want).abs() < 1e-6),
            "{all:?} lacks {want}"
        );
    }

    #[test]
    fn fixed_draws_repeat_and_differ_between_items_and_seeds() {
        let s = SigmaSampler::Shift {
            shift: 3.0,
            sigmoid_scale: 1.0,
        };
        let a = fixed_draw(7, 1, 4, &s, 6, 4);
        assert_eq!(a, fixed_draw(7, 1, 4, &s, 6, 4));
        assert_eq!(a.noise.len(), 24);
        assert_ne!(a.noise, fixed_draw(7, 2, 4, &s, 6, 4).noise);
        assert_ne!(a.noise, fixed_draw(8, 1, 4, &s, 6, 4).noise);
        // Not a training draw: step/micro coordinates of training never reach VALIDATION_STREAM.
        assert_ne!(a.noise, draw_noise(7, 0, 1, &s, 1, 6, 4).noise);
    }

    #[test]
    fn best_is_the_lowest_loss_among_existing_saves() {
        let d = tempfile::tempdir().unwrap();
        let dir = |n: u64| {
            let p = d.path().join(format!("s{n}"));
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let mut h = ValidationHistory::default();
        assert_eq!(h.best(), None);
        h.push(1, 0.1); // lowest, but no save at step 1
        h.push(2, 0.5);
        h.pair(2, dir(2));
        h.push(4, 0.3);
        h.pair(4, dir(4));
        h.push(6, 0.2);
        h.pair(6, d.path().join("pruned")); // removed by retention
        h.push(8, 0.4);
        h.pair(8, dir(8));
        let best = h.best().unwrap();
        assert_eq!(
            (best.step, best.val_loss, best.path.clone()),
            (4, 0.3, d.path().join("s4"))
        );
        assert!(best.to_string().contains("step 4") && best.to_string().contains("0.30000"));
        assert_eq!(h.last(), Some((8, 0.4)));
    }
}
