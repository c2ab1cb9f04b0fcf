//! Small dense linear algebra in `f64` for the LoRA tools: Householder QR, one-sided Jacobi
//! SVD, and a seeded randomized truncated SVD over a large `f32` matrix.
//!
//! Everything here works on matrices of at most a few hundred columns except the `f32`
//! operator in [`randomized_svd`], whose products run in parallel over rows (rayon) with `f64`
//! accumulation, so a `21504 × 3072` Flux weight is never copied to `f64`.

use rayon::prelude::*;

/// A row-major `f64` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows · cols` values, row-major.
    pub data: Vec<f64>,
}

impl Mat {
    /// A matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Builds a matrix from `f32` row-major values (`data.len()` must be `rows · cols`).
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Mat {
            rows,
            cols,
            data: data.iter().map(|&v| f64::from(v)).collect(),
        }
    }

    /// The values rounded to `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// Element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }

    /// The transpose.
    pub fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        out
    }

    /// `self · other`. Panics on mismatched inner dimensions (internal use only).
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul inner dimensions");
        let n = other.cols;
        let mut out = Mat::zeros(self.rows, n);
        for i in 0..self.rows {
            let row = &mut out.data[i * n..(i + 1) * n];
            for p in 0..self.cols {
                let a = self.data[i * self.cols + p];
                if a != 0.0 {
                    for (o, b) in row.iter_mut().zip(&other.data[p * n..(p + 1) * n]) {
                        *o += a * b;
                    }
                }
            }
        }
        out
    }

    /// The first `k` columns.
    pub fn first_cols(&self, k: usize) -> Mat {
        let mut out = Mat::zeros(self.rows, k);
        for i in 0..self.rows {
            out.data[i * k..(i + 1) * k]
                .copy_from_slice(&self.data[i * self.cols..i * self.cols + k]);
        }
        out
    }

    /// Column `j` multiplied by `s[j]` for every `j`.
    pub fn scale_cols(&self, s: &[f64]) -> Mat {
        let mut out = self.clone();
        for i in 0..self.rows {
            for (j, sj) in s.iter().enumerate().take(self.cols) {
                out.data[i * self.cols + j] *= sj;
            }
        }
        out
    }

    /// Frobenius norm.
    pub fn fro(&self) -> f64 {
        self.data.iter().map(|v| v * v).sum::<f64>().sqrt()
    }
}

/// Thin Householder QR: `a = q · r` with `q: [m, k]` orthonormal columns and `r: [k, n]` upper
/// triangular, `k = min(m, n)`. Stable for rank-deficient input (`q` stays orthonormal).
pub fn qr_thin(a: &Mat) -> (Mat, Mat) {
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    let mut r = a.clone();
    let mut vs: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        let norm = (j..m).map(|i| r.at(i, j).powi(2)).sum::<f64>().sqrt();
        let mut v: Vec<f64> = (j..m).map(|i| r.at(i, j)).collect();
        if norm == 0.0 {
            vs.push(Vec::new());
            continue;
        }
        let alpha = if v[0] >= 0.0 { -norm } else { norm };
        v[0] -= alpha;
        let vn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if vn == 0.0 {
            vs.push(Vec::new());
            continue;
        }
        v.iter_mut().for_each(|x| *x /= vn);
        apply_householder(&mut r, &v, j, j);
        vs.push(v);
    }
    let mut q = Mat::zeros(m, k);
    for i in 0..k {
        *q.at_mut(i, i) = 1.0;
    }
    for (j, v) in vs.iter().enumerate().rev() {
        if !v.is_empty() {
            apply_householder(&mut q, v, j, 0);
        }
    }
    let mut rk = Mat::zeros(k, n);
    for i in 0..k {
        for j in i..n {
            *rk.at_mut(i, j) = r.at(i, j);
        }
    }
    (q, rk)
}

/// `a[row0.., col0..] ← (I − 2vvᵀ)·a[row0.., col0..]` for unit `v`.
fn apply_householder(a: &mut Mat, v: &[f64], row0: usize, col0: usize) {
    for c in col0..a.cols {
        let dot: f64 = v
            .iter()
            .enumerate()
            .map(|(t, vi)| vi * a.at(row0 + t, c))
            .sum();
        if dot != 0.0 {
            for (t, vi) in v.iter().enumerate() {
                *a.at_mut(row0 + t, c) -= 2.0 * vi * dot;
            }
        }
    }
}

/// A thin SVD `a = u · diag(s) · vᵀ`: `u: [m, k]`, `s` (descending, ≥ 0), `v: [n, k]`,
/// `k = min(m, n)`.
#[derive(Debug, Clone)]
pub struct Svd {
    /// Left singular vectors, one per column: `[m, k]`.
    pub u: Mat,
    /// Singular values, descending, all ≥ 0.
    pub s: Vec<f64>,
    /// Right singular vectors, one per column: `[n, k]`.
    pub v: Mat,
}

impl Svd {
    /// `u[:, :k] · diag(s[:k]) · v[:, :k]ᵀ`.
    pub fn reconstruct(&self, k: usize) -> Mat {
        let k = k.min(self.s.len());
        self.u
            .first_cols(k)
            .scale_cols(&self.s[..k])
            .matmul(&self.v.first_cols(k).t())
    }
}

/// One-sided (Hestenes) Jacobi SVD. Accurate to a few ulps of the largest singular value.
pub fn svd(a: &Mat) -> Svd {
    if a.rows < a.cols {
        let Svd { u, s, v } = svd(&a.t());
        return Svd { u: v, s, v: u };
    }
    let (m, n) = (a.rows, a.cols);
    // Columns of `a` and of `v`, each stored contiguously.
    let at = a.t();
    let mut cols: Vec<Vec<f64>> = at.data.chunks(m.max(1)).map(<[f64]>::to_vec).collect();
    cols.truncate(n);
    let mut vcols: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    const TOL: f64 = 1e-15;
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = {
                    let (cp, cq) = (&cols[p], &cols[q]);
                    let mut al = 0.0;
                    let mut be = 0.0;
                    let mut ga = 0.0;
                    for (x, y) in cp.iter().zip(cq) {
                        al += x * x;
                        be += y * y;
                        ga += x * y;
                    }
                    (al, be, ga)
                };
                if gamma == 0.0 || gamma.abs() <= TOL * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut cols, p, q, c, s);
                rotate(&mut vcols, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = cols
        .iter()
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let smax = norms.iter().copied().fold(0.0, f64::max);
    let mut u = Mat::zeros(m, n);
    let mut v = Mat::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    let mut ucols: Vec<Vec<f64>> = Vec::with_capacity(n);
    for &j in &order {
        let sj = norms[j];
        let ucol = if sj > smax * 1e-13 && sj > 0.0 {
            cols[j].iter().map(|x| x / sj).collect()
        } else {
            orthonormal_complement(&ucols, m)
        };
        ucols.push(ucol);
        s.push(sj);
    }
    for (k, &j) in order.iter().enumerate() {
        for (i, &x) in ucols[k].iter().enumerate().take(m) {
            *u.at_mut(i, k) = x;
        }
        for (i, &x) in vcols[j].iter().enumerate().take(n) {
            *v.at_mut(i, k) = x;
        }
    }
    Svd { u, s, v }
}

fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

/// A unit vector orthogonal to every vector in `basis` (orthonormal, fewer than `m` of them):
/// the standard basis vector whose Gram–Schmidt remainder is largest, orthogonalised twice.
fn orthonormal_complement(basis: &[Vec<f64>], m: usize) -> Vec<f64> {
    let mut best: Option<(f64, Vec<f64>)> = None;
    for e in 0..m {
        let mut x = vec![0.0; m];
        x[e] = 1.0;
        for _ in 0..2 {
            for b in basis {
                let d: f64 = b.iter().zip(&x).map(|(p, q)| p * q).sum();
                x.iter_mut().zip(b).for_each(|(xi, bi)| *xi -= d * bi);
            }
        }
        let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if best.as_ref().is_none_or(|(bn, _)| n > *bn) {
            best = Some((n, x));
        }
        if n > 0.5 {
            break;
        }
    }
    let (n, x) = best.unwrap_or((1.0, vec![0.0; m]));
    x.into_iter().map(|v| v / n).collect()
}

/// A borrowed row-major `f32` matrix (a full model weight or a weight delta).
#[derive(Debug, Clone, Copy)]
pub struct F32Matrix<'a> {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows · cols` values, row-major.
    pub data: &'a [f32],
}

impl F32Matrix<'_> {
    /// `self · b` with `b: [cols, l]`, `f64` accumulation, parallel over rows.
    pub fn mul(&self, b: &Mat) -> Mat {
        assert_eq!(self.cols, b.rows, "F32Matrix::mul inner dimensions");
        let l = b.cols;
        let mut out = Mat::zeros(self.rows, l);
        out.data
            .par_chunks_mut(l.max(1))
            .zip(self.data.par_chunks(self.cols.max(1)))
            .for_each(|(o, a)| {
                for (p, &x) in a.iter().enumerate() {
                    if x != 0.0 {
                        let x = f64::from(x);
                        o.iter_mut()
                            .zip(&b.data[p * l..(p + 1) * l])
                            .for_each(|(oi, bi)| *oi += x * bi);
                    }
                }
            });
        out
    }

    /// `selfᵀ · b` with `b: [rows, l]`: per-block partial sums over row blocks, then summed.
    pub fn t_mul(&self, b: &Mat) -> Mat {
        assert_eq!(self.rows, b.rows, "F32Matrix::t_mul inner dimensions");
        let (n, l) = (self.cols, b.cols);
        const BLOCK: usize = 256;
        let partials: Vec<Vec<f64>> = (0..self.rows.div_ceil(BLOCK))
            .into_par_iter()
            .map(|blk| {
                let mut acc = vec![0.0f64; n * l];
                for i in blk * BLOCK..((blk + 1) * BLOCK).min(self.rows) {
                    let brow = &b.data[i * l..(i + 1) * l];
                    for (j, &x) in self.data[i * n..(i + 1) * n].iter().enumerate() {
                        if x != 0.0 {
                            let x = f64::from(x);
                            acc[j * l..(j + 1) * l]
                                .iter_mut()
                                .zip(brow)
                                .for_each(|(o, bi)| *o += x * bi);
                        }
                    }
                }
                acc
            })
            .collect();
        let mut out = Mat::zeros(n, l);
        for p in partials {
            out.data.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        out
    }
}

/// Deterministic Gaussian samples (SplitMix64 + Box–Muller).
#[derive(Debug, Clone)]
pub struct GaussianRng {
    state: u64,
    spare: Option<f64>,
}

impl GaussianRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        GaussianRng {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A standard normal sample.
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        self.spare = Some(r * th.sin());
        r * th.cos()
    }

    /// A `rows × cols` matrix of standard normal samples.
    pub fn matrix(&mut self, rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: (0..rows * cols).map(|_| self.normal()).collect(),
        }
    }
}

/// Truncated SVD of rank `rank` by randomized subspace iteration (Halko–Martinsson–Tropp,
/// Alg. 4.4): a Gaussian sketch of `rank + oversample` columns, `power_iterations`
/// re-orthonormalised power steps, then an exact SVD of the small projected matrix. Exact when
/// `a` has rank ≤ `rank + oversample`.
pub fn randomized_svd(
    a: F32Matrix<'_>,
    rank: usize,
    oversample: usize,
    power_iterations: usize,
    seed: u64,
) -> Svd {
    let kmax = a.rows.min(a.cols);
    let l = (rank + oversample).min(kmax).max(1);
    let omega = GaussianRng::new(seed).matrix(a.cols, l);
    let (mut q, _) = qr_thin(&a.mul(&omega));
    for _ in 0..power_iterations {
        let (qz, _) = qr_thin(&a.t_mul(&q));
        (q, _) = qr_thin(&a.mul(&qz));
    }
    // Bᵀ = aᵀ·q = x·s·yᵀ  ⇒  a ≈ q·b = (q·y)·s·xᵀ.
    let bt = a.t_mul(&q);
    let Svd { u: x, s, v: y } = svd(&bt);
    let k = rank.min(s.len());
    Svd {
        u: q.matmul(&y).first_cols(k),
        s: s[..k].to_vec(),
        v: x.first_cols(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Mat {
        GaussianRng::new(seed).matrix(rows, cols)
    }

    fn max_diff(a: &Mat, b: &Mat) -> f64 {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols));
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn assert_orthonormal_cols(q: &Mat, tol: f64) {
        let g = q.t().matmul(q);
        for i in 0..g.rows {
            for j in 0..g.cols {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (g.at(i, j) - want).abs() < tol,
                    "QᵀQ[{i},{j}] = {}",
                    g.at(i, j)
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn svd_reconstructs_sorted_orthonormal(
            m in 1usize..24,
            n in 1usize..24,
            seed in any::<u64>(),
        ) {
            let a = random(m, n, seed);
            let d = svd(&a);
            let k = m.min(n);
            prop_assert_eq!(d.s.len(), k);
            prop_assert!(d.s.windows(2).all(|w| w[0] >= w[1]));
            prop_assert!(d.s.iter().all(|&s| s >= 0.0));
            assert_orthonormal_cols(&d.u, 1e-10);
            assert_orthonormal_cols(&d.v, 1e-10);
            prop_assert!(max_diff(&d.reconstruct(k), &a) < 1e-10 * (1.0 + a.fro()));
            // Independent check: Σσ² equals ‖a‖²_F.
            let e: f64 = d.s.iter().map(|s| s * s).sum();
            prop_assert!((e - a.fro().powi(2)).abs() < 1e-9 * (1.0 + e));
        }

        #[test]
        fn qr_reconstructs(m in 1usize..20, n in 1usize..20, seed in any::<u64>()) {
            let a = random(m, n, seed);
            let (q, r) = qr_thin(&a);
            assert_orthonormal_cols(&q, 1e-12);
            for i in 0..r.rows {
                for j in 0..i.min(r.cols) {
                    prop_assert_eq!(r.at(i, j), 0.0);
                }
            }
            prop_assert!(max_diff(&q.matmul(&r), &a) < 1e-12 * (1.0 + a.fro()));
        }
    }

    #[test]
    fn svd_of_known_singular_values_and_rank_deficient_input() {
        // a = U·diag(5, 2, 0)·Vᵀ with orthonormal U, V from QR of random matrices.
        let (u, _) = qr_thin(&random(7, 3, 1));
        let (v, _) = qr_thin(&random(5, 3, 2));
        let a = u.scale_cols(&[5.0, 2.0, 0.0]).matmul(&v.t());
        let d = svd(&a);
        assert!((d.s[0] - 5.0).abs() < 1e-12 && (d.s[1] - 2.0).abs() < 1e-12);
        assert!(d.s[2..].iter().all(|&s| s < 1e-12), "{:?}", d.s);
        assert_orthonormal_cols(&d.u, 1e-10);
        assert_orthonormal_cols(&d.v, 1e-10);
        assert!(max_diff(&d.reconstruct(5), &a) < 1e-12);
        let zero = svd(&Mat::zeros(4, 3));
        assert_eq!(zero.s, vec![0.0; 3]);
        assert_orthonormal_cols(&zero.u, 1e-12);
    }

    #[test]
    fn randomized_svd_recovers_planted_low_rank_and_matches_products() {
        let (u, _) = qr_thin(&random(40, 3, 3));
        let (v, _) = qr_thin(&random(30, 3, 4));
        let a = u.scale_cols(&[9.0, 4.0, 1.5]).matmul(&v.t());
        let af = a.to_f32();
        let op = F32Matrix {
            rows: 40,
            cols: 30,
            data: &af,
        };
        // The parallel products against the dense f64 ones.
        let b = random(30, 5, 5);
        let a32 = Mat::from_f32(40, 30, &af);
        assert!(max_diff(&op.mul(&b), &a32.matmul(&b)) < 1e-12);
        let c = random(40, 5, 6);
        assert!(max_diff(&op.t_mul(&c), &a32.t().matmul(&c)) < 1e-12);
        let d = randomized_svd(op, 3, 4, 2, 7);
        assert_eq!(d.s.len(), 3);
        for (got, want) in d.s.iter().zip([9.0, 4.0, 1.5]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // a32 is `a` rounded to f32: full rank at the 1e-7 level, so compare to that level.
        assert!(max_diff(&d.reconstruct(3), &a32) < 1e-6);
        // Same seed, same answer.
        let d2 = randomized_svd(op, 3, 4, 2, 7);
        assert_eq!(d.u, d2.u);
    }
}
