//! Loading the autoencoder from BFL `ae.safetensors` or a diffusers `vae/` folder (any float
//! dtype, single file or sharded), tensor by tensor, with every shape checked.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType};
use fluxlora_io::Checkpoint;

use crate::autoencoder::config::{AutoencoderConfig, FLUX_SCALE_FACTOR, FLUX_SHIFT_FACTOR};
use crate::autoencoder::decoder::Decoder;
use crate::autoencoder::encoder::Encoder;
use crate::autoencoder::keys::{detect_layout, file_key, AeKeyLayout};
use crate::autoencoder::Autoencoder;
use crate::error::{FluxError, Result};
use crate::frozen::{open_checkpoint, storage_dtype, RandomLayers, WeightReader};

/// How to load an autoencoder. The defaults are FLUX.1's.
#[derive(Debug, Clone)]
pub struct AutoencoderLoadOptions {
    /// Storage (and compute) dtype; `None` = f32. bf16 needs a backend that supports it
    /// ([`crate::frozen::bf16_if_supported`]); inputs are cast to it and outputs returned in f32.
    pub dtype: Option<DType>,
    /// GroupNorm groups (32 for every Flux / SD autoencoder; not stored in the weights).
    pub norm_groups: usize,
    /// Latent scale (0.3611).
    pub scale_factor: f64,
    /// Latent shift (0.1159).
    pub shift_factor: f64,
}

impl Default for AutoencoderLoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            norm_groups: 32,
            scale_factor: FLUX_SCALE_FACTOR,
            shift_factor: FLUX_SHIFT_FACTOR,
        }
    }
}

/// The weights file of `path`: a model folder's `vae/` (diffusers) or `ae.safetensors` (BFL),
/// otherwise `path` itself (a file, an index, or a folder holding one checkpoint).
pub fn resolve_autoencoder_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        if path.join("vae").is_dir() {
            return path.join("vae");
        }
        if path.join("ae.safetensors").is_file() {
            return path.join("ae.safetensors");
        }
    }
    path.to_path_buf()
}

impl<B: Backend> Autoencoder<B> {
    /// A randomly initialised autoencoder of architecture `config` whose every parameter requires
    /// gradients (PyTorch's default init; seed the backend with `B::seed` first for a
    /// reproducible one). This is what `pretrain_tiny` trains; loaded autoencoders are frozen.
    pub fn init(config: AutoencoderConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let mut w = RandomLayers::<B>::new(device);
        let encoder = Encoder::load(&config, &mut w)?;
        let decoder = Decoder::load(&config, &mut w)?;
        Ok(Self {
            encoder,
            decoder,
            config,
        })
    }

    /// Loads an autoencoder (see [`resolve_autoencoder_path`] for what `path` may be). The
    /// architecture is inferred from the tensor shapes; every tensor is checked and a tensor the
    /// inferred architecture does not use is an error.
    pub fn load(
        path: impl AsRef<Path>,
        options: &AutoencoderLoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let path = resolve_autoencoder_path(path.as_ref());
        let ckpt = open_checkpoint(&path)?;
        Self::from_checkpoint(&ckpt, &path, options, device)
    }

    /// Loads from an opened checkpoint (`path` is used in messages).
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        path: &Path,
        options: &AutoencoderLoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let layout = detect_layout(ckpt.names()).ok_or_else(|| FluxError::UnknownModelFormat {
            path: path.into(),
            model: "Flux autoencoder",
            expected: "`encoder.down.0.block.0.conv1.weight` (BFL ae.safetensors) or \
                       `encoder.down_blocks.0.resnets.0.conv1.weight` (diffusers vae/), optionally \
                       prefixed",
        })?;
        let dtype = storage_dtype::<B>(device, options.dtype)?;
        let base = AutoencoderConfig {
            norm_groups: options.norm_groups,
            scale_factor: options.scale_factor,
            shift_factor: options.shift_factor,
            ..AutoencoderConfig::flux()
        };
        let shape_of = |bfl: &str| {
            ckpt.info(&file_key(&layout, bfl))
                .ok()
                .map(|(_, s)| s.to_vec())
        };
        let config = AutoencoderConfig::infer(shape_of, &base)?;
        let lay: AeKeyLayout = layout.clone();
        let mut w =
            WeightReader::<B>::new(ckpt, path, move |bfl| file_key(&lay, bfl), device, dtype);
        let encoder = Encoder::load(&config, &mut w)?;
        let decoder = Decoder::load(&config, &mut w)?;
        for part in ["encoder.", "decoder."] {
            w.ensure_all_used(&format!("{}{part}", layout.prefix), "autoencoder")?;
        }
        Ok(Self {
            encoder,
            decoder,
            config,
        })
    }
}
