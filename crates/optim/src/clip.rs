//! Gradient clipping by the *global* norm over all trainable parameters, as
//! `torch.nn.utils.clip_grad_norm_` computes it: per-tensor L2 norms, the L2 norm of those,
//! `coef = max_norm / (total + 1e-6)` clamped to ≤ 1, every gradient multiplied by `coef`.
//! Runs on device without a host sync; the total norm stays a one-element tensor.

use burn::tensor::{backend::Backend, Tensor};

/// Scales `grads` in place so their joint L2 norm is at most `max_norm`; returns the norm
/// before clipping (one-element tensor), or `None` when there are no gradients.
pub fn clip_global_norm<B: Backend>(
    grads: &mut [Tensor<B, 1>],
    max_norm: f64,
) -> Option<Tensor<B, 1>> {
    let total = global_norm(grads)?;
    let coef = total
        .clone()
        .add_scalar(1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    for g in grads.iter_mut() {
        *g = g.clone() * coef.clone();
    }
    Some(total)
}

/// Joint L2 norm of `grads` (the norm of the per-tensor norms), without modifying them.
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> Option<Tensor<B, 1>> {
    let first = grads.first()?;
    let device = first.device();
    let norms: Vec<Tensor<B, 1>> = grads
        .iter()
        .map(|g| g.clone().square().sum().sqrt().to_device(&device))
        .collect();
    Some(Tensor::cat(norms, 0).square().sum().sqrt())
}
