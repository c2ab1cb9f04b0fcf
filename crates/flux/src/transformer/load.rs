//! Building the transformer's parameters: from a checkpoint (BFL, ComfyUI-prefixed or
//! diffusers, single file or sharded folder, any float dtype) or at random.
//!
//! Loading is tensor by tensor: each BFL tensor is decoded to `f32` on the host (fused from
//! diffusers' split q/k/v when needed), checked against the shape the configuration expects,
//! moved to the device and transposed there to Burn's `[d_in, d_out]`. Only one tensor is on the
//! host at a time; the checkpoint itself is memory-mapped.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use fluxlora_io::{Checkpoint, HostTensor, QuantizedHost};
use fluxlora_lora::{BaseDtype, FrozenWeight, LoraLinear};

use crate::error::{FluxError, Result};
use crate::fused::FluxBackend;
use crate::transformer::config::FluxConfig;
use crate::transformer::model::Flux;
use crate::transformer::swap::SwapPlan;

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
    /// `Some` builds frozen base weights in this storage (dense trainable ones otherwise).
    frozen: Option<BaseDtype>,
    swap: SwapPlan,
    depths: (usize, usize),
    seed: u64,
}

impl<'a, B: Backend> RandomInit<'a, B> {
    /// Random trainable parameters on `device`.
    pub fn new(device: &'a B::Device) -> Self {
        Self {
            device,
            frozen: None,
            swap: SwapPlan::default(),
            depths: (0, 0),
            seed: 0,
        }
    }

    /// Random frozen base weights stored as `base`, drawn on the host (one weight at a time,
    /// so a full-size model never exists in f32), with the blocks of `swap` streamed from host
    /// memory for a model of `depths` = (double, single) blocks.
    pub fn frozen(
        device: &'a B::Device,
        base: BaseDtype,
        swap: SwapPlan,
        depths: (usize, usize),
    ) -> Self {
        Self {
            device,
            frozen: Some(base),
            swap,
            depths,
            seed: 0x5EED,
        }
    }

    /// `n` values uniform in `(-bound, bound)`: the next `n` draws of a SplitMix64 stream,
    /// made in parallel ([`fluxlora_io::random_flux::splitmix_uniform`]).
    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        let mut v = vec![0f32; n];
        fluxlora_io::random_flux::splitmix_uniform(self.seed, 0, &mut v, bound);
        self.seed = self
            .seed
            .wrapping_add((n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        v
    }
}

impl<B: Backend> WeightSource<B> for RandomInit<'_, B> {
    fn linear(
        &mut self,
        path: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>> {
        let Some(base) = self.frozen else {
            return Ok(LoraLinear::init(d_in, d_out, bias, self.device));
        };
        let bound = 1.0 / (d_in as f32).sqrt();
        let w = HostTensor::new(vec![d_out, d_in], self.uniform(d_in * d_out, bound))
            .map_err(|e| FluxError::Config(format!("random weight for {path}: {e}")))?;
        let b = bias.then(|| {
            let v = self.uniform(d_out, bound);
            Tensor::from_data(TensorData::new(v, [d_out]), self.device)
        });
        let frozen = frozen_from_host(w, base, self.device)
            .map_err(|e| FluxError::Config(format!("random weight for {path}: {e}")))?;
        Ok(finish_frozen(
            LoraLinear::from_frozen(frozen, b),
            path,
            &self.swap,
            self.depths,
        ))
    }
    fn vector(&mut self, _key: &str, len: usize) -> Result<Tensor<B, 1>> {
        let t = Tensor::ones([len], self.device);
        Ok(if self.frozen.is_some() {
            t
        } else {
            t.require_grad()
        })
    }
}

/// A frozen weight in `base` from a host `[d_out, d_in]` f32 weight.
fn frozen_from_host<B: Backend>(
    w: HostTensor,
    base: BaseDtype,
    device: &B::Device,
) -> std::result::Result<FrozenWeight<B>, fluxlora_io::IoError> {
    let compute = frozen_compute::<B>(device, base);
    let shape = [w.shape[0], w.shape[1]];
    Ok(match (base.quant_format(), compute) {
        (None, _) | (Some(fluxlora_io::QuantFormat::Bf16), DType::BF16) => {
            FrozenWeight::from_float(
                Tensor::from_data(TensorData::new(w.data, shape), device),
                compute,
            )
        }
        (Some(format), _) => {
            FrozenWeight::from_host(&QuantizedHost::quantize(&w, format)?, compute, device)
        }
    })
}

/// `lin`, with its base streamed from host memory when `swap` covers `path`.
fn finish_frozen<B: Backend>(
    lin: LoraLinear<B>,
    path: &str,
    swap: &SwapPlan,
    (depth, single_depth): (usize, usize),
) -> LoraLinear<B> {
    if swap.covers(path, depth, single_depth) {
        lin.stream_base_from_host()
    } else {
        lin
    }
}

/// How to load a transformer.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// RoPE split of the head dimension; `None` = `[16, 56, 56]` (only valid for head dim 128).
    pub axes_dim: Option<Vec<usize>>,
    /// How the frozen base linears' weights are stored (biases and norm scales stay f32):
    /// f32; bf16 (native bf16 matmuls where the backend has them, else bf16 codes decoded per
    /// matmul); fp8 E4M3 or int8 codes with a scale per output channel. Quantised matmuls run
    /// in bf16 where the backend supports it, else f32; adapters stay f32. fp8 checkpoints
    /// (plain, or ComfyUI's scaled fp8) load into fp8 without re-rounding. A trainable base
    /// ignores this and stays f32.
    pub base_dtype: BaseDtype,
    /// Keep the frozen weights of these blocks in host memory and copy each to the device only
    /// for its matmuls (block swap); see [`crate::transformer::SwapPlan`].
    pub blocks_to_swap: usize,
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

    /// The recipe of BFL key `bfl_key`, after checking every source exists and the result has
    /// shape `expected`.
    fn resolve(&self, bfl_key: &str, expected: &[usize]) -> Result<Recipe> {
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
        Ok(recipe)
    }

    fn io(&self) -> impl Fn(fluxlora_io::IoError) -> FluxError + '_ {
        |e| FluxError::Io {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Reads BFL key `bfl_key` as f32, checking it has shape `expected`. fp8 weights are
    /// multiplied by their ComfyUI `scale_weight`.
    pub fn read(&self, bfl_key: &str, expected: &[usize]) -> Result<HostTensor> {
        let recipe = self.resolve(bfl_key, expected)?;
        let io = self.io();
        match &recipe {
            Recipe::Same(s) => self.read_source(s),
            Recipe::ConcatRows(v) => {
                let parts = v
                    .iter()
                    .map(|s| self.read_source(s))
                    .collect::<Result<Vec<_>>>()?;
                HostTensor::concat_rows(&parts.iter().collect::<Vec<_>>()).map_err(io)
            }
            Recipe::SwapHalves(s) => {
                let t = self.read_source(s)?;
                let half = t.shape[0] / 2;
                HostTensor::concat_rows(&[
                    &t.rows(half, 2 * half).map_err(&io)?,
                    &t.rows(0, half).map_err(&io)?,
                ])
                .map_err(io)
            }
        }
    }

    /// Reads the 2-D weight under BFL key `bfl_key` (`expected` = `[d_out, d_in]`) as codes
    /// of `format`: fp8 bytes of the file are kept as they are (with their scale), anything
    /// else is decoded to f32 and quantised with a scale per output channel.
    pub fn read_quantized(
        &self,
        bfl_key: &str,
        expected: [usize; 2],
        format: fluxlora_io::QuantFormat,
    ) -> Result<QuantizedHost> {
        let recipe = self.resolve(bfl_key, &expected)?;
        let io = self.io();
        let part = |s: &str| -> Result<QuantizedHost> {
            let (dtype, shape) = self.store.info(s).map_err(&io)?;
            if format == fluxlora_io::QuantFormat::Fp8E4M3
                && dtype == fluxlora_io::Dtype::F8_E4M3
                && shape.len() == 2
            {
                let shape = [shape[0], shape[1]];
                let scale = self.fp8_scale(s, shape[0])?.unwrap_or_else(|| vec![1.0]);
                let raw = self.store.raw(s).map_err(&io)?;
                let q = QuantizedHost::from_fp8_bytes(shape, raw, &scale).map_err(&io)?;
                // The codes are copied: the file's pages need not stay resident.
                self.store.release(s).map_err(&io)?;
                return Ok(q);
            }
            QuantizedHost::quantize(&self.read_source(s)?, format).map_err(&io)
        };
        match &recipe {
            Recipe::Same(s) => part(s),
            Recipe::ConcatRows(v) => {
                let parts = v.iter().map(|s| part(s)).collect::<Result<Vec<_>>>()?;
                QuantizedHost::concat_rows(&parts).map_err(&io)
            }
            Recipe::SwapHalves(s) => {
                let q = part(s)?;
                let half = q.d_out() / 2;
                QuantizedHost::concat_rows(&[
                    q.rows(half, 2 * half).map_err(&io)?,
                    q.rows(0, half).map_err(&io)?,
                ])
                .map_err(io)
            }
        }
    }

    /// One source tensor as f32, with an fp8 weight's scale applied.
    fn read_source(&self, s: &str) -> Result<HostTensor> {
        let io = self.io();
        let mut t = self.store.read_f32(s).map_err(&io)?;
        let (dtype, _) = self.store.info(s).map_err(&io)?;
        if matches!(
            dtype,
            fluxlora_io::Dtype::F8_E4M3 | fluxlora_io::Dtype::F8_E5M2
        ) {
            let rows = t.shape.first().copied().unwrap_or(1);
            if let Some(scale) = self.fp8_scale(s, rows)? {
                let cols = t.numel() / rows.max(1);
                for (r, row) in t.data.chunks_mut(cols.max(1)).enumerate() {
                    let sc = if scale.len() == 1 { scale[0] } else { scale[r] };
                    row.iter_mut().for_each(|v| *v *= sc);
                }
            }
        }
        Ok(t)
    }

    /// The ComfyUI `scale_weight` of fp8 tensor `s` (one value, or one per output row); an
    /// error when the file is marked `scaled_fp8` but this weight has none.
    fn fp8_scale(&self, s: &str, rows: usize) -> Result<Option<Vec<f32>>> {
        let Some(stem) = s.strip_suffix(".weight") else {
            return Ok(None);
        };
        let key = format!("{stem}.scale_weight");
        if self.store.contains(&key) {
            let scale = self.store.read_f32(&key).map_err(self.io())?;
            if scale.numel() != 1 && scale.numel() != rows {
                return Err(FluxError::Config(format!(
                    "{}: {key} holds {} values; a scaled-fp8 weight scale is one value or one per \
                     output row ({rows}) — the file is damaged, re-download or re-export it",
                    self.path.display(),
                    scale.numel()
                )));
            }
            return Ok(Some(scale.data));
        }
        if self.is_scaled_fp8() {
            return Err(FluxError::Config(format!(
                "{}: {s} is fp8 in a ComfyUI scaled-fp8 checkpoint (it has a `scaled_fp8` \
                 marker) but has no `{key}`; without its scale the weight reads wrong by a \
                 per-tensor factor — re-export the checkpoint with its scales, or use a bf16 / \
                 plain fp8 file",
                self.path.display()
            )));
        }
        Ok(None)
    }

    /// Whether the file carries ComfyUI's `scaled_fp8` marker tensor.
    pub fn is_scaled_fp8(&self) -> bool {
        self.store
            .names()
            .any(|n| n == "scaled_fp8" || n.ends_with(".scaled_fp8"))
    }
}

/// Parameters read from a [`FluxCheckpoint`].
struct CheckpointWeights<'a, B: Backend> {
    ckpt: &'a FluxCheckpoint,
    device: &'a B::Device,
    options: &'a LoadOptions,
    /// Which blocks' frozen weights stay in host memory.
    swap: SwapPlan,
    /// `(double, single)` block counts.
    depths: (usize, usize),
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
        let key = format!("{path}.weight");
        let b = if bias {
            Some(self.tensor(&format!("{path}.bias"), [d_out])?)
        } else {
            None
        };
        if self.options.trainable_base {
            let w = self.tensor(&key, [d_out, d_in])?.transpose();
            return Ok(LoraLinear::from_weights(w, b));
        }
        let compute = frozen_compute::<B>(self.device, self.options.base_dtype);
        let frozen = match (self.options.base_dtype, compute) {
            (BaseDtype::F32, _) | (BaseDtype::Bf16, DType::BF16) => {
                FrozenWeight::from_float(self.tensor(&key, [d_out, d_in])?, compute)
            }
            (dtype, _) => {
                let format = dtype
                    .quant_format()
                    .unwrap_or(fluxlora_io::QuantFormat::Bf16);
                let q = self.ckpt.read_quantized(&key, [d_out, d_in], format)?;
                FrozenWeight::from_host(&q, compute, self.device)
            }
        };
        Ok(finish_frozen(
            LoraLinear::from_frozen(frozen, b),
            path,
            &self.swap,
            self.depths,
        ))
    }

    fn vector(&mut self, key: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(self
            .tensor(key, [len])?
            .set_require_grad(self.options.trainable_base))
    }
}

impl<B: FluxBackend> Flux<B> {
    /// A random model whose base is frozen in `base`, with `blocks_to_swap` blocks streamed
    /// from host memory: real shapes without a checkpoint, for benches.
    pub fn init_frozen(
        config: &FluxConfig,
        base: BaseDtype,
        blocks_to_swap: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let depths = (config.depth, config.depth_single_blocks);
        let swap = SwapPlan::kohya(blocks_to_swap, depths.0, depths.1)?;
        Self::build(config, &mut RandomInit::frozen(device, base, swap, depths))
    }

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
        if options.trainable_base && options.blocks_to_swap > 0 {
            return Err(FluxError::Config(format!(
                "blocks_to_swap = {} streams frozen weights, but this run trains the base \
                 (full fine-tuning); set blocks_to_swap = 0 or train a LoRA",
                options.blocks_to_swap
            )));
        }
        let swap = SwapPlan::kohya(
            options.blocks_to_swap,
            config.depth,
            config.depth_single_blocks,
        )?;
        let mut w = CheckpointWeights {
            ckpt,
            device,
            options,
            swap,
            depths: (config.depth, config.depth_single_blocks),
        };
        Self::build(config, &mut w)
    }
}

/// The dtype frozen matmuls run in: bf16 for a low-precision base where the backend computes in
/// bf16 (CUDA), else f32.
pub fn frozen_compute<B: Backend>(device: &B::Device, base: BaseDtype) -> DType {
    match base {
        BaseDtype::F32 => DType::F32,
        _ => crate::frozen::bf16_if_supported::<B>(device).unwrap_or(DType::F32),
    }
}
