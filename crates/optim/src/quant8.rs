//! Block-wise dynamic 8-bit quantization as in bitsandbytes' 8-bit optimizers.
//!
//! A state tensor is cut into blocks of [`BLOCK_SIZE`] (256) elements; each block stores its
//! absolute maximum in f32 and every element as the index (u8) of the nearest entry of a fixed,
//! non-linear 256-entry code book, the *dynamic map* of
//! `bitsandbytes.functional.create_dynamic_map`
//! (signed for the first moment, unsigned for the second). Quantization scales by `1/absmax`,
//! clamps to [-1, 1] and takes the nearest code, ties to the lower index — bitsandbytes'
//! reference `quantize_blockwise` (`backends/default/ops.py`, an argmin over the code book), here
//! done as a binary search plus a neighbour comparison; dequantization is `code[index] · absmax`.
//! Everything runs as Burn tensor ops on the state's device.

use burn::tensor::{backend::Backend, DType, Element, Int, Tensor, TensorData};

/// Elements per quantization block (bitsandbytes' block-wise optimizers use 256).
pub const BLOCK_SIZE: usize = 256;

/// The 256-entry dynamic code book, sorted ascending, as bitsandbytes builds it
/// (`create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`), computed in f32 the way
/// PyTorch does (`linspace`, midpoints, scaling by `10^(i-6)`).
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let max_exponent_bits = 7i32;
    let non_sign_bits = 7i32; // total_bits - 1, for both signed and unsigned maps
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let exp = if signed {
            i + non_sign_bits - max_exponent_bits
        } else {
            i + non_sign_bits - max_exponent_bits + 1
        };
        let fraction_items = (1usize << exp) + 1;
        let boundaries = torch_linspace_f32(0.1, 1.0, fraction_items);
        let scale = 10f64.powf(f64::from(-(max_exponent_bits - 1) + i)) as f32;
        for w in boundaries.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    data.sort_by(|a, b| a.total_cmp(b));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// `torch.linspace(start, end, steps, dtype=float32)` on CPU: f32 step, first half counted up
/// from `start`, second half counted down from `end`, each value one fused multiply-add (PyTorch's
/// x86 kernels are built with FMA contraction; checked bit for bit against bitsandbytes' maps).
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// A block-wise quantized tensor: one code per element and one absmax per block.
#[derive(Debug, Clone)]
pub struct Quantized<B: Backend> {
    /// Code-book indices (u8 where the backend supports it).
    pub codes: Tensor<B, 1, Int>,
    /// Per-block absolute maximum.
    pub absmax: Tensor<B, 1>,
}

/// The integer dtype used to store codes on `device`: `U8` where the backend supports it,
/// otherwise the backend's default int type (and the memory figures say so honestly).
pub fn code_storage_dtype<B: Backend>(device: &B::Device) -> DType {
    if B::supports_dtype(device, DType::U8) {
        DType::U8
    } else {
        <B::IntElem as Element>::dtype()
    }
}

fn map_tensor<B: Backend>(map: &[f32; 256], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(map.to_vec(), [256]), (device, DType::F32))
}

fn pad_to_blocks<B: Backend>(x: Tensor<B, 1>) -> (Tensor<B, 2>, usize) {
    let n = x.dims()[0];
    let blocks = n.div_ceil(BLOCK_SIZE);
    let pad = blocks * BLOCK_SIZE - n;
    let x = if pad > 0 {
        let zeros = Tensor::<B, 1>::zeros([pad], &x.device());
        Tensor::cat(vec![x, zeros], 0)
    } else {
        x
    };
    (x.reshape([blocks, BLOCK_SIZE]), n)
}

/// Quantizes `x` block-wise against `map` (see the module docs for the rounding rule).
pub fn quantize_blockwise<B: Backend>(
    x: Tensor<B, 1>,
    map: &[f32; 256],
    storage: DType,
) -> Quantized<B> {
    let device = x.device();
    let (blocks, n) = pad_to_blocks(x);
    let nblocks = blocks.dims()[0];
    let absmax = blocks.clone().abs().max_dim(1); // [nblocks, 1]
                                                  // An all-zero block quantizes to the code of 0
                                                  // (bitsandbytes gets NaN there, which also
                                                  // dequantizes to 0 because the absmax is 0).
    let safe = absmax
        .clone()
        .mask_fill(absmax.clone().equal_elem(0.0), 1.0);
    let normed = (blocks * safe.recip())
        .clamp(-1.0, 1.0)
        .reshape([nblocks * BLOCK_SIZE])
        .slice(0..n);
    let table = map_tensor::<B>(map, &device);

    // Binary lifting: the largest index whose code is <= x (0 if none).
    let mut idx = Tensor::<B, 1, Int>::zeros([n], &device);
    for bit in [128i64, 64, 32, 16, 8, 4, 2, 1] {
        let cand = idx.clone().add_scalar(bit);
        let below = table
            .clone()
            .select(0, cand.clone())
            .lower_equal(normed.clone());
        idx = idx.mask_where(below, cand);
    }
    // The right neighbour wins only when strictly closer.
    let right_idx = idx.clone().add_scalar(1).clamp_max(255);
    let left = table.clone().select(0, idx.clone());
    let right = table.select(0, right_idx.clone());
    let closer = (normed.clone() - right).abs().lower((normed - left).abs());
    let idx = idx.mask_where(closer, right_idx);

    Quantized {
        codes: idx.cast(storage),
        absmax: absmax.reshape([nblocks]),
    }
}

/// Inverse of [`quantize_blockwise`]: `map[code] · absmax[block]`, `n` elements.
pub fn dequantize_blockwise<B: Backend>(q: &Quantized<B>, map: &[f32; 256]) -> Tensor<B, 1> {
    let device = q.absmax.device();
    let n = q.codes.dims()[0];
    let nblocks = q.absmax.dims()[0];
    let default_int = <B::IntElem as Element>::dtype();
    let codes = if q.codes.dtype() == default_int {
        q.codes.clone()
    } else {
        q.codes.clone().cast(default_int)
    };
    let values = map_tensor::<B>(map, &device).select(0, codes);
    let (blocks, _) = pad_to_blocks(values);
    (blocks * q.absmax.clone().reshape([nblocks, 1]))
        .reshape([nblocks * BLOCK_SIZE])
        .slice(0..n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn maps_are_sorted_and_span_the_range() {
        let s = dynamic_map(true);
        let u = dynamic_map(false);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(u.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s[255], 1.0);
        assert_eq!(u[0], 0.0);
        assert_eq!(u[255], 1.0);
        assert!(s[0] < -0.99 && s[0] > -1.0);
        assert!(s.contains(&0.0));
    }

    #[test]
    fn quantization_picks_the_nearest_code() {
        let dev = Default::default();
        let map = dynamic_map(true);
        // 300 values: a full block and a partial one, including exact codes and midpoints.
        let vals: Vec<f32> = (0..300)
            .map(|i| ((i as f32) * 0.37).sin() * (1.0 + i as f32 / 100.0))
            .collect();
        let x = Tensor::<B, 1>::from_data(TensorData::new(vals.clone(), [300]), &dev);
        let q = quantize_blockwise(x, &map, DType::U8);
        assert_eq!(q.codes.dtype(), DType::U8);
        let codes: Vec<i64> = q.codes.to_data().iter::<i64>().collect();
        let absmax: Vec<f32> = q.absmax.to_data().to_vec().unwrap();
        for (i, v) in vals.iter().enumerate() {
            let am = absmax[i / BLOCK_SIZE];
            let x = v / am;
            // Independent brute force: nearest code, lowest index on ties.
            let mut best = 0usize;
            for k in 1..256 {
                if (x - map[k]).abs() < (x - map[best]).abs() {
                    best = k;
                }
            }
            assert_eq!(codes[i] as usize, best, "element {i} value {x}");
        }
        let back: Vec<f32> = dequantize_blockwise(&q, &map).to_data().to_vec().unwrap();
        for (i, (a, b)) in vals.iter().zip(&back).enumerate() {
            assert_eq!(*b, map[codes[i] as usize] * absmax[i / BLOCK_SIZE]);
            assert!((a - b).abs() <= 0.02 * absmax[i / BLOCK_SIZE], "{a} vs {b}");
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let dev = Default::default();
        let x = Tensor::<B, 1>::zeros([10], &dev);
        let q = quantize_blockwise(x, &dynamic_map(false), DType::U8);
        let back: Vec<f32> = dequantize_blockwise(&q, &dynamic_map(false))
            .to_data()
            .to_vec()
            .unwrap();
        assert!(back.iter().all(|v| *v == 0.0));
    }
}
