//! The glue shared by the per-tensor algorithms (AdamW, AdamW8bit, Adafactor): one parameter's
//! update needs only that parameter, so both [`OptimizerRule::step`](crate::OptimizerRule::step)
//! (every slot of a step, with group settings) and Burn's per-tensor `SimpleOptimizer` (one
//! tensor, no groups) reduce to the same flat update, [`TensorRule::update`].
//!
//! Prodigy is not per-tensor (its step size `d` sums over every parameter) and does not use this.

use burn::tensor::{backend::Backend, Tensor};

use crate::rule::ParamSlot;

/// One flattened parameter's update, as a [`TensorRule`] receives it.
pub struct TensorUpdate<'a, B: Backend, S> {
    /// The step's learning rate.
    pub lr: f64,
    /// The group's learning-rate multiplier (1 outside [`LoraOptimizer`](crate::LoraOptimizer)).
    pub lr_scale: f64,
    /// The weight decay: the group's, else the rule's own.
    pub weight_decay: f64,
    /// The parameter's original shape.
    pub shape: &'a [usize],
    /// The parameter values, flattened.
    pub param: Tensor<B, 1>,
    /// The gradient, flattened.
    pub grad: Tensor<B, 1>,
    /// State from the previous step (`None` on the first).
    pub state: Option<S>,
}

/// A per-tensor optimizer algorithm: the update of one flattened parameter. Implemented by
/// [`per_tensor_rule!`].
pub(crate) trait TensorRule<B: Backend> {
    /// Per-parameter state.
    type State;

    /// The configured weight decay, used where a group sets none.
    fn weight_decay(&self) -> f64;

    /// Updates one flattened parameter; returns the new values and state.
    fn update(&self, update: TensorUpdate<'_, B, Self::State>) -> (Tensor<B, 1>, Self::State);
}

/// [`OptimizerRule::step`](crate::OptimizerRule::step) of a per-tensor rule: updates each slot
/// with its group's learning-rate multiplier and weight decay (the rule's own when unset).
pub(crate) fn step_slots<B: Backend, R: TensorRule<B>>(
    rule: &R,
    lr: f64,
    slots: &mut [ParamSlot<B, R::State>],
) {
    for slot in slots.iter_mut() {
        let (p, s) = rule.update(TensorUpdate {
            lr,
            lr_scale: slot.lr_scale,
            weight_decay: slot.weight_decay.unwrap_or(rule.weight_decay()),
            shape: &slot.shape,
            param: slot.param.clone(),
            grad: slot.grad.clone(),
            state: slot.state.take(),
        });
        slot.param = p;
        slot.state = Some(s);
    }
}

/// Burn's `SimpleOptimizer::step` of a per-tensor rule: flattens `tensor` and `grad`, updates
/// them with the rule's own weight decay and no group multiplier, and restores the shape.
pub(crate) fn step_tensor<B: Backend, R: TensorRule<B>, const D: usize>(
    rule: &R,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<R::State>,
) -> (Tensor<B, D>, Option<R::State>) {
    let shape = tensor.shape();
    let dims: Vec<usize> = shape.iter().copied().collect();
    let n = shape.num_elements();
    let (p, s) = rule.update(TensorUpdate {
        lr,
        lr_scale: 1.0,
        weight_decay: rule.weight_decay(),
        shape: &dims,
        param: tensor.reshape([n]),
        grad: grad.reshape([n]),
        state,
    });
    (p.reshape(shape), Some(s))
}

/// Implements [`OptimizerRule`](crate::OptimizerRule) (through [`TensorRule`]) and Burn's
/// `SimpleOptimizer` for a per-tensor rule with a `config.weight_decay` and state `$state<B>`:
/// - `name`: the state files' optimizer name;
/// - `describe: |rule| …`: the configuration as stored in state-file metadata;
/// - `validate: |rule, shape, state| …` (optional): checks a loaded state against the rule;
/// - the update of one flattened parameter is the rule's `update_tensor(TensorUpdate)`.
///
/// With `SimpleOptimizer`, `OptimizerAdaptor::from(rule)` works too (without groups, global
/// clipping or path-keyed state).
macro_rules! per_tensor_rule {
    (
        rule: $rule:ident,
        state: $state:ident,
        name: $name:literal,
        describe: |$d:ident| $describe:expr
        $(, validate: |$v:ident, $shape:ident, $st:ident| $validate:expr)?
        $(,)?
    ) => {
        impl<B: burn::tensor::backend::Backend> $crate::OptimizerRule<B> for $rule {
            type State = $state<B>;

            fn name(&self) -> &'static str {
                $name
            }

            fn describe(&self) -> String {
                let $d = self;
                $describe
            }

            $(
                fn validate_state(
                    &self,
                    $shape: &[usize],
                    $st: &Self::State,
                ) -> Result<(), $crate::OptimError> {
                    let $v = self;
                    $validate
                }
            )?

            fn step(&mut self, lr: f64, slots: &mut [$crate::ParamSlot<B, Self::State>]) {
                $crate::per_tensor::step_slots(self, lr, slots);
            }
        }

        impl<B: burn::tensor::backend::Backend> $crate::per_tensor::TensorRule<B> for $rule {
            type State = $state<B>;

            fn weight_decay(&self) -> f64 {
                self.config.weight_decay
            }

            fn update(
                &self,
                update: $crate::per_tensor::TensorUpdate<'_, B, $state<B>>,
            ) -> (burn::tensor::Tensor<B, 1>, $state<B>) {
                self.update_tensor(update)
            }
        }

        /// Plugs the rule into Burn's `OptimizerAdaptor` (per-tensor; no groups or global
        /// clipping there).
        impl<B: burn::tensor::backend::Backend> burn::optim::SimpleOptimizer<B> for $rule {
            type State<const D: usize> = $state<B>;

            fn step<const D: usize>(
                &self,
                lr: f64,
                tensor: burn::tensor::Tensor<B, D>,
                grad: burn::tensor::Tensor<B, D>,
                state: Option<Self::State<D>>,
            ) -> (burn::tensor::Tensor<B, D>, Option<Self::State<D>>) {
                $crate::per_tensor::step_tensor(self, lr, tensor, grad, state)
            }

            fn to_device<const D: usize>(
                state: Self::State<D>,
                device: &B::Device,
            ) -> Self::State<D> {
                $crate::ParamState::to_device(state, device)
            }
        }
    };
}
pub(crate) use per_tensor_rule;
