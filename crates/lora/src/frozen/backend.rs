//! [`FrozenLinearBackend`]: `y = x · Wᵀ` for a frozen weight, and its input gradient, with
//! defaults composed from Burn's tensor ops (so every backend has them).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, FloatDType, IntDType, Tensor};
use fluxlora_io::quant::f8_e4m3fn_table;
use fluxlora_io::QuantFormat;

use crate::frozen::{FrozenFormat, FrozenMeta, FrozenWeight, Resident};

/// A backend that multiplies by frozen (possibly quantised, possibly streamed) weights.
///
/// The defaults decode the whole weight with tensor ops and call `matmul`; NdArray overrides
/// both with a kernel that decodes tiles of rows into `sgemm`, and Autodiff wraps them in one
/// node that keeps only the weight's handle (its backward calls
/// [`frozen_linear_backward`](Self::frozen_linear_backward), which decodes again).
pub trait FrozenLinearBackend: Backend {
    /// `x · Wᵀ` for `x: [n, d_in]` and `W: [d_out, d_in]`, in the weight's compute dtype;
    /// the result has `x`'s dtype.
    fn frozen_linear(x: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        composed_forward(x, weight)
    }

    /// The input gradient `dY · W` for `dy: [n, d_out]`; the result has `dy`'s dtype.
    fn frozen_linear_backward(dy: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        composed_backward(dy, weight)
    }
}

/// The composed forward: decode the whole weight, then `matmul`.
pub fn composed_forward<B: Backend>(x: Tensor<B, 2>, weight: &FrozenWeight<B>) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let w = decode(weight.meta(), weight.resident(&x.device()));
    cast_to(
        cast_to(x, weight.meta().compute).matmul(w.transpose()),
        dtype,
    )
}

/// The composed input gradient: decode the whole weight, then `matmul`.
pub fn composed_backward<B: Backend>(dy: Tensor<B, 2>, weight: &FrozenWeight<B>) -> Tensor<B, 2> {
    let dtype = dy.dtype();
    let w = decode(weight.meta(), weight.resident(&dy.device()));
    cast_to(cast_to(dy, weight.meta().compute).matmul(w), dtype)
}

/// `x` in `dtype` (unchanged when it already is).
pub fn cast_to<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// The decoded weight `[d_out, d_in]` in the compute dtype, from its device tensors.
pub(crate) fn decode<B: Backend>(meta: &FrozenMeta, r: Resident<B>) -> Tensor<B, 2> {
    let [o, i] = meta.shape;
    match meta.format {
        FrozenFormat::Float => cast_to(
            r.values.expect("a float frozen weight holds values"),
            meta.compute,
        ),
        FrozenFormat::Quantized(q) => {
            let codes = r.codes.expect("a quantised frozen weight holds codes");
            let scale = r.scale.expect("a quantised frozen weight holds scales");
            let device = codes.device();
            let values = match q {
                QuantFormat::Int8 => codes.cast(FloatDType::F32),
                QuantFormat::Fp8E4M3 => {
                    let table = Tensor::<B, 1>::from_floats(f8_e4m3fn_table().as_slice(), &device);
                    lookup(table, codes, [o, i])
                }
                QuantFormat::Bf16 => {
                    let all: Vec<f32> = (0u32..1 << 16).map(|b| f32::from_bits(b << 16)).collect();
                    lookup(Tensor::from_floats(all.as_slice(), &device), codes, [o, i])
                }
            };
            cast_to(values * scale.reshape([o, 1]), meta.compute)
        }
    }
}

/// `table[codes]` as a `[o, i]` tensor (codes cast to the backend's index type first).
fn lookup<B: Backend>(
    table: Tensor<B, 1>,
    codes: Tensor<B, 2, burn::tensor::Int>,
    shape: [usize; 2],
) -> Tensor<B, 2> {
    let index: IntDType = <B::IntElem as Element>::dtype().into();
    table
        .select(0, codes.reshape([shape[0] * shape[1]]).cast(index))
        .reshape(shape)
}
