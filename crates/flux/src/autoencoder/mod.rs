//! The Flux autoencoder (BFL `AutoEncoder`, diffusers `AutoencoderKL` with Flux's config).
//!
//! Data flows `image [B, 3, H, W] in [−1, 1]` → [`Encoder`] → moments → posterior **mean**
//! → `scale · (mean − shift)` = latent `[B, 16, H/8, W/8]` ([`Autoencoder::encode`]), and
//! back: `latent / scale + shift` → [`Decoder`] → image ([`Autoencoder::decode`]). The tiled
//! variants ([`tiled`]) run the same networks on overlapping tiles and blend them, as diffusers'
//! `enable_tiling()` does, so a large image never needs the whole activation map at once.
//!
//! - [`config`]: architecture, Flux preset, inference from weights.
//! - [`keys`]: BFL ↔ diffusers key names (they live in the I/O crate, `fluxlora_io::ae_keys`,
//!   next to the transformer's; re-exported here).
//! - [`resnet`]: GroupNorm, ResNet block, mid attention, down/upsamplers.
//! - [`encoder`], [`decoder`]: the two halves.
//! - [`load`]: loading from a checkpoint.
//! - [`tiled`]: tiled encode/decode.

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod load;
pub mod resnet;
pub mod tiled;

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, Tensor};

pub use config::{AutoencoderConfig, FLUX_SCALE_FACTOR, FLUX_SHIFT_FACTOR};
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use fluxlora_io::ae_keys as keys;
pub use keys::{AeKeyFormat, AeKeyLayout};
pub use load::{resolve_autoencoder_path, AutoencoderLoadOptions};
pub use tiled::TileOptions;

use crate::error::{FluxError, Result};
use crate::frozen::{cast_to, to_f32};

/// The KL autoencoder with its latent scale and shift. Frozen: all weights are module constants.
#[derive(Module, Debug)]
pub struct Autoencoder<B: Backend> {
    /// BFL `encoder`: image → moments (mean and log-variance).
    pub encoder: Encoder<B>,
    /// BFL `decoder`: unscaled latent → image.
    pub decoder: Decoder<B>,
    /// The architecture (not a parameter).
    #[module(skip)]
    pub config: AutoencoderConfig,
}

impl<B: Backend> Autoencoder<B> {
    /// The architecture.
    pub fn config(&self) -> &AutoencoderConfig {
        &self.config
    }

    /// The storage (and compute) dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.encoder.conv_in.weight.dtype()
    }

    fn check_image(&self, x: &Tensor<B, 4>) -> Result<()> {
        let [_, c, h, w] = x.dims();
        let f = self.config.downscale();
        if c != self.config.in_channels || h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(FluxError::Input {
                name: "image".into(),
                message: format!(
                    "shape {:?}: expected [B, {}, H, W] with H and W positive multiples of {f}; \
                     resize or crop the image",
                    x.dims(),
                    self.config.in_channels
                ),
            });
        }
        Ok(())
    }

    fn check_latent(&self, z: &Tensor<B, 4>) -> Result<()> {
        let [_, c, h, w] = z.dims();
        if c != self.config.z_channels || h == 0 || w == 0 {
            return Err(FluxError::Input {
                name: "latent".into(),
                message: format!(
                    "shape {:?}: expected [B, {}, h, w] with h, w > 0",
                    z.dims(),
                    self.config.z_channels
                ),
            });
        }
        Ok(())
    }

    /// The encoder on an image, in the weights' dtype: the moments (mean, log-variance).
    pub(crate) fn moments(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.encoder.forward(cast_to(x, self.dtype()))
    }

    /// Posterior mean → `scale · (mean − shift)`, in f32.
    pub(crate) fn scale_moments(&self, moments: Tensor<B, 4>) -> Tensor<B, 4> {
        let mean = to_f32(moments.narrow(1, 0, self.config.z_channels));
        (mean - self.config.shift_factor) * self.config.scale_factor
    }

    /// The decoder on an unscaled latent, in f32.
    pub(crate) fn decode_unscaled(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        to_f32(self.decoder.forward(cast_to(z, self.dtype())))
    }

    /// `z / scale + shift` (in f32).
    pub(crate) fn unscale(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        to_f32(z) / self.config.scale_factor + self.config.shift_factor
    }

    /// The raw posterior mean `[B, z, H/f, W/f]` of an image `[B, 3, H, W]` in `[−1, 1]` (no
    /// scale or shift), in f32.
    pub fn posterior_mean(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        self.check_image(&x)?;
        Ok(to_f32(self.moments(x).narrow(1, 0, self.config.z_channels)))
    }

    /// The Flux latent of an image `[B, 3, H, W]` in `[−1, 1]` (H, W multiples of the downscale
    /// factor 8): `scale · (posterior mean − shift)`, `[B, 16, H/8, W/8]` in f32.
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        self.check_image(&x)?;
        Ok(self.scale_moments(self.moments(x)))
    }

    /// The image `[B, 3, 8h, 8w]` (in about `[−1, 1]`, f32) of a Flux latent `[B, 16, h, w]`.
    pub fn decode(&self, z: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        self.check_latent(&z)?;
        Ok(self.decode_unscaled(self.unscale(z)))
    }
}
