//! BFL `DoubleStreamBlock`: separate image and text weights, joint attention (text first).

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_lora::LoraLinear;

use crate::error::Result;
use crate::fused::{gated_residual, FluxBackend};
use crate::transformer::layers::{gelu_tanh, linear, modulate, Modulation, QkNorm};
use crate::transformer::load::WeightSource;
use crate::transformer::rope::{attention, Rope};

/// BFL `SelfAttention` weights: fused `qkv` (with bias), QK RMSNorm and output `proj`.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `….qkv`: `hidden → 3·hidden`, output laid out `(K H D)` with K = q, k, v.
    pub qkv: LoraLinear<B>,
    /// `….norm.query_norm.scale`, `….norm.key_norm.scale`.
    pub norm: QkNorm<B>,
    /// `….proj`: `hidden → hidden`.
    pub proj: LoraLinear<B>,
}

impl<B: FluxBackend> SelfAttention<B> {
    fn new(
        path: &str,
        hidden: usize,
        head_dim: usize,
        qkv_bias: bool,
        w: &mut impl WeightSource<B>,
    ) -> Result<Self> {
        Ok(Self {
            qkv: w.linear(&format!("{path}.qkv"), hidden, 3 * hidden, qkv_bias)?,
            norm: QkNorm::new(&format!("{path}.norm"), head_dim, w)?,
            proj: w.linear(&format!("{path}.proj"), hidden, hidden, true)?,
        })
    }

    /// Normalised `q`, `k` and `v`, each `[B, H, L, D]`, from modulated tokens `[B, L, hidden]`.
    pub fn qkv(&self, x: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
        split_qkv(linear(&self.qkv, x), heads, &self.norm)
    }
}

/// `B L (K H D) -> K B H L D`, then QK RMSNorm on q and k.
pub(crate) fn split_qkv<B: FluxBackend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    norm: &QkNorm<B>,
) -> [Tensor<B, 4>; 3] {
    let hidden = qkv.dims()[2] / 3;
    let part = |i: usize| B::to_heads(qkv.clone().narrow(2, i * hidden, hidden), heads);
    let (q, k, v) = (part(0), part(1), part(2));
    [norm.query_norm.forward(q), norm.key_norm.forward(k), v]
}

/// BFL `img_mlp` / `txt_mlp`: `Linear(hidden, mlp) → GELU(tanh) → Linear(mlp, hidden)`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `….0`.
    pub layer0: LoraLinear<B>,
    /// `….2` (index 1 is the GELU).
    pub layer2: LoraLinear<B>,
}

impl<B: FluxBackend> Mlp<B> {
    fn new(path: &str, hidden: usize, mlp: usize, w: &mut impl WeightSource<B>) -> Result<Self> {
        Ok(Self {
            layer0: w.linear(&format!("{path}.0"), hidden, mlp, true)?,
            layer2: w.linear(&format!("{path}.2"), mlp, hidden, true)?,
        })
    }

    /// `[B, L, hidden] → [B, L, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.layer2, gelu_tanh(linear(&self.layer0, x)))
    }
}

/// One double-stream block (`double_blocks.N`).
#[derive(Module, Debug)]
pub struct DoubleStreamBlock<B: Backend> {
    /// `img_mod`: the image stream's adaLN modulation (two shift/scale/gate triples, for
    /// attention and MLP).
    pub img_mod: Modulation<B>,
    /// `img_attn`: the image stream's self-attention weights (qkv, QK norms, proj); the
    /// attention itself is joint over text and image tokens.
    pub img_attn: SelfAttention<B>,
    /// `img_mlp`: the image stream's MLP.
    pub img_mlp: Mlp<B>,
    /// `txt_mod`: the text stream's adaLN modulation (two shift/scale/gate triples).
    pub txt_mod: Modulation<B>,
    /// `txt_attn`: the text stream's self-attention weights (qkv, QK norms, proj).
    pub txt_attn: SelfAttention<B>,
    /// `txt_mlp`: the text stream's MLP.
    pub txt_mlp: Mlp<B>,
    /// Number of attention heads.
    pub num_heads: usize,
}

impl<B: FluxBackend> DoubleStreamBlock<B> {
    /// Builds block `double_blocks.{index}` from `w`.
    pub(crate) fn new(
        index: usize,
        hidden: usize,
        num_heads: usize,
        mlp_hidden: usize,
        qkv_bias: bool,
        w: &mut impl WeightSource<B>,
    ) -> Result<Self> {
        let p = format!("double_blocks.{index}");
        let head_dim = hidden / num_heads;
        Ok(Self {
            img_mod: Modulation::new(&format!("{p}.img_mod"), hidden, true, w)?,
            img_attn: SelfAttention::new(&format!("{p}.img_attn"), hidden, head_dim, qkv_bias, w)?,
            img_mlp: Mlp::new(&format!("{p}.img_mlp"), hidden, mlp_hidden, w)?,
            txt_mod: Modulation::new(&format!("{p}.txt_mod"), hidden, true, w)?,
            txt_attn: SelfAttention::new(&format!("{p}.txt_attn"), hidden, head_dim, qkv_bias, w)?,
            txt_mlp: Mlp::new(&format!("{p}.txt_mlp"), hidden, mlp_hidden, w)?,
            num_heads,
        })
    }

    /// `img: [B, L_img, hidden]`, `txt: [B, L_txt, hidden]`, `vec: [B, hidden]`; RoPE tables
    /// cover `L_txt + L_img` tokens (text first). Returns the updated `(img, txt)`.
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        vec: Tensor<B, 2>,
        rope: &Rope<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let img_mod = self.img_mod.forward(vec.clone());
        let txt_mod = self.txt_mod.forward(vec);
        let (im1, im2) = (&img_mod[0], &img_mod[1]);
        let (tm1, tm2) = (&txt_mod[0], &txt_mod[1]);

        let [iq, ik, iv] = self.img_attn.qkv(
            modulate(img.clone(), &im1.shift, &im1.scale),
            self.num_heads,
        );
        let [tq, tk, tv] = self.txt_attn.qkv(
            modulate(txt.clone(), &tm1.shift, &tm1.scale),
            self.num_heads,
        );
        let l_txt = txt.dims()[1];
        let l_img = img.dims()[1];
        let q = Tensor::cat(vec![tq, iq], 2);
        let k = Tensor::cat(vec![tk, ik], 2);
        let v = Tensor::cat(vec![tv, iv], 2);
        let attn = attention(q, k, v, rope);
        let txt_attn = attn.clone().narrow(1, 0, l_txt);
        let img_attn = attn.narrow(1, l_txt, l_img);

        let img = gated_residual(img, &im1.gate, linear(&self.img_attn.proj, img_attn));
        let img_mlp = self
            .img_mlp
            .forward(modulate(img.clone(), &im2.shift, &im2.scale));
        let img = gated_residual(img, &im2.gate, img_mlp);
        let txt = gated_residual(txt, &tm1.gate, linear(&self.txt_attn.proj, txt_attn));
        let txt_mlp = self
            .txt_mlp
            .forward(modulate(txt.clone(), &tm2.shift, &tm2.scale));
        let txt = gated_residual(txt, &tm2.gate, txt_mlp);
        (img, txt)
    }
}
