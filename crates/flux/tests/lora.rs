//! LoRA on the transformer: target coverage, freezing (gradients reach only adapters),
//! merge/unmerge, block-level gradient checkpointing and an AdamW step.

use std::collections::BTreeSet;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Distribution, ElementConversion, Tensor};
use fluxlora_flux::{forward_backward, Checkpointing, Flux, FluxConfig, FluxInputs};
use fluxlora_lora::{Preset, TargetSelector};

type B = NdArray;
type AB = Autodiff<NdArray>;

pub(crate) fn tiny() -> FluxConfig {
    FluxConfig {
        in_channels: 8,
        out_channels: 8,
        vec_in_dim: 6,
        context_in_dim: 5,
        hidden_size: 16,
        mlp_hidden_dim: 64,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 2,
        axes_dim: vec![2, 2, 4],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

pub(crate) fn inputs<Bk: Backend>(
    c: &FluxConfig,
    batch: usize,
    dev: &Bk::Device,
) -> FluxInputs<Bk> {
    let (h, w, l_txt) = (2, 3, 4);
    let n = Distribution::Normal(0.0, 1.0);
    FluxInputs {
        txt_mask: None,
        img_cond_seq: None,
        img: Tensor::random([batch, h * w, c.in_channels], n, dev),
        img_ids: fluxlora_flux::latents::img_ids(batch, h, w, dev),
        txt: Tensor::random([batch, l_txt, c.context_in_dim], n, dev),
        txt_ids: fluxlora_flux::latents::txt_ids(batch, l_txt, dev),
        timesteps: Tensor::random([batch], Distribution::Uniform(0.0, 1.0), dev),
        y: Tensor::random([batch, c.vec_in_dim], n, dev),
        guidance: Some(Tensor::full([batch], 3.5, dev)),
    }
}

/// Gives every adapter a random B so the adapters change the output and A gets gradients.
fn randomize_lora_b<Bk: Backend>(model: &mut Flux<Bk>) {
    for (_, lin) in model.linears_mut() {
        for a in &mut lin.adapters {
            let dims = a.lora_b.dims();
            let id = a.lora_b.id;
            let v = Tensor::random(dims, Distribution::Normal(0.0, 0.1), &a.lora_b.device())
                .require_grad();
            a.lora_b = Param::initialized(id, v);
        }
    }
}

fn max_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem::<f32>()
}

#[derive(Default)]
struct Ids {
    trainable: BTreeSet<ParamId>,
    frozen: BTreeSet<ParamId>,
}

impl<Bk: Backend> ModuleVisitor<Bk> for Ids {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
        if p.val().is_require_grad() {
            self.trainable.insert(p.id);
        } else {
            self.frozen.insert(p.id);
        }
    }
}

fn ids<Bk: Backend>(m: &Flux<Bk>) -> Ids {
    let mut v = Ids::default();
    m.visit(&mut v);
    v
}

fn lora_ids<Bk: Backend>(m: &mut Flux<Bk>) -> BTreeSet<ParamId> {
    m.linears_mut()
        .into_iter()
        .flat_map(|(_, l)| {
            l.adapters
                .iter()
                .flat_map(|a| [a.lora_a.id, a.lora_b.id])
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn linear_paths_are_the_bfl_module_list() {
    let c = tiny();
    let mut m = Flux::<B>::init(&c, &Default::default()).unwrap();
    let ours: BTreeSet<String> = m.linear_paths().into_iter().collect();
    let io: BTreeSet<String> = fluxlora_io::flux_module_paths(c.depth, c.depth_single_blocks, true)
        .into_iter()
        .collect();
    assert_eq!(ours, io);
}

#[test]
fn kohya_preset_wraps_every_block_linear_and_starts_as_identity() {
    let c = tiny();
    let dev = Default::default();
    let mut m = Flux::<B>::init(&c, &dev).unwrap();
    let x = inputs::<B>(&c, 1, &dev);
    let before = m.forward(&x).unwrap();
    let chosen = m
        .apply_lora(&TargetSelector::new(Preset::Kohya, 4, 4.0), &dev)
        .unwrap();
    let blocks: BTreeSet<String> =
        fluxlora_io::flux_block_module_paths(c.depth, c.depth_single_blocks)
            .into_iter()
            .collect();
    assert_eq!(chosen.into_iter().collect::<BTreeSet<_>>(), blocks);
    // LoRA B starts at zero, so the output is unchanged.
    assert!(max_diff(before, m.forward(&x).unwrap()) < 1e-6);
    // rank·(d_in + d_out) per module, summed.
    let expect: usize = m
        .linears_mut()
        .into_iter()
        .filter(|(p, _)| blocks.contains(p))
        .map(|(_, l)| 4 * (l.d_in() + l.d_out()))
        .sum();
    assert_eq!(m.lora_param_count(), expect);
}

#[test]
fn gradients_reach_only_lora_parameters_and_adamw_leaves_the_base_alone() {
    let c = tiny();
    let dev = Default::default();
    let mut m = Flux::<AB>::init(&c, &dev).unwrap();
    m.apply_lora(&TargetSelector::new(Preset::AiToolkit, 2, 2.0), &dev)
        .unwrap();
    randomize_lora_b(&mut m);
    let lora = lora_ids(&mut m);
    let id_sets = ids(&m);
    assert_eq!(id_sets.trainable, lora, "exactly the adapters train");
    let x = inputs::<AB>(&c, 2, &dev);
    let target = Tensor::random([2, 6, c.out_channels], Distribution::Normal(0.0, 1.0), &dev);
    let step = forward_backward(&m, &x, Checkpointing::Off, |out| {
        (out - target.clone()).powi_scalar(2).mean()
    })
    .unwrap();
    assert_eq!(step.grads.len(), lora.len());
    for id in &id_sets.frozen {
        assert!(step.grads.get::<B, 2>(*id).is_none() && step.grads.get::<B, 1>(*id).is_none());
    }
    let base_before: Tensor<B, 2> = m.double_blocks[0].img_attn.qkv.base_weight().inner();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init::<AB, Flux<AB>>();
    let m2 = optim.step(1e-3, m, step.grads);
    let base_after: Tensor<B, 2> = m2.double_blocks[0].img_attn.qkv.base_weight().inner();
    assert_eq!(base_before.into_data(), base_after.into_data());
}

#[test]
fn merge_matches_the_adapter_forward_and_unmerge_restores_the_base() {
    let c = tiny();
    let dev = Default::default();
    let mut m = Flux::<B>::init(&c, &dev).unwrap();
    m.apply_lora(&TargetSelector::new(Preset::Kohya, 3, 6.0), &dev)
        .unwrap();
    randomize_lora_b(&mut m);
    let x = inputs::<B>(&c, 1, &dev);
    let w0 = m.single_blocks[1].linear1.base_weight();
    let with_adapters = m.forward(&x).unwrap();
    m.merge_lora();
    let merged = m.forward(&x).unwrap();
    assert!(max_diff(with_adapters.clone(), merged) < 1e-4);
    m.unmerge_lora();
    assert!(max_diff(w0, m.single_blocks[1].linear1.base_weight()) < 1e-6);
    assert!(max_diff(with_adapters, m.forward(&x).unwrap()) < 1e-5);
}

fn grads_of(
    model: &Flux<AB>,
    step: &GradientsParams,
    ids: &BTreeSet<ParamId>,
) -> Vec<(ParamId, Vec<f32>)> {
    let _ = model;
    ids.iter()
        .map(|id| {
            let g = step
                .get::<B, 2>(*id)
                .map(|t| t.into_data().into_vec::<f32>().unwrap())
                .unwrap_or_default();
            (*id, g)
        })
        .collect()
}

#[test]
fn block_checkpointing_gives_the_same_gradients() {
    for (outer, kontext) in [(true, false), (false, false), (true, true)] {
        checkpointing_matches(outer, kontext);
    }
}

/// With `kontext`, a control image's tokens (a 3×1 grid, another size than the target's 2×3)
/// are appended: they pass through every block and the loss sees the target tokens only.
fn checkpointing_matches(train_outer_layers: bool, kontext: bool) {
    let c = tiny();
    let dev = Default::default();
    let mut m = Flux::<AB>::init(&c, &dev).unwrap();
    let mut sel = TargetSelector::new(Preset::Kohya, 2, 2.0);
    sel.train_embedders = train_outer_layers;
    sel.train_final_layer = train_outer_layers;
    m.apply_lora(&sel, &dev).unwrap();
    randomize_lora_b(&mut m);
    let lora = lora_ids(&mut m);
    let mut x = inputs::<AB>(&c, 2, &dev);
    if kontext {
        x.img_cond_seq = Some(fluxlora_flux::ImageCondSeq {
            img: Tensor::random([2, 3, c.in_channels], Distribution::Normal(0.0, 1.0), &dev),
            ids: fluxlora_flux::latents::control_ids(2, 3, 1, &dev),
        });
    }
    let target = Tensor::random([2, 6, c.out_channels], Distribution::Normal(0.0, 1.0), &dev);
    let loss = |out: Tensor<AB, 3>| (out - target.clone()).powi_scalar(2).mean();
    let plain = forward_backward(&m, &x, Checkpointing::Off, loss).unwrap();
    let ckpt = forward_backward(&m, &x, Checkpointing::Blocks, loss).unwrap();
    assert_eq!(plain.grads.len(), lora.len());
    assert_eq!(ckpt.grads.len(), lora.len());
    let l0: f32 = plain.loss.into_scalar();
    let l1: f32 = ckpt.loss.into_scalar();
    assert!((l0 - l1).abs() < 1e-6);
    let (a, b) = (
        grads_of(&m, &plain.grads, &lora),
        grads_of(&m, &ckpt.grads, &lora),
    );
    let scale = a
        .iter()
        .flat_map(|(_, g)| g.iter())
        .fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for ((id, ga), (_, gb)) in a.iter().zip(&b) {
        assert_eq!(ga.len(), gb.len(), "{id:?}");
        let d = ga
            .iter()
            .zip(gb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d <= 1e-5 * scale.max(1.0), "{id:?}: {d}");
    }
}
