//! [`HostTensor`]: a row-major `f32` tensor in host memory — the currency of this crate.
//!
//! Only the few operations the LoRA conversions and tests need live here (matmul, transpose,
//! row slicing/stacking); real compute happens in Burn in the other crates.

use crate::error::{IoError, Result};

/// A row-major `f32` tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first. `[]` is a scalar.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Builds a tensor, checking that `data` has exactly `shape.iter().product()` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected = numel_of(&shape);
        if expected != data.len() {
            return Err(IoError::TensorShape {
                what: "HostTensor::new".into(),
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = numel_of(&shape);
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A 0-d tensor holding `v`.
    pub fn scalar(v: f32) -> Self {
        Self {
            shape: vec![],
            data: vec![v],
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Whether `data` holds exactly as many values as `shape` says (the fields are public).
    pub fn is_consistent(&self) -> bool {
        self.data.len() == numel_of(&self.shape)
    }

    /// `(rows, cols)` of a 2-D tensor whose data fits its shape, `None` otherwise.
    pub fn dims2(&self) -> Option<(usize, usize)> {
        match self.shape.as_slice() {
            &[r, c] if self.is_consistent() => Some((r, c)),
            _ => None,
        }
    }

    fn require2(
        &self,
        op: &'static str,
        other: &HostTensor,
    ) -> Result<((usize, usize), (usize, usize))> {
        match (self.dims2(), other.dims2()) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(IoError::MatrixShape {
                op,
                left: self.shape.clone(),
                right: other.shape.clone(),
            }),
        }
    }

    /// Matrix product `self · other` of two 2-D tensors (f32 accumulation, i-k-j loop order).
    pub fn matmul(&self, other: &HostTensor) -> Result<HostTensor> {
        let ((m, k), (k2, n)) = self.require2("matmul", other)?;
        if k != k2 {
            return Err(IoError::MatrixShape {
                op: "matmul",
                left: self.shape.clone(),
                right: other.shape.clone(),
            });
        }
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            let row = &mut out[i * n..(i + 1) * n];
            for p in 0..k {
                let a = self.data[i * k + p];
                if a == 0.0 {
                    continue;
                }
                let b_row = &other.data[p * n..(p + 1) * n];
                for (o, b) in row.iter_mut().zip(b_row) {
                    *o += a * b;
                }
            }
        }
        Ok(HostTensor {
            shape: vec![m, n],
            data: out,
        })
    }

    /// Transpose of a 2-D tensor.
    pub fn transpose(&self) -> Result<HostTensor> {
        let (r, c) = self.dims2().ok_or_else(|| IoError::MatrixShape {
            op: "transpose",
            left: self.shape.clone(),
            right: vec![],
        })?;
        let mut out = vec![0.0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Ok(HostTensor {
            shape: vec![c, r],
            data: out,
        })
    }

    /// Every element multiplied by `s`.
    pub fn scaled(&self, s: f32) -> HostTensor {
        HostTensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|v| v * s).collect(),
        }
    }

    /// Rows `start..end` of the outermost dimension (any rank ≥ 1).
    pub fn rows(&self, start: usize, end: usize) -> Result<HostTensor> {
        let Some((&n, rest)) = self.shape.split_first() else {
            return Err(IoError::MatrixShape {
                op: "rows",
                left: self.shape.clone(),
                right: vec![start, end],
            });
        };
        if start > end || end > n || !self.is_consistent() {
            return Err(IoError::MatrixShape {
                op: "rows",
                left: self.shape.clone(),
                right: vec![start, end],
            });
        }
        let inner = numel_of(rest);
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(HostTensor {
            shape,
            data: self.data[start * inner..end * inner].to_vec(),
        })
    }

    /// Columns `start..end` of a 2-D tensor.
    pub fn cols(&self, start: usize, end: usize) -> Result<HostTensor> {
        let (r, c) = self.dims2().ok_or_else(|| IoError::MatrixShape {
            op: "cols",
            left: self.shape.clone(),
            right: vec![start, end],
        })?;
        if start > end || end > c {
            return Err(IoError::MatrixShape {
                op: "cols",
                left: self.shape.clone(),
                right: vec![start, end],
            });
        }
        let w = end - start;
        let mut data = Vec::with_capacity(r * w);
        for i in 0..r {
            data.extend_from_slice(&self.data[i * c + start..i * c + end]);
        }
        Ok(HostTensor {
            shape: vec![r, w],
            data,
        })
    }

    /// Stacks tensors along the outermost dimension; all inner dimensions must agree.
    pub fn concat_rows(parts: &[&HostTensor]) -> Result<HostTensor> {
        let Some(first) = parts.first() else {
            return Err(IoError::MatrixShape {
                op: "concat_rows",
                left: vec![],
                right: vec![],
            });
        };
        if first.shape.is_empty() {
            return Err(IoError::MatrixShape {
                op: "concat_rows",
                left: first.shape.clone(),
                right: vec![],
            });
        }
        let inner = &first.shape[1..];
        let mut rows = 0;
        let mut data = Vec::new();
        for p in parts {
            if p.shape.is_empty() || &p.shape[1..] != inner || !p.is_consistent() {
                return Err(IoError::MatrixShape {
                    op: "concat_rows",
                    left: first.shape.clone(),
                    right: p.shape.clone(),
                });
            }
            rows += p.shape[0];
            data.extend_from_slice(&p.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(HostTensor { shape, data })
    }

    /// Largest absolute value (0 for an empty tensor); NaN if any element is NaN.
    pub fn max_abs(&self) -> f32 {
        let mut m = 0.0f32;
        for v in &self.data {
            if v.is_nan() {
                return f32::NAN;
            }
            m = m.max(v.abs());
        }
        m
    }

    /// Largest absolute element-wise difference to `other` (shapes must agree).
    pub fn max_abs_diff(&self, other: &HostTensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(IoError::MatrixShape {
                op: "max_abs_diff",
                left: self.shape.clone(),
                right: other.shape.clone(),
            });
        }
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max))
    }
}

/// Product of the dimensions (1 for a scalar).
pub(crate) fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_hand_computed_product() {
        let a = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let b = HostTensor::new(vec![3, 2], vec![7., 8., 9., 10., 11., 12.]).unwrap();
        let c = a.matmul(&b).unwrap();
        // [1 2 3;4 5 6]·[7 8;9 10;11 12] = [58 64; 139 154]
        assert_eq!(c.shape, vec![2, 2]);
        assert_eq!(c.data, vec![58., 64., 139., 154.]);
        assert!(a.matmul(&a).is_err());
    }

    #[test]
    fn transpose_rows_cols_concat() {
        let a = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(a.transpose().unwrap().data, vec![1., 4., 2., 5., 3., 6.]);
        assert_eq!(a.rows(1, 2).unwrap().data, vec![4., 5., 6.]);
        assert_eq!(a.cols(1, 3).unwrap().data, vec![2., 3., 5., 6.]);
        let c = HostTensor::concat_rows(&[&a, &a.rows(0, 1).unwrap()]).unwrap();
        assert_eq!(c.shape, vec![3, 3]);
        assert_eq!(c.data[6..], [1., 2., 3.]);
        assert!(HostTensor::new(vec![2, 2], vec![0.0; 3]).is_err());
        assert!(a.rows(2, 3).is_err());
        let broken = HostTensor {
            shape: vec![2, 2],
            data: vec![1.0],
        };
        assert!(broken.matmul(&a.transpose().unwrap()).is_err() && broken.transpose().is_err());
    }
}
