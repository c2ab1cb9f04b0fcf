//! Flow-matching noise levels: the BFL sampling schedule and the training-time σ samplers and
//! loss weightings.
//!
//! Flux is trained as a rectified flow: `x_σ = (1 − σ)·x₀ + σ·ε`, the model predicts the
//! velocity `ε − x₀`, and σ = 1 is pure noise. Sampling walks σ from 1 down to 0.
//!
//! Training samplers ([`SigmaSampler`]) map a uniform and a normal draw to σ; the discrete one
//! (kohya `timestep_sampling = "sigma"`) indexes the shifted table of diffusers'
//! `FlowMatchEulerDiscreteScheduler` ([`flow_match_sigmas`]).

use burn::tensor::{backend::Backend, Distribution, Tensor};

/// Default `base_shift` of BFL's `get_schedule` (μ at 256 image tokens).
pub const BASE_SHIFT: f64 = 0.5;
/// Default `max_shift` of BFL's `get_schedule` (μ at 4096 image tokens).
pub const MAX_SHIFT: f64 = 1.15;

/// BFL `time_shift(mu, sigma, t) = e^μ / (e^μ + (1/t − 1)^σ)`.
///
/// With σ = 1 this equals `s·t / (1 + (s − 1)·t)` for `s = e^μ`: it keeps t = 0 and t = 1
/// fixed and pushes the middle towards noise for s > 1. `t = 0` gives 0 and `t = 1` gives 1.
pub fn time_shift(mu: f64, sigma: f64, t: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    let e = mu.exp();
    e / (e + (1.0 / t - 1.0).powf(sigma))
}

/// BFL `get_lin_function(x1=256, y1=base_shift, x2=4096, y2=max_shift)(image_seq_len)`: the
/// shift μ grows linearly with the number of image tokens.
pub fn lin_mu(image_seq_len: usize, base_shift: f64, max_shift: f64) -> f64 {
    let (x1, x2) = (256.0, 4096.0);
    let m = (max_shift - base_shift) / (x2 - x1);
    let b = base_shift - m * x1;
    m * image_seq_len as f64 + b
}

/// BFL `get_schedule(num_steps, image_seq_len, base_shift, max_shift, shift)`:
/// `linspace(1, 0, num_steps + 1)`, then, when `shift` is on (dev), each t is mapped through
/// `time_shift(lin_mu(image_seq_len), 1, t)`. Schnell samples with `shift = false`.
///
/// Returns `num_steps + 1` values from 1.0 down to 0.0.
pub fn get_schedule(
    num_steps: usize,
    image_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
    shift: bool,
) -> Vec<f64> {
    let n = num_steps.max(1);
    let mu = lin_mu(image_seq_len, base_shift, max_shift);
    (0..=num_steps)
        .map(|i| {
            let t = 1.0 - i as f64 / n as f64;
            if shift {
                time_shift(mu, 1.0, t)
            } else {
                t
            }
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// How training draws the noise level σ ∈ (0, 1) of each sample.
#[derive(Debug, Clone, PartialEq)]
pub enum SigmaSampler {
    /// σ = u, u ~ U(0, 1).
    Uniform,
    /// σ = sigmoid(scale·n), n ~ N(0, 1) (kohya `sigmoid`; scale 1.0 by default).
    Sigmoid {
        /// Multiplier of the standard normal draw before the sigmoid.
        scale: f64,
    },
    /// σ = sigmoid(mean + std·n): the SD3 logit-normal density.
    LogitNormal {
        /// Mean of the normal distribution of logit(σ).
        mean: f64,
        /// Standard deviation of the normal distribution of logit(σ).
        std: f64,
    },
    /// σ = s·q / (1 + (s − 1)·q) with q = sigmoid(sigmoid_scale·n): a static shift s (kohya
    /// `shift`, `discrete_flow_shift`).
    Shift {
        /// The static shift s (1.0 leaves q unchanged; larger values favour high noise).
        shift: f64,
        /// Multiplier of the standard normal draw before the sigmoid.
        sigmoid_scale: f64,
    },
    /// σ = time_shift(μ, 1, q), q = sigmoid(sigmoid_scale·n), μ = `lin_mu(image_seq_len,
    /// base_shift, max_shift)`: the resolution-dependent BFL shift (kohya `flux_shift`; ai-toolkit
    /// uses max_shift 1.16).
    FluxShift {
        /// Multiplier of the standard normal draw before the sigmoid.
        sigmoid_scale: f64,
        /// μ at 256 image tokens (BFL 0.5).
        base_shift: f64,
        /// μ at 4096 image tokens (BFL 1.15).
        max_shift: f64,
    },
    /// σ = `flow_match_sigma(⌊u·N⌋, N, shift)`: an index drawn uniformly over the N-step
    /// table of diffusers' `FlowMatchEulerDiscreteScheduler` (kohya `sigma`, with
    /// `shift = discrete_flow_shift`, N = `num_train_timesteps` = 1000). Discrete: only N values
    /// occur.
    Discrete {
        /// The scheduler's static shift (`discrete_flow_shift`).
        shift: f64,
        /// N, the number of entries in the sigma table (1000).
        num_train_timesteps: usize,
    },
}

/// Entry `index` (0 = most noise) of diffusers'
/// `FlowMatchEulerDiscreteScheduler(num_train_timesteps
/// = n, shift)` sigma table, computed in f32 with diffusers' order of operations so it matches
/// the PyTorch table bit for bit:
/// `t = linspace(1, n, n)[::-1][index] = n − index`, `s = t / n`,
/// `σ = shift·s / (1 + (shift − 1)·s)`. `index ≥ n` is clamped to `n − 1`.
pub fn flow_match_sigma(index: usize, n: usize, shift: f64) -> f32 {
    let n = n.max(1);
    let t = (n - index.min(n - 1)) as f32;
    let s = t / n as f32;
    let shift32 = shift as f32;
    let minus_one = (shift - 1.0) as f32;
    (shift32 * s) / (1.0 + minus_one * s)
}

/// The whole table of [`flow_match_sigma`]: `n` values from 1.0 down to `shift·(1/n) / …`.
pub fn flow_match_sigmas(n: usize, shift: f64) -> Vec<f32> {
    (0..n.max(1))
        .map(|i| flow_match_sigma(i, n, shift))
        .collect()
}

impl SigmaSampler {
    /// σ for one sample from the draws `u ~ U(0,1)` and `n ~ N(0,1)` (each variant uses one of
    /// them) and the sample's number of image tokens.
    pub fn sigma(&self, u: f64, n: f64, image_seq_len: usize) -> f64 {
        match *self {
            SigmaSampler::Uniform => u,
            SigmaSampler::Sigmoid { scale } => sigmoid(scale * n),
            SigmaSampler::LogitNormal { mean, std } => sigmoid(mean + std * n),
            SigmaSampler::Shift {
                shift,
                sigmoid_scale,
            } => {
                let q = sigmoid(sigmoid_scale * n);
                shift * q / (1.0 + (shift - 1.0) * q)
            }
            SigmaSampler::FluxShift {
                sigmoid_scale,
                base_shift,
                max_shift,
            } => {
                let q = sigmoid(sigmoid_scale * n);
                time_shift(lin_mu(image_seq_len, base_shift, max_shift), 1.0, q)
            }
            SigmaSampler::Discrete {
                shift,
                num_train_timesteps,
            } => {
                // kohya: indices = (u · N).long(), u ∈ [0, 1).
                let index = (u * num_train_timesteps as f64).floor().max(0.0) as usize;
                f64::from(flow_match_sigma(index, num_train_timesteps, shift))
            }
        }
    }

    /// One σ per batch element, drawn with the backend's random generator (seed it with
    /// `B::seed`). Shape `[batch]`.
    pub fn sample<B: Backend>(
        &self,
        batch: usize,
        image_seq_len: usize,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let u: Tensor<B, 1> = Tensor::random([batch], Distribution::Uniform(0.0, 1.0), device);
        let n: Tensor<B, 1> = Tensor::random([batch], Distribution::Normal(0.0, 1.0), device);
        let u = u
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        let n = n
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        let sigmas: Vec<f32> = u
            .iter()
            .zip(&n)
            .map(|(&u, &n)| self.sigma(u as f64, n as f64, image_seq_len) as f32)
            .collect();
        Tensor::from_floats(sigmas.as_slice(), device)
    }
}

/// Per-sample weight of the flow-matching MSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossWeighting {
    /// w = 1.
    #[default]
    None,
    /// w = σ⁻² (SD3 `sigma_sqrt`).
    SigmaSqrt,
    /// w = 2 / (π·(1 − 2σ + 2σ²)) (SD3 `cosmap`).
    CosMap,
}

impl LossWeighting {
    /// The weight for noise level `sigma`.
    pub fn weight(self, sigma: f64) -> f64 {
        match self {
            LossWeighting::None => 1.0,
            LossWeighting::SigmaSqrt => 1.0 / (sigma * sigma),
            LossWeighting::CosMap => {
                2.0 / (std::f64::consts::PI * (1.0 - 2.0 * sigma + 2.0 * sigma * sigma))
            }
        }
    }

    /// Weights for a batch of σ (shape `[batch]`), computed on the device.
    pub fn weights<B: Backend>(self, sigmas: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            LossWeighting::None => sigmas.ones_like(),
            LossWeighting::SigmaSqrt => sigmas.clone().mul(sigmas).recip(),
            LossWeighting::CosMap => {
                let bot = sigmas.clone().mul(sigmas.clone()).mul_scalar(2.0)
                    - sigmas.mul_scalar(2.0)
                    + 1.0;
                bot.mul_scalar(std::f64::consts::PI).recip().mul_scalar(2.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use proptest::prelude::*;

    #[test]
    fn mu_matches_the_anchor_values() {
        // Anchors: mu(512²) = 0.63, mu(1024²) = 1.15, mu(1024×768) = 0.9767 (independent
        // arithmetic).
        assert!((lin_mu(1024, BASE_SHIFT, MAX_SHIFT) - 0.63).abs() < 1e-12);
        assert!((lin_mu(4096, BASE_SHIFT, MAX_SHIFT) - 1.15).abs() < 1e-12);
        assert!((lin_mu(3072, BASE_SHIFT, MAX_SHIFT) - 0.9767).abs() < 1e-4);
    }

    #[test]
    fn schnell_schedule_is_linear() {
        assert_eq!(
            get_schedule(4, 4096, BASE_SHIFT, MAX_SHIFT, false),
            vec![1.0, 0.75, 0.5, 0.25, 0.0]
        );
    }

    #[test]
    fn dev_schedule_midpoint() {
        // s = e^1.15 = 3.1582; t = 0.5 → s·0.5/(1 + (s−1)·0.5) = s/(1+s).
        let s = 1.15f64.exp();
        let sched = get_schedule(2, 4096, BASE_SHIFT, MAX_SHIFT, true);
        assert_eq!(sched.len(), 3);
        assert!((sched[0] - 1.0).abs() < 1e-12 && sched[2] == 0.0);
        assert!((sched[1] - s / (1.0 + s)).abs() < 1e-12);
    }

    #[test]
    fn samplers_match_their_formulas() {
        let n: f64 = 0.3;
        let q = 1.0 / (1.0 + (-n).exp());
        assert_eq!(SigmaSampler::Uniform.sigma(0.25, n, 1), 0.25);
        assert!((SigmaSampler::Sigmoid { scale: 1.0 }.sigma(0.0, n, 1) - q).abs() < 1e-15);
        let ln = SigmaSampler::LogitNormal {
            mean: 0.5,
            std: 2.0,
        }
        .sigma(0.0, n, 1);
        assert!((ln - 1.0 / (1.0 + (-(0.5 + 0.6f64)).exp())).abs() < 1e-15);
        let sh = SigmaSampler::Shift {
            shift: 3.0,
            sigmoid_scale: 1.0,
        }
        .sigma(0.0, n, 1);
        assert!((sh - 3.0 * q / (1.0 + 2.0 * q)).abs() < 1e-15);
        // flux_shift at 4096 tokens: μ = 1.15, so σ = e^1.15·q / (1 + (e^1.15 − 1)·q).
        let fs = SigmaSampler::FluxShift {
            sigmoid_scale: 1.0,
            base_shift: 0.5,
            max_shift: 1.15,
        }
        .sigma(0.0, n, 4096);
        let s = 1.15f64.exp();
        assert!((fs - s * q / (1.0 + (s - 1.0) * q)).abs() < 1e-12);
    }

    #[test]
    fn flow_match_table_matches_the_closed_form() {
        // Independent f64 closed form: σ_i = k·s/(1 + (k − 1)·s), s = (1000 − i)/1000.
        for shift in [1.0, 3.0, 1.15f64.exp()] {
            let table = flow_match_sigmas(1000, shift);
            assert_eq!(table.len(), 1000);
            for (i, &v) in table.iter().enumerate() {
                let s = (1000 - i) as f64 / 1000.0;
                let want = shift * s / (1.0 + (shift - 1.0) * s);
                assert!(
                    (f64::from(v) - want).abs() <= 2e-7 * want,
                    "shift {shift} index {i}: {v} vs {want}"
                );
            }
            assert_eq!(table[0], 1.0);
            assert!(table.windows(2).all(|w| w[0] > w[1]));
        }
        // shift 3 at index 500 (s = 0.5): 1.5 / 2 = 0.75 exactly.
        assert_eq!(flow_match_sigma(500, 1000, 3.0), 0.75);
    }

    #[test]
    fn discrete_sampler_picks_the_table_entry_of_floor_u_n() {
        let d = SigmaSampler::Discrete {
            shift: 3.0,
            num_train_timesteps: 1000,
        };
        let entry = |i: usize| {
            let s = (1000 - i) as f64 / 1000.0;
            3.0 * s / (1.0 + 2.0 * s)
        };
        for (u, i) in [
            (0.0, 0usize),
            (0.0009, 0),
            (0.001, 1),
            (0.4999, 499),
            (0.5, 500),
            (0.999_999, 999),
        ] {
            assert!(
                (d.sigma(u, 0.7, 4096) - entry(i)).abs() < 1e-6,
                "u = {u} should pick index {i}"
            );
        }
    }

    #[test]
    fn weightings_match_their_formulas() {
        assert_eq!(LossWeighting::None.weight(0.3), 1.0);
        assert!((LossWeighting::SigmaSqrt.weight(0.5) - 4.0).abs() < 1e-12);
        // cosmap at σ = 0.5: bot = 1 − 1 + 0.5 = 0.5 → 4/π.
        assert!((LossWeighting::CosMap.weight(0.5) - 4.0 / std::f64::consts::PI).abs() < 1e-12);
        let dev = Default::default();
        let s = Tensor::<NdArray, 1>::from_floats([0.2, 0.5, 0.9], &dev);
        for w in [
            LossWeighting::None,
            LossWeighting::SigmaSqrt,
            LossWeighting::CosMap,
        ] {
            let got = w.weights(s.clone()).into_data().into_vec::<f32>().unwrap();
            for (g, sigma) in got.iter().zip([0.2, 0.5, 0.9]) {
                assert!((*g as f64 - w.weight(sigma)).abs() < 1e-5 * w.weight(sigma).max(1.0));
            }
        }
    }

    #[test]
    fn batch_sampling_stays_in_range() {
        let dev = Default::default();
        let s = SigmaSampler::LogitNormal {
            mean: 0.0,
            std: 1.0,
        }
        .sample::<NdArray>(64, 1024, &dev);
        let v = s.into_data().into_vec::<f32>().unwrap();
        assert_eq!(v.len(), 64);
        assert!(v.iter().all(|&x| x > 0.0 && x < 1.0));
    }

    proptest! {
        #[test]
        fn time_shift_with_unit_sigma_is_the_rational_shift(
            mu in -1.0f64..2.0,
            t in 0.001f64..1.0,
        ) {
            let s = mu.exp();
            let expect = s * t / (1.0 + (s - 1.0) * t);
            prop_assert!((time_shift(mu, 1.0, t) - expect).abs() < 1e-12);
        }

        #[test]
        fn schedule_is_monotone_from_one_to_zero(
            steps in 1usize..60,
            seq in 1usize..8192,
            shift: bool,
        ) {
            let s = get_schedule(steps, seq, BASE_SHIFT, MAX_SHIFT, shift);
            prop_assert_eq!(s.len(), steps + 1);
            prop_assert!((s[0] - 1.0).abs() < 1e-12);
            prop_assert_eq!(s[steps], 0.0);
            prop_assert!(s.windows(2).all(|w| w[0] > w[1]));
        }
    }
}
