//! [`FrozenLinearBackend`] for [`Autodiff`]: the frozen matmul as one tape node. It saves the
//! weight's handle only (device codes, or the host copy of a streamed weight), never a decoded
//! tensor; the backward decodes again for `dX = dY · W`. The weight gets no gradient.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::frozen::{FrozenLinearBackend, FrozenWeight};

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn prim<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

#[derive(Debug)]
struct FrozenLinearNode;

impl<B: FrozenLinearBackend> Backward<B, 1> for FrozenLinearNode {
    type State = FrozenWeight<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy: Tensor<B, 2> = tensor(grads.consume::<B>(&ops.node));
        if let Some(parent) = &ops.parents[0] {
            let dx = B::frozen_linear_backward(dy, &ops.state);
            grads.register::<B>(parent.id, prim(dx));
        }
    }
}

impl<B: FrozenLinearBackend, C: CheckpointStrategy> FrozenLinearBackend for Autodiff<B, C> {
    fn frozen_linear(x: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        let inner: FrozenWeight<B> = weight.valid();
        let x = prim(x);
        let y = B::frozen_linear(tensor(x.primitive), &inner);
        let out = match FrozenLinearNode
            .prepare::<C>([x.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(inner, prim(y)),
            OpsKind::UnTracked(prep) => prep.finish(prim(y)),
        };
        tensor(out)
    }

    fn frozen_linear_backward(dy: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        // Only reached by a double backward, which nothing in fluxlora takes; stays correct
        // (and differentiable) through the composed ops.
        let w = weight.dequantize(&dy.device());
        dy.matmul(w)
    }
}
