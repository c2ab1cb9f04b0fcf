//! Exact fusing and splitting of LoRA modules along output rows, and the adaLN half swap.
//!
//! Fusing pieces that cover row blocks of one output (q/k/v/mlp → qkv or linear1):
//! - pieces with bit-identical `down` (what a copy-split produces) share it: `down` stays,
//!   `up` stacks the pieces' rows (rank unchanged);
//! - otherwise `down` is the concatenation of the pieces' downs and `up` is block-diagonal
//!   (rank = sum of ranks);
//! - rows no piece covers are zero;
//! - if every piece has the same scale it is kept (alpha = scale·rank); otherwise each
//!   piece's scale is folded into its up block (and bias) and the fused alpha equals its rank.
//!
//! Splitting a fused module into row blocks: if `up` is block-diagonal (every row block uses
//! its own contiguous column range and every block is non-zero), `down` is cut along those
//! columns (equal chunks when they fit, as kohya's `split_qkv` writes them) and each part keeps
//! the scale; otherwise every part gets a copy of `down` and its rows of `up`. Both are exact.

use std::collections::BTreeMap;
use std::ops::Range;

use super::keys_flux::{fused_segments, Target};
use super::LoraModule;
use crate::error::{IoError, Result};
use crate::tensor::HostTensor;

/// Splits `m` into parts with output-row counts `dims` (summing to `m.out_features()`).
pub fn split_rows(m: &LoraModule, dims: &[usize]) -> Result<Vec<LoraModule>> {
    let out = m.out_features();
    if dims.iter().sum::<usize>() != out || dims.contains(&0) {
        return Err(IoError::LoraSplitRows {
            rows: out,
            dims: dims.to_vec(),
        });
    }
    if dims.len() == 1 {
        return Ok(vec![m.clone()]);
    }
    let r = m.rank();
    let mut row0 = Vec::with_capacity(dims.len());
    let mut acc = 0;
    for d in dims {
        row0.push(acc);
        acc += d;
    }
    let bias_rows = |j: usize| -> Result<Option<HostTensor>> {
        m.up_bias
            .as_ref()
            .map(|b| b.rows(row0[j], row0[j] + dims[j]))
            .transpose()
    };
    if let Some(bounds) = block_diagonal_columns(&m.up, &row0, dims) {
        let mut parts = Vec::with_capacity(dims.len());
        for j in 0..dims.len() {
            let (c0, c1) = (bounds[j], bounds[j + 1]);
            let down = m.down.rows(c0, c1)?;
            let up =
                m.up.rows(row0[j], row0[j] + dims[j])
                    .and_then(|u| u.cols(c0, c1))?;
            let alpha = m.alpha * (c1 - c0) as f32 / r as f32;
            parts.push(LoraModule {
                down,
                up,
                alpha,
                up_bias: bias_rows(j)?,
            });
        }
        return Ok(parts);
    }
    let mut parts = Vec::with_capacity(dims.len());
    for j in 0..dims.len() {
        let up = m.up.rows(row0[j], row0[j] + dims[j])?;
        parts.push(LoraModule {
            down: m.down.clone(),
            up,
            alpha: m.alpha,
            up_bias: bias_rows(j)?,
        });
    }
    Ok(parts)
}

/// Column boundaries `b[0]=0 ≤ … ≤ b[n]=rank` such that row block j of `up` is zero outside
/// columns `b[j]..b[j+1]`, with every block non-zero; `None` if `up` is not like that.
fn block_diagonal_columns(up: &HostTensor, row0: &[usize], dims: &[usize]) -> Option<Vec<usize>> {
    let (_, r) = up.dims2()?;
    let n = dims.len();
    let mut spans = Vec::with_capacity(n);
    for j in 0..n {
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        for row in row0[j]..row0[j] + dims[j] {
            for (c, v) in up.data[row * r..(row + 1) * r].iter().enumerate() {
                if *v != 0.0 {
                    lo = lo.min(c);
                    hi = hi.max(c);
                }
            }
        }
        if lo == usize::MAX {
            return None; // an all-zero block: nothing tells its columns apart
        }
        spans.push((lo, hi));
    }
    if spans.windows(2).any(|w| w[0].1 >= w[1].0) {
        return None;
    }
    let mut b = vec![0; n + 1];
    b[n] = r;
    for j in 1..n {
        let (min, max) = (spans[j - 1].1 + 1, spans[j].0);
        let equal = j * r / n;
        b[j] = if r % n == 0 && (min..=max).contains(&equal) {
            equal
        } else {
            max
        };
    }
    Some(b)
}

/// Fuses `pieces` (`(first output row, module)`) into one module with `out_rows` outputs.
pub fn fuse_rows(pieces: &[(usize, &LoraModule)], out_rows: usize) -> Result<LoraModule> {
    let mut pieces: Vec<(usize, &LoraModule)> = pieces.to_vec();
    pieces.sort_by_key(|p| p.0);
    let first = pieces.first().ok_or(IoError::LoraFuseEmpty)?.1;
    let in_f = first.in_features();
    let mut cursor = 0;
    for (start, m) in &pieces {
        if m.in_features() != in_f {
            return Err(IoError::LoraFuseInFeatures {
                expected: in_f,
                found: m.in_features(),
            });
        }
        if *start < cursor {
            return Err(IoError::LoraFuseOverlap { row: *start });
        }
        cursor = start + m.out_features();
        if cursor > out_rows {
            return Err(IoError::LoraFuseOverflow {
                end: cursor,
                rows: out_rows,
            });
        }
    }
    if pieces.len() == 1 && pieces[0].0 == 0 && first.out_features() == out_rows {
        return Ok(first.clone());
    }
    let same_scale = pieces
        .iter()
        .all(|(_, m)| m.scale().to_bits() == first.scale().to_bits());
    let fused_scale = if same_scale { first.scale() } else { 1.0 };
    let factor = |m: &LoraModule| if same_scale { None } else { Some(m.scale()) };
    let shared_down = pieces.len() > 1 && pieces.iter().all(|(_, m)| m.down == first.down);

    let (down, col0): (HostTensor, Vec<usize>) = if shared_down {
        (first.down.clone(), vec![0; pieces.len()])
    } else {
        let downs: Vec<&HostTensor> = pieces.iter().map(|(_, m)| &m.down).collect();
        let mut cols = Vec::with_capacity(pieces.len());
        let mut c = 0;
        for (_, m) in &pieces {
            cols.push(c);
            c += m.rank();
        }
        (HostTensor::concat_rows(&downs)?, cols)
    };
    let rank = down.shape[0];
    let mut up = HostTensor::zeros(vec![out_rows, rank]);
    let any_bias = pieces.iter().any(|(_, m)| m.up_bias.is_some());
    let mut bias = any_bias.then(|| HostTensor::zeros(vec![out_rows]));
    for ((start, m), c0) in pieces.iter().zip(&col0) {
        let f = factor(m);
        let (rows, pr) = (m.out_features(), m.rank());
        for i in 0..rows {
            for k in 0..pr {
                let v = m.up.data[i * pr + k];
                up.data[(start + i) * rank + c0 + k] = f.map_or(v, |f| v * f);
            }
        }
        if let (Some(b), Some(pb)) = (bias.as_mut(), m.up_bias.as_ref()) {
            for i in 0..rows {
                b.data[start + i] = f.map_or(pb.data[i], |f| pb.data[i] * f);
            }
        }
    }
    let alpha = match (same_scale, rank == first.rank()) {
        (true, true) => first.alpha, // shared down: keep alpha bit-exact
        (true, false) => fused_scale * rank as f32,
        (false, _) => rank as f32,
    };
    let fused = LoraModule {
        down,
        up,
        alpha,
        up_bias: bias,
    };
    fused.check()?;
    Ok(fused)
}

/// Swaps the two output halves (rows `[a; b]` → `[b; a]`) of `up` and the bias.
pub fn swap_halves(m: &LoraModule) -> Result<LoraModule> {
    let out = m.out_features();
    if !out.is_multiple_of(2) {
        return Err(IoError::LoraSwapOdd { rows: out });
    }
    let h = out / 2;
    let swap = |t: &HostTensor| -> Result<HostTensor> {
        let (a, b) = (t.rows(0, h)?, t.rows(h, out)?);
        HostTensor::concat_rows(&[&b, &a])
    };
    Ok(LoraModule {
        down: m.down.clone(),
        up: swap(&m.up)?,
        alpha: m.alpha,
        up_bias: m.up_bias.as_ref().map(swap).transpose()?,
    })
}

/// Collects whole modules and pieces of fused modules, then fuses the pieces.
#[derive(Default)]
pub(crate) struct Assembler {
    whole: BTreeMap<String, (LoraModule, String)>,
    pieces: BTreeMap<String, Vec<(Range<usize>, LoraModule, String)>>,
}

/// An assembly problem: (canonical module, what is wrong with it).
pub(crate) type AssemblyError = (String, IoError);

impl Assembler {
    /// Adds `module` (read from file key stem `source`) at `target`.
    pub fn add(
        &mut self,
        target: Target,
        module: LoraModule,
        source: &str,
    ) -> Result<(), AssemblyError> {
        let module = if target.swap_halves {
            swap_halves(&module).map_err(|e| (target.key.clone(), e))?
        } else {
            module
        };
        match target.segments {
            None => {
                if let Some((_, prev)) = self.whole.get(&target.key) {
                    let twice = IoError::LoraModuleTwice {
                        first: prev.clone(),
                        second: source.to_string(),
                    };
                    return Err((target.key, twice));
                }
                self.whole.insert(target.key, (module, source.to_string()));
            }
            Some(segs) => {
                self.pieces
                    .entry(target.key)
                    .or_default()
                    .push((segs, module, source.to_string()))
            }
        }
        Ok(())
    }

    /// Fuses every group of pieces and returns all modules.
    pub fn finish(self) -> Result<BTreeMap<String, LoraModule>, AssemblyError> {
        let mlp_hint = self.mlp_hint();
        let mut out: BTreeMap<String, LoraModule> =
            self.whole.into_iter().map(|(k, (m, _))| (k, m)).collect();
        for (key, pieces) in self.pieces {
            if out.contains_key(&key) {
                return Err((key, IoError::LoraWholeAndPieces));
            }
            let fused = fuse_pieces(&key, &pieces, mlp_hint).map_err(|e| (key.clone(), e))?;
            out.insert(key, fused);
        }
        Ok(out)
    }

    /// The single-block MLP width, from any module that shows it.
    fn mlp_hint(&self) -> Option<usize> {
        for (key, (m, _)) in &self.whole {
            if key.starts_with("single_blocks.")
                && key.ends_with(".linear2")
                && m.in_features() > m.out_features()
            {
                return Some(m.in_features() - m.out_features());
            }
            if key.ends_with("_mlp.0") {
                return Some(m.out_features());
            }
            if key.ends_with("_mlp.2") {
                return Some(m.in_features());
            }
            if key.starts_with("single_blocks.") && key.ends_with(".linear1") {
                let h = m.in_features();
                if m.out_features() > 3 * h {
                    return Some(m.out_features() - 3 * h);
                }
            }
        }
        for pieces in self.pieces.values() {
            for (segs, m, _) in pieces {
                if segs.contains(&3) {
                    let qkv_rows = (segs.start..3.min(segs.end)).count() * m.in_features();
                    return m.out_features().checked_sub(qkv_rows);
                }
            }
        }
        None
    }
}

fn fuse_pieces(
    key: &str,
    pieces: &[(Range<usize>, LoraModule, String)],
    mlp_hint: Option<usize>,
) -> Result<LoraModule> {
    let h = pieces[0].1.in_features();
    // Segment sizes: qkv = [h, h, h]; linear1 = [h, h, h, mlp].
    let probe_out = if key.ends_with(".linear1") {
        3 * h + mlp_hint.unwrap_or(4 * h).max(1)
    } else {
        3 * h
    };
    let mut seg = fused_segments(key, h, probe_out).ok_or_else(|| IoError::LoraNotFused {
        key: key.to_string(),
    })?;
    if seg.len() == 4 {
        if let Some((segs, m, src)) = pieces.iter().find(|(s, _, _)| s.contains(&3)) {
            let qkv_rows = (segs.start..3.min(segs.end)).count() * h;
            seg[3] = m
                .out_features()
                .checked_sub(qkv_rows)
                .filter(|&x| x > 0)
                .ok_or_else(|| IoError::LoraPieceRows {
                    piece: src.clone(),
                    rows: m.out_features(),
                })?;
        }
    }
    let starts: Vec<usize> = seg
        .iter()
        .scan(0, |acc, s| Some(std::mem::replace(acc, *acc + s)))
        .collect();
    let total: usize = seg.iter().sum();
    let mut placed = Vec::with_capacity(pieces.len());
    for (segs, m, src) in pieces {
        if segs.end > seg.len() {
            return Err(IoError::LoraPieceSegment {
                piece: src.clone(),
                segment: segs.end - 1,
                segments: seg.len(),
            });
        }
        let rows: usize = seg[segs.clone()].iter().sum();
        if m.out_features() != rows || m.in_features() != h {
            return Err(IoError::LoraPieceShape {
                piece: src.clone(),
                found: [m.out_features(), m.in_features()],
                expected: [rows, h],
            });
        }
        placed.push((starts[segs.start], m));
    }
    fuse_rows(&placed, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> HostTensor {
        HostTensor::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    #[test]
    fn block_diagonal_split_chunks_down() {
        // rank 2, two row blocks of 1 row each, up = diag.
        let m = LoraModule::new(t(&[2, 1], &[1., 2.]), t(&[2, 2], &[3., 0., 0., 4.]), 2.0).unwrap();
        let parts = split_rows(&m, &[1, 1]).unwrap();
        assert_eq!(parts[0].rank(), 1);
        assert_eq!(parts[0].down.data, vec![1.]);
        assert_eq!(parts[1].up.data, vec![4.]);
        assert_eq!(parts[1].scale(), m.scale());
        // A dense up copies down.
        let dense =
            LoraModule::new(t(&[2, 1], &[1., 2.]), t(&[2, 2], &[3., 1., 0., 4.]), 2.0).unwrap();
        let parts = split_rows(&dense, &[1, 1]).unwrap();
        assert_eq!(parts[0].down, dense.down);
        assert_eq!(parts[0].rank(), 2);
    }

    #[test]
    fn fuse_folds_unequal_scales() {
        let a = LoraModule::new(t(&[1, 2], &[1., 1.]), t(&[1, 1], &[2.]), 0.5).unwrap();
        let b = LoraModule::new(t(&[1, 2], &[0., 1.]), t(&[1, 1], &[3.]), 2.0).unwrap();
        let f = fuse_rows(&[(0, &a), (2, &b)], 3).unwrap();
        assert_eq!(f.rank(), 2);
        assert_eq!(f.scale(), 1.0);
        // Row 0 = 0.5·2·[1 1], row 1 = 0, row 2 = 2·3·[0 1].
        assert_eq!(f.delta().unwrap().data, vec![1., 1., 0., 0., 0., 6.]);
    }
}
