//! One training forward + backward, optionally with block-level gradient checkpointing.
//!
//! Burn 0.21's own checkpointing is op-level (matmul outputs stay cached), so a Flux step at
//! 1024² would keep every block's attention scores alive. With [`Checkpointing::Blocks`] the
//! forward runs on the inner (non-autodiff) backend and keeps only each block's *inputs*; the
//! backward then walks the blocks in reverse, re-running one block at a time under autodiff with
//! its saved inputs as leaves and back-propagating the surrogate `Σ out·∂L/∂out`, which
//! yields the block's parameter gradients and `∂L/∂inputs` for the block before it. Peak
//! activation memory is one block's graph plus one `[B, L, hidden]` tensor per block.
//!
//! Caveat: LoRA dropouts are only active under autodiff, so with dropout > 0 the saved inputs
//! come from a dropout-free forward while the recomputation samples its own masks.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, Tensor};

use crate::error::Result;
use crate::fused::FluxAutodiffBackend;
use crate::transformer::model::{Embedded, Flux, FluxInputs, ImageCondSeq};

/// Whether block activations are kept (off) or recomputed in backward (blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    /// Plain autodiff: fastest, most memory.
    #[default]
    Off,
    /// Recompute each block's forward during backward.
    Blocks,
}

/// The outcome of [`forward_backward`].
#[derive(Debug)]
pub struct StepGradients<B: AutodiffBackend> {
    /// The loss value (detached, inner backend), shape `[1]`.
    pub loss: Tensor<B::InnerBackend, 1>,
    /// Gradients of every trainable parameter that received one.
    pub grads: GradientsParams,
}

/// Moves the gradients of one module's parameters from `grads` into `out`.
struct CollectGrads<'a, B: AutodiffBackend> {
    grads: &'a mut B::Gradients,
    out: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad_remove(self.grads) {
            self.out.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

/// Whether any parameter of `module` requires a gradient.
fn trains<B: AutodiffBackend, M: Module<B>>(module: &M) -> bool {
    struct Any(bool);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Any {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 |= param.val().is_require_grad();
        }
    }
    let mut any = Any(false);
    module.visit(&mut any);
    any.0
}

fn collect<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    mut grads: B::Gradients,
    out: &mut GradientsParams,
) {
    module.visit(&mut CollectGrads::<B> {
        grads: &mut grads,
        out,
    });
}

fn leaf<B: AutodiffBackend, const D: usize>(t: &Tensor<B::InnerBackend, D>) -> Tensor<B, D> {
    Tensor::from_inner(t.clone()).require_grad()
}

fn dot<B: AutodiffBackend, const D: usize>(
    out: Tensor<B, D>,
    g: &Tensor<B::InnerBackend, D>,
) -> Tensor<B, 1> {
    (out * Tensor::from_inner(g.clone())).sum()
}

fn add_grad<B: AutodiffBackend, const D: usize>(
    acc: Option<Tensor<B::InnerBackend, D>>,
    t: &Tensor<B, D>,
    grads: &B::Gradients,
) -> Option<Tensor<B::InnerBackend, D>> {
    match (acc, t.grad(grads)) {
        (Some(a), Some(g)) => Some(a + g),
        (a, g) => a.or(g),
    }
}

/// Runs the model on `inputs`, applies `loss_fn` to its output `[B, L_img, out_channels]`, and
/// back-propagates. Gradients reach only parameters that require them (LoRA adapters when the
/// base is frozen).
pub fn forward_backward<B: FluxAutodiffBackend>(
    model: &Flux<B>,
    inputs: &FluxInputs<B>,
    checkpointing: Checkpointing,
    loss_fn: impl Fn(Tensor<B, 3>) -> Tensor<B, 1>,
) -> Result<StepGradients<B>> {
    model.check_inputs(inputs)?;
    match checkpointing {
        Checkpointing::Off => {
            let loss = loss_fn(model.forward(inputs)?);
            let grads = loss.backward();
            let mut out = GradientsParams::new();
            collect(model, grads, &mut out);
            Ok(StepGradients {
                loss: loss.inner(),
                grads: out,
            })
        }
        Checkpointing::Blocks => recompute_blocks(model, inputs, loss_fn),
    }
}

fn inner_inputs<B: AutodiffBackend>(x: &FluxInputs<B>) -> FluxInputs<B::InnerBackend> {
    FluxInputs {
        img: x.img.clone().inner(),
        img_ids: x.img_ids.clone().inner(),
        txt: x.txt.clone().inner(),
        txt_ids: x.txt_ids.clone().inner(),
        timesteps: x.timesteps.clone().inner(),
        y: x.y.clone().inner(),
        guidance: x.guidance.clone().map(Tensor::inner),
        txt_mask: x.txt_mask.clone().map(Tensor::inner),
        img_cond_seq: x.img_cond_seq.clone().map(|c| ImageCondSeq {
            img: c.img.inner(),
            ids: c.ids.inner(),
        }),
    }
}

fn recompute_blocks<B: FluxAutodiffBackend>(
    model: &Flux<B>,
    inputs: &FluxInputs<B>,
    loss_fn: impl Fn(Tensor<B, 3>) -> Tensor<B, 1>,
) -> Result<StepGradients<B>> {
    // Kontext: the control tokens run through every block after the target's; the head reads
    // the target tokens only.
    let l_target = inputs.img.dims()[1];
    let inputs = &inputs.joined();
    // 1. Forward without a graph, keeping each block's inputs.
    let valid = model.valid();
    let (e, rope_inner) = valid.embed(&inner_inputs(inputs));
    let vec = e.vec.clone();
    let (mut img, mut txt) = (e.img, e.txt);
    let mut double_in = Vec::with_capacity(valid.double_blocks.len());
    for block in &valid.double_blocks {
        double_in.push((img.clone(), txt.clone()));
        (img, txt) = block.forward(img, txt, vec.clone(), &rope_inner);
    }
    let (l_txt, l_img) = (txt.dims()[1], img.dims()[1]);
    let mut x = Tensor::cat(vec![txt, img], 1);
    let mut single_in = Vec::with_capacity(valid.single_blocks.len());
    for block in &valid.single_blocks {
        single_in.push(x.clone());
        x = block.forward(x, vec.clone(), &rope_inner);
    }
    drop(valid);
    drop(rope_inner);

    // RoPE tables and the key mask are constants: build them once on the autodiff backend.
    let rope = model.rope(inputs);
    let mut out = GradientsParams::new();

    // 2. Head: final layer and loss.
    let x_leaf = leaf::<B, 3>(&x);
    let vec_leaf = leaf::<B, 2>(&vec);
    let loss = loss_fn(
        model
            .final_layer
            .forward(x_leaf.clone().narrow(1, l_txt, l_target), vec_leaf.clone()),
    );
    let grads = loss.backward();
    let mut g_x = x_leaf.grad(&grads);
    let mut g_vec = add_grad(None, &vec_leaf, &grads);
    collect(&model.final_layer, grads, &mut out);

    // 3. Single blocks in reverse.
    for (block, saved) in model.single_blocks.iter().zip(&single_in).rev() {
        let (Some(g), x_in, v_in) = (g_x.take(), leaf::<B, 3>(saved), leaf::<B, 2>(&vec)) else {
            break;
        };
        let grads = dot(block.forward(x_in.clone(), v_in.clone(), &rope), &g).backward();
        g_x = x_in.grad(&grads);
        g_vec = add_grad(g_vec, &v_in, &grads);
        collect(block, grads, &mut out);
    }
    let (mut g_txt, mut g_img) = match g_x {
        Some(g) => (
            Some(g.clone().narrow(1, 0, l_txt)),
            Some(g.narrow(1, l_txt, l_img)),
        ),
        None => (None, None),
    };

    // 4. Double blocks in reverse.
    for (block, (img_s, txt_s)) in model.double_blocks.iter().zip(&double_in).rev() {
        let (img_in, txt_in, v_in) = (leaf::<B, 3>(img_s), leaf::<B, 3>(txt_s), leaf::<B, 2>(&vec));
        let (img_o, txt_o) = block.forward(img_in.clone(), txt_in.clone(), v_in.clone(), &rope);
        let surrogate = match (&g_img, &g_txt) {
            (Some(gi), Some(gt)) => dot(img_o, gi) + dot(txt_o, gt),
            (Some(gi), None) => dot(img_o, gi),
            (None, Some(gt)) => dot(txt_o, gt),
            (None, None) => break,
        };
        let grads = surrogate.backward();
        g_img = img_in.grad(&grads);
        g_txt = txt_in.grad(&grads);
        g_vec = add_grad(g_vec, &v_in, &grads);
        collect(block, grads, &mut out);
    }

    // 5. Embedders (only when one of them trains).
    let embedders_train = trains(&model.img_in)
        || trains(&model.txt_in)
        || trains(&model.time_in)
        || trains(&model.vector_in)
        || model.guidance_in.as_ref().is_some_and(trains);
    if embedders_train {
        let (e, _) = model.embed(inputs);
        let Embedded { img, txt, vec } = e;
        let mut terms = Vec::new();
        if let Some(g) = &g_img {
            terms.push(dot(img, g));
        }
        if let Some(g) = &g_txt {
            terms.push(dot(txt, g));
        }
        if let Some(g) = &g_vec {
            terms.push(dot(vec, g));
        }
        if let Some(first) = terms.pop() {
            let surrogate = terms.into_iter().fold(first, |a, b| a + b);
            collect(model, surrogate.backward(), &mut out);
        }
    }
    Ok(StepGradients {
        loss: loss.inner(),
        grads: out,
    })
}
