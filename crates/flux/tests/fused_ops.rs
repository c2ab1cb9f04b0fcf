//! Every fused op equals the unfused composition it replaces, in value and in gradient.
//!
//! The oracle is the composition of Burn ops (`fluxlora_flux::fused::composed`, and for attention
//! a plain `softmax(q·kᵀ·scale + bias)·v`) differentiated by Burn's own autodiff. The fused side is
//! the `FluxBackend` op: on `Autodiff<NdArray>` the rayon kernels with the hand-written backward,
//! on `Autodiff<Flex>` the composed defaults with the hand-written backward. Shapes are random,
//! with odd lengths, batch > 1, masks and very large and very small logits.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{activation, backend::Backend, Distribution, Tensor, TensorData};
use fluxlora_flux::fused::{self, composed, FluxBackend, RopeTables, NORM_EPS};
use proptest::prelude::*;

type Nd = Autodiff<NdArray>;
type Fx = Autodiff<Flex>;

/// A reproducible random tensor (values from `seed`, the same on every backend).
fn rand<B: Backend, const D: usize>(shape: [usize; D], seed: u64, amp: f32) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * amp
        })
        .collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Asserts `got ≈ want` elementwise: `|g − w| ≤ tol·(1 + max|w|)`.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) + 1.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} is not finite");
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: fused {g} vs composed {w}"
        );
    }
}

/// A leaf that requires grad.
fn leaf<B: burn::tensor::backend::AutodiffBackend, const D: usize>(
    t: Tensor<B, D>,
) -> Tensor<B, D> {
    t.require_grad()
}

/// Values and input gradients of `op` for the loss `Σ out·w`.
fn run<B, const D: usize, const N: usize, const E: usize>(
    inputs: [Tensor<B, E>; N],
    w: Tensor<B, D>,
    op: impl Fn([Tensor<B, E>; N]) -> Tensor<B, D>,
) -> (Vec<f32>, Vec<Vec<f32>>)
where
    B: burn::tensor::backend::AutodiffBackend,
{
    let leaves = inputs.map(leaf);
    let out = op(leaves.clone());
    let grads = (out.clone() * w).sum().backward();
    let g = leaves
        .iter()
        .map(|l| host(l.grad(&grads).expect("input gets a gradient")))
        .collect();
    (host(out), g)
}

/// Compares fused and composed on the same inputs.
fn same<B, const D: usize, const N: usize, const E: usize>(
    what: &str,
    inputs: impl Fn() -> [Tensor<B, E>; N],
    w: Tensor<B, D>,
    fused: impl Fn([Tensor<B, E>; N]) -> Tensor<B, D>,
    composed: impl Fn([Tensor<B, E>; N]) -> Tensor<B, D>,
    tol: f32,
) where
    B: burn::tensor::backend::AutodiffBackend,
{
    let (fv, fg) = run(inputs(), w.clone(), fused);
    let (cv, cg) = run(inputs(), w, composed);
    close(&format!("{what} value"), &fv, &cv, tol);
    for (i, (f, c)) in fg.iter().zip(&cg).enumerate() {
        close(&format!("{what} grad of input {i}"), f, c, tol);
    }
}

fn modulate_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    b: usize,
    l: usize,
    c: usize,
    seed: u64,
) {
    let inputs = || {
        [
            rand::<B, 3>([b, l, c], seed, 3.0),
            rand::<B, 3>([b, 1, c], seed + 1, 1.0),
            rand::<B, 3>([b, 1, c], seed + 2, 1.0),
        ]
    };
    same(
        "modulate",
        inputs,
        rand([b, l, c], seed + 3, 1.0),
        |[x, sh, sc]| B::modulate(x, sh, sc, NORM_EPS),
        |[x, sh, sc]| composed::modulate(x, sh, sc, NORM_EPS),
        2e-4,
    );
}

fn rms_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    b: usize,
    h: usize,
    l: usize,
    d: usize,
    seed: u64,
) {
    let x = || rand::<B, 4>([b, h, l, d], seed, 2.0);
    let scale = || rand::<B, 1>([d], seed + 1, 1.5);
    let w = rand::<B, 4>([b, h, l, d], seed + 2, 1.0);
    let run = |fused: bool| {
        let (x, s) = (leaf(x()), leaf(scale()));
        let out = if fused {
            B::rms_norm(x.clone(), s.clone(), NORM_EPS)
        } else {
            composed::rms_norm(x.clone(), s.clone(), NORM_EPS)
        };
        let g = (out.clone() * w.clone()).sum().backward();
        (
            host(out),
            host(x.grad(&g).unwrap()),
            host(s.grad(&g).unwrap()),
        )
    };
    let (f, c) = (run(true), run(false));
    close("rms value", &f.0, &c.0, 2e-4);
    close("rms dx", &f.1, &c.1, 2e-4);
    close("rms dscale", &f.2, &c.2, 2e-4);
}

fn rope_tables<B: Backend>(b: usize, l: usize, d: usize, seed: u64) -> RopeTables<B> {
    RopeTables::from_angles(rand([b, l, d / 2], seed, 40.0))
}

fn rope_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    b: usize,
    h: usize,
    l: usize,
    d: usize,
    seed: u64,
) {
    let t = rope_tables::<B>(b, l, d, seed + 7);
    for inverse in [false, true] {
        same(
            "rope",
            || [rand::<B, 4>([b, h, l, d], seed, 2.0)],
            rand([b, h, l, d], seed + 1, 1.0),
            |[x]| B::rope(x, &t, inverse),
            |[x]| composed::rope(x, &t, inverse),
            1e-4,
        );
    }
}

fn heads_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    b: usize,
    h: usize,
    l: usize,
    d: usize,
    seed: u64,
) {
    // The input is a narrowed view (as the qkv split makes it), the output goes back through
    // `from_heads`, each checked against the reshape/swap composition.
    let wide = || rand::<B, 3>([b, l, 3 * h * d + 1], seed, 1.0);
    same(
        "to_heads",
        || [wide()],
        rand([b, h, l, d], seed + 1, 1.0),
        |[x]| B::to_heads(x.narrow(2, h * d + 1, h * d), h),
        |[x]| composed::to_heads(x.narrow(2, h * d + 1, h * d), h),
        1e-6,
    );
    same(
        "from_heads",
        || [rand::<B, 4>([b, l, h, d], seed + 2, 1.0)],
        rand([b, l, h * d], seed + 3, 1.0),
        |[x]| B::from_heads(x.swap_dims(1, 2)),
        |[x]| composed::from_heads(x.swap_dims(1, 2)),
        1e-6,
    );
}

fn gelu_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    n: usize,
    amp: f32,
    seed: u64,
) {
    same(
        "gelu",
        || [rand::<B, 3>([1, n, 3], seed, amp)],
        rand([1, n, 3], seed + 1, 1.0),
        |[x]| B::gelu_tanh(x),
        |[x]| composed::gelu_tanh(x),
        1e-4,
    );
}

fn residual_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    b: usize,
    l: usize,
    c: usize,
    seed: u64,
) {
    let inputs = || {
        [
            rand::<B, 3>([b, l, c], seed, 1.0),
            rand::<B, 3>([b, 1, c], seed + 1, 1.0),
            rand::<B, 3>([b, l, c], seed + 2, 1.0),
        ]
    };
    same(
        "gated residual",
        inputs,
        rand([b, l, c], seed + 3, 1.0),
        |[x, g, y]| B::gated_residual(x, g, y),
        |[x, g, y]| composed::gated_residual(x, g, y),
        1e-5,
    );
}

/// `softmax(q·kᵀ·scale + bias)·v` from plain Burn ops: the oracle.
fn naive_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    let s = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    let s = match bias {
        Some(b) => s + b,
        None => s,
    };
    activation::softmax(s, 3).matmul(v)
}

/// The bias kinds: none, a key-padding mask `[B, 1, 1, L_k]`, a full random bias.
#[derive(Debug, Clone, Copy)]
enum Bias {
    None,
    Padding,
    Full,
}

#[allow(clippy::too_many_arguments)]
fn attention_case<B: FluxBackend + burn::tensor::backend::AutodiffBackend>(
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    amp: f32,
    bias: Bias,
    rows: usize,
    seed: u64,
) {
    let scale = 1.0 / (d as f64).sqrt();
    let bias_t: Option<Tensor<B, 4>> = match bias {
        Bias::None => None,
        Bias::Padding => {
            // Batch i masks its last i keys (every row keeps at least one key).
            let mut m = vec![0f32; b * lk];
            for i in 0..b {
                for j in lk.saturating_sub(i).max(1)..lk {
                    m[i * lk + j] = -1e9;
                }
            }
            Some(Tensor::from_data(
                TensorData::new(m, [b, 1, 1, lk]),
                &Default::default(),
            ))
        }
        Bias::Full => Some(rand([b, h, lq, lk], seed + 9, 4.0)),
    };
    let inputs = || {
        [
            rand::<B, 4>([b, h, lq, d], seed, amp),
            rand::<B, 4>([b, h, lk, d], seed + 1, amp),
            rand::<B, 4>([b, h, lk, d], seed + 2, 1.0),
        ]
    };
    let bt = bias_t.clone();
    same(
        "attention",
        inputs,
        rand([b, h, lq, d], seed + 3, 1.0),
        move |[q, k, v]| B::attention_forward(q, k, v, bt.clone(), scale, rows).0,
        move |[q, k, v]| naive_attention(q, k, v, bias_t.clone(), scale),
        5e-4,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn modulate_matches_composition(b in 1usize..3, l in 1usize..40, c in 1usize..70, s in 0u64..1000) {
        modulate_case::<Nd>(b, l, c, s);
        modulate_case::<Fx>(b, l, c, s);
    }

    #[test]
    fn rms_norm_matches_composition(
        b in 1usize..3, h in 1usize..4, l in 1usize..20, d in 1usize..40, s in 0u64..1000
    ) {
        rms_case::<Nd>(b, h, l, d, s);
        rms_case::<Fx>(b, h, l, d, s);
    }

    #[test]
    fn rope_matches_composition(
        b in 1usize..3, h in 1usize..4, l in 1usize..20, half in 1usize..12, s in 0u64..1000
    ) {
        rope_case::<Nd>(b, h, l, 2 * half, s);
        rope_case::<Fx>(b, h, l, 2 * half, s);
    }

    #[test]
    fn heads_layout_matches_composition(
        b in 1usize..3, h in 1usize..4, l in 1usize..20, d in 1usize..9, s in 0u64..1000
    ) {
        heads_case::<Nd>(b, h, l, d, s);
        heads_case::<Fx>(b, h, l, d, s);
    }

    #[test]
    fn gelu_matches_composition(n in 1usize..300, amp in prop::sample::select(vec![0.01f32, 1.0, 6.0, 40.0]), s in 0u64..1000) {
        gelu_case::<Nd>(n, amp, s);
        gelu_case::<Fx>(n, amp, s);
    }

    #[test]
    fn gated_residual_matches_composition(b in 1usize..3, l in 1usize..30, c in 1usize..50, s in 0u64..1000) {
        residual_case::<Nd>(b, l, c, s);
        residual_case::<Fx>(b, l, c, s);
    }

    #[test]
    fn attention_matches_softmax_composition(
        b in 1usize..3,
        h in 1usize..3,
        lq in 1usize..24,
        lk in 1usize..24,
        d in prop::sample::select(vec![1usize, 4, 7, 16]),
        amp in prop::sample::select(vec![1e-3f32, 1.0, 12.0]),
        bias in prop::sample::select(vec![Bias::None, Bias::Padding, Bias::Full]),
        rows in 1usize..30,
        s in 0u64..1000,
    ) {
        attention_case::<Nd>(b, h, lq, lk, d, amp, bias, rows, s);
        attention_case::<Fx>(b, h, lq, lk, d, amp, bias, rows, s);
    }
}

#[test]
fn attention_with_huge_logits_stays_finite_and_exact() {
    // q·k of order 1e4: a naive exp would overflow; both sides subtract the row maximum.
    attention_case::<Nd>(1, 2, 9, 11, 8, 120.0, Bias::None, 4, 5);
}

#[test]
fn rope_inverse_undoes_rope() {
    let t = rope_tables::<NdArray>(2, 5, 6, 3);
    let x = rand::<NdArray, 4>([2, 3, 5, 6], 1, 1.0);
    let back = NdArray::rope(NdArray::rope(x.clone(), &t, false), &t, true);
    close("rope round trip", &host(back), &host(x), 1e-6);
}

#[test]
fn attention_blocks_do_not_change_the_result() {
    // One block of all rows vs blocks of 1 and 5 rows, on the plain backend.
    let (q, k, v) = (
        rand::<NdArray, 4>([2, 3, 17, 8], 1, 2.0),
        rand::<NdArray, 4>([2, 3, 13, 8], 2, 2.0),
        rand::<NdArray, 4>([2, 3, 13, 8], 3, 1.0),
    );
    let full = NdArray::attention_forward(q.clone(), k.clone(), v.clone(), None, 0.3, 17);
    for rows in [1, 5] {
        let part = NdArray::attention_forward(q.clone(), k.clone(), v.clone(), None, 0.3, rows);
        close("blocked output", &host(part.0), &host(full.0.clone()), 1e-6);
        close("blocked lse", &host(part.1), &host(full.1.clone()), 1e-6);
    }
}

#[test]
fn attention_block_rows_follow_the_budget() {
    // Flux.1 at 1024²: 24 heads, 4,608 + 512 tokens, f32 → 136 rows in 64 MiB.
    let rows = fused::attention::query_block_rows(1, 24, 5120, 4, 64 << 20);
    assert_eq!(rows, 136);
    assert_eq!(fused::attention::query_block_rows(1, 1, 1 << 30, 4, 16), 1);
    let _: Tensor<NdArray, 1> = Tensor::random([1], Distribution::Default, &Default::default());
}
