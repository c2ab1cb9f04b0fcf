//! Building the transformer's parameters: from a checkpoint (BFL, ComfyUI-prefixed or
//! diffusers, single file or sharded folder, any float dtype) or at random.
//!
//! Loading is tensor by tensor: each BFL tensor is decoded to `f32` on the host (fused from
//! diffusers' split q/k/v when needed), checked against the shape the configuration expects,
//! moved to the device and transposed there to Burn's `[d_in, d_out]`. Only one tensor is on the
//! host at a time; the checkpoint itself is memory-mapped.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use fluxlora_io::{Checkpoint, HostTensor};
use fluxlora_lora::LoraLinear;

use crate::error::{FluxError, Result};
use crate::fused::FluxBackend;
use crate::transformer::config::FluxConfig;
use crate::transformer::model::Flux;

pub use fluxlora_io::flux_keys;

use flux_keys::Recipe;
pub use flux_keys::{FluxKeyFormat, FluxKeyLayout};

/// Where parameters come from while a model is built. Paths are BFL module paths
/// (`double_blocks.0.img_attn.qkv`); tensors are in Burn layout.
pub trait WeightSource<B: Backend> {
    /// The linear `{path}` (`{path}.weight` `[d_out, d_in]` in the file, `{path}.bias` `[d_out]`).
    fn linear(
        &mut self,
        path: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>>;
    /// A 1-d parameter stored under `key` (RMSNorm scales; ones at random init), marked as
    /// requiring gradients or not.
    fn vector(&mut self, key: &str, len: usize) -> Result<Tensor<B, 1>>;
}

/// Random parameters (PyTorch `nn.Linear` init, unit norm scales).
pub struct RandomInit<'a, B: Backend> {
    device: &'a B::Device,
}

impl<'a, B: Backend> RandomInit<'a, B> {
    /// Random parameters on `device`.
    pub fn new(device: &'a B::Device) -> Self {
        Self { device }
    }
}

impl<B: Backend> WeightSource<B> for RandomInit<'_, B> {
    fn linear(
        &mut self,
        _path: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>> {
        Ok(LoraLinear::init(d_in, d_out, bias, self.device))
    }
    fn vector(&mut self, _key: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(Tensor::ones([len], self.device).require_grad())
    }
}

/// How to load a transformer.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// RoPE split of the head dimension; `None` = `[16, 56, 56]` (only valid for head dim 128).
    pub axes_dim: Option<Vec<usize>>,
    /// Store the base linears (weights and biases; not the norm scales) in this float dtype,
    /// e.g. `DType::BF16` to halve memory; each base matmul then runs in that dtype and its
    /// output is cast back to f32 (adapters stay f32). The backend must support the dtype
    /// (`Backend::supports_dtype`; use [`crate::bf16_if_supported`]), else loading fails —
    /// NdArray and wgpu do not. `None` keeps f32.
    pub base_dtype: Option<DType>,
    /// Keep the base trainable (full fine-tuning). By default every loaded parameter is frozen:
    /// it gets no gradient and no optimizer state; LoRA adapters added later train.
    pub trainable_base: bool,
}

/// A Flux transformer checkpoint opened for loading, with its key layout detected.
#[derive(Debug)]
pub struct FluxCheckpoint {
    path: PathBuf,
    store: Checkpoint,
    layout: FluxKeyLayout,
}

impl FluxCheckpoint {
    /// Opens a `.safetensors` file, a sharded `*.safetensors.index.json`, or a folder holding
    /// either (a diffusers repo root is accepted too: its `transformer/` subfolder is used).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let sub = path.join("transformer");
        let target = if path.is_dir() && sub.is_dir() {
            sub.as_path()
        } else {
            path
        };
        let store = Checkpoint::open(target).map_err(|e| FluxError::Io {
            path: target.into(),
            source: e,
        })?;
        let layout =
            flux_keys::detect_layout(store.names()).ok_or_else(|| FluxError::UnknownFormat {
                path: target.into(),
            })?;
        Ok(Self {
            path: target.into(),
            store,
            layout,
        })
    }

    /// The file or folder that was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The detected key layout (format and prefix).
    pub fn layout(&self) -> &FluxKeyLayout {
        &self.layout
    }

    fn source_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.store.info(name).ok().map(|(_, s)| s.to_vec())
    }

    /// Shape (PyTorch layout) of the tensor that BFL key `bfl_key` resolves to; `None` if absent.
    pub fn shape(&self, bfl_key: &str) -> Option<Vec<usize>> {
        flux_keys::recipe(&self.layout, bfl_key)?.shape(|n| self.source_shape(n))
    }

    /// The architecture, inferred from tensor shapes (see [`FluxConfig::infer`]).
    pub fn infer_config(&self, axes_dim: Option<Vec<usize>>) -> Result<FluxConfig> {
        FluxConfig::infer(|k| self.shape(k), axes_dim)
    }

    /// Reads BFL key `bfl_key` as f32, checking it has shape `expected`.
    pub fn read(&self, bfl_key: &str, expected: &[usize]) -> Result<HostTensor> {
        let missing = || FluxError::MissingKey {
            path: self.path.clone(),
            key: bfl_key.into(),
            expected: expected.to_vec(),
        };
        let recipe = flux_keys::recipe(&self.layout, bfl_key).ok_or_else(missing)?;
        let display_key = || match &recipe {
            Recipe::Same(s) | Recipe::SwapHalves(s) => s.clone(),
            Recipe::ConcatRows(v) => format!("{bfl_key} (= rows of {})", v.join(" + ")),
        };
        // Every source must exist; name the first one that does not.
        for s in recipe.sources() {
            if self.source_shape(s).is_none() {
                return Err(FluxError::MissingKey {
                    path: self.path.clone(),
                    key: s.into(),
                    expected: expected.to_vec(),
                });
            }
        }
        let found = recipe.shape(|n| self.source_shape(n)).unwrap_or_default();
        if found != expected {
            return Err(FluxError::ShapeMismatch {
                path: self.path.clone(),
                key: display_key(),
                expected: expected.to_vec(),
                found,
            });
        }
        let io = |e: fluxlora_io::IoError| FluxError::Io {
            path: self.path.clone(),
            source: e,
        };
        match &recipe {
            Recipe::Same(s) => self.store.read_f32(s).map_err(io),
            Recipe::ConcatRows(v) => {
                let parts = v
                    .iter()
                    .map(|s| self.store.read_f32(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io)?;
                HostTensor::concat_rows(&parts.iter().collect::<Vec<_>>()).map_err(io)
            }
            Recipe::SwapHalves(s) => {
                let t = self.store.read_f32(s).map_err(io)?;
                let half = t.shape[0] / 2;
                HostTensor::concat_rows(&[
                    &t.rows(half, 2 * half).map_err(io)?,
                    &t.rows(0, half).map_err(io)?,
                ])
                .map_err(io)
            }
        }
    }
}

/// Parameters read from a [`FluxCheckpoint`].
struct CheckpointWeights<'a, B: Backend> {
    ckpt: &'a FluxCheckpoint,
    device: &'a B::Device,
    options: &'a LoadOptions,
}

impl<B: Backend> CheckpointWeights<'_, B> {
    fn tensor<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let host = self.ckpt.read(key, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(host.data, shape),
            self.device,
        ))
    }
}

impl<B: Backend> WeightSource<B> for CheckpointWeights<'_, B> {
    fn linear(
        &mut self,
        path: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>> {
        let mut w = self
            .tensor(&format!("{path}.weight"), [d_out, d_in])?
            .transpose();
        let mut b = if bias {
            Some(self.tensor(&format!("{path}.bias"), [d_out])?)
        } else {
            None
        };
        if let Some(dtype) = self.options.base_dtype {
            w = w.cast(dtype);
            b = b.map(|b| b.cast(dtype));
        }
        let lin = LoraLinear::from_weights(w, b);
        Ok(if self.options.trainable_base {
            lin
        } else {
            lin.freeze_base()
        })
    }

    fn vector(&mut self, key: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(self
            .tensor(key, [len])?
            .set_require_grad(self.options.trainable_base))
    }
}

impl<B: FluxBackend> Flux<B> {
    /// Loads a transformer from a checkpoint path (format auto-detected, configuration inferred).
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions, device: &B::Device) -> Result<Self> {
        let ckpt = FluxCheckpoint::open(path)?;
        let config = ckpt.infer_config(options.axes_dim.clone())?;
        Self::from_checkpoint(&ckpt, &config, options, device)
    }

    /// Loads the parameters of a model with architecture `config` from `ckpt`. Errors name the
    /// first missing or mis-shaped tensor.
    pub fn from_checkpoint(
        ckpt: &FluxCheckpoint,
        config: &FluxConfig,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        if let Some(dtype) = options.base_dtype {
            if !dtype.is_float() || !B::supports_dtype(device, dtype) {
                return Err(FluxError::Config(format!(
                    "this backend/device cannot store and compute {dtype:?} weights; load with \
                     base_dtype None (f32)"
                )));
            }
        }
        let mut w = CheckpointWeights {
            ckpt,
            device,
            options,
        };
        Self::build(config, &mut w)
    }
}
