//! Small building blocks shared by the Flux blocks: the linear call, QK RMSNorm, adaLN
//! modulation and the final layer (the fused ops themselves live in [`crate::fused`]).

use burn::module::{Module, Param, ParamId};
use burn::tensor::{activation, backend::Backend, Tensor};

use fluxlora_lora::LoraLinear;

use crate::error::Result;
use crate::fused::FluxBackend;
use crate::transformer::load::WeightSource;

pub use crate::fused::{gelu_tanh, modulate, NORM_EPS};

/// Applies a linear and returns the result in the input's dtype (a bf16-stored base computes in
/// bf16 and is cast back).
pub fn linear<B: fluxlora_lora::FrozenLinearBackend, const D: usize>(
    layer: &LoraLinear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let y = layer.forward(x);
    if y.dtype() != dtype {
        y.cast(dtype)
    } else {
        y
    }
}

/// RMSNorm with a learned scale (BFL `RMSNorm`, eps 1e-6): `x / √(mean(x²) + eps) · scale`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[head_dim]`; checkpoint key `….scale`.
    pub scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> RmsNorm<B> {
    pub(crate) fn new(path: &str, dim: usize, w: &mut impl WeightSource<B>) -> Result<Self> {
        // The source decides whether the scale trains (random init) or is frozen (loaded base).
        Ok(Self {
            scale: Param::initialized(ParamId::new(), w.vector(&format!("{path}.scale"), dim)?),
        })
    }
}

impl<B: FluxBackend> RmsNorm<B> {
    /// Normalises the last dimension of `x: [B, H, L, D]` (one fused op).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        B::rms_norm(x, self.scale.val(), NORM_EPS)
    }
}

/// BFL `QKNorm`: separate RMSNorms on queries and keys.
#[derive(Module, Debug)]
pub struct QkNorm<B: Backend> {
    /// `….norm.query_norm`.
    pub query_norm: RmsNorm<B>,
    /// `….norm.key_norm`.
    pub key_norm: RmsNorm<B>,
}

impl<B: Backend> QkNorm<B> {
    pub(crate) fn new(path: &str, head_dim: usize, w: &mut impl WeightSource<B>) -> Result<Self> {
        Ok(Self {
            query_norm: RmsNorm::new(&format!("{path}.query_norm"), head_dim, w)?,
            key_norm: RmsNorm::new(&format!("{path}.key_norm"), head_dim, w)?,
        })
    }
}

/// One (shift, scale, gate) triple, each `[B, 1, hidden]`.
#[derive(Debug, Clone)]
pub struct ModulationOut<B: Backend> {
    /// Added after the LayerNorm (`shift`).
    pub shift: Tensor<B, 3>,
    /// Multiplies the LayerNorm output as `1 + scale`.
    pub scale: Tensor<B, 3>,
    /// Multiplies the sublayer's output before it is added to the residual stream.
    pub gate: Tensor<B, 3>,
}

/// BFL `Modulation`: `lin(SiLU(vec))` chunked into 1 or 2 (shift, scale, gate) triples.
#[derive(Module, Debug)]
pub struct Modulation<B: Backend> {
    /// `hidden → 3·hidden` (single) or `6·hidden` (double); key `….lin`.
    pub lin: LoraLinear<B>,
}

impl<B: fluxlora_lora::FrozenLinearBackend> Modulation<B> {
    pub(crate) fn new(
        path: &str,
        hidden: usize,
        double: bool,
        w: &mut impl WeightSource<B>,
    ) -> Result<Self> {
        let mult = if double { 6 } else { 3 };
        Ok(Self {
            lin: w.linear(&format!("{path}.lin"), hidden, mult * hidden, true)?,
        })
    }

    /// The triples for `vec: [B, hidden]`, in checkpoint order (shift, scale, gate)×n.
    pub fn forward(&self, vec: Tensor<B, 2>) -> Vec<ModulationOut<B>> {
        let hidden = self.lin.d_in();
        let out: Tensor<B, 3> = linear(&self.lin, activation::silu(vec)).unsqueeze_dim(1);
        let triples = self.lin.d_out() / (3 * hidden);
        let part = |i: usize| out.clone().narrow(2, i * hidden, hidden);
        (0..triples)
            .map(|t| ModulationOut {
                shift: part(3 * t),
                scale: part(3 * t + 1),
                gate: part(3 * t + 2),
            })
            .collect()
    }
}

/// BFL `LastLayer`: adaLN (shift, scale) from `vec`, LayerNorm, then `hidden → out_channels`.
#[derive(Module, Debug)]
pub struct LastLayer<B: Backend> {
    /// `final_layer.linear`.
    pub linear: LoraLinear<B>,
    /// `final_layer.adaLN_modulation.1` (index 0 is the SiLU).
    pub ada_ln_modulation: LoraLinear<B>,
}

impl<B: FluxBackend> LastLayer<B> {
    pub(crate) fn new(
        hidden: usize,
        out_channels: usize,
        w: &mut impl WeightSource<B>,
    ) -> Result<Self> {
        Ok(Self {
            linear: w.linear("final_layer.linear", hidden, out_channels, true)?,
            ada_ln_modulation: w.linear(
                "final_layer.adaLN_modulation.1",
                hidden,
                2 * hidden,
                true,
            )?,
        })
    }

    /// `x: [B, L, hidden]`, `vec: [B, hidden]` → `[B, L, out_channels]`.
    pub fn forward(&self, x: Tensor<B, 3>, vec: Tensor<B, 2>) -> Tensor<B, 3> {
        let m: Tensor<B, 3> =
            linear(&self.ada_ln_modulation, activation::silu(vec)).unsqueeze_dim(1);
        let hidden = self.ada_ln_modulation.d_in();
        let shift = m.clone().narrow(2, 0, hidden);
        let scale = m.narrow(2, hidden, hidden);
        linear(&self.linear, modulate(x, &shift, &scale))
    }
}
