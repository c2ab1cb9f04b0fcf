//! Property tests of the rank/alpha math of `LoraLinear` against host reference arithmetic.

use crate::common;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::Tensor;
use common::*;
use fluxlora_lora::{AdapterSpec, LoraAdapter, LoraLinear};
use proptest::prelude::*;

/// A base linear plus one adapter with random (non-zero) factors, all built from `seed`.
fn layer(
    seed: u64,
    d_in: usize,
    d_out: usize,
    rank: usize,
    alpha: f32,
    mult: f32,
) -> (LoraLinear<B>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = values(seed, d_in * d_out);
    let a = values(seed + 1, d_in * rank);
    let b = values(seed + 2, rank * d_out);
    let mut lin = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None).freeze_base();
    let mut spec = AdapterSpec::new(rank, alpha);
    spec.multiplier = mult;
    lin.push_adapter(
        "m",
        LoraAdapter::from_factors(
            "m",
            tensor2(&a, d_in, rank),
            tensor2(&b, rank, d_out),
            &spec,
        ),
    )
    .unwrap();
    (lin, w, a, b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// ΔW = m·(α/r)·A·B exactly as the reference matmul computes it; scale() = α/r.
    #[test]
    fn effective_scale_is_alpha_over_rank(
        seed in 0u64..1000,
        d_in in 1usize..12,
        d_out in 1usize..12,
        rank in 1usize..6,
        alpha in 0.1f32..64.0,
        mult in -2.0f32..2.0,
    ) {
        let (lin, _, a, b) = layer(seed, d_in, d_out, rank, alpha, mult);
        prop_assert!((lin.adapters[0].scale() - alpha / rank as f32).abs() <= 1e-6 * alpha);
        let expected: Vec<f32> = matmul(&a, &b, d_in, rank, d_out)
            .iter()
            .map(|v| v * mult * alpha / rank as f32)
            .collect();
        let got = to_vec(lin.delta_weight());
        let tol = 1e-5 * (1.0 + expected.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        prop_assert!(
            max_abs_diff(&got, &expected) <= tol,
            "max diff {}",
            max_abs_diff(&got, &expected)
        );
    }

    /// forward(x) = x·W + x·ΔW, and merging gives the same output (tolerance 1e-4 relative).
    #[test]
    fn merged_forward_equals_unmerged(
        seed in 0u64..1000,
        n in 1usize..5,
        d_in in 1usize..10,
        d_out in 1usize..10,
        rank in 1usize..5,
        alpha in 0.5f32..32.0,
    ) {
        let (mut lin, w, a, b) = layer(seed, d_in, d_out, rank, alpha, 1.0);
        let x = values(seed + 7, n * d_in);
        let unmerged = to_vec(lin.forward(tensor2(&x, n, d_in)));
        // Reference: x·(W + (α/r)·A·B) on the host.
        let dw = matmul(&a, &b, d_in, rank, d_out);
        let wm: Vec<f32> = w.iter().zip(&dw).map(|(w, d)| w + d * alpha / rank as f32).collect();
        let reference = matmul(&x, &wm, n, d_in, d_out);
        let scale = 1.0 + reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        prop_assert!(max_abs_diff(&unmerged, &reference) <= 1e-4 * scale);
        lin.merge();
        let merged = to_vec(lin.forward(tensor2(&x, n, d_in)));
        prop_assert!(max_abs_diff(&merged, &unmerged) <= 1e-4 * scale);
        lin.unmerge();
        let w_back = to_vec(lin.weight.as_ref().unwrap().val());
        prop_assert!(max_abs_diff(&w_back, &w) <= 1e-5 * scale);
    }

    /// A fresh adapter (B = 0) leaves the base output bit-for-bit unchanged.
    #[test]
    fn zero_init_leaves_base_unchanged(
        seed in 0u64..1000,
        d_in in 1usize..16,
        d_out in 1usize..16,
        rank in 1usize..8,
    ) {
        let w = values(seed, d_in * d_out);
        let x = values(seed + 3, 2 * d_in);
        let mut lin = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
        let before = to_vec(lin.forward(tensor2(&x, 2, d_in)));
        lin.add_adapter("p", &AdapterSpec::new(rank, rank as f32 * 2.0), &dev()).unwrap();
        let after = to_vec(lin.forward(tensor2(&x, 2, d_in)));
        prop_assert_eq!(before, after);
    }

    /// A row-range adapter equals a full-width adapter whose B is zero outside the rows.
    #[test]
    fn row_range_adapter_is_zero_padded_full_adapter(
        seed in 0u64..1000,
        d_in in 1usize..8,
        d_out in 2usize..12,
        rank in 1usize..4,
        cut in 0usize..100,
    ) {
        let start = cut % (d_out - 1);
        let end = start + 1 + (cut / 7) % (d_out - start);
        let (w, a) = (values(seed, d_in * d_out), values(seed + 1, d_in * rank));
        let b_rows = values(seed + 2, rank * (end - start));
        let spec = AdapterSpec::new(rank, 3.0);
        let mut part = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
        part.push_adapter(
            "p",
            LoraAdapter::from_factors(
                "p",
                tensor2(&a, d_in, rank),
                tensor2(&b_rows, rank, end - start),
                &spec.clone().with_rows(start, end),
            ),
        )
        .unwrap();
        let mut b_full = vec![0.0; rank * d_out];
        for r in 0..rank {
            for c in start..end {
                b_full[r * d_out + c] = b_rows[r * (end - start) + c - start];
            }
        }
        let mut full = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
        full.push_adapter(
            "f",
            LoraAdapter::from_factors(
                "f",
                tensor2(&a, d_in, rank),
                tensor2(&b_full, rank, d_out),
                &spec,
            ),
        )
        .unwrap();
        let x = tensor2(&values(seed + 5, 3 * d_in), 3, d_in);
        prop_assert!(
            max_abs_diff(&to_vec(part.forward(x.clone())), &to_vec(full.forward(x))) <= 1e-5
        );
    }
}

#[test]
fn stacked_adapters_add_with_their_multipliers() {
    let (d_in, d_out, r) = (5, 4, 2);
    let w = values(1, d_in * d_out);
    let mut lin = LoraLinear::<B>::from_weights(tensor2(&w, d_in, d_out), None);
    let mut refw = w.clone();
    for (k, (alpha, mult)) in [(2.0f32, 0.5f32), (8.0, -1.5)].into_iter().enumerate() {
        let (a, b) = (
            values(10 + k as u64, d_in * r),
            values(20 + k as u64, r * d_out),
        );
        let mut spec = AdapterSpec::new(r, alpha);
        spec.multiplier = mult;
        lin.push_adapter(
            "s",
            LoraAdapter::from_factors(
                &format!("s{k}"),
                tensor2(&a, d_in, r),
                tensor2(&b, r, d_out),
                &spec,
            ),
        )
        .unwrap();
        for (o, d) in refw.iter_mut().zip(matmul(&a, &b, d_in, r, d_out)) {
            *o += d * mult * alpha / r as f32;
        }
    }
    let x = values(3, 2 * d_in);
    let got = to_vec(lin.forward(tensor2(&x, 2, d_in)));
    assert!(max_abs_diff(&got, &matmul(&x, &refw, 2, d_in, d_out)) < 1e-5);
}

#[test]
fn gradients_reach_only_a_and_b() {
    type AB = Autodiff<B>;
    let d = dev();
    let (d_in, d_out) = (6, 5);
    let w = Tensor::<AB, 2>::from_data(
        burn::tensor::TensorData::new(values(4, d_in * d_out), [d_in, d_out]),
        &d,
    );
    let bias =
        Tensor::<AB, 1>::from_data(burn::tensor::TensorData::new(values(5, d_out), [d_out]), &d);
    let mut lin = LoraLinear::<AB>::from_weights(w, Some(bias)).freeze_base();
    lin.add_adapter("g", &AdapterSpec::new(3, 3.0), &d).unwrap();
    // Make B non-zero so A's gradient is non-zero too.
    let b = lin.adapters[0]
        .lora_b
        .clone()
        .map(|b| (b + 0.25).detach().require_grad());
    lin.adapters[0].lora_b = b;
    let x = Tensor::<AB, 2>::from_data(
        burn::tensor::TensorData::new(values(6, 4 * d_in), [4, d_in]),
        &d,
    );
    let grads = lin.forward(x).powi_scalar(2).sum().backward();
    assert!(
        lin.weight.as_ref().unwrap().val().grad(&grads).is_none(),
        "frozen base weight got a gradient"
    );
    assert!(
        lin.bias.as_ref().unwrap().val().grad(&grads).is_none(),
        "frozen bias got a gradient"
    );
    let ga = lin.adapters[0]
        .lora_a
        .val()
        .grad(&grads)
        .expect("A has a gradient");
    let gb = lin.adapters[0]
        .lora_b
        .val()
        .grad(&grads)
        .expect("B has a gradient");
    assert!(ga.abs().sum().into_scalar() > 0.0 && gb.abs().sum().into_scalar() > 0.0);
    // Only the two adapter factors are trainable parameters.
    struct Count(usize);
    impl burn::module::ModuleVisitor<AB> for Count {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<AB, D>>) {
            if p.val().is_require_grad() {
                self.0 += 1;
            }
        }
    }
    let mut c = Count(0);
    lin.visit(&mut c);
    assert_eq!(c.0, 2);
}

#[test]
fn dropouts_are_off_without_autodiff_and_act_with_it() {
    let (lin, ..) = layer(9, 8, 8, 4, 4.0, 1.0);
    let mut drop_lin = lin.clone();
    drop_lin.adapters[0].dropout = 0.5;
    drop_lin.adapters[0].rank_dropout = 0.5;
    let x = tensor2(&values(11, 16), 2, 8);
    // Inference (no autodiff): identical outputs.
    assert_eq!(
        to_vec(drop_lin.forward(x.clone())),
        to_vec(lin.forward(x.clone()))
    );
    // Training: dropout changes the adapter's contribution.
    type AB = Autodiff<B>;
    let train: LoraLinear<AB> = drop_lin.train();
    let xa = Tensor::<AB, 2>::from_inner(x.clone());
    let plain: LoraLinear<AB> = lin.train();
    assert_ne!(
        to_vec(train.forward(xa.clone()).inner()),
        to_vec(plain.forward(xa).inner())
    );
}

#[test]
fn invalid_specs_are_rejected_with_the_module_named() {
    let mut lin = LoraLinear::<B>::init(4, 4, true, &dev());
    let err = lin
        .add_adapter(
            "double_blocks.0.img_mod.lin",
            &AdapterSpec::new(0, 1.0),
            &dev(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("double_blocks.0.img_mod.lin") && err.to_string().contains("rank")
    );
    let mut bad = AdapterSpec::new(2, 1.0);
    bad.dropout = 1.0;
    assert!(lin.add_adapter("x", &bad, &dev()).is_err());
    let err = lin
        .add_adapter("x", &AdapterSpec::new(2, 1.0).with_rows(2, 9), &dev())
        .unwrap_err();
    assert!(err.to_string().contains("4 outputs"));
}
