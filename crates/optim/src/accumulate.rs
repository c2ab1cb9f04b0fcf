//! Gradient accumulation that *averages* micro-batch gradients (Burn's
//! `GradientsAccumulator` sums them). Equivalent to dividing each micro-batch loss by the number
//! of micro-batches, as `accelerate`'s `gradient_accumulation_steps` does.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, Tensor};

/// Running sum of gradients plus a count; [`finish`](Self::finish) returns the mean.
#[derive(Debug, Default)]
pub struct GradientMean {
    sum: GradientsParams,
    count: usize,
}

impl GradientMean {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of micro-batches accumulated since the last `finish`.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds one micro-batch's gradients (parameters of `module` only).
    pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        grads: GradientsParams,
    ) {
        let mut grads = grads;
        let mut adder = Adder::<B> {
            sum: &mut self.sum,
            new: &mut grads,
            _b: std::marker::PhantomData,
        };
        module.visit(&mut adder);
        self.count += 1;
    }

    /// The mean gradient over the accumulated micro-batches; resets the accumulator.
    /// Returns empty gradients when nothing was accumulated.
    pub fn finish<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
    ) -> GradientsParams {
        let mut out = GradientsParams::new();
        let count = std::mem::take(&mut self.count);
        let mut sum = std::mem::take(&mut self.sum);
        if count > 0 {
            let mut divider = Divider::<B> {
                sum: &mut sum,
                out: &mut out,
                count: count as f64,
                _b: std::marker::PhantomData,
            };
            module.visit(&mut divider);
        }
        out
    }
}

struct Adder<'a, B: AutodiffBackend> {
    sum: &'a mut GradientsParams,
    new: &'a mut GradientsParams,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Adder<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(g) = self.new.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let total = match self.sum.remove::<B::InnerBackend, D>(param.id) {
            Some(s) => s + g,
            None => g,
        };
        self.sum.register::<B::InnerBackend, D>(param.id, total);
    }
}

struct Divider<'a, B: AutodiffBackend> {
    sum: &'a mut GradientsParams,
    out: &'a mut GradientsParams,
    count: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Divider<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(s) = self.sum.remove::<B::InnerBackend, D>(param.id) {
            self.out
                .register::<B::InnerBackend, D>(param.id, s.div_scalar(self.count));
        }
    }
}
