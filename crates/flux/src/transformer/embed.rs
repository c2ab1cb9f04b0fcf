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
/// `args = 1000·t ⊗ exp(−ln(max_period)·i/half)`, `i < half = dim/2`, output `[cos(args),
/// sin(args)]`
/// (`[B, dim]`). The arguments are formed in f32 exactly as the reference does.
///
/// The table is computed on the host: the arguments reach 1000 rad, and GPU `sin`/`cos` promise
/// accuracy only near [−π, π] (WGSL: absolute error ≤ 2⁻¹¹ inside it, nothing outside).
/// The timesteps carry no gradient, so reading them back costs one tiny transfer.
pub fn timestep_embedding<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let device = t.device();
    let half = dim / 2;
    let neg_log = -(MAX_PERIOD.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (neg_log * i as f32 / half as f32).exp())
        .collect();
    let ts = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("a tensor converted to f32 reads back as f32");
    let mut table = Vec::with_capacity(ts.len() * dim);
    for &tv in &ts {
        let scaled = tv * TIME_FACTOR as f32;
        let args: Vec<f64> = freqs.iter().map(|&f| (scaled * f) as f64).collect();
        table.extend(args.iter().map(|a| a.cos() as f32));
        table.extend(args.iter().map(|a| a.sin() as f32));
        if dim % 2 == 1 {
            table.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(table, [ts.len(), dim]), &device)
}

/// BFL `MLPEmbedder`: `out_layer(SiLU(in_layer(x)))`.
#[derive(Module, Debug)]
pub struct MlpEmbedder<B: Backend> {
    /// `….in_layer`: `in_dim → hidden`.
    pub in_layer: LoraLinear<B>,
    /// `….out_layer`: `hidden → hidden`.
    pub out_layer: LoraLinear<B>,
}

impl<B: fluxlora_lora::FrozenLinearBackend> MlpEmbedder<B> {
    pub(crate) fn new(
        path: &str,
        in_dim: usize,
        hidden: usize,
        w: &mut impl WeightSource<B>,
    ) -> Result<Self> {
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
        let e = timestep_embedding(t, 8)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for (b, tv) in [0.25f64, 0.9].iter().enumerate() {
            for i in 0..4 {
                let arg = 1000.0 * tv * (-(10000f64.ln()) * i as f64 / 4.0).exp();
                assert!(
                    (e[b * 8 + i] as f64 - arg.cos()).abs() < 1e-3,
                    "cos {b} {i}"
                );
                assert!(
                    (e[b * 8 + 4 + i] as f64 - arg.sin()).abs() < 1e-3,
                    "sin {b} {i}"
                );
            }
        }
    }
}
