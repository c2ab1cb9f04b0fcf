//! BFL `Decoder`: latent `[B, z, h, w]` (unscaled) → image `[B, 3, h·f, w·f]`.

use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Tensor};

use crate::autoencoder::config::AutoencoderConfig;
use crate::autoencoder::resnet::{AttnBlock, GroupNorm, ResnetBlock, Upsample};
use crate::error::Result;
use crate::frozen::{Conv2d, LayerSource};

/// One resolution level: `num_res_blocks + 1` ResNet blocks, then (except at level 0) an
/// upsampler. Levels are indexed as in BFL: `up[0]` is the full-resolution level, run last.
#[derive(Module, Debug)]
pub struct UpLevel<B: Backend> {
    /// `decoder.up.N.block.M`.
    pub block: Vec<ResnetBlock<B>>,
    /// `decoder.up.N.upsample`.
    pub upsample: Option<Upsample<B>>,
}

/// The decoder half of the autoencoder.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// `decoder.conv_in`: 3×3 convolution from `z_channels` to the mid width
    /// (`ch · ch_mult.last()`).
    pub conv_in: Conv2d<B>,
    /// `decoder.mid.block_1`: the first mid ResNet block.
    pub mid_block_1: ResnetBlock<B>,
    /// `decoder.mid.attn_1`: the mid self-attention.
    pub mid_attn_1: AttnBlock<B>,
    /// `decoder.mid.block_2`: the second mid ResNet block.
    pub mid_block_2: ResnetBlock<B>,
    /// `decoder.up`: one level per `ch_mult` entry, BFL-indexed (`up[0]` is full resolution,
    /// run last).
    pub up: Vec<UpLevel<B>>,
    /// `decoder.norm_out`: the GroupNorm before the final SiLU and convolution.
    pub norm_out: GroupNorm<B>,
    /// `decoder.conv_out`: 3×3 convolution to the `out_channels` image channels.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    pub(crate) fn load(c: &AutoencoderConfig, w: &mut impl LayerSource<B>) -> Result<Self> {
        let g = c.norm_groups;
        let mut block_in = c.mid_channels();
        let conv_in = w.conv2d("decoder.conv_in", c.z_channels, block_in, 3)?;
        let mid_block_1 = ResnetBlock::load("decoder.mid.block_1", block_in, block_in, g, w)?;
        let mid_attn_1 = AttnBlock::load("decoder.mid.attn_1", block_in, g, w)?;
        let mid_block_2 = ResnetBlock::load("decoder.mid.block_2", block_in, block_in, g, w)?;
        let mut up = Vec::with_capacity(c.ch_mult.len());
        for (i, &mult) in c.ch_mult.iter().enumerate().rev() {
            let block_out = c.ch * mult;
            let mut block = Vec::with_capacity(c.num_res_blocks + 1);
            for j in 0..=c.num_res_blocks {
                block.push(ResnetBlock::load(
                    &format!("decoder.up.{i}.block.{j}"),
                    block_in,
                    block_out,
                    g,
                    w,
                )?);
                block_in = block_out;
            }
            let upsample = if i != 0 {
                Some(Upsample::load(
                    &format!("decoder.up.{i}.upsample"),
                    block_in,
                    w,
                )?)
            } else {
                None
            };
            up.push(UpLevel { block, upsample });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            up,
            norm_out: GroupNorm::load("decoder.norm_out", block_in, g, w)?,
            conv_out: w.conv2d("decoder.conv_out", block_in, c.out_channels, 3)?,
        })
    }

    /// Unscaled latent → image.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv_in.forward(z, 1);
        let mut h = self
            .mid_block_2
            .forward(self.mid_attn_1.forward(self.mid_block_1.forward(h)));
        for level in self.up.iter().rev() {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(up) = &level.upsample {
                h = up.forward(h);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)), 1)
    }
}
