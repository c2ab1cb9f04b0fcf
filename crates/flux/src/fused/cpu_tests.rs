//! Tests of the host kernels against scalar f64 references and finite differences.
use super::*;

const EPS: f32 = 1e-6;
/// (batch, len, ch): odd sizes, below and above `PAR_THRESHOLD`, several row blocks a batch.
#[rustfmt::skip]
const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1), (1, 5, 3), (2, 5, 17), (2, 70, 17), (1, 1, 300),
    (2, 70, 300), (2, 40, 257), (2, 9000, 1), (1, 70, 3),
];

/// Deterministic pseudo-random vectors of the given lengths, values in `[-2, 2)` (64-bit LCG).
fn gen<const N: usize>(seed: u64, lens: [usize; N]) -> [Vec<f32>; N] {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963);
        (s >> 40) as f32 / (1u64 << 22) as f32 - 2.0
    };
    lens.map(|n| (0..n).map(|_| next()).collect())
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|w| w * w).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// `|got − want| ≤ tol·(|want| + floor)`: relative, with an absolute floor.
fn close(name: &str, got: &[f32], want: &[f64], tol: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g as f64 - w).abs() <= tol * (w.abs() + floor + 1e-30);
        assert!(ok, "{name}[{i}]: got {g}, want {w}");
    }
}

/// [`close`] with the floor at the rms of `want`.
fn check(name: &str, got: &[f32], want: &[f64], tol: f64) {
    close(name, got, want, tol, rms(want));
}

/// The kernel's gradient `got` against central differences in f64 of `v ↦ Σ f(v)·dy`.
fn check_fd(name: &str, got: &[f32], v: &[f64], dy: &[f32], f: impl Fn(&[f64]) -> Vec<f64>) {
    let loss = |v: &[f64]| f(v).iter().zip(dy).map(|(a, &b)| a * b as f64).sum::<f64>();
    let h = 1e-6;
    let want: Vec<f64> = (0..v.len())
        .map(|i| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += h;
            m[i] -= h;
            (loss(&p) - loss(&m)) / (2.0 * h)
        })
        .collect();
    check(name, got, &want, 1e-4);
}

/// `(mean, rstd, rrms)` of a row, in f64.
fn stats(row: &[f64]) -> (f64, f64, f64) {
    let (w, e) = (row.len() as f64, EPS as f64);
    let mean = row.iter().sum::<f64>() / w;
    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w;
    let ms = row.iter().map(|v| v * v).sum::<f64>() / w;
    (mean, 1.0 / (var + e).sqrt(), 1.0 / (ms + e).sqrt())
}

fn ref_modulate(x: &[f64], sh: &[f64], sc: &[f64], len: usize, ch: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for r in 0..x.len() / ch {
        let (b, row) = (r / len, &x[r * ch..(r + 1) * ch]);
        let (mean, rstd, _) = stats(row);
        for c in 0..ch {
            y[r * ch + c] = (row[c] - mean) * rstd * (1.0 + sc[b * ch + c]) + sh[b * ch + c];
        }
    }
    y
}

/// Straightforward f64 modulate backward: `[dx, dshift, dscale]`.
fn ref_modulate_bwd(x: &[f64], sc: &[f64], dy: &[f64], len: usize, ch: usize) -> [Vec<f64>; 3] {
    let mut out = [vec![0.0; x.len()], vec![0.0; sc.len()], vec![0.0; sc.len()]];
    for r in 0..x.len() / ch {
        let (b, row, dy) = (r / len, &x[r * ch..(r + 1) * ch], &dy[r * ch..(r + 1) * ch]);
        let (mean, rstd, _) = stats(row);
        let n: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..ch).map(|c| dy[c] * (1.0 + sc[b * ch + c])).collect();
        let mg = g.iter().sum::<f64>() / ch as f64;
        let mgn = (0..ch).map(|c| g[c] * n[c]).sum::<f64>() / ch as f64;
        for c in 0..ch {
            out[0][r * ch + c] = rstd * (g[c] - mg - n[c] * mgn);
            out[1][b * ch + c] += dy[c];
            out[2][b * ch + c] += dy[c] * n[c];
        }
    }
    out
}

fn ref_rms(x: &[f64], sc: &[f64]) -> Vec<f64> {
    let d = sc.len();
    let rr: Vec<f64> = x.chunks(d).map(|row| stats(row).2).collect();
    (0..x.len()).map(|k| x[k] * rr[k / d] * sc[k % d]).collect()
}

fn ref_rms_bwd(x: &[f64], sc: &[f64], dy: &[f64]) -> [Vec<f64>; 2] {
    let d = sc.len();
    let mut out = [vec![0.0; x.len()], vec![0.0; d]];
    for r in 0..x.len() / d {
        let (row, dy) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
        let rr = stats(row).2;
        let mgx = (0..d).map(|c| dy[c] * sc[c] * row[c]).sum::<f64>() / d as f64;
        for c in 0..d {
            out[0][r * d + c] = rr * (dy[c] * sc[c] - row[c] * rr * rr * mgx);
            out[1][c] += dy[c] * row[c] * rr;
        }
    }
    out
}

/// Straightforward f64 rope; `shape` is `[batch, heads, len, d]`.
fn ref_rope(x: &[f64], cos: &[f64], sin: &[f64], shape: [usize; 4], inv: bool) -> Vec<f64> {
    let [_, h, l, d] = shape;
    let mut y = vec![0.0; x.len()];
    for r in 0..x.len() / d {
        for j in 0..d / 2 {
            let a = ((r / (h * l)) * l + r % l) * (d / 2) + j;
            let (c, s) = (cos[a], if inv { -sin[a] } else { sin[a] });
            let (x0, x1) = (x[r * d + 2 * j], x[r * d + 2 * j + 1]);
            y[r * d + 2 * j] = c * x0 - s * x1;
            y[r * d + 2 * j + 1] = s * x0 + c * x1;
        }
    }
    y
}

/// The tanh form (independent of the kernel's logistic form) and its analytic derivative.
fn ref_gelu(x: f64) -> (f64, f64) {
    let a = (2.0 / std::f64::consts::PI).sqrt();
    let t = (a * (x + 0.044715 * x.powi(3))).tanh();
    let dt = 0.5 * x * (1.0 - t * t) * a * (1.0 + 3.0 * 0.044715 * x * x);
    (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + dt)
}

#[test]
fn modulate_matches_reference() {
    for (i, &(b, l, c)) in SHAPES.iter().enumerate() {
        let [x, sh, sc, dy] = gen(i as u64, [b * l * c, b * c, b * c, b * l * c]);
        let want = ref_modulate(&f64s(&x), &f64s(&sh), &f64s(&sc), l, c);
        check(
            "modulate",
            &modulate_forward(&x, &sh, &sc, b, l, c, EPS),
            &want,
            1e-5,
        );
        let (dx, dsh, dsc) = modulate_backward(&x, &sc, &dy, b, l, c, EPS);
        let [wx, wsh, wsc] = ref_modulate_bwd(&f64s(&x), &f64s(&sc), &f64s(&dy), l, c);
        check("modulate dx", &dx, &wx, 1e-5);
        check("modulate dshift", &dsh, &wsh, 1e-5);
        check("modulate dscale", &dsc, &wsc, 1e-5);
    }
}

#[test]
fn modulate_backward_matches_finite_differences() {
    let (b, l, c) = (2, 3, 5);
    let [x, sh, sc, dy] = gen(10, [b * l * c, b * c, b * c, b * l * c]);
    let (x6, sh6, sc6) = (f64s(&x), f64s(&sh), f64s(&sc));
    let (dx, dsh, dsc) = modulate_backward(&x, &sc, &dy, b, l, c, EPS);
    check_fd("dx", &dx, &x6, &dy, |v| ref_modulate(v, &sh6, &sc6, l, c));
    check_fd("dshift", &dsh, &sh6, &dy, |v| {
        ref_modulate(&x6, v, &sc6, l, c)
    });
    check_fd("dscale", &dsc, &sc6, &dy, |v| {
        ref_modulate(&x6, &sh6, v, l, c)
    });
}

#[test]
fn rms_norm_matches_reference() {
    for (i, &(b, l, d)) in SHAPES.iter().enumerate() {
        let rows = b * l;
        let [x, sc, dy] = gen(i as u64 + 100, [rows * d, d, rows * d]);
        let want = ref_rms(&f64s(&x), &f64s(&sc));
        check("rms", &rms_norm_forward(&x, &sc, rows, d, EPS), &want, 1e-5);
        let (dx, dsc) = rms_norm_backward(&x, &sc, &dy, rows, d, EPS);
        let [wx, wsc] = ref_rms_bwd(&f64s(&x), &f64s(&sc), &f64s(&dy));
        // At d = 1, dx = g·eps/(x² + eps)^1.5 is all cancellation: floor at the size of g·rrms.
        close("rms dx", &dx, &wx, 1e-5, rms(&wx).max(rms(&f64s(&dy))));
        check("rms dscale", &dsc, &wsc, 1e-5);
    }
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let (rows, d) = (4, 6);
    let [x, sc, dy] = gen(11, [rows * d, d, rows * d]);
    let (x6, sc6) = (f64s(&x), f64s(&sc));
    let (dx, dsc) = rms_norm_backward(&x, &sc, &dy, rows, d, EPS);
    check_fd("dx", &dx, &x6, &dy, |v| ref_rms(v, &sc6));
    check_fd("dscale", &dsc, &sc6, &dy, |v| ref_rms(&x6, v));
}

#[test]
fn rope_matches_reference_inverts_and_is_its_own_backward() {
    let shapes = [
        [1, 1, 1, 2],
        [2, 3, 5, 6],
        [1, 2, 70, 34],
        [2, 4, 70, 64],
        [2, 3, 17, 2],
    ];
    for (i, &[b, h, l, d]) in shapes.iter().enumerate() {
        let [x, ang, dy] = gen(
            i as u64 + 200,
            [b * h * l * d, b * l * d / 2, b * h * l * d],
        );
        let cos: Vec<f32> = ang.iter().map(|a| (1.5 * a).cos()).collect();
        let sin: Vec<f32> = ang.iter().map(|a| (1.5 * a).sin()).collect();
        let (c6, s6) = (f64s(&cos), f64s(&sin));
        let rot = |v: &[f32], inv| rope(v, &cos, &sin, b, h, l, d, inv);
        for inv in [false, true] {
            let want = ref_rope(&f64s(&x), &c6, &s6, [b, h, l, d], inv);
            check("rope", &rot(&x, inv), &want, 1e-5);
        }
        check(
            "rope round trip",
            &rot(&rot(&x, false), true),
            &f64s(&x),
            1e-5,
        );
        if x.len() <= 64 {
            let f = |v: &[f64]| ref_rope(v, &c6, &s6, [b, h, l, d], false);
            check_fd("rope backward", &rot(&dy, true), &f64s(&x), &dy, f);
        }
    }
}

#[test]
fn gelu_matches_reference_and_finite_differences() {
    for (i, n) in [1, 7, 1000, 40_001].into_iter().enumerate() {
        let [x, dy] = gen(i as u64 + 300, [n, n]);
        let x: Vec<f32> = x.iter().map(|v| 4.0 * v).collect(); // [-8, 8): past saturation.
        let want: Vec<f64> = x.iter().map(|&x| ref_gelu(x as f64).0).collect();
        check("gelu", &gelu_tanh_forward(&x), &want, 1e-5);
        let want: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&x, &d)| d as f64 * ref_gelu(x as f64).1)
            .collect();
        check("gelu dx", &gelu_tanh_backward(&x, &dy), &want, 1e-5);
    }
    let [x, dy] = gen(500, [32, 32]);
    let f = |v: &[f64]| v.iter().map(|&x| ref_gelu(x).0).collect();
    check_fd("gelu fd", &gelu_tanh_backward(&x, &dy), &f64s(&x), &dy, f);
}

#[test]
fn gelu_is_finite_at_extremes() {
    let x = [1e4, -1e4, 80.0, -80.0, 0.0, 1e30, -1e30, f32::MAX, f32::MIN];
    let (y, dx) = (gelu_tanh_forward(&x), gelu_tanh_backward(&x, &[1.0; 9]));
    assert!(y.iter().chain(&dx).all(|v| v.is_finite()), "{y:?} {dx:?}");
    assert_eq!(&y[..7], &[1e4, 0.0, 80.0, 0.0, 0.0, 1e30, 0.0]);
    assert_eq!(&dx[..5], &[1.0, 0.0, 1.0, 0.0, 0.5]);
}

#[test]
fn gated_residual_matches_reference() {
    for (i, &(b, l, c)) in SHAPES.iter().enumerate() {
        let [x, g, y] = gen(i as u64 + 600, [b * l * c, b * c, b * l * c]);
        let want: Vec<f64> = (0..x.len())
            .map(|k| x[k] as f64 + g[k / (l * c) * c + k % c] as f64 * y[k] as f64)
            .collect();
        check("gated", &gated_residual(&x, &g, &y, b, l, c), &want, 1e-6);
    }
}

#[test]
fn empty_shapes_give_empty_or_zero_outputs() {
    assert!(modulate_forward(&[], &[0.0; 3], &[0.0; 3], 1, 0, 3, EPS).is_empty());
    assert_eq!(
        modulate_backward(&[], &[0.0; 3], &[], 1, 0, 3, EPS).2,
        [0.0; 3]
    );
    assert_eq!(
        rms_norm_backward(&[], &[1.0; 4], &[], 0, 4, EPS).1,
        [0.0; 4]
    );
    assert!(rope(&[], &[], &[], 1, 1, 0, 2, false).is_empty());
    assert!(gelu_tanh_forward(&[]).is_empty());
}

#[test]
fn backward_reductions_are_deterministic_across_thread_counts() {
    let (b, l, c) = (2, 400, 300); // 240K elements: the parallel path, many row blocks.
    let [x, sc, dy] = gen(700, [b * l * c, b * c, b * l * c]);
    let run = || {
        let (dx, dsh, dsc) = modulate_backward(&x, &sc, &dy, b, l, c, EPS);
        let (rx, rsc) = rms_norm_backward(&x, &sc[..c], &dy, b * l, c, EPS);
        let all = [dx, dsh, dsc, rx, rsc];
        all.iter()
            .flat_map(|v| v.iter().map(|f| f.to_bits()))
            .collect::<Vec<u32>>()
    };
    let global = run();
    assert_eq!(global, run());
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(global, pool.install(run), "{threads} threads");
    }
}

/// Softmax, log-sum-exp and the backward step of an attention block against f64, for rows that
/// fit the sequential path and a block large enough for the parallel one, with huge logits.
#[test]
fn softmax_rows_and_their_backward_match_reference() {
    for (rows, cols, amp) in [(1, 1, 1.0f32), (3, 7, 1.0), (70, 300, 40.0), (9, 5, 1e3)] {
        let [s, dp, delta] = gen(rows as u64 + 11, [rows * cols, rows * cols, rows]);
        let s: Vec<f32> = s.iter().map(|x| x * amp).collect();
        let mut p = s.clone();
        let lse = softmax_rows(&mut p, cols);
        let (mut want_p, mut want_lse) = (Vec::new(), Vec::new());
        for row in s.chunks(cols) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
            want_p.extend(row.iter().map(|&x| (x as f64 - m).exp() / z));
            want_lse.push(m + z.ln());
        }
        close("softmax", &p, &want_p, 1e-5, 1e-6);
        close("lse", &lse, &want_lse, 1e-6, 1.0);
        // The backward step recomputes P from the scores and the log-sum-exp.
        let (mut p2, mut ds) = (s.clone(), dp.clone());
        softmax_rows_backward(&mut p2, &lse, &mut ds, &delta, cols);
        close("recomputed P", &p2, &want_p, 1e-4, 1e-6);
        let want_ds: Vec<f64> = (0..rows * cols)
            .map(|i| want_p[i] * (dp[i] as f64 - delta[i / cols] as f64))
            .collect();
        close("dS", &ds, &want_ds, 1e-4, 1e-6);
    }
}
