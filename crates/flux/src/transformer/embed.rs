//! Conditioning embeddings: the sinusoidal timestep embedding and BFL's `MLPEmbedder`.

use burn::module::Module;
use burn::tensor::{activation, backend::Backend, Tensor, TensorData};
use fluxlora_lora::LoraLinear;

use crate::error::Result;
use crate::transformer::layers::linear;
use crate::transformer::load::WeightSource;

/// Width of the sinusoidal embedding fed to `time_in` / `guidance_in`.
pub const TIMESTEP_DIM: usize = 256;
/// `max_period` of the timestep embedding.
pub const MAX_PERIOD: f64 = 10_000.0;
/// Timesteps in [0, 1] are multiplied by this before embedding (`time_factor`).
pub const TIME_FACTOR: f64 = 1000.0;

/// BFL `timestep_embedding(t, dim, max_period=10000, time_factor=1000)`:
/// `args = 1000·t ⊗ exp(−ln(max_period)·i/half)`, `i < half = dim/2`, output `[cos(args), sin(args)]`
/// (`[B, dim]`). The frequencies are computed in f32 exactly as the reference does.
pub fn timestep_embedding<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let neg_log = -(MAX_PERIOD.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (neg_log * i as f32 / half as f32).exp()).collect();
    let freqs: Tensor<B, 2> = Tensor::from_data(TensorData::new(freqs, [1, half]), &t.device());
    let args = t.mul_scalar(TIME_FACTOR).unsqueeze_dim::<2>(1) * freqs;
    let mut parts = vec![args.clone().cos(), args.sin()];
    if dim % 2 == 1 {
        let b = parts[0].dims()[0];
        parts.push(Tensor::zeros([b, 1], &parts[0].device()));
    }
    Tensor::cat(parts, 1)
}

/// BFL `MLPEmbedder`: `out_layer(SiLU(in_layer(x)))`.
#[derive(Module, Debug)]
pub struct MlpEmbedder<B: Backend> {
    /// `….in_layer`: `in_dim → hidden`.
    pub in_layer: LoraLinear<B>,
    /// `….out_layer`: `hidden → hidden`.
    pub out_layer: LoraLinear<B>,
}

impl<B: Backend> MlpEmbedder<B> {
    pub(crate) fn new(path: &str, in_dim: usize, hidden: usize, w: &mut impl WeightSource<B>) -> Result<Self> {
        Ok(Self {
            in_layer: w.linear(&format!("{path}.in_layer"), in_dim, hidden, true)?,
            out_layer: w.linear(&format!("{path}.out_layer"), hidden, hidden, true)?,
        })
    }

    /// `x: [B, in_dim]` → `[B, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(&self.out_layer, activation::silu(linear(&self.in_layer, x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn embedding_matches_the_formula() {
        let dev = Default::default();
        let t = Tensor::<NdArray, 1>::from_floats([0.25, 0.9], &dev);
        let e = timestep_embedding(t, 8).into_data().into_vec::<f32>().unwrap();
        for (b, tv) in [0.25f64, 0.9].iter().enumerate() {
            for i in 0..4 {
                let arg = 1000.0 * tv * (-(10000f64.ln()) * i as f64 / 4.0).exp();
                assert!((e[b * 8 + i] as f64 - arg.cos()).abs() < 1e-3, "cos {b} {i}");
                assert!((e[b * 8 + 4 + i] as f64 - arg.sin()).abs() < 1e-3, "sin {b} {i}");
            }
        }
    }
}
