//! Frozen base weights: a linear's weight kept in f32, bf16, fp8 E4M3 or int8, on the device or
//! streamed from host memory, and multiplied by [`FrozenLinearBackend::frozen_linear`], one
//! autodiff node whose backward decodes the weight again instead of keeping a decoded copy.
//!
//! - [`FrozenWeight`]: the storage (`[d_out, d_in]`, the checkpoint's layout), built from an
//!   f32 tensor or from the I/O crate's [`QuantizedHost`] codes.
//! - [`backend`]: the op, its composed default (decode with tensor ops, matmul) and the decode.
//! - `autodiff`: the tape node (saves only the weight handle; backward `dX = dY · W`).
//! - `ndarray`: the CPU kernel (decodes tiles of rows straight into `sgemm`, never the whole
//!   weight).
//!
//! Streaming ([`FrozenWeight::stream_from_host`]) moves the storage to host memory; every use
//! (forward, and backward) copies it to the device for that one matmul and drops it, so device
//! memory holds at most the weights of the op being computed. Nothing is copied back.

mod autodiff;
pub mod backend;
mod impls;
#[cfg(feature = "ndarray")]
mod ndarray;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use fluxlora_io::{QuantFormat, QuantizedHost};

pub use backend::FrozenLinearBackend;

/// How a frozen weight's values are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenFormat {
    /// A float tensor (f32, or bf16 where the backend computes in bf16).
    Float,
    /// Codes of an I/O-crate [`QuantFormat`] with a scale per output channel.
    Quantized(QuantFormat),
}

/// The storage a frozen base is loaded in (the config's `base_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseDtype {
    /// f32 (4 bytes a weight).
    #[default]
    F32,
    /// bf16: native bf16 tensors where the backend computes in bf16, else bf16 codes decoded
    /// to f32 for each matmul (2 bytes a weight either way).
    Bf16,
    /// fp8 E4M3 codes with a scale per output channel (1 byte a weight).
    Fp8,
    /// int8 codes with a scale per output channel (1 byte a weight).
    Int8,
}

impl BaseDtype {
    /// Parses the config spelling: `f32`, `bf16`, `fp8` (also `fp8_e4m3fn`, `float8`), `int8`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => BaseDtype::F32,
            "bf16" | "bfloat16" => BaseDtype::Bf16,
            "fp8" | "f8" | "float8" | "fp8_e4m3fn" | "float8_e4m3fn" => BaseDtype::Fp8,
            "int8" | "i8" | "q8" => BaseDtype::Int8,
            _ => return None,
        })
    }

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            BaseDtype::F32 => "f32",
            BaseDtype::Bf16 => "bf16",
            BaseDtype::Fp8 => "fp8",
            BaseDtype::Int8 => "int8",
        }
    }

    /// Bytes a weight element takes.
    pub fn bytes(self) -> usize {
        match self {
            BaseDtype::F32 => 4,
            BaseDtype::Bf16 => 2,
            BaseDtype::Fp8 | BaseDtype::Int8 => 1,
        }
    }

    /// The host codes format, for the dtypes stored as codes.
    pub fn quant_format(self) -> Option<QuantFormat> {
        match self {
            BaseDtype::F32 => None,
            BaseDtype::Bf16 => Some(QuantFormat::Bf16),
            BaseDtype::Fp8 => Some(QuantFormat::Fp8E4M3),
            BaseDtype::Int8 => Some(QuantFormat::Int8),
        }
    }
}

/// Bytes copied host → device by streamed weights since the process started (all weights).
static STREAMED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Total bytes streamed host → device so far (for benches and tests).
pub fn streamed_bytes() -> u64 {
    STREAMED_BYTES.load(Ordering::Relaxed)
}

/// The host copy of a streamed weight.
#[derive(Debug)]
pub struct HostCopy {
    values: Option<TensorData>,
    codes: Option<TensorData>,
    scale: Option<TensorData>,
}

/// Shape, format and where the storage lives; not a parameter.
#[derive(Debug, Clone)]
pub struct FrozenMeta {
    /// How the values are held.
    pub format: FrozenFormat,
    /// `[d_out, d_in]`.
    pub shape: [usize; 2],
    /// The dtype the matmul runs in (f32, or bf16 where the backend supports it).
    pub compute: DType,
    /// The storage, when it lives in host memory (streaming).
    host: Option<Arc<HostCopy>>,
}

/// A frozen linear weight, `[d_out, d_in]` (row r = output channel r).
#[derive(Module, Debug)]
pub struct FrozenWeight<B: Backend> {
    /// Float values (format `Float`), when on the device.
    values: Option<Param<Tensor<B, 2>>>,
    /// Codes (quantised formats), when on the device: U8 (fp8), I8 (int8), U16 (bf16) where
    /// the backend stores those int types, else I32 holding the same code values.
    codes: Option<Param<Tensor<B, 2, Int>>>,
    /// One scale per output channel (quantised formats), when on the device.
    scale: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    meta: FrozenMeta,
}

/// The device tensors of a frozen weight for one use.
#[derive(Debug, Clone)]
pub struct Resident<B: Backend> {
    /// Float values `[d_out, d_in]`.
    pub values: Option<Tensor<B, 2>>,
    /// Codes `[d_out, d_in]`.
    pub codes: Option<Tensor<B, 2, Int>>,
    /// Scales `[d_out]`.
    pub scale: Option<Tensor<B, 1>>,
}

impl<B: Backend> FrozenWeight<B> {
    /// A frozen f32 weight from `[d_out, d_in]` values; the matmul runs in `compute`.
    pub fn from_float(values: Tensor<B, 2>, compute: DType) -> Self {
        let shape = values.dims();
        let values = backend::cast_to(values.detach(), compute);
        Self {
            values: Some(Param::from_tensor(values).set_require_grad(false)),
            codes: None,
            scale: None,
            meta: FrozenMeta {
                format: FrozenFormat::Float,
                shape,
                compute,
                host: None,
            },
        }
    }

    /// A quantised weight from host codes; the matmul runs in `compute` (F32 or BF16).
    pub fn from_host(q: &QuantizedHost, compute: DType, device: &B::Device) -> Self {
        let (codes, scale) = host_tensors::<B>(q, device);
        Self {
            values: None,
            codes: Some(int_param(Tensor::from_data(
                codes,
                (device, code_dtype::<B>(q.format, device)),
            ))),
            scale: Some(
                Param::from_tensor(Tensor::from_data(scale, device)).set_require_grad(false),
            ),
            meta: FrozenMeta {
                format: FrozenFormat::Quantized(q.format),
                shape: q.shape,
                compute,
                host: None,
            },
        }
    }

    /// Moves the storage to host memory: each use then copies it to the device for that
    /// matmul only (kohya's block swap, host → device only).
    pub fn stream_from_host(mut self) -> Self {
        if self.meta.host.is_some() {
            return self;
        }
        let data = |t: Option<TensorData>| t;
        let host = HostCopy {
            values: data(self.values.take().map(|p| p.val().into_data())),
            codes: data(self.codes.take().map(|p| p.val().into_data())),
            scale: data(self.scale.take().map(|p| p.val().into_data())),
        };
        self.meta.host = Some(Arc::new(host));
        self
    }

    /// Moves a streamed weight's storage back to the device.
    pub fn keep_on_device(self, device: &B::Device) -> Self {
        match self.meta.host.clone() {
            None => self,
            Some(_) => {
                let r = self.resident(device);
                Self {
                    values: r
                        .values
                        .map(|t| Param::from_tensor(t).set_require_grad(false)),
                    codes: r.codes.map(int_param),
                    scale: r
                        .scale
                        .map(|t| Param::from_tensor(t).set_require_grad(false)),
                    meta: FrozenMeta {
                        host: None,
                        ..self.meta
                    },
                }
            }
        }
    }

    /// Whether the storage lives in host memory.
    pub fn is_streamed(&self) -> bool {
        self.meta.host.is_some()
    }

    /// Shape, format and compute dtype.
    pub fn meta(&self) -> &FrozenMeta {
        &self.meta
    }

    /// `[d_out, d_in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.meta.shape
    }

    /// Bytes held on the device (0 when streamed).
    pub fn device_bytes(&self) -> usize {
        if self.is_streamed() {
            return 0;
        }
        let [o, i] = self.meta.shape;
        match self.meta.format {
            FrozenFormat::Float => {
                o * i * self.values.as_ref().map_or(4, |v| v.val().dtype().size())
            }
            FrozenFormat::Quantized(_) => {
                let code = self.codes.as_ref().map_or(1, |c| c.val().dtype().size());
                o * i * code + 4 * o
            }
        }
    }

    /// Bytes of the storage wherever it lives.
    pub fn storage_bytes(&self) -> usize {
        let [o, i] = self.meta.shape;
        match self.meta.format {
            FrozenFormat::Float => o * i * self.meta.compute.size(),
            FrozenFormat::Quantized(q) => o * i * q.code_bytes() + 4 * o,
        }
    }

    /// The device tensors for one use (copied from the host copy when streamed).
    pub fn resident(&self, device: &B::Device) -> Resident<B> {
        match &self.meta.host {
            None => Resident {
                values: self.values.as_ref().map(|p| p.val()),
                codes: self.codes.as_ref().map(|p| p.val()),
                scale: self.scale.as_ref().map(|p| p.val()),
            },
            Some(h) => {
                let n: usize = [&h.values, &h.codes, &h.scale]
                    .iter()
                    .filter_map(|d| d.as_ref().map(|d| d.bytes.len()))
                    .sum();
                STREAMED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
                Resident {
                    values: h.values.clone().map(|d| Tensor::from_data(d, device)),
                    codes: h.codes.clone().map(|d| {
                        let dtype = d.dtype;
                        Tensor::from_data(d, (device, dtype))
                    }),
                    scale: h.scale.clone().map(|d| Tensor::from_data(d, device)),
                }
            }
        }
    }

    /// The f32 weight `[d_out, d_in]` (decoded; for merges, exports and tests, never kept in
    /// a training graph).
    pub fn dequantize(&self, device: &B::Device) -> Tensor<B, 2> {
        backend::decode(&self.meta, self.resident(device)).cast(DType::F32)
    }
}

/// A constant int parameter.
fn int_param<B: Backend>(t: Tensor<B, 2, Int>) -> Param<Tensor<B, 2, Int>> {
    Param::initialized(ParamId::new(), t)
}

/// The dtype codes are stored in on `device`: the format's own width where the backend holds
/// that int type, else I32.
fn code_dtype<B: Backend>(format: QuantFormat, device: &B::Device) -> DType {
    let own = match format {
        QuantFormat::Bf16 => DType::U16,
        QuantFormat::Fp8E4M3 => DType::U8,
        QuantFormat::Int8 => DType::I8,
    };
    if B::supports_dtype(device, own) {
        own
    } else {
        DType::I32
    }
}

/// Host tensor data for the codes (in the device's code dtype) and the scales.
fn host_tensors<B: Backend>(q: &QuantizedHost, device: &B::Device) -> (TensorData, TensorData) {
    let shape = q.shape;
    let codes = match code_dtype::<B>(q.format, device) {
        DType::U8 => TensorData::new(q.codes.clone(), shape),
        DType::I8 => TensorData::new(q.codes.iter().map(|&c| c as i8).collect::<Vec<_>>(), shape),
        DType::U16 => TensorData::new(
            q.codes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
            shape,
        ),
        _ => TensorData::new(code_values(q), shape),
    };
    (codes, TensorData::new(q.scale.clone(), [q.d_out()]))
}

/// The codes as i32 values (the fallback storage): bytes for fp8, signed bytes for int8, u16
/// for bf16.
fn code_values(q: &QuantizedHost) -> Vec<i32> {
    match q.format {
        QuantFormat::Bf16 => q
            .codes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i32)
            .collect(),
        QuantFormat::Fp8E4M3 => q.codes.iter().map(|&c| c as i32).collect(),
        QuantFormat::Int8 => q.codes.iter().map(|&c| c as i8 as i32).collect(),
    }
}
