//! LoRA on the transformer: every linear listed under its BFL module path, adapters added where
//! a [`TargetSelector`] says so, base freezing, merge and unmerge.

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_lora::{LoraLinear, TargetSelector};

use crate::error::Result;
use crate::transformer::double_block::{DoubleStreamBlock, Mlp, SelfAttention};
use crate::transformer::embed::MlpEmbedder;
use crate::transformer::layers::QkNorm;
use crate::transformer::model::Flux;

fn push_mlp<'a, B: Backend>(v: &mut Vec<(String, &'a mut LoraLinear<B>)>, p: &str, m: &'a mut MlpEmbedder<B>) {
    v.push((format!("{p}.in_layer"), &mut m.in_layer));
    v.push((format!("{p}.out_layer"), &mut m.out_layer));
}

fn push_attn<'a, B: Backend>(v: &mut Vec<(String, &'a mut LoraLinear<B>)>, p: &str, a: &'a mut SelfAttention<B>) {
    v.push((format!("{p}.qkv"), &mut a.qkv));
    v.push((format!("{p}.proj"), &mut a.proj));
}

fn push_ff<'a, B: Backend>(v: &mut Vec<(String, &'a mut LoraLinear<B>)>, p: &str, m: &'a mut Mlp<B>) {
    v.push((format!("{p}.0"), &mut m.layer0));
    v.push((format!("{p}.2"), &mut m.layer2));
}

fn double_linears<'a, B: Backend>(v: &mut Vec<(String, &'a mut LoraLinear<B>)>, i: usize, b: &'a mut DoubleStreamBlock<B>) {
    let p = format!("double_blocks.{i}");
    v.push((format!("{p}.img_mod.lin"), &mut b.img_mod.lin));
    push_attn(v, &format!("{p}.img_attn"), &mut b.img_attn);
    push_ff(v, &format!("{p}.img_mlp"), &mut b.img_mlp);
    v.push((format!("{p}.txt_mod.lin"), &mut b.txt_mod.lin));
    push_attn(v, &format!("{p}.txt_attn"), &mut b.txt_attn);
    push_ff(v, &format!("{p}.txt_mlp"), &mut b.txt_mlp);
}

fn qk_scales<'a, B: Backend>(v: &mut Vec<&'a mut Param<Tensor<B, 1>>>, n: &'a mut QkNorm<B>) {
    v.push(&mut n.query_norm.scale);
    v.push(&mut n.key_norm.scale);
}

impl<B: Backend> Flux<B> {
    /// Every linear with its BFL module path (`img_in`, `double_blocks.0.img_attn.qkv`,
    /// `single_blocks.3.linear1`, `final_layer.adaLN_modulation.1`, …), in checkpoint order.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let mut v = Vec::new();
        v.push(("img_in".to_string(), &mut self.img_in));
        push_mlp(&mut v, "time_in", &mut self.time_in);
        push_mlp(&mut v, "vector_in", &mut self.vector_in);
        if let Some(g) = self.guidance_in.as_mut() {
            push_mlp(&mut v, "guidance_in", g);
        }
        v.push(("txt_in".to_string(), &mut self.txt_in));
        for (i, b) in self.double_blocks.iter_mut().enumerate() {
            double_linears(&mut v, i, b);
        }
        for (i, b) in self.single_blocks.iter_mut().enumerate() {
            let p = format!("single_blocks.{i}");
            v.push((format!("{p}.linear1"), &mut b.linear1));
            v.push((format!("{p}.linear2"), &mut b.linear2));
            v.push((format!("{p}.modulation.lin"), &mut b.modulation.lin));
        }
        v.push(("final_layer.linear".to_string(), &mut self.final_layer.linear));
        v.push(("final_layer.adaLN_modulation.1".to_string(), &mut self.final_layer.ada_ln_modulation));
        v
    }

    /// BFL module paths of every linear, in the order of [`Flux::linears_mut`].
    pub fn linear_paths(&mut self) -> Vec<String> {
        self.linears_mut().into_iter().map(|(p, _)| p).collect()
    }

    fn norm_scales_mut(&mut self) -> Vec<&mut Param<Tensor<B, 1>>> {
        let mut v = Vec::new();
        for b in &mut self.double_blocks {
            qk_scales(&mut v, &mut b.img_attn.norm);
            qk_scales(&mut v, &mut b.txt_attn.norm);
        }
        for b in &mut self.single_blocks {
            qk_scales(&mut v, &mut b.norm);
        }
        v
    }

    /// Freezes every base parameter (linear weights and biases, QK-norm scales): they get no
    /// gradient and no optimizer state. Adapters keep training.
    pub fn freeze_base(&mut self) {
        for (_, lin) in self.linears_mut() {
            *lin = lin.clone().freeze_base();
        }
        for s in self.norm_scales_mut() {
            *s = s.clone().set_require_grad(false);
        }
    }

    /// Freezes the base and adds fresh LoRA adapters to every linear `selector` chooses.
    /// Returns the BFL paths that received adapters.
    pub fn apply_lora(&mut self, selector: &TargetSelector, device: &B::Device) -> Result<Vec<String>> {
        self.freeze_base();
        let mut chosen = Vec::new();
        for (path, lin) in self.linears_mut() {
            if let Some(target) = selector.select(&path, lin.d_in(), lin.d_out()) {
                lin.add_target(&path, &target, device)?;
                chosen.push(path);
            }
        }
        Ok(chosen)
    }

    /// Folds every adapter into its base weight (for fast sampling or export of a merged model).
    pub fn merge_lora(&mut self) {
        for (_, lin) in self.linears_mut() {
            lin.merge();
        }
    }

    /// Undoes [`Flux::merge_lora`].
    pub fn unmerge_lora(&mut self) {
        for (_, lin) in self.linears_mut() {
            lin.unmerge();
        }
    }

    /// Number of LoRA parameters (sum over adapters of `d_in·r + r·rows`).
    pub fn lora_param_count(&mut self) -> usize {
        self.linears_mut()
            .into_iter()
            .flat_map(|(_, l)| l.adapters.iter().map(|a| a.lora_a.shape().num_elements() + a.lora_b.shape().num_elements()))
            .sum()
    }
}
