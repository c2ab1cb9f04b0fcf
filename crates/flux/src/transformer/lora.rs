//! LoRA on the transformer: every linear listed under its BFL module path (names from the I/O
//! crate's table, `fluxlora_io::flux_linears`), adapters added where a [`TargetSelector`] says
//! so, base freezing, merge and unmerge.

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_lora::{LoraLinear, TargetSelector};

use crate::error::Result;
use fluxlora_io::flux_linears::{
    double, double_block_path, outer, single, single_block_path, FluxLinear,
};

use crate::transformer::double_block::DoubleStreamBlock;
use crate::transformer::embed::MlpEmbedder;
use crate::transformer::layers::QkNorm;
use crate::transformer::model::Flux;
use crate::transformer::single_block::SingleStreamBlock;

/// `(BFL path, linear)` pairs, in the model's order.
type Linears<'a, B> = Vec<(String, &'a mut LoraLinear<B>)>;

fn double_linears<'a, B: Backend>(
    v: &mut Linears<'a, B>,
    i: usize,
    b: &'a mut DoubleStreamBlock<B>,
) {
    let path = |l: &FluxLinear| double_block_path(i, l);
    v.push((path(&double::IMG_MOD), &mut b.img_mod.lin));
    v.push((path(&double::IMG_QKV), &mut b.img_attn.qkv));
    v.push((path(&double::IMG_PROJ), &mut b.img_attn.proj));
    v.push((path(&double::IMG_MLP_0), &mut b.img_mlp.layer0));
    v.push((path(&double::IMG_MLP_2), &mut b.img_mlp.layer2));
    v.push((path(&double::TXT_MOD), &mut b.txt_mod.lin));
    v.push((path(&double::TXT_QKV), &mut b.txt_attn.qkv));
    v.push((path(&double::TXT_PROJ), &mut b.txt_attn.proj));
    v.push((path(&double::TXT_MLP_0), &mut b.txt_mlp.layer0));
    v.push((path(&double::TXT_MLP_2), &mut b.txt_mlp.layer2));
}

fn single_linears<'a, B: Backend>(
    v: &mut Linears<'a, B>,
    i: usize,
    b: &'a mut SingleStreamBlock<B>,
) {
    let path = |l: &FluxLinear| single_block_path(i, l);
    v.push((path(&single::LINEAR1), &mut b.linear1));
    v.push((path(&single::LINEAR2), &mut b.linear2));
    v.push((path(&single::MODULATION), &mut b.modulation.lin));
}

fn embedder_linears<'a, B: Backend>(
    v: &mut Linears<'a, B>,
    [first, second]: [FluxLinear; 2],
    m: &'a mut MlpEmbedder<B>,
) {
    v.push((first.bfl.to_string(), &mut m.in_layer));
    v.push((second.bfl.to_string(), &mut m.out_layer));
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
        v.push((outer::IMG_IN.bfl.to_string(), &mut self.img_in));
        embedder_linears(&mut v, [outer::TIME_IN, outer::TIME_OUT], &mut self.time_in);
        embedder_linears(
            &mut v,
            [outer::VECTOR_IN, outer::VECTOR_OUT],
            &mut self.vector_in,
        );
        if let Some(g) = self.guidance_in.as_mut() {
            embedder_linears(&mut v, [outer::GUIDANCE_IN, outer::GUIDANCE_OUT], g);
        }
        v.push((outer::TXT_IN.bfl.to_string(), &mut self.txt_in));
        for (i, b) in self.double_blocks.iter_mut().enumerate() {
            double_linears(&mut v, i, b);
        }
        for (i, b) in self.single_blocks.iter_mut().enumerate() {
            single_linears(&mut v, i, b);
        }
        v.push((
            outer::FINAL_LINEAR.bfl.to_string(),
            &mut self.final_layer.linear,
        ));
        v.push((
            outer::FINAL_MODULATION.bfl.to_string(),
            &mut self.final_layer.ada_ln_modulation,
        ));
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
    pub fn apply_lora(
        &mut self,
        selector: &TargetSelector,
        device: &B::Device,
    ) -> Result<Vec<String>> {
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
            .flat_map(|(_, l)| {
                l.adapters
                    .iter()
                    .map(|a| a.lora_a.shape().num_elements() + a.lora_b.shape().num_elements())
            })
            .sum()
    }
}
