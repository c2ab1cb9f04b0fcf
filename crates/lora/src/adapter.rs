//! One low-rank adapter: `Δy = m · (α/r) · B(A(drop(x)))`.
//!
//! Layouts follow Burn's linear (`x @ W`): `lora_a` is `[d_in, r]` (the file's `lora_down` /
//! `lora_A` transposed) and `lora_b` is `[r, d_rows]` (the file's `lora_up` / `lora_B`
//! transposed). An adapter may write to only a row range of the base output (`rows`), which is how
//! a diffusers `to_q` adapter sits on BFL's fused `qkv`.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::{Distribution, Tensor};

use crate::error::LoraError;
use crate::network::Network;
use crate::param_id::stable_param_id;

/// How to build one adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// Rank r (> 0).
    pub rank: usize,
    /// Alpha; the effective scale is `alpha / rank`.
    pub alpha: f32,
    /// Multiplier m applied at forward time (1.0 for training; a user weight when sampling).
    pub multiplier: f32,
    /// Dropout on the adapter input (PEFT's `lora_dropout`), rescaled by `1/(1-p)`.
    pub dropout: f64,
    /// Rank dropout: zero whole rank components per sample, rescaled by `1/(1-p)` (kohya).
    pub rank_dropout: f64,
    /// Module dropout: skip the whole adapter for a step with this probability (kohya).
    pub module_dropout: f64,
    /// Output rows `[start, end)` of the base linear the adapter writes to; `None` = all.
    pub rows: Option<(usize, usize)>,
    /// The algorithm: plain LoRA (this module's [`LoraAdapter`]) or a LyCORIS kind
    /// ([`LycorisAdapter`](crate::LycorisAdapter)); rank and alpha mean what that kind says.
    pub network: Network,
}

impl AdapterSpec {
    /// A plain adapter of the given rank and alpha over all output rows.
    pub fn new(rank: usize, alpha: f32) -> Self {
        Self {
            rank,
            alpha,
            multiplier: 1.0,
            dropout: 0.0,
            rank_dropout: 0.0,
            module_dropout: 0.0,
            rows: None,
            network: Network::Lora,
        }
    }

    /// The same spec restricted to output rows `[start, end)`.
    pub fn with_rows(mut self, start: usize, end: usize) -> Self {
        self.rows = Some((start, end));
        self
    }

    /// Checks rank, alpha and probabilities; `what` names the module in the error.
    pub fn validate(&self, what: &str) -> Result<(), LoraError> {
        let bad = |reason: String| LoraError::Setting {
            what: what.to_string(),
            reason,
        };
        if self.rank == 0 {
            return Err(bad("rank must be at least 1".into()));
        }
        if !self.alpha.is_finite() || !self.multiplier.is_finite() {
            return Err(bad(format!(
                "alpha {} and multiplier {} must be finite",
                self.alpha, self.multiplier
            )));
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("rank_dropout", self.rank_dropout),
            ("module_dropout", self.module_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(format!("{name} = {p} must be in [0, 1)")));
            }
        }
        if let Some((s, e)) = self.rows {
            if s >= e {
                return Err(bad(format!("row range {s}..{e} is empty")));
            }
        }
        Ok(())
    }
}

/// A trained or loaded low-rank adapter.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[d_in, r]`; kaiming-uniform(a=√5) at init, i.e. U(−1/√d_in, 1/√d_in).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, d_rows]`; zero at init, so a fresh adapter leaves the base output unchanged.
    pub lora_b: Param<Tensor<B, 2>>,
    /// Alpha (scale = alpha / rank).
    pub alpha: f32,
    /// Forward-time multiplier.
    pub multiplier: f32,
    /// Input dropout probability.
    pub dropout: f64,
    /// Rank dropout probability.
    pub rank_dropout: f64,
    /// Module dropout probability.
    pub module_dropout: f64,
    /// Output rows written, `None` = all.
    #[module(skip)]
    pub rows: Option<(usize, usize)>,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter for a linear `d_in → d_out`; parameter ids derive from `path`.
    pub fn init(
        path: &str,
        d_in: usize,
        d_out: usize,
        spec: &AdapterSpec,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        spec.validate(path)?;
        let (start, end) = spec.rows.unwrap_or((0, d_out));
        if end > d_out {
            return Err(LoraError::Rows {
                path: path.to_string(),
                start,
                end,
                d_out,
            });
        }
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::<B, 2>::random(
            [d_in, spec.rank],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::<B, 2>::zeros([spec.rank, end - start], device);
        Ok(Self::from_factors(path, a, b, spec))
    }

    /// An adapter from given factors in Burn layout (`a: [d_in, r]`, `b: [r, d_rows]`).
    pub fn from_factors(path: &str, a: Tensor<B, 2>, b: Tensor<B, 2>, spec: &AdapterSpec) -> Self {
        let tag = match spec.rows {
            Some((s, e)) => format!("{path}[{s}..{e}]"),
            None => path.to_string(),
        };
        Self {
            lora_a: Param::initialized(stable_param_id(&tag, "lora_A"), a.require_grad()),
            lora_b: Param::initialized(stable_param_id(&tag, "lora_B"), b.require_grad()),
            alpha: spec.alpha,
            multiplier: spec.multiplier,
            dropout: spec.dropout,
            rank_dropout: spec.rank_dropout,
            module_dropout: spec.module_dropout,
            rows: spec.rows,
        }
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// The effective scale `alpha / rank` (without the multiplier).
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank() as f32
    }

    /// The weight change `m·(α/r)·A·B` in Burn layout `[d_in, d_out]`, zero outside `rows`.
    pub fn delta_weight(&self, d_out: usize) -> Tensor<B, 2> {
        let d = self.lora_a.val().matmul(self.lora_b.val()) * (self.multiplier * self.scale());
        self.pad_rows(d, d_out)
    }

    /// The adapter's contribution to a linear output of width `d_out`.
    ///
    /// Dropouts act only when autodiff is enabled on the input's device (training), as Burn's
    /// own `Dropout` does.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, d_out: usize) -> Tensor<B, D> {
        let training = B::ad_enabled(&x.device());
        let a = self.lora_a.val();
        let x = if x.dtype() != a.dtype() {
            x.cast(a.dtype())
        } else {
            x
        };
        let x = if training && self.dropout > 0.0 {
            drop(x, self.dropout)
        } else {
            x
        };
        let mut h = burn::tensor::module::linear(x, a, None);
        let mut scale = f64::from(self.multiplier * self.scale());
        if training && self.rank_dropout > 0.0 {
            // One keep-mask per sample (leading dims) and rank component, broadcast over tokens.
            let mut shape = h.dims();
            for d in shape.iter_mut().take(D - 1).skip(1) {
                *d = 1;
            }
            let mask = Tensor::<B, D>::random(
                shape,
                Distribution::Bernoulli(1.0 - self.rank_dropout),
                &h.device(),
            );
            h = h * mask;
            scale /= 1.0 - self.rank_dropout;
        }
        let mut y = burn::tensor::module::linear(h, self.lora_b.val(), None) * scale;
        if training && self.module_dropout > 0.0 {
            let keep = Tensor::<B, D>::random(
                [1; D],
                Distribution::Bernoulli(1.0 - self.module_dropout),
                &y.device(),
            );
            y = y * keep;
        }
        self.pad_rows(y, d_out)
    }

    fn pad_rows<const D: usize>(&self, y: Tensor<B, D>, d_out: usize) -> Tensor<B, D> {
        match self.rows {
            Some((s, e)) if s > 0 || e < d_out => y.pad([(s, d_out - e)], PadMode::Constant(0.0)),
            _ => y,
        }
    }
}

fn drop<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
    x * keep * (1.0 / (1.0 - p))
}
