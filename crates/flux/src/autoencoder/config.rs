//! [`AutoencoderConfig`]: the autoencoder's architecture, the Flux preset and inference from a
//! checkpoint's tensor shapes.

use crate::error::{FluxError, Result};

/// Flux latent scale: `encode` returns `SCALE · (z − SHIFT)`.
pub const FLUX_SCALE_FACTOR: f64 = 0.3611;
/// Flux latent shift (see [`FLUX_SCALE_FACTOR`]).
pub const FLUX_SHIFT_FACTOR: f64 = 0.1159;
/// Epsilon of every GroupNorm in the autoencoder.
pub const GROUP_NORM_EPS: f64 = 1e-6;

/// Architecture of a BFL / diffusers KL autoencoder (BFL `AutoEncoderParams`).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderConfig {
    /// Image channels in (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
    /// Base channel count (Flux: 128).
    pub ch: usize,
    /// Channel multiplier per resolution level (Flux: `[1, 2, 4, 4]`); the image is downsampled
    /// ×2 between consecutive levels.
    pub ch_mult: Vec<usize>,
    /// ResNet blocks per encoder level (the decoder has one more) (Flux: 2).
    pub num_res_blocks: usize,
    /// Latent channels (Flux: 16).
    pub z_channels: usize,
    /// GroupNorm groups (Flux: 32; BFL hard-codes it, so it cannot be read from the weights).
    pub norm_groups: usize,
    /// Latent scale (Flux: 0.3611).
    pub scale_factor: f64,
    /// Latent shift (Flux: 0.1159).
    pub shift_factor: f64,
}

impl AutoencoderConfig {
    /// The FLUX.1 autoencoder (`ae.safetensors`).
    pub fn flux() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 16,
            norm_groups: 32,
            scale_factor: FLUX_SCALE_FACTOR,
            shift_factor: FLUX_SHIFT_FACTOR,
        }
    }

    /// Pixels per latent along each side, `2^(levels − 1)` (Flux: 8).
    pub fn downscale(&self) -> usize {
        1 << self.ch_mult.len().saturating_sub(1)
    }

    /// Channels of the lowest-resolution level (the mid blocks' width).
    pub fn mid_channels(&self) -> usize {
        self.ch * self.ch_mult.last().copied().unwrap_or(1)
    }

    /// Checks what the forward pass relies on (non-empty levels, group-divisible widths).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FluxError::Config(format!("autoencoder: {m}")));
        if self.ch_mult.is_empty()
            || self.ch == 0
            || self.num_res_blocks == 0
            || self.z_channels == 0
        {
            return bad(format!(
                "ch {} / ch_mult {:?} / num_res_blocks {} / z_channels {} must all be non-empty \
                 and non-zero",
                self.ch, self.ch_mult, self.num_res_blocks, self.z_channels
            ));
        }
        if self.norm_groups == 0 {
            return bad("norm_groups must be positive".into());
        }
        for &m in &self.ch_mult {
            let c = self.ch * m;
            if c == 0 || !c.is_multiple_of(self.norm_groups) {
                return bad(format!(
                    "level width {c} (ch {} × {m}) is not divisible by norm_groups {}; set \
                     norm_groups to the model's GroupNorm group count",
                    self.ch, self.norm_groups
                ));
            }
        }
        if !(self.scale_factor.is_finite()
            && self.scale_factor != 0.0
            && self.shift_factor.is_finite())
        {
            return bad(format!(
                "scale {} / shift {} must be finite, scale non-zero",
                self.scale_factor, self.shift_factor
            ));
        }
        Ok(())
    }

    /// Infers the architecture from tensor shapes. `shape` answers the PyTorch-layout shape of a
    /// BFL-named tensor (`None` when absent); the values that are not stored in the weights
    /// (`norm_groups`, `scale_factor`, `shift_factor`) are taken from `base`. Autoencoders with
    /// `quant_conv` / `post_quant_conv` (Stable Diffusion's) are rejected: Flux's has neither.
    pub fn infer(
        shape: impl Fn(&str) -> Option<Vec<usize>>,
        base: &AutoencoderConfig,
    ) -> Result<Self> {
        let need = |key: &str, rank: usize| -> Result<Vec<usize>> {
            match shape(key) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(FluxError::Config(format!(
                    "autoencoder tensor `{key}` has shape {s:?}, expected a rank-{rank} tensor"
                ))),
                None => Err(FluxError::Config(format!(
                    "autoencoder tensor `{key}` is missing; the file is not a complete KL \
                     autoencoder"
                ))),
            }
        };
        for extra in ["quant_conv.weight", "post_quant_conv.weight"] {
            if shape(extra).is_some() {
                return Err(FluxError::Config(format!(
                    "autoencoder has `{extra}` (a Stable Diffusion-style VAE); the Flux \
                     autoencoder has none — use FLUX.1's ae.safetensors or vae/ folder"
                )));
            }
        }
        let conv_in = need("encoder.conv_in.weight", 4)?;
        let (ch, in_channels) = (conv_in[0], conv_in[1]);
        let mut ch_mult = Vec::new();
        while let Some(s) = shape(&format!(
            "encoder.down.{}.block.0.conv1.weight",
            ch_mult.len()
        )) {
            if ch == 0 || s.first().is_none_or(|&c| c % ch != 0) {
                return Err(FluxError::Config(format!(
                    "autoencoder level {} has width {:?}, not a multiple of ch {ch}",
                    ch_mult.len(),
                    s.first()
                )));
            }
            ch_mult.push(s[0] / ch);
        }
        let num_res_blocks = (0..)
            .take_while(|j| shape(&format!("encoder.down.0.block.{j}.conv1.weight")).is_some())
            .count();
        let dec_in = need("decoder.conv_in.weight", 4)?;
        let dec_out = need("decoder.conv_out.weight", 4)?;
        let config = Self {
            in_channels,
            out_channels: dec_out[0],
            ch,
            ch_mult,
            num_res_blocks,
            z_channels: dec_in[1],
            ..base.clone()
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn infers_flux_shapes() {
        // Shapes of the real FLUX.1 ae.safetensors (ch 128, ch_mult [1,2,4,4], 2 blocks, z 16).
        let mut s: HashMap<String, Vec<usize>> = HashMap::new();
        s.insert("encoder.conv_in.weight".into(), vec![128, 3, 3, 3]);
        for (i, w) in [128, 256, 512, 512].into_iter().enumerate() {
            for j in 0..2 {
                s.insert(
                    format!("encoder.down.{i}.block.{j}.conv1.weight"),
                    vec![w, w, 3, 3],
                );
            }
        }
        s.insert("decoder.conv_in.weight".into(), vec![512, 16, 3, 3]);
        s.insert("decoder.conv_out.weight".into(), vec![3, 128, 3, 3]);
        let c =
            AutoencoderConfig::infer(|k| s.get(k).cloned(), &AutoencoderConfig::flux()).unwrap();
        assert_eq!(c, AutoencoderConfig::flux());
        assert_eq!(c.downscale(), 8);
        assert!(AutoencoderConfig::infer(|_| None, &AutoencoderConfig::flux()).is_err());
    }

    #[test]
    fn rejects_widths_not_divisible_by_groups() {
        let c = AutoencoderConfig {
            ch: 8,
            ch_mult: vec![1, 2],
            ..AutoencoderConfig::flux()
        };
        assert!(c.validate().is_err());
        assert!(AutoencoderConfig {
            norm_groups: 4,
            ..c
        }
        .validate()
        .is_ok());
    }
}
