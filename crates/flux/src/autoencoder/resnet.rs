//! The autoencoder's building blocks (BFL `flux/modules/autoencoder.py`): GroupNorm, the ResNet
//! block, the single-head mid attention, and the ×2 down/upsamplers. Activations are
//! `[batch, channels, height, width]`.

use burn::module::{Module, Param};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation::silu, backend::Backend, Tensor};

use crate::autoencoder::config::GROUP_NORM_EPS;
use crate::error::Result;
use crate::frozen::{cast_to, to_f32, Conv2d, LayerSource, Linear};

/// GroupNorm with affine parameters (eps 1e-6), statistics in f32.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// `[C]`; key `….weight`.
    pub gamma: Param<Tensor<B, 1>>,
    /// `[C]`; key `….bias`.
    pub beta: Param<Tensor<B, 1>>,
    /// Number of groups.
    #[module(skip)]
    pub groups: usize,
}

impl<B: Backend> GroupNorm<B> {
    pub(crate) fn load(
        name: &str,
        channels: usize,
        groups: usize,
        w: &mut impl LayerSource<B>,
    ) -> Result<Self> {
        let (gamma, beta) = w.norm_affine(name, channels)?;
        Ok(Self {
            gamma,
            beta,
            groups,
        })
    }

    /// Normalises each group of `C / groups` channels over channels × height × width.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let [b, c, h, wd] = x.dims();
        let g = self.groups;
        let x = to_f32(x).reshape([b, g, (c / g) * h * wd]);
        let (var, mean) = x.clone().var_mean_bias(2);
        let x = ((x - mean) * (var + GROUP_NORM_EPS).sqrt().recip()).reshape([b, c, h, wd]);
        let gamma = to_f32(self.gamma.val()).reshape([1, c, 1, 1]);
        let beta = to_f32(self.beta.val()).reshape([1, c, 1, 1]);
        cast_to(x * gamma + beta, dtype)
    }
}

/// BFL `ResnetBlock`: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    /// `….norm1`: GroupNorm over the `c_in` input channels.
    pub norm1: GroupNorm<B>,
    /// `….conv1`: 3×3 convolution `c_in → c_out`.
    pub conv1: Conv2d<B>,
    /// `….norm2`: GroupNorm over the `c_out` channels.
    pub norm2: GroupNorm<B>,
    /// `….conv2`: 3×3 convolution `c_out → c_out`.
    pub conv2: Conv2d<B>,
    /// 1×1 convolution when the width changes (`nin_shortcut`).
    pub nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    pub(crate) fn load(
        name: &str,
        c_in: usize,
        c_out: usize,
        groups: usize,
        w: &mut impl LayerSource<B>,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&format!("{name}.norm1"), c_in, groups, w)?,
            conv1: w.conv2d(&format!("{name}.conv1"), c_in, c_out, 3)?,
            norm2: GroupNorm::load(&format!("{name}.norm2"), c_out, groups, w)?,
            conv2: w.conv2d(&format!("{name}.conv2"), c_out, c_out, 3)?,
            nin_shortcut: if c_in != c_out {
                Some(w.conv2d(&format!("{name}.nin_shortcut"), c_in, c_out, 1)?)
            } else {
                None
            },
        })
    }

    /// `[B, c_in, H, W]` → `[B, c_out, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())), 1);
        let h = self.conv2.forward(silu(self.norm2.forward(h)), 1);
        let shortcut = match &self.nin_shortcut {
            Some(conv) => conv.forward(x, 0),
            None => x,
        };
        shortcut + h
    }
}

/// BFL `AttnBlock`: single-head self-attention over all `H·W` positions, with 1×1-convolution
/// projections (stored here as linears; diffusers stores them as linears too).
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    /// `….norm`: GroupNorm applied before the projections.
    pub norm: GroupNorm<B>,
    /// `….q`: query projection `C → C`.
    pub q: Linear<B>,
    /// `….k`: key projection `C → C`.
    pub k: Linear<B>,
    /// `….v`: value projection `C → C`.
    pub v: Linear<B>,
    /// `….proj_out`: output projection `C → C`, added back to the input.
    pub proj_out: Linear<B>,
}

impl<B: Backend> AttnBlock<B> {
    pub(crate) fn load(
        name: &str,
        c: usize,
        groups: usize,
        w: &mut impl LayerSource<B>,
    ) -> Result<Self> {
        let mut lin = |n: &str| w.linear(&format!("{name}.{n}"), c, c, true, true);
        let (q, k, v, proj_out) = (lin("q")?, lin("k")?, lin("v")?, lin("proj_out")?);
        Ok(Self {
            norm: GroupNorm::load(&format!("{name}.norm"), c, groups, w)?,
            q,
            k,
            v,
            proj_out,
        })
    }

    /// `x + proj_out(attention(norm(x)))`, shape-preserving.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, wd] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * wd])
            .swap_dims(1, 2);
        let heads = |l: &Linear<B>| l.forward(tokens.clone()).unsqueeze_dim::<4>(1);
        let (q, k, v) = (heads(&self.q), heads(&self.k), heads(&self.v));
        let o: Tensor<B, 3> =
            attention(q, k, v, None, None, AttentionModuleOptions::default()).squeeze_dim(1);
        let o = self
            .proj_out
            .forward(o)
            .swap_dims(1, 2)
            .reshape([b, c, h, wd]);
        x + o
    }
}

/// Zero-pad one row/column at the bottom/right, then a stride-2 3×3 convolution.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// `….downsample.conv`: the stride-2 3×3 convolution `C → C`.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample<B> {
    pub(crate) fn load(name: &str, c: usize, w: &mut impl LayerSource<B>) -> Result<Self> {
        Ok(Self {
            conv: w.conv2d(&format!("{name}.conv"), c, c, 3)?,
        })
    }

    /// `[B, C, H, W]` → `[B, C, ⌈H/2⌉, ⌈W/2⌉]` (exactly half for even sizes).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward_downsample(x)
    }
}

/// Nearest-neighbour ×2 upsampling, then a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    /// `….upsample.conv`: the 3×3 convolution `C → C` after the ×2 upsampling.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample<B> {
    pub(crate) fn load(name: &str, c: usize, w: &mut impl LayerSource<B>) -> Result<Self> {
        Ok(Self {
            conv: w.conv2d(&format!("{name}.conv"), c, c, 3)?,
        })
    }

    /// `[B, C, H, W]` → `[B, C, 2H, 2W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(nearest_2x(x), 1)
    }
}

/// Nearest-neighbour ×2 upsampling: every pixel becomes a 2×2 block.
pub fn nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    #[test]
    fn nearest_2x_repeats_each_pixel_into_a_block() {
        let dev = Default::default();
        let x = Tensor::<NdArray, 4>::from_data(
            TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], [1, 1, 2, 3]),
            &dev,
        );
        let y = nearest_2x(x).into_data().to_vec::<f32>().unwrap();
        #[rustfmt::skip]
        let expected = vec![
            1., 1., 2., 2., 3., 3.,
            1., 1., 2., 2., 3., 3.,
            4., 4., 5., 5., 6., 6.,
            4., 4., 5., 5., 6., 6.,
        ];
        assert_eq!(y, expected);
    }

    #[test]
    fn group_norm_matches_direct_formula() {
        // 4 channels, 2 groups: each group of 2 channels × 3 pixels normalised to mean 0, var 1.
        let dev = Default::default();
        let vals: Vec<f32> = (0..12)
            .map(|i| (i as f32 * 0.7).sin() * 3.0 + i as f32)
            .collect();
        let x = Tensor::<NdArray, 4>::from_data(TensorData::new(vals.clone(), [1, 4, 1, 3]), &dev);
        let gn = GroupNorm {
            gamma: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, 2., 3., 4.], [4]),
                &dev,
            )),
            beta: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.5f32, 0., -1., 0.], [4]),
                &dev,
            )),
            groups: 2,
        };
        let y = gn.forward(x).into_data().to_vec::<f32>().unwrap();
        for g in 0..2 {
            let grp = &vals[g * 6..g * 6 + 6];
            let mean = grp.iter().map(|&v| v as f64).sum::<f64>() / 6.0;
            let var = grp.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 6.0;
            for i in 0..6 {
                let ch = g * 2 + i / 3;
                let (gamma, beta) = ([1.0, 2., 3., 4.][ch], [0.5, 0., -1., 0.][ch]);
                let want = (grp[i] as f64 - mean) / (var + GROUP_NORM_EPS).sqrt() * gamma + beta;
                assert!(
                    (y[g * 6 + i] as f64 - want).abs() < 1e-5,
                    "{} vs {want}",
                    y[g * 6 + i]
                );
            }
        }
    }
}
