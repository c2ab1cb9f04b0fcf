//! The per-tensor arithmetic of [`super::merge`]: how one LoRA module's change lands on one
//! base tensor (a BFL module's whole weight, or the rows of it a diffusers tensor holds).
//!
//! - LoRA: `W[i, :] += w·scale·up[map(i), :]·down` (and the bias delta), without forming ΔW.
//! - LoKr / LoHa: `W[i, :] += w·ΔW[map(i), :]`, ΔW dense from [`LycorisModule::delta`].
//! - DoRA: [`DoraScale::apply`] on the current tensor with ΔW's rows (and, per output
//!   channel, the magnitudes) gathered through the same row map. The norm of each output row
//!   only involves that row, so per-output DoRA works on split rows; per-input DoRA needs the
//!   whole module in one tensor (a row permutation, as the half swap, leaves column norms
//!   alone), which [`super::merge`] checks before anything is written.

use rayon::prelude::*;

use crate::error::Result;
use crate::lora::{DoraAxis, DoraScale, LoraModule, LycorisModule};
use crate::tensor::HostTensor;

/// Target row `i` of a checkpoint tensor is row `map(i)` of the BFL module.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowMap {
    Offset(usize),
    /// Halves swapped: `(i + half) mod 2·half`.
    Swap(usize),
}

impl RowMap {
    pub(crate) fn map(self, i: usize) -> usize {
        match self {
            RowMap::Offset(o) => o + i,
            RowMap::Swap(h) => (i + h) % (2 * h),
        }
    }
}

/// What one module does to one base tensor.
pub(crate) enum Change<'a> {
    /// `+= factor·up·down` (`factor = weight·scale`), or `+= factor·up_bias` when `bias`.
    LowRank {
        module: &'a LoraModule,
        factor: f32,
        bias: bool,
    },
    /// `+= weight·ΔW` of a LoKr / LoHa module.
    Dense {
        module: &'a LycorisModule,
        weight: f32,
    },
    /// DoRA: the tensor becomes [`DoraScale::apply`] of it with the module's ΔW at `weight`.
    Dora {
        module: &'a LoraModule,
        dora: &'a DoraScale,
        weight: f32,
    },
}

/// One change with the rows of the module the tensor holds.
pub(crate) struct Contribution<'a> {
    pub change: Change<'a>,
    pub rows: RowMap,
}

impl Contribution<'_> {
    /// Applies the change to `t` (`[rows, cols]` row-major, or a bias vector).
    pub(crate) fn apply(&self, t: &mut HostTensor, cols: usize) -> Result<()> {
        match &self.change {
            Change::LowRank {
                module,
                factor,
                bias,
            } => {
                if *bias {
                    add_bias(&mut t.data, module, *factor, self.rows);
                } else {
                    add_low_rank(&mut t.data, cols, module, *factor, self.rows);
                }
            }
            Change::Dense { module, weight } => {
                let delta = module.delta()?;
                add_rows(&mut t.data, cols, &delta.data, *weight, self.rows);
            }
            Change::Dora {
                module,
                dora,
                weight,
            } => {
                let n = t.data.len() / cols.max(1);
                let delta = gather_rows(&module.delta()?.data, cols, n, self.rows);
                let local = DoraScale {
                    values: match dora.axis {
                        DoraAxis::Output => HostTensor::new(
                            vec![n],
                            (0..n).map(|i| dora.values.data[self.rows.map(i)]).collect(),
                        )?,
                        DoraAxis::Input => dora.values.clone(),
                    },
                    axis: dora.axis,
                };
                let base = HostTensor::new(vec![n, cols], std::mem::take(&mut t.data))?;
                let delta = HostTensor::new(vec![n, cols], delta)?;
                t.data = local.apply(&base, &delta, *weight)?.data;
            }
        }
        Ok(())
    }
}

/// `data[i] += factor · up_bias[map(i)]`.
fn add_bias(data: &mut [f32], m: &LoraModule, factor: f32, rows: RowMap) {
    if let Some(b) = &m.up_bias {
        for (i, v) in data.iter_mut().enumerate() {
            *v += factor * b.data[rows.map(i)];
        }
    }
}

/// `data[i, :] += factor · up[map(i), :] · down`.
fn add_low_rank(data: &mut [f32], cols: usize, m: &LoraModule, factor: f32, rows: RowMap) {
    let r = m.rank();
    let (up, down) = (&m.up.data, &m.down.data);
    data.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let src = rows.map(i);
            for k in 0..r {
                let coeff = factor * up[src * r + k];
                if coeff != 0.0 {
                    row.iter_mut()
                        .zip(&down[k * cols..(k + 1) * cols])
                        .for_each(|(o, d)| *o += coeff * d);
                }
            }
        });
}

/// `data[i, :] += weight · delta[map(i), :]`.
fn add_rows(data: &mut [f32], cols: usize, delta: &[f32], weight: f32, rows: RowMap) {
    data.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let src = &delta[rows.map(i) * cols..(rows.map(i) + 1) * cols];
            row.iter_mut().zip(src).for_each(|(o, d)| *o += weight * d);
        });
}

/// Rows `map(0..n)` of `delta` (`cols` wide), stacked.
fn gather_rows(delta: &[f32], cols: usize, n: usize, rows: RowMap) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * cols);
    for i in 0..n {
        let s = rows.map(i) * cols;
        out.extend_from_slice(&delta[s..s + cols]);
    }
    out
}
