//! The frozen base matmul (`FrozenLinearBackend`) against host reference arithmetic: every
//! storage format, on NdArray (its tiled kernel) and Flex (the composed default), in value and
//! in the input gradient, resident and streamed from host memory.

use crate::common::{matmul, max_abs_diff, values};

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use fluxlora_io::{HostTensor, QuantFormat, QuantizedHost};
use fluxlora_lora::frozen::streamed_bytes;
use fluxlora_lora::{FrozenLinearBackend, FrozenWeight, LoraLinear};
use proptest::prelude::*;

/// The formats, with `None` for f32.
const FORMATS: [Option<QuantFormat>; 4] = [
    None,
    Some(QuantFormat::Bf16),
    Some(QuantFormat::Fp8E4M3),
    Some(QuantFormat::Int8),
];

/// The weight as stored (`[d_out, d_in]`), decoded on the host, and the frozen weight.
fn frozen<B: Backend>(
    format: Option<QuantFormat>,
    w: &[f32],
    d_out: usize,
    d_in: usize,
) -> (Vec<f32>, FrozenWeight<B>) {
    let dev = Default::default();
    let host = HostTensor::new(vec![d_out, d_in], w.to_vec()).unwrap();
    match format {
        None => (
            w.to_vec(),
            FrozenWeight::from_float(
                Tensor::from_data(TensorData::new(w.to_vec(), [d_out, d_in]), &dev),
                DType::F32,
            ),
        ),
        Some(f) => {
            let q = QuantizedHost::quantize(&host, f).unwrap();
            (
                q.dequantize().data,
                FrozenWeight::from_host(&q, DType::F32, &dev),
            )
        }
    }
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| w[(i % rows) * cols + i / rows])
        .collect()
}

/// Checks `y = x·Wᵀ` and `dx = g·W` for `loss = Σ y ⊙ g` against the host reference.
fn check<B: FrozenLinearBackend + burn::tensor::backend::AutodiffBackend>(
    format: Option<QuantFormat>,
    (n, d_in, d_out): (usize, usize, usize),
    seed: u64,
    stream: bool,
) -> Result<(), TestCaseError>
where
    B::InnerBackend: FrozenLinearBackend,
{
    let dev = Default::default();
    let (x, w, g) = (
        values(seed, n * d_in),
        values(seed + 1, d_out * d_in),
        values(seed + 2, n * d_out),
    );
    let (decoded, weight) = frozen::<B>(format, &w, d_out, d_in);
    let weight = if stream {
        weight.stream_from_host()
    } else {
        weight
    };
    let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [n, d_in]), &dev).require_grad();
    let gt = Tensor::<B, 2>::from_data(TensorData::new(g.clone(), [n, d_out]), &dev);
    let before = streamed_bytes();
    let y = B::frozen_linear(xt.clone(), &weight);
    let grads = (y.clone() * gt).sum().backward();
    let dx = xt.grad(&grads).unwrap();
    let moved = streamed_bytes() - before;
    let y_ref = matmul(&x, &transpose(&decoded, d_out, d_in), n, d_in, d_out);
    let dx_ref = matmul(&g, &decoded, n, d_out, d_in);
    let y = y.into_data().to_vec::<f32>().unwrap();
    let dx = dx.into_data().to_vec::<f32>().unwrap();
    let tol = 1e-4 * (d_in.max(d_out) as f32).sqrt();
    prop_assert!(
        max_abs_diff(&y, &y_ref) < tol,
        "{:?} y: {}",
        format,
        max_abs_diff(&y, &y_ref)
    );
    prop_assert!(
        max_abs_diff(&dx, &dx_ref) < tol,
        "{:?} dx: {}",
        format,
        max_abs_diff(&dx, &dx_ref)
    );
    if stream {
        // The forward and the backward each copied the storage once: the backward decoded
        // again rather than keeping a decoded copy in the graph.
        prop_assert!(
            moved >= 2 * weight.storage_bytes() as u64,
            "{} bytes moved",
            moved
        );
    }
    Ok(())
}

type NdAd = Autodiff<NdArray<f32>>;
type FlexAd = Autodiff<Flex>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn frozen_linear_matches_the_decoded_matmul(
        n in 1usize..5, d_in in 1usize..40, d_out in 1usize..40, seed in any::<u32>()
    ) {
        for format in FORMATS {
            for stream in [false, true] {
                check::<NdAd>(format, (n, d_in, d_out), seed as u64, stream)?;
                check::<FlexAd>(format, (n, d_in, d_out), seed as u64, stream)?;
            }
        }
    }
}

#[test]
fn the_cpu_kernel_tiles_large_weights_exactly() {
    // 1100 × 1024 weights decode in two tiles of rows.
    for format in FORMATS {
        check::<NdAd>(format, (3, 1024, 1100), 7, false).unwrap();
    }
}

#[test]
fn a_frozen_base_trains_its_adapter_as_the_dense_base_does() {
    let dev = Default::default();
    let (d_in, d_out, n) = (12, 10, 3);
    let w = values(1, d_in * d_out);
    let x = values(2, n * d_in);
    let xt = || Tensor::<NdAd, 2>::from_data(TensorData::new(x.clone(), [n, d_in]), &dev);
    let bias = Tensor::<NdAd, 1>::from_data(TensorData::new(values(3, d_out), [d_out]), &dev);
    let spec = fluxlora_lora::AdapterSpec::new(4, 4.0);
    let dense_w = Tensor::from_data(
        TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]),
        &dev,
    );
    let mut dense = LoraLinear::from_weights(dense_w, Some(bias.clone())).freeze_base();
    dense.add_adapter("m", &spec, &dev).unwrap();
    let mut frozen = LoraLinear::from_frozen(frozen::<NdAd>(None, &w, d_out, d_in).1, Some(bias));
    frozen.adapters = dense.adapters.clone();
    // Give B non-zero values so A gets a gradient.
    for l in [&mut dense, &mut frozen] {
        l.adapters[0].lora_b = l.adapters[0]
            .lora_b
            .clone()
            .map(|b| b.ones_like().require_grad());
    }
    let run = |l: &LoraLinear<NdAd>| {
        let y = l.forward(xt());
        let grads = y.clone().powf_scalar(2.0).sum().backward();
        (
            y.into_data().to_vec::<f32>().unwrap(),
            l.adapters[0]
                .lora_a
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        )
    };
    let (y_d, ga_d) = run(&dense);
    let (y_f, ga_f) = run(&frozen);
    assert!(max_abs_diff(&y_d, &y_f) < 1e-5);
    assert!(max_abs_diff(&ga_d, &ga_f) < 1e-4);
    let streamed = frozen.clone().stream_base_from_host();
    let (y_s, ga_s) = run(&streamed);
    assert_eq!(y_s, y_f, "streaming changed the output");
    assert_eq!(ga_s, ga_f, "streaming changed the gradient");
}
