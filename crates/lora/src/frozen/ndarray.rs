//! [`FrozenLinearBackend`] for NdArray: the weight is decoded a tile of rows at a time (about
//! 4 MiB of f32, rows in parallel) straight into `sgemm`, so a quantised weight is never decoded
//! whole; a float weight goes to `sgemm` as it is, read through transposed strides. Other
//! dtypes than f32 activations take the composed defaults.

use burn::tensor::{DType, Tensor, TensorData};
use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};
use fluxlora_io::quant::f8_e4m3fn_table;
use fluxlora_io::QuantFormat;
use rayon::prelude::*;

use crate::frozen::backend::{composed_backward, composed_forward, FrozenLinearBackend};
use crate::frozen::{FrozenFormat, FrozenWeight};

/// Bytes of f32 a decoded tile may hold.
const TILE_BYTES: usize = 4 << 20;

/// A weight's storage as host slices.
enum Storage {
    Float(SharedArray<f32>),
    Codes(Codes, SharedArray<f32>, QuantFormat),
}

enum Codes {
    U8(SharedArray<u8>),
    I8(SharedArray<i8>),
    U16(SharedArray<u16>),
    I32(SharedArray<i32>),
}

fn standard<T: Clone>(a: SharedArray<T>) -> SharedArray<T> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned().into_shared()
    }
}

fn float_host(t: NdArrayTensor) -> Option<SharedArray<f32>> {
    match t {
        NdArrayTensor::F32(s) => Some(standard(s.into_shared())),
        _ => None,
    }
}

fn storage<E, I, Q>(w: &FrozenWeight<NdArray<E, I, Q>>) -> Option<Storage>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    let meta = w.meta();
    if meta.compute != DType::F32 {
        return None;
    }
    let r = w.resident(&Default::default());
    match meta.format {
        FrozenFormat::Float => float_host(r.values?.into_primitive().tensor()).map(Storage::Float),
        FrozenFormat::Quantized(q) => {
            let scale = float_host(r.scale?.into_primitive().tensor())?;
            let codes = match r.codes?.into_primitive() {
                NdArrayTensor::U8(s) => Codes::U8(standard(s.into_shared())),
                NdArrayTensor::I8(s) => Codes::I8(standard(s.into_shared())),
                NdArrayTensor::U16(s) => Codes::U16(standard(s.into_shared())),
                NdArrayTensor::I32(s) => Codes::I32(standard(s.into_shared())),
                _ => return None,
            };
            Some(Storage::Codes(codes, scale, q))
        }
    }
}

/// Decodes rows `[r0, r0 + out.len() / k)` into `out` (row-major, `k` values a row).
fn decode_tile(
    codes: &Codes,
    scale: &[f32],
    format: QuantFormat,
    r0: usize,
    k: usize,
    out: &mut [f32],
) {
    let table = f8_e4m3fn_table();
    out.par_chunks_mut(k).enumerate().for_each(|(j, row)| {
        let r = r0 + j;
        let s = scale[r];
        let span = r * k..(r + 1) * k;
        macro_rules! each {
            ($src:expr, $f:expr) => {
                for (o, &c) in row.iter_mut().zip(&$src[span.clone()]) {
                    *o = $f(c) * s;
                }
            };
        }
        match (codes, format) {
            (Codes::U8(c), _) => each!(c.as_slice().unwrap(), |c: u8| table[c as usize]),
            (Codes::I8(c), _) => each!(c.as_slice().unwrap(), |c: i8| c as f32),
            (Codes::U16(c), _) => each!(c.as_slice().unwrap(), |c: u16| f32::from_bits(
                (c as u32) << 16
            )),
            (Codes::I32(c), QuantFormat::Fp8E4M3) => {
                each!(c.as_slice().unwrap(), |c: i32| table[(c & 0xFF) as usize])
            }
            (Codes::I32(c), QuantFormat::Bf16) => {
                each!(c.as_slice().unwrap(), |c: i32| f32::from_bits(
                    (c as u32 & 0xFFFF) << 16
                ))
            }
            (Codes::I32(c), QuantFormat::Int8) => each!(c.as_slice().unwrap(), |c: i32| c as f32),
        }
    });
}

/// Rows per tile for width `k`.
fn tile_rows(k: usize, m: usize) -> usize {
    (TILE_BYTES / (4 * k.max(1))).max(16).min(m.max(1))
}

/// `c (+)= a · b` through matrixmultiply, with explicit strides.
#[allow(clippy::too_many_arguments)]
fn gemm(
    (m, k, n): (usize, usize, usize),
    a: *const f32,
    (rsa, csa): (usize, usize),
    b: *const f32,
    (rsb, csb): (usize, usize),
    accumulate: bool,
    c: *mut f32,
    (rsc, csc): (usize, usize),
) {
    // SAFETY: every caller passes pointers into live buffers that hold the m×k, k×n and m×n
    // matrices at the given strides, and `c` does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a,
            rsa as isize,
            csa as isize,
            b,
            rsb as isize,
            csb as isize,
            if accumulate { 1.0 } else { 0.0 },
            c,
            rsc as isize,
            csc as isize,
        );
    }
}

fn to_tensor<E, I, Q>(v: Vec<f32>, shape: [usize; 2]) -> Tensor<NdArray<E, I, Q>, 2>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> FrozenLinearBackend
    for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn frozen_linear(x: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        let [n, k] = x.dims();
        let [m, wk] = weight.dims();
        let (Some(store), Some(hx)) = (
            (k == wk).then(|| storage(weight)).flatten(),
            float_host(x.clone().into_primitive().tensor()),
        ) else {
            return composed_forward(x, weight);
        };
        let xs = hx.as_slice().unwrap();
        let mut y = vec![0.0f32; n * m];
        match store {
            Storage::Float(w) => {
                let ws = w.as_slice().unwrap();
                gemm(
                    (n, k, m),
                    xs.as_ptr(),
                    (k, 1),
                    ws.as_ptr(),
                    (1, k),
                    false,
                    y.as_mut_ptr(),
                    (m, 1),
                );
            }
            Storage::Codes(codes, scale, format) => {
                let t = tile_rows(k, m);
                let mut buf = vec![0.0f32; t * k];
                let scale = scale.as_slice().unwrap();
                for r0 in (0..m).step_by(t) {
                    let rows = t.min(m - r0);
                    decode_tile(&codes, scale, format, r0, k, &mut buf[..rows * k]);
                    // y[:, r0..r0+rows] = x · tileᵀ (tile element (j, kk) at j·k + kk).
                    gemm(
                        (n, k, rows),
                        xs.as_ptr(),
                        (k, 1),
                        buf.as_ptr(),
                        (1, k),
                        false,
                        y[r0..].as_mut_ptr(),
                        (m, 1),
                    );
                }
            }
        }
        to_tensor(y, [n, m])
    }

    fn frozen_linear_backward(dy: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        let [n, m] = dy.dims();
        let [wm, k] = weight.dims();
        let (Some(store), Some(hd)) = (
            (m == wm).then(|| storage(weight)).flatten(),
            float_host(dy.clone().into_primitive().tensor()),
        ) else {
            return composed_backward(dy, weight);
        };
        let ds = hd.as_slice().unwrap();
        let mut dx = vec![0.0f32; n * k];
        match store {
            Storage::Float(w) => {
                let ws = w.as_slice().unwrap();
                gemm(
                    (n, m, k),
                    ds.as_ptr(),
                    (m, 1),
                    ws.as_ptr(),
                    (k, 1),
                    false,
                    dx.as_mut_ptr(),
                    (k, 1),
                );
            }
            Storage::Codes(codes, scale, format) => {
                let t = tile_rows(k, m);
                let mut buf = vec![0.0f32; t * k];
                let scale = scale.as_slice().unwrap();
                for r0 in (0..m).step_by(t) {
                    let rows = t.min(m - r0);
                    decode_tile(&codes, scale, format, r0, k, &mut buf[..rows * k]);
                    // dx += dy[:, r0..r0+rows] · tile.
                    gemm(
                        (n, rows, k),
                        ds[r0..].as_ptr(),
                        (m, 1),
                        buf.as_ptr(),
                        (k, 1),
                        r0 > 0,
                        dx.as_mut_ptr(),
                        (k, 1),
                    );
                }
            }
        }
        to_tensor(dx, [n, k])
    }
}
