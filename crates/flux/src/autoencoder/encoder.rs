//! BFL `Encoder`: image `[B, 3, H, W]` → moments `[B, 2·z, H/f, W/f]` (mean, then log-variance).

use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Tensor};

use crate::autoencoder::config::AutoencoderConfig;
use crate::autoencoder::resnet::{AttnBlock, Downsample, GroupNorm, ResnetBlock};
use crate::error::Result;
use crate::frozen::{Conv2d, LayerSource};

/// One resolution level: ResNet blocks, then (except at the last level) a downsampler.
#[derive(Module, Debug)]
pub struct DownLevel<B: Backend> {
    /// `encoder.down.N.block.M`.
    pub block: Vec<ResnetBlock<B>>,
    /// `encoder.down.N.downsample`.
    pub downsample: Option<Downsample<B>>,
}

/// The encoder half of the autoencoder.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// `encoder.conv_in`: 3×3 convolution `in_channels → ch`.
    pub conv_in: Conv2d<B>,
    /// `encoder.down`: one level per `ch_mult` entry, from full resolution down.
    pub down: Vec<DownLevel<B>>,
    /// `encoder.mid.block_1`: the first mid ResNet block.
    pub mid_block_1: ResnetBlock<B>,
    /// `encoder.mid.attn_1`: the mid self-attention.
    pub mid_attn_1: AttnBlock<B>,
    /// `encoder.mid.block_2`: the second mid ResNet block.
    pub mid_block_2: ResnetBlock<B>,
    /// `encoder.norm_out`: the GroupNorm before the final SiLU and convolution.
    pub norm_out: GroupNorm<B>,
    /// `encoder.conv_out`: 3×3 convolution to the `2·z_channels` moments.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    pub(crate) fn load(c: &AutoencoderConfig, w: &mut impl LayerSource<B>) -> Result<Self> {
        let g = c.norm_groups;
        let conv_in = w.conv2d("encoder.conv_in", c.in_channels, c.ch, 3)?;
        let mut down = Vec::with_capacity(c.ch_mult.len());
        let mut block_in = c.ch;
        for (i, &mult) in c.ch_mult.iter().enumerate() {
            let block_out = c.ch * mult;
            let mut block = Vec::with_capacity(c.num_res_blocks);
            for j in 0..c.num_res_blocks {
                block.push(ResnetBlock::load(
                    &format!("encoder.down.{i}.block.{j}"),
                    block_in,
                    block_out,
                    g,
                    w,
                )?);
                block_in = block_out;
            }
            let downsample = if i + 1 != c.ch_mult.len() {
                Some(Downsample::load(
                    &format!("encoder.down.{i}.downsample"),
                    block_in,
                    w,
                )?)
            } else {
                None
            };
            down.push(DownLevel { block, downsample });
        }
        Ok(Self {
            conv_in,
            down,
            mid_block_1: ResnetBlock::load("encoder.mid.block_1", block_in, block_in, g, w)?,
            mid_attn_1: AttnBlock::load("encoder.mid.attn_1", block_in, g, w)?,
            mid_block_2: ResnetBlock::load("encoder.mid.block_2", block_in, block_in, g, w)?,
            norm_out: GroupNorm::load("encoder.norm_out", block_in, g, w)?,
            conv_out: w.conv2d("encoder.conv_out", block_in, 2 * c.z_channels, 3)?,
        })
    }

    /// Image → moments (not yet split into mean and log-variance).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.conv_in.forward(x, 1);
        for level in &self.down {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(down) = &level.downsample {
                h = down.forward(h);
            }
        }
        let h = self
            .mid_block_2
            .forward(self.mid_attn_1.forward(self.mid_block_1.forward(h)));
        self.conv_out.forward(silu(self.norm_out.forward(h)), 1)
    }
}
