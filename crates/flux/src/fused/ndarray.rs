//! [`FluxBackend`] for NdArray: the elementwise ops run the rayon kernels of `cpu.rs` on the
//! tensors' host data (f32 only; other dtypes take the composed defaults). Attention keeps the
//! composed, query-blocked structure and NdArray's threaded matmuls, with each block's softmax
//! (and its backward step) as one parallel host pass.

use burn::tensor::{backend::Backend, Tensor, TensorData, TensorPrimitive};
use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};

use crate::fused::{attention, composed, cpu, FluxBackend, RopeTables};

/// Tells glibc's allocator to keep freed memory for reuse (Linux with glibc; elsewhere a no-op):
/// allocations up to 256 MiB come from the heap instead of fresh `mmap`s, and up to 1 GiB of free
/// heap is kept instead of being handed back to the kernel after every op.
///
/// NdArray allocates a new buffer for every op's output; with glibc's defaults the larger ones
/// are mapped and unmapped each time, and the page faults cost a quarter of a CPU training step.
/// Measured on the flux bench (2 cores): step 0.30 → 0.26 s; one 1024²-size double block 65 →
/// 40 s with 8 % more peak memory. Process-wide: call it once, before training, in a program that
/// trains on NdArray.
pub fn retain_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// The f32 values of `t` as a standard-layout (row-major) array sharing the tensor's buffer when
/// it already is one, or `None` for another dtype.
fn host<E, I, Q, const D: usize>(t: &Tensor<NdArray<E, I, Q>, D>) -> Option<SharedArray<f32>>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    match t.clone().into_primitive().tensor() {
        NdArrayTensor::F32(storage) => Some(standard_layout(storage.into_shared())),
        _ => None,
    }
}

/// `a` itself when it is row-major, else a row-major copy: row by row when the last axis is
/// contiguous (narrowed and head-swapped views), which is a `memcpy` per row rather than
/// ndarray's element-by-element walk over a dynamic-rank index.
fn standard_layout(a: SharedArray<f32>) -> SharedArray<f32> {
    if a.is_standard_layout() {
        return a;
    }
    let shape = a.shape().to_vec();
    let last_contiguous =
        a.ndim() > 0 && (a.strides()[a.ndim() - 1] == 1 || shape[a.ndim() - 1] <= 1);
    if last_contiguous {
        let mut v = Vec::with_capacity(a.len());
        for row in a.rows() {
            match row.as_slice() {
                Some(r) => v.extend_from_slice(r),
                None => v.extend(row.iter().copied()),
            }
        }
        if let Ok(out) = SharedArray::from_shape_vec(shape, v) {
            return out;
        }
    }
    a.as_standard_layout().into_owned().into_shared()
}

/// `t` with a row-major buffer (f32; other dtypes unchanged).
fn contiguous<E, I, Q, const D: usize>(
    t: Tensor<NdArray<E, I, Q>, D>,
) -> Tensor<NdArray<E, I, Q>, D>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    match host(&t) {
        Some(a) => Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(a))),
        None => t,
    }
}

/// The row-major values of a standard-layout array.
fn values(a: &SharedArray<f32>) -> &[f32] {
    a.as_slice().expect("standard layout")
}

/// A tensor of `shape` on `device` from row-major f32 values.
fn device<B: Backend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    dev: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), dev)
}

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> FluxBackend for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn modulate(
        x: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        let [b, l, c] = x.dims();
        let fits = shift.dims() == [b, 1, c] && scale.dims() == [b, 1, c];
        match (fits, host(&x), host(&shift), host(&scale)) {
            (true, Some(hx), Some(hs), Some(hc)) => {
                let y = cpu::modulate_forward(
                    values(&hx),
                    values(&hs),
                    values(&hc),
                    b,
                    l,
                    c,
                    eps as f32,
                );
                device(y, [b, l, c], &x.device())
            }
            _ => composed::modulate(x, shift, scale, eps),
        }
    }

    fn modulate_backward(
        x: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        dy: Tensor<Self, 3>,
        eps: f64,
    ) -> [Tensor<Self, 3>; 3] {
        let [b, l, c] = x.dims();
        match (scale.dims() == [b, 1, c], host(&x), host(&scale), host(&dy)) {
            (true, Some(hx), Some(hc), Some(hd)) => {
                let dev = x.device();
                let (dx, dshift, dscale) = cpu::modulate_backward(
                    values(&hx),
                    values(&hc),
                    values(&hd),
                    b,
                    l,
                    c,
                    eps as f32,
                );
                [
                    device(dx, [b, l, c], &dev),
                    device(dshift, [b, 1, c], &dev),
                    device(dscale, [b, 1, c], &dev),
                ]
            }
            _ => composed::modulate_backward(x, scale, dy, eps),
        }
    }

    fn rms_norm(x: Tensor<Self, 4>, scale: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 4> {
        let dims = x.dims();
        let d = dims[3];
        match (host(&x), host(&scale)) {
            (Some(hx), Some(hs)) => {
                let y = cpu::rms_norm_forward(
                    values(&hx),
                    values(&hs),
                    values(&hx).len() / d.max(1),
                    d,
                    eps as f32,
                );
                device(y, dims, &x.device())
            }
            _ => composed::rms_norm(x, scale, eps),
        }
    }

    fn rms_norm_backward(
        x: Tensor<Self, 4>,
        scale: Tensor<Self, 1>,
        dy: Tensor<Self, 4>,
        eps: f64,
    ) -> (Tensor<Self, 4>, Tensor<Self, 1>) {
        let dims = x.dims();
        let d = dims[3];
        match (host(&x), host(&scale), host(&dy)) {
            (Some(hx), Some(hs), Some(hd)) => {
                let dev = x.device();
                let (dx, ds) = cpu::rms_norm_backward(
                    values(&hx),
                    values(&hs),
                    values(&hd),
                    values(&hx).len() / d.max(1),
                    d,
                    eps as f32,
                );
                (device(dx, dims, &dev), device(ds, [d], &dev))
            }
            _ => composed::rms_norm_backward(x, scale, dy, eps),
        }
    }

    fn rope(x: Tensor<Self, 4>, t: &RopeTables<Self>, inverse: bool) -> Tensor<Self, 4> {
        let [b, h, l, d] = x.dims();
        let fits = t.cos.dims() == [b, l, d / 2] && d % 2 == 0;
        match (fits, host(&x), host(&t.cos), host(&t.sin)) {
            (true, Some(hx), Some(hc), Some(hs)) => {
                let y = cpu::rope(values(&hx), values(&hc), values(&hs), b, h, l, d, inverse);
                device(y, [b, h, l, d], &x.device())
            }
            _ => composed::rope(x, t, inverse),
        }
    }

    fn to_heads(x: Tensor<Self, 3>, heads: usize) -> Tensor<Self, 4> {
        // Two row-wise copies: the (possibly narrowed) input to row-major, then the head swap.
        contiguous(composed::to_heads(contiguous(x), heads))
    }

    fn from_heads(x: Tensor<Self, 4>) -> Tensor<Self, 3> {
        let [b, h, l, d] = x.dims();
        contiguous(x.swap_dims(1, 2)).reshape([b, l, h * d])
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
        block_rows: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        attention::forward_with(q, k, v, bias, scale, block_rows, |s| {
            let dims = s.dims();
            match host(&s) {
                Some(hs) => {
                    let mut p = values(&hs).to_vec();
                    drop(hs);
                    let lse = cpu::softmax_rows(&mut p, dims[3]);
                    let dev = s.device();
                    let lse = device(lse, [dims[0], dims[1], dims[2], 1], &dev);
                    (device(p, dims, &dev), lse)
                }
                None => attention::softmax_rows(s),
            }
        })
    }

    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 4>,
        dout: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
        block_rows: usize,
    ) -> [Tensor<Self, 4>; 3] {
        let inputs = [q, k, v, out, lse, dout];
        attention::backward_with(inputs, bias, scale, block_rows, |s, lse, dp, delta| {
            let dims = s.dims();
            match (host(&s), host(&lse), host(&dp), host(&delta)) {
                (Some(hs), Some(hl), Some(hd), Some(hdelta)) => {
                    let (mut p, mut ds) = (values(&hs).to_vec(), values(&hd).to_vec());
                    cpu::softmax_rows_backward(
                        &mut p,
                        values(&hl),
                        &mut ds,
                        values(&hdelta),
                        dims[3],
                    );
                    let dev = s.device();
                    (device(p, dims, &dev), device(ds, dims, &dev))
                }
                _ => attention::softmax_rows_backward(s, lse, dp, delta),
            }
        })
    }

    fn gelu_tanh(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        match host(&x) {
            Some(hx) => device(cpu::gelu_tanh_forward(values(&hx)), x.dims(), &x.device()),
            None => composed::gelu_tanh(x),
        }
    }

    fn gelu_tanh_backward(x: Tensor<Self, 3>, dy: Tensor<Self, 3>) -> Tensor<Self, 3> {
        match (host(&x), host(&dy)) {
            (Some(hx), Some(hd)) => device(
                cpu::gelu_tanh_backward(values(&hx), values(&hd)),
                x.dims(),
                &x.device(),
            ),
            _ => composed::gelu_tanh_backward(x, dy),
        }
    }

    fn gated_residual(
        x: Tensor<Self, 3>,
        gate: Tensor<Self, 3>,
        y: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        let [b, l, c] = x.dims();
        let fits = gate.dims() == [b, 1, c] && y.dims() == [b, l, c];
        match (fits, host(&x), host(&gate), host(&y)) {
            (true, Some(hx), Some(hg), Some(hy)) => device(
                cpu::gated_residual(values(&hx), values(&hg), values(&hy), b, l, c),
                [b, l, c],
                &x.device(),
            ),
            _ => composed::gated_residual(x, gate, y),
        }
    }
}
