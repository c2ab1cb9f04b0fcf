//! [`FluxBackend`] for [`Autodiff`]: each fused op is one tape node whose backward calls the inner
//! backend's backward method.
//!
//! What each node keeps for its backward (everything else is freed after the forward):
//!
//! | op | saved |
//! |---|---|
//! | modulate | `x`, `scale` |
//! | RMSNorm | `x`, `scale` |
//! | RoPE | the (constant) tables |
//! | to / from heads | nothing |
//! | GELU-tanh | `x` |
//! | gated residual | `gate`, `y` |
//! | attention | `q`, `k`, `v`, output, row log-sum-exp, the (constant) bias |
//!
//! The nodes are compute-bound: a checkpointing strategy keeps their state rather than
//! recomputing their forward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{broadcast_shape, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::fused::{FluxBackend, RopeTables};

/// A primitive as a tensor of its backend.
fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// A tensor's float primitive.
fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Registers `grad` (summed down to `shape` where the forward broadcast) for a tracked parent.
fn register<B: Backend, const D: usize>(
    grads: &mut Gradients,
    parent: Option<NodeId>,
    grad: Tensor<B, D>,
    shape: &Shape,
) {
    if let Some(id) = parent {
        let g = prim(grad);
        let g = if &g.shape() == shape {
            g
        } else {
            broadcast_shape::<B>(g, shape)
        };
        grads.register::<B>(id, g);
    }
}

/// The parents' node ids (`None` for an untracked parent).
fn parent_ids<const N: usize, S>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    std::array::from_fn(|i| ops.parents[i].as_ref().map(|n| n.id))
}

/// Wraps a finished autodiff primitive.
fn out<B: Backend, C: CheckpointStrategy, const D: usize>(
    p: FloatTensor<Autodiff<B, C>>,
) -> Tensor<Autodiff<B, C>, D> {
    tensor(p)
}

/// Finishes `op` with `output`, keeping `state` only when some parent is tracked.
macro_rules! finish {
    ($op:expr, $nodes:expr, $state:expr, $output:expr) => {
        match $op.prepare::<C>($nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish($state, prim($output)),
            OpsKind::UnTracked(prep) => prep.finish(prim($output)),
        }
    };
}

#[derive(Debug)]
struct ModulateBackward;

impl<B: FluxBackend> Backward<B, 3> for ModulateBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, [Shape; 2], f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pshift, pscale] = parent_ids(&ops);
        let dy = tensor(grads.consume::<B>(&ops.node));
        let (x, scale, [shift_shape, scale_shape], eps) = ops.state;
        let [dx, dshift, dscale] = B::modulate_backward(tensor(x), tensor(scale), dy, eps);
        let x_shape = dx.shape();
        register(grads, px, dx, &x_shape);
        register(grads, pshift, dshift, &shift_shape);
        register(grads, pscale, dscale, &scale_shape);
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: FluxBackend> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pscale] = parent_ids(&ops);
        let dy = tensor(grads.consume::<B>(&ops.node));
        let (x, scale, eps) = ops.state;
        let (dx, dscale) = B::rms_norm_backward(tensor(x), tensor(scale), dy, eps);
        let (sx, ss) = (dx.shape(), dscale.shape());
        register(grads, px, dx, &sx);
        register(grads, pscale, dscale, &ss);
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<B: FluxBackend> Backward<B, 1> for RopeBackward {
    type State = RopeTables<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = parent_ids(&ops);
        let dy = tensor(grads.consume::<B>(&ops.node));
        let dx = B::rope(dy, &ops.state, true);
        let s = dx.shape();
        register(grads, px, dx, &s);
    }
}

#[derive(Debug)]
struct ToHeadsBackward;

impl<B: FluxBackend> Backward<B, 1> for ToHeadsBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = parent_ids(&ops);
        let dx = B::from_heads(tensor(grads.consume::<B>(&ops.node)));
        let s = dx.shape();
        register(grads, px, dx, &s);
    }
}

#[derive(Debug)]
struct FromHeadsBackward;

impl<B: FluxBackend> Backward<B, 1> for FromHeadsBackward {
    type State = usize;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = parent_ids(&ops);
        let dx = B::to_heads(tensor(grads.consume::<B>(&ops.node)), ops.state);
        let s = dx.shape();
        register(grads, px, dx, &s);
    }
}

#[derive(Debug)]
struct GeluBackward;

impl<B: FluxBackend> Backward<B, 1> for GeluBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = parent_ids(&ops);
        let dy = tensor(grads.consume::<B>(&ops.node));
        let dx = B::gelu_tanh_backward(tensor(ops.state), dy);
        let s = dx.shape();
        register(grads, px, dx, &s);
    }
}

#[derive(Debug)]
struct GatedResidualBackward;

impl<B: FluxBackend> Backward<B, 3> for GatedResidualBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, Shape);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pgate, py] = parent_ids(&ops);
        let dout: Tensor<B, 3> = tensor(grads.consume::<B>(&ops.node));
        let (gate, y, x_shape) = ops.state;
        let (gate, y): (Tensor<B, 3>, Tensor<B, 3>) = (tensor(gate), tensor(y));
        let (gate_shape, y_shape) = (gate.shape(), y.shape());
        if pgate.is_some() {
            let dgate = (dout.clone() * y).sum_dim(1);
            register(grads, pgate, dgate, &gate_shape);
        }
        if py.is_some() {
            register(grads, py, dout.clone() * gate, &y_shape);
        }
        register(grads, px, dout, &x_shape);
    }
}

/// What the attention node keeps: `q`, `k`, `v`, output, log-sum-exp, bias, scale, block rows.
type AttentionState<B> = ([FloatTensor<B>; 5], Option<FloatTensor<B>>, f64, usize);

#[derive(Debug)]
struct AttentionBackward;

impl<B: FluxBackend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pq, pk, pv] = parent_ids(&ops);
        let dout = tensor(grads.consume::<B>(&ops.node));
        let ([q, k, v, o, lse], bias, scale, rows) = ops.state;
        let bias = bias.map(tensor);
        let [dq, dk, dv] = B::attention_backward(
            tensor(q),
            tensor(k),
            tensor(v),
            tensor(o),
            tensor(lse),
            dout,
            bias,
            scale,
            rows,
        );
        let (sq, sk, sv) = (dq.shape(), dk.shape(), dv.shape());
        register(grads, pq, dq, &sq);
        register(grads, pk, dk, &sk);
        register(grads, pv, dv, &sv);
    }
}

impl<B: FluxBackend, C: CheckpointStrategy> FluxBackend for Autodiff<B, C> {
    fn modulate(
        x: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        let (x, shift, scale) = (prim(x), prim(shift), prim(scale));
        let shapes = [shift.primitive.shape(), scale.primitive.shape()];
        let output = B::modulate(
            tensor(x.primitive.clone()),
            tensor(shift.primitive),
            tensor(scale.primitive.clone()),
            eps,
        );
        let nodes = [x.node, shift.node, scale.node];
        let state = (x.primitive, scale.primitive, shapes, eps);
        out(finish!(ModulateBackward, nodes, state, output))
    }

    fn rms_norm(x: Tensor<Self, 4>, scale: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 4> {
        let (x, scale) = (prim(x), prim(scale));
        let output = B::rms_norm(
            tensor(x.primitive.clone()),
            tensor(scale.primitive.clone()),
            eps,
        );
        let state = (x.primitive, scale.primitive, eps);
        out(finish!(
            RmsNormBackward,
            [x.node, scale.node],
            state,
            output
        ))
    }

    fn rope(x: Tensor<Self, 4>, tables: &RopeTables<Self>, inverse: bool) -> Tensor<Self, 4> {
        let inner = RopeTables {
            cos: tables.cos.clone().inner(),
            sin: tables.sin.clone().inner(),
            cos_full: tables.cos_full.clone().inner(),
            sin_full: tables.sin_full.clone().inner(),
            swap: tables.swap.clone().inner(),
        };
        let x = prim(x);
        let output = B::rope(tensor(x.primitive), &inner, inverse);
        // The backward of a rotation is the opposite rotation: keep tables for that one.
        let state = if inverse {
            RopeTables {
                sin: inner.sin.clone().neg(),
                sin_full: inner.sin_full.clone().neg(),
                ..inner
            }
        } else {
            inner
        };
        out(finish!(RopeBackward, [x.node], state, output))
    }

    fn to_heads(x: Tensor<Self, 3>, heads: usize) -> Tensor<Self, 4> {
        let x = prim(x);
        let output = B::to_heads(tensor(x.primitive), heads);
        out(finish!(ToHeadsBackward, [x.node], (), output))
    }

    fn from_heads(x: Tensor<Self, 4>) -> Tensor<Self, 3> {
        let x = prim(x);
        let heads = x.primitive.shape()[1];
        let output = B::from_heads(tensor(x.primitive));
        out(finish!(FromHeadsBackward, [x.node], heads, output))
    }

    fn gelu_tanh(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        let x = prim(x);
        let output = B::gelu_tanh(tensor(x.primitive.clone()));
        out(finish!(GeluBackward, [x.node], x.primitive, output))
    }

    fn gated_residual(
        x: Tensor<Self, 3>,
        gate: Tensor<Self, 3>,
        y: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        let (x, gate, y) = (prim(x), prim(gate), prim(y));
        let x_shape = x.primitive.shape();
        let output = B::gated_residual(
            tensor(x.primitive),
            tensor(gate.primitive.clone()),
            tensor(y.primitive.clone()),
        );
        let state = (gate.primitive, y.primitive, x_shape);
        out(finish!(
            GatedResidualBackward,
            [x.node, gate.node, y.node],
            state,
            output
        ))
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
        block_rows: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        // The bias is a constant (a padding mask): it gets no gradient.
        let bias = bias.map(|b| b.inner());
        let (q, k, v) = (prim(q), prim(k), prim(v));
        let (o, lse) = B::attention_forward(
            tensor(q.primitive.clone()),
            tensor(k.primitive.clone()),
            tensor(v.primitive.clone()),
            bias.clone(),
            scale,
            block_rows,
        );
        let state = (
            [
                q.primitive,
                k.primitive,
                v.primitive,
                prim(o.clone()),
                prim(lse.clone()),
            ],
            bias.map(prim),
            scale,
            block_rows,
        );
        let nodes = [q.node, k.node, v.node];
        let output = out(finish!(AttentionBackward, nodes, state, o));
        (output, Tensor::from_inner(lse))
    }
}
