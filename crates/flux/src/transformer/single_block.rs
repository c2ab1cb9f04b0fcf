//! BFL `SingleStreamBlock`: one stream over `txt ‖ img`, fused `linear1` (qkv + MLP in) and
//! `linear2` (attention out + MLP out), attention and MLP in parallel.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_lora::LoraLinear;

use crate::error::Result;
use crate::fused::{gated_residual, FluxBackend};
use crate::transformer::double_block::split_qkv;
use crate::transformer::layers::{gelu_tanh, linear, modulate, Modulation, QkNorm};
use crate::transformer::load::WeightSource;
use crate::transformer::rope::{attention, Rope};

/// One single-stream block (`single_blocks.N`).
#[derive(Module, Debug)]
pub struct SingleStreamBlock<B: Backend> {
    /// `hidden → 3·hidden + mlp_hidden` (`[q | k | v | mlp]`).
    pub linear1: LoraLinear<B>,
    /// `hidden + mlp_hidden → hidden` on `cat(attn, GELU(mlp))`.
    pub linear2: LoraLinear<B>,
    /// `….norm.query_norm.scale`, `….norm.key_norm.scale`.
    pub norm: QkNorm<B>,
    /// `….modulation.lin` (one shift/scale/gate triple).
    pub modulation: Modulation<B>,
    /// Number of attention heads.
    pub num_heads: usize,
}

impl<B: FluxBackend> SingleStreamBlock<B> {
    /// Builds block `single_blocks.{index}` from `w` (BFL's `linear1` always has a bias).
    pub(crate) fn new(
        index: usize,
        hidden: usize,
        num_heads: usize,
        mlp_hidden: usize,
        w: &mut impl WeightSource<B>,
    ) -> Result<Self> {
        let p = format!("single_blocks.{index}");
        Ok(Self {
            linear1: w.linear(
                &format!("{p}.linear1"),
                hidden,
                3 * hidden + mlp_hidden,
                true,
            )?,
            linear2: w.linear(&format!("{p}.linear2"), hidden + mlp_hidden, hidden, true)?,
            norm: QkNorm::new(&format!("{p}.norm"), hidden / num_heads, w)?,
            modulation: Modulation::new(&format!("{p}.modulation"), hidden, false, w)?,
            num_heads,
        })
    }

    /// `x: [B, L_txt + L_img, hidden]`, `vec: [B, hidden]` → same shape as `x`.
    pub fn forward(&self, x: Tensor<B, 3>, vec: Tensor<B, 2>, rope: &Rope<B>) -> Tensor<B, 3> {
        let m = self.modulation.forward(vec);
        let m = &m[0];
        let hidden = self.linear2.d_out();
        let h = linear(&self.linear1, modulate(x.clone(), &m.shift, &m.scale));
        let mlp_hidden = h.dims()[2] - 3 * hidden;
        let qkv = h.clone().narrow(2, 0, 3 * hidden);
        let mlp = h.narrow(2, 3 * hidden, mlp_hidden);
        let [q, k, v] = split_qkv(qkv, self.num_heads, &self.norm);
        let attn = attention(q, k, v, rope);
        let out = linear(&self.linear2, Tensor::cat(vec![attn, gelu_tanh(mlp)], 2));
        gated_residual(x, &m.gate, out)
    }
}
