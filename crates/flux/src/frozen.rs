//! Frozen weights for the autoencoder and the text encoders: a checkpoint reader that checks
//! every tensor's shape, the storage dtype choice, and the two stateless layers they share
//! (linear, 2-d convolution).
//!
//! Loading is tensor by tensor: each tensor is decoded from the memory-mapped checkpoint to
//! `f32` on the host, checked, (for linears) transposed to Burn's `[d_in, d_out]`, converted to
//! the storage dtype and moved to the device before the next one is read; the host never holds
//! more than one tensor (plus its transpose). Loaded weights are `Param`s that do not require
//! gradients, so they get no gradients and no optimizer state; [`LayerSource`] also builds the
//! autoencoder's layers at random with gradients on (PyTorch's default init), which is how
//! `pretrain_tiny` trains one. Dropping a model frees its device memory: encode once, drop the
//! encoder, keep the embeddings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param, ParamId};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::{ConvOptions, PaddedConvOptions};
use burn::tensor::{backend::Backend, DType, Distribution, Tensor};
use fluxlora_io::text_encoder_keys::TextEncoderKeys;
use fluxlora_io::{Checkpoint, HostTensor};

use crate::error::{FluxError, Result};

/// `Some(DType::BF16)` when `B` supports bf16 for general arithmetic on `device` (CUDA, Flex),
/// `None` otherwise (NdArray, and wgpu, whose bf16 kernels silently produce garbage).
/// Pass the result as the `dtype` of a load option.
pub fn bf16_if_supported<B: Backend>(device: &B::Device) -> Option<DType> {
    B::supports_dtype(device, DType::BF16).then_some(DType::BF16)
}

/// Resolves a requested storage dtype: `None` is f32; any other dtype must be a float dtype the
/// backend supports on `device`.
pub(crate) fn storage_dtype<B: Backend>(
    device: &B::Device,
    requested: Option<DType>,
) -> Result<DType> {
    let dtype = requested.unwrap_or(DType::F32);
    if !dtype.is_float() {
        return Err(FluxError::Config(format!(
            "weight dtype {dtype:?} is not a float dtype; use F32 or BF16"
        )));
    }
    if !B::supports_dtype(device, dtype) {
        return Err(FluxError::Config(format!(
            "this backend does not support {dtype:?} tensors on {device:?}; load in f32 (dtype \
             None) or use `bf16_if_supported` to pick bf16 only where it works"
        )));
    }
    Ok(dtype)
}

/// `path/sub` when `path` is a model folder holding `sub/` (the diffusers layout), else `path`.
pub(crate) fn model_subfolder(path: &Path, sub: &str) -> PathBuf {
    if path.is_dir() && path.join(sub).is_dir() {
        return path.join(sub);
    }
    path.to_path_buf()
}

/// The key prefix of a text encoder's checkpoint at `path` (e.g. `text_model.` or a ComfyUI
/// wrapper prefix), found by the I/O crate's probe for the model.
pub(crate) fn text_encoder_prefix(
    ckpt: &Checkpoint,
    path: &Path,
    keys: &TextEncoderKeys,
) -> Result<String> {
    keys.detect_prefix(ckpt.names())
        .ok_or_else(|| FluxError::UnknownModelFormat {
            path: path.into(),
            model: keys.model,
            expected: keys.expected,
        })
}

/// Opens a checkpoint, mapping the I/O error into [`FluxError::Io`].
pub(crate) fn open_checkpoint(path: &Path) -> Result<Checkpoint> {
    Checkpoint::open(path).map_err(|e| FluxError::Io {
        path: path.into(),
        source: e,
    })
}

/// Reads tensors by model-internal name from a checkpoint, translating each name to the file's
/// key, checking shapes, and recording which keys were used.
pub(crate) struct WeightReader<'a, B: Backend> {
    ckpt: &'a Checkpoint,
    path: PathBuf,
    key_of: Box<dyn Fn(&str) -> String + 'a>,
    device: B::Device,
    dtype: DType,
    used: BTreeSet<String>,
}

impl<'a, B: Backend> WeightReader<'a, B> {
    /// A reader over `ckpt` (opened from `path`, for messages); `key_of` maps internal names to
    /// file keys; tensors are stored in `dtype` on `device`.
    pub(crate) fn new(
        ckpt: &'a Checkpoint,
        path: &Path,
        key_of: impl Fn(&str) -> String + 'a,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        Self {
            ckpt,
            path: path.into(),
            key_of: Box::new(key_of),
            device: device.clone(),
            dtype,
            used: BTreeSet::new(),
        }
    }

    /// The file key of internal name `name`.
    pub(crate) fn key(&self, name: &str) -> String {
        (self.key_of)(name)
    }

    /// The file shape of internal name `name`, `None` when absent.
    pub(crate) fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.ckpt
            .info(&self.key(name))
            .ok()
            .map(|(_, s)| s.to_vec())
    }

    /// The file shape of `name`, which must exist with rank `rank` (used to infer architectures).
    pub(crate) fn require_shape(&self, name: &str, rank: usize, model: &str) -> Result<Vec<usize>> {
        match self.shape(name) {
            Some(s) if s.len() == rank => Ok(s),
            found => Err(FluxError::Config(format!(
                "{}: tensor `{}` is {}, expected a rank-{rank} tensor; the file is not a complete \
                 {model}",
                self.path.display(),
                self.key(name),
                found.map_or("missing".to_string(), |s| format!("of shape {s:?}")),
            ))),
        }
    }

    /// Reads `name` as f32, checking its shape is `expected` or one of `alternatives` (same
    /// element order, e.g. a `[C, C, 1, 1]` 1×1 convolution read as a `[C, C]` linear).
    pub(crate) fn host(
        &mut self,
        name: &str,
        expected: &[usize],
        alternatives: &[&[usize]],
    ) -> Result<HostTensor> {
        let key = self.key(name);
        let found =
            self.ckpt
                .info(&key)
                .map(|(_, s)| s.to_vec())
                .map_err(|_| FluxError::MissingKey {
                    path: self.path.clone(),
                    key: key.clone(),
                    expected: expected.to_vec(),
                })?;
        if found != expected && !alternatives.contains(&found.as_slice()) {
            return Err(FluxError::ShapeMismatch {
                path: self.path.clone(),
                key,
                expected: expected.to_vec(),
                found,
            });
        }
        let mut t = self.ckpt.read_f32(&key).map_err(|e| FluxError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        t.shape = expected.to_vec();
        self.used.insert(key);
        Ok(t)
    }

    fn upload<const D: usize>(&self, t: HostTensor) -> Result<Tensor<B, D>> {
        crate::host::upload_as(t, &self.device, self.dtype)
    }

    /// Reads `name` with shape `shape` onto the device.
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>> {
        let t = self.host(name, &shape, &[])?;
        self.upload(t)
    }

    /// Reads `name` with shape `shape` onto the device as a frozen parameter.
    pub(crate) fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<B, D>>> {
        Ok(frozen(self.tensor(name, shape)?))
    }

    /// Reads the linear `{name}.weight` (`[d_out, d_in]`, or `[d_out, d_in, 1, 1]` when
    /// `allow_1x1`) and, when `bias`, `{name}.bias` `[d_out]`.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        allow_1x1: bool,
    ) -> Result<Linear<B>> {
        let alt: &[usize] = &[d_out, d_in, 1, 1];
        let alts: &[&[usize]] = if allow_1x1 { &[alt] } else { &[] };
        let w = self.host(&format!("{name}.weight"), &[d_out, d_in], alts)?;
        let w = w
            .transpose()
            .map_err(|e| FluxError::Config(e.to_string()))?;
        let weight = frozen(self.upload(w)?);
        let bias = if bias {
            Some(self.param(&format!("{name}.bias"), [d_out])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Checkpoint keys starting with `prefix` that were never read.
    pub(crate) fn unused_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.ckpt
            .names()
            .filter(|k| k.starts_with(prefix) && !self.used.contains(*k))
            .map(str::to_string)
            .collect()
    }

    /// Fails naming the first unread key under `prefix` (a tensor the inferred architecture has no
    /// place for means the file is for a different architecture).
    pub(crate) fn ensure_all_used(&self, prefix: &str, model: &str) -> Result<()> {
        let unused = self.unused_with_prefix(prefix);
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(FluxError::Config(format!(
                "{}: {} tensor(s) the {model} has no place for, e.g. `{first}`; the file is for a \
                 different architecture",
                self.path.display(),
                unused.len()
            ))),
        }
    }
}

/// A parameter that takes no gradient (a loaded weight).
pub(crate) fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), t.set_require_grad(false))
}

/// A 1-D parameter (a norm's weight or bias).
pub(crate) type Vector<B> = Param<Tensor<B, 1>>;

/// Where the autoencoder's layers come from: a checkpoint ([`WeightReader`], frozen) or PyTorch's
/// default initialisation ([`RandomLayers`], trainable). Names are BFL keys without the
/// `.weight` / `.bias` suffix.
pub(crate) trait LayerSource<B: Backend> {
    /// A linear `d_in → d_out` (checkpoints may store it as a 1×1 convolution when `allow_1x1`).
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        allow_1x1: bool,
    ) -> Result<Linear<B>>;
    /// A square-kernel convolution `c_in → c_out`.
    fn conv2d(&mut self, name: &str, c_in: usize, c_out: usize, kernel: usize)
        -> Result<Conv2d<B>>;
    /// A normalisation's affine pair (`{name}.weight`, `{name}.bias`), each `[channels]`.
    fn norm_affine(&mut self, name: &str, channels: usize) -> Result<(Vector<B>, Vector<B>)>;
}

impl<B: Backend> LayerSource<B> for WeightReader<'_, B> {
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        allow_1x1: bool,
    ) -> Result<Linear<B>> {
        WeightReader::linear(self, name, d_in, d_out, bias, allow_1x1)
    }
    fn conv2d(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
    ) -> Result<Conv2d<B>> {
        Ok(Conv2d {
            weight: self.param(&format!("{name}.weight"), [c_out, c_in, kernel, kernel])?,
            bias: self.param(&format!("{name}.bias"), [c_out])?,
        })
    }
    fn norm_affine(
        &mut self,
        name: &str,
        channels: usize,
    ) -> Result<(Param<Tensor<B, 1>>, Param<Tensor<B, 1>>)> {
        Ok((
            self.param(&format!("{name}.weight"), [channels])?,
            self.param(&format!("{name}.bias"), [channels])?,
        ))
    }
}

/// Trainable layers with PyTorch's default initialisation: weights and biases uniform in
/// `±1/√fan_in` (`kaiming_uniform_(a=√5)`), norms at scale 1 and shift 0. Draws use the
/// backend's generator: seed it (`B::seed`) first for a reproducible model.
pub(crate) struct RandomLayers<B: Backend> {
    device: B::Device,
}

impl<B: Backend> RandomLayers<B> {
    pub(crate) fn new(device: &B::Device) -> Self {
        Self {
            device: device.clone(),
        }
    }

    fn uniform<const D: usize>(&self, shape: [usize; D], fan_in: usize) -> Param<Tensor<B, D>> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Param::from_tensor(
            Tensor::random(shape, Distribution::Uniform(-bound, bound), &self.device)
                .require_grad(),
        )
    }
}

impl<B: Backend> LayerSource<B> for RandomLayers<B> {
    fn linear(
        &mut self,
        _name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        _allow_1x1: bool,
    ) -> Result<Linear<B>> {
        Ok(Linear {
            weight: self.uniform([d_in, d_out], d_in),
            bias: bias.then(|| self.uniform([d_out], d_in)),
        })
    }
    fn conv2d(
        &mut self,
        _name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
    ) -> Result<Conv2d<B>> {
        let fan_in = c_in * kernel * kernel;
        Ok(Conv2d {
            weight: self.uniform([c_out, c_in, kernel, kernel], fan_in),
            bias: self.uniform([c_out], fan_in),
        })
    }
    fn norm_affine(
        &mut self,
        _name: &str,
        channels: usize,
    ) -> Result<(Param<Tensor<B, 1>>, Param<Tensor<B, 1>>)> {
        let ones = Tensor::ones([channels], &self.device).require_grad();
        let zeros = Tensor::zeros([channels], &self.device).require_grad();
        Ok((Param::from_tensor(ones), Param::from_tensor(zeros)))
    }
}

/// A linear layer: `x · weight + bias` with `weight` in Burn's `[d_in, d_out]` layout.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]` (the transpose of the PyTorch `[out, in]` checkpoint tensor).
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Applies the layer to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(Param::val))
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }
}

/// A 2-d convolution with square kernel, PyTorch weight layout `[c_out, c_in, k, k]`.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[c_out, c_in, k, k]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[c_out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Conv2d<B> {
    /// Stride 1, symmetric zero padding `padding` (1 for a 3×3 "same" convolution, 0 for 1×1).
    pub fn forward(&self, x: Tensor<B, 4>, padding: usize) -> Tensor<B, 4> {
        if prefers_im2col::<B>(&x.device()) {
            return conv2d_im2col(x, self.weight.val(), self.bias.val(), 1, [padding; 4]);
        }
        conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([1, 1], [padding, padding], [1, 1], 1),
        )
    }

    /// Stride 2 after zero padding of one row at the bottom and one column at the right (the
    /// asymmetric padding of the BFL / diffusers downsampler).
    pub fn forward_downsample(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if prefers_im2col::<B>(&x.device()) {
            return conv2d_im2col(x, self.weight.val(), self.bias.val(), 2, [0, 1, 0, 1]);
        }
        let options = PaddedConvOptions::asymmetric([2, 2], [0, 0], [1, 1], [1, 1], 1);
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }
}

/// Whether convolutions on `B` run faster as one matrix product (NdArray: its direct convolution,
/// and above all the convolution backward pass, index element by element through dynamic shapes
/// and run two orders of magnitude under its matmul; measured 10+ minutes for one autoencoder
/// training step at 64²).
fn prefers_im2col<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("ndarray")
}

/// A square-kernel convolution as one matrix product over gathered patches (im2col): the `k²`
/// shifted (and strided) views of the zero-padded input are stacked in the weight's
/// `(c_in, ky, kx)` order, so `[c_out, c_in·k²] × [c_in·k², H_out·W_out]` is the convolution.
/// `pad` is `[top, bottom, left, right]`.
pub(crate) fn conv2d_im2col<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    stride: usize,
    pad: [usize; 4],
) -> Tensor<B, 4> {
    use burn::tensor::ops::PadMode;
    use burn::tensor::Slice;
    let [n, ci, _, _] = x.dims();
    let [co, _, k, _] = weight.dims();
    let x = if pad == [0; 4] {
        x
    } else {
        x.pad((pad[2], pad[3], pad[0], pad[1]), PadMode::Constant(0.0))
    };
    let [_, _, hp, wp] = x.dims();
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let window = |start: usize, len: usize| {
        Slice::new(
            start as isize,
            Some((start + stride * (len - 1) + 1) as isize),
            stride as isize,
        )
    };
    let mut patches = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let all = Slice::new(0, None, 1);
            let p = x.clone().slice([all, all, window(ky, ho), window(kx, wo)]);
            patches.push(p.reshape([n, ci, ho * wo]));
        }
    }
    let cols = if k == 1 {
        patches.remove(0)
    } else {
        Tensor::stack::<4>(patches, 2).reshape([n, ci * k * k, ho * wo])
    };
    let w = weight
        .reshape([1, co, ci * k * k])
        .expand([n, co, ci * k * k]);
    (w.matmul(cols) + bias.reshape([1, co, 1])).reshape([n, co, ho, wo])
}

/// LayerNorm over the last dimension with affine parameters, computed in f32 whatever the
/// storage dtype (as PyTorch does for bf16), and returned in the input's dtype.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let y = (x - mean) * (var + eps).sqrt().recip();
    let y = y * to_f32(gamma.clone()).unsqueeze::<D>() + to_f32(beta.clone()).unsqueeze::<D>();
    cast_to(y, dtype)
}

/// Casts to f32 when needed.
pub(crate) fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    cast_to(x, DType::F32)
}

/// Casts to `dtype` when needed.
pub(crate) fn cast_to<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// Token ids `[B, L]` read back to the host (row-major), checked to lie in `0..vocab`.
pub(crate) fn host_ids<B: Backend>(
    ids: &Tensor<B, 2, burn::tensor::Int>,
    vocab: usize,
) -> Result<Vec<i64>> {
    let data = ids.to_data().convert::<i64>();
    let v = data.to_vec::<i64>().map_err(|e| FluxError::Input {
        name: "input_ids".into(),
        message: format!("{e:?}"),
    })?;
    if let Some(bad) = v.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        return Err(FluxError::Input {
            name: "input_ids".into(),
            message: format!(
                "token id {bad} is outside the vocabulary 0..{vocab}; the tokenizer does not match \
                 the model"
            ),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type AB = Autodiff<NdArray>;

    fn max_diff<const D: usize>(a: Tensor<NdArray, D>, b: Tensor<NdArray, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// im2col against Burn's direct convolution, values and gradients, for every padding and
    /// stride the autoencoder uses.
    #[test]
    fn im2col_convolution_matches_the_direct_one_with_gradients() {
        let dev = Default::default();
        let u = Distribution::Uniform(-1.0, 1.0);
        for (k, stride, pad) in [
            (3usize, 1usize, [1usize; 4]),
            (1, 1, [0; 4]),
            (3, 2, [0, 1, 0, 1]),
        ] {
            let x = Tensor::<AB, 4>::random([2, 3, 7, 6], u, &dev).require_grad();
            let w = Tensor::<AB, 4>::random([4, 3, k, k], u, &dev).require_grad();
            let b = Tensor::<AB, 1>::random([4], u, &dev).require_grad();
            let options = PaddedConvOptions::asymmetric(
                [stride, stride],
                [pad[0], pad[2]],
                [pad[1], pad[3]],
                [1, 1],
                1,
            );
            let direct = conv2d(x.clone(), w.clone(), Some(b.clone()), options);
            let ours = conv2d_im2col(x.clone(), w.clone(), b.clone(), stride, pad);
            assert_eq!(direct.dims(), ours.dims(), "k {k} stride {stride}");
            assert!(max_diff(direct.clone().inner(), ours.clone().inner()) < 1e-5);
            let probe = Tensor::<AB, 4>::random(direct.dims(), u, &dev);
            let g1 = (direct * probe.clone()).sum().backward();
            let g2 = (ours * probe).sum().backward();
            assert!(
                max_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap()) < 1e-5,
                "dx k {k} stride {stride}"
            );
            assert!(
                max_diff(w.grad(&g1).unwrap(), w.grad(&g2).unwrap()) < 1e-5,
                "dw k {k} stride {stride}"
            );
            assert!(
                max_diff(b.grad(&g1).unwrap(), b.grad(&g2).unwrap()) < 1e-5,
                "db k {k} stride {stride}"
            );
        }
    }
}
