//! LyCORIS modules in files: LoKr and LoHa ([`LycorisModule`]) and DoRA magnitudes
//! ([`DoraScale`], beside a plain [`LoraModule`]), with the key roles ComfyUI's
//! `comfy/weight_adapter/` reads and the host arithmetic of their weight change.
//!
//! Keys (after the module stem, kohya `lora_unet_…` or ComfyUI `diffusion_model.…`):
//! - LoKr: `.lokr_w1` or `.lokr_w1_a`/`.lokr_w1_b`; `.lokr_w2` or `.lokr_w2_a`/`.lokr_w2_b`;
//!   `.alpha`. `ΔW = kron(W1, W2)·scale`, scale = `alpha / r` with `r` the inner dimension of
//!   the decomposed factor (W2's if decomposed, else W1's), 1 when both are full or there is no
//!   alpha (ComfyUI `lokr.py`). `.lokr_t2` (Tucker, convolutions only) is refused.
//! - LoHa: `.hada_w1_a [out, r]`, `.hada_w1_b [r, in]`, `.hada_w2_a`, `.hada_w2_b`, `.alpha`;
//!   `ΔW = (W1a·W1b) ⊙ (W2a·W2b)·alpha/r`, `r` = rows of `hada_w1_b`, scale 1 without alpha.
//!   `.hada_t1`/`.hada_t2` (Tucker) are refused.
//! - DoRA: the LoRA keys plus `.dora_scale` (LyCORIS, ComfyUI): `[out, 1]` normalises per
//!   output channel (LyCORIS `wd_on_out=True`, its default), `[1, in]` per input column
//!   (`wd_on_out=False`). PEFT/diffusers write `.lora_magnitude_vector [out]`, per output
//!   channel. `W' = W + s·(m ⊙ (W + ΔW)/(‖W + ΔW‖ + eps) − W)`, `eps = f32::EPSILON`, the
//!   norm over the other axis of `W + ΔW` (LyCORIS, PEFT). ComfyUI's `weight_decompose`
//!   (`base.py`, since #7727) takes the output-axis norm of `W` *without* ΔW — a loader quirk,
//!   not the trained model; [`DoraScale::apply`] follows the trainers.

use super::out_tensor::OutTensor;
use super::LoraModule;
use crate::error::{IoError, Result};
use crate::tensor::HostTensor;

/// `torch.finfo(float32).eps`, added to the DoRA norm by LyCORIS and ComfyUI.
pub const DORA_EPS: f32 = f32::EPSILON;

/// One Kronecker factor of a LoKr module.
#[derive(Debug, Clone, PartialEq)]
pub enum KronFactor {
    /// The whole factor.
    Full(HostTensor),
    /// `a [rows, r] · b [r, cols]`.
    LowRank {
        /// `…_a`, `[rows, r]`.
        a: HostTensor,
        /// `…_b`, `[r, cols]`.
        b: HostTensor,
    },
}

impl KronFactor {
    /// `(rows, cols)` of the factor as one matrix.
    pub fn dims(&self) -> Option<(usize, usize)> {
        match self {
            KronFactor::Full(w) => w.dims2(),
            KronFactor::LowRank { a, b } => Some((a.dims2()?.0, b.dims2()?.1)),
        }
    }

    /// The inner dimension when decomposed.
    pub fn rank(&self) -> Option<usize> {
        match self {
            KronFactor::Full(_) => None,
            KronFactor::LowRank { b, .. } => b.dims2().map(|d| d.0),
        }
    }

    /// The factor as one matrix.
    pub fn dense(&self) -> Result<HostTensor> {
        match self {
            KronFactor::Full(w) => Ok(w.clone()),
            KronFactor::LowRank { a, b } => a.matmul(b),
        }
    }

    fn numel(&self) -> usize {
        match self {
            KronFactor::Full(w) => w.numel(),
            KronFactor::LowRank { a, b } => a.numel() + b.numel(),
        }
    }

    fn check(&self, name: &str) -> Result<()> {
        let bad = |problem: String| Err(IoError::LycorisShape { problem });
        match self {
            KronFactor::Full(w) => {
                if !w.is_consistent() || w.dims2().is_none() {
                    return bad(format!("{name} {:?} must be a 2-D matrix", w.shape));
                }
            }
            KronFactor::LowRank { a, b } => match (a.dims2(), b.dims2()) {
                (Some((_, r)), Some((r2, _))) if r == r2 && r > 0 => {
                    if !a.is_consistent() || !b.is_consistent() {
                        return bad(format!("{name}_a/_b hold the wrong number of values"));
                    }
                }
                _ => {
                    return bad(format!(
                        "{name}_a {:?} and {name}_b {:?} do not multiply",
                        a.shape, b.shape
                    ))
                }
            },
        }
        Ok(())
    }
}

/// A LoKr or LoHa module (file layout: `[out, in]` weight changes).
#[derive(Debug, Clone, PartialEq)]
pub enum LycorisModule {
    /// `ΔW = kron(W1, W2)·scale`.
    Lokr {
        /// W1 `[out_l, in_m]`.
        w1: KronFactor,
        /// W2 `[out_k, in_n]`.
        w2: KronFactor,
        /// `.alpha` (`None`: scale 1).
        alpha: Option<f32>,
    },
    /// `ΔW = (W1a·W1b) ⊙ (W2a·W2b)·alpha/r`.
    Loha {
        /// `hada_w1_a [out, r]`.
        w1_a: HostTensor,
        /// `hada_w1_b [r, in]`.
        w1_b: HostTensor,
        /// `hada_w2_a [out, r]`.
        w2_a: HostTensor,
        /// `hada_w2_b [r, in]`.
        w2_b: HostTensor,
        /// `.alpha` (`None`: scale 1).
        alpha: Option<f32>,
    },
}

impl LycorisModule {
    /// `lokr` or `loha`.
    pub fn kind(&self) -> &'static str {
        match self {
            LycorisModule::Lokr { .. } => "lokr",
            LycorisModule::Loha { .. } => "loha",
        }
    }

    /// Checks that the tensors multiply to one `[out, in]` change and alpha is finite.
    pub fn check(&self) -> Result<()> {
        let alpha = match self {
            LycorisModule::Lokr { w1, w2, alpha } => {
                w1.check("lokr_w1")?;
                w2.check("lokr_w2")?;
                alpha
            }
            LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                alpha,
            } => {
                let ok = w1_a
                    .dims2()
                    .zip(w1_b.dims2())
                    .zip(w2_a.dims2().zip(w2_b.dims2()));
                let fits = matches!(ok, Some((((o1, r1), (r1b, i1)), ((o2, r2), (r2b, i2))))
                    if r1 == r1b && r2 == r2b && o1 == o2 && i1 == i2 && r1 > 0 && r2 > 0);
                let consistent = [w1_a, w1_b, w2_a, w2_b].iter().all(|t| t.is_consistent());
                if !fits || !consistent {
                    return Err(IoError::LycorisShape {
                        problem: format!(
                            "hada_w1_a {:?}·hada_w1_b {:?} and hada_w2_a {:?}·hada_w2_b {:?} do \
                             not multiply to one [out, in] shape",
                            w1_a.shape, w1_b.shape, w2_a.shape, w2_b.shape
                        ),
                    });
                }
                alpha
            }
        };
        if let Some(a) = alpha {
            if !a.is_finite() {
                return Err(IoError::LoraAlpha { alpha: *a });
            }
        }
        Ok(())
    }

    /// `(out, in)` of the weight change.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            LycorisModule::Lokr { w1, w2, .. } => {
                let (l, m) = w1.dims().unwrap_or((0, 0));
                let (k, n) = w2.dims().unwrap_or((0, 0));
                (l * k, m * n)
            }
            LycorisModule::Loha { w1_a, w1_b, .. } => (
                w1_a.shape.first().copied().unwrap_or(0),
                w1_b.shape.get(1).copied().unwrap_or(0),
            ),
        }
    }

    /// The scale ComfyUI applies (see the module docs).
    pub fn scale(&self) -> f32 {
        match self {
            LycorisModule::Lokr { w1, w2, alpha } => match (alpha, w2.rank().or(w1.rank())) {
                (Some(a), Some(r)) => a / r as f32,
                _ => 1.0,
            },
            LycorisModule::Loha { w1_b, alpha, .. } => match alpha {
                Some(a) => a / w1_b.shape.first().copied().unwrap_or(1) as f32,
                None => 1.0,
            },
        }
    }

    /// The rank LyCORIS would call `lora_dim` (`None` for a full-matrix LoKr).
    pub fn rank(&self) -> Option<usize> {
        match self {
            LycorisModule::Lokr { w1, w2, .. } => w2.rank().or(w1.rank()),
            LycorisModule::Loha { w1_b, .. } => w1_b.shape.first().copied(),
        }
    }

    /// `ΔW [out, in]`.
    pub fn delta(&self) -> Result<HostTensor> {
        self.check()?;
        let d = match self {
            LycorisModule::Lokr { w1, w2, .. } => kron(&w1.dense()?, &w2.dense()?)?,
            LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                ..
            } => {
                let m1 = w1_a.matmul(w1_b)?;
                let m2 = w2_a.matmul(w2_b)?;
                let data = m1.data.iter().zip(&m2.data).map(|(a, b)| a * b).collect();
                HostTensor::new(m1.shape.clone(), data)?
            }
        };
        Ok(d.scaled(self.scale()))
    }

    /// Number of stored values.
    pub fn num_params(&self) -> usize {
        match self {
            LycorisModule::Lokr { w1, w2, .. } => w1.numel() + w2.numel(),
            LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                ..
            } => w1_a.numel() + w1_b.numel() + w2_a.numel() + w2_b.numel(),
        }
    }

    /// The module's tensors under `stem` (ComfyUI / LyCORIS roles; alpha as F32).
    pub(crate) fn tensors(&self, stem: &str) -> Vec<OutTensor> {
        let mut out = Vec::new();
        let w = |role: &str, t: &HostTensor| OutTensor::weight(format!("{stem}.{role}"), t.clone());
        let alpha = match self {
            LycorisModule::Lokr { w1, w2, alpha } => {
                for (f, name) in [(w1, "lokr_w1"), (w2, "lokr_w2")] {
                    match f {
                        KronFactor::Full(t) => out.push(w(name, t)),
                        KronFactor::LowRank { a, b } => {
                            out.push(w(&format!("{name}_a"), a));
                            out.push(w(&format!("{name}_b"), b));
                        }
                    }
                }
                alpha
            }
            LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                alpha,
            } => {
                out.push(w("hada_w1_a", w1_a));
                out.push(w("hada_w1_b", w1_b));
                out.push(w("hada_w2_a", w2_a));
                out.push(w("hada_w2_b", w2_b));
                alpha
            }
        };
        if let Some(a) = alpha {
            out.push(OutTensor {
                name: format!("{stem}.alpha"),
                tensor: HostTensor::scalar(*a),
                keep_f32: true,
            });
        }
        out
    }
}

/// Which axis a DoRA magnitude is per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoraAxis {
    /// One magnitude per output channel (norm over the inputs): PEFT, LyCORIS `wd_on_out`.
    Output,
    /// One magnitude per input column (norm over the outputs): LyCORIS `wd_on_out=False`.
    Input,
}

/// A DoRA magnitude vector, beside the module's LoRA.
#[derive(Debug, Clone, PartialEq)]
pub struct DoraScale {
    /// The magnitudes, 1-D.
    pub values: HostTensor,
    /// The axis they are per.
    pub axis: DoraAxis,
}

impl DoraScale {
    /// From a file's `dora_scale` (`[out, 1]` or `[1, in]`) or `lora_magnitude_vector`
    /// (`[out]`) for a module `[out, in]`.
    pub fn from_file(t: HostTensor, out: usize, inp: usize) -> Result<Self> {
        let axis = match t.shape.as_slice() {
            [n] if *n == out => DoraAxis::Output,
            [n, 1] if *n == out => DoraAxis::Output,
            [1, n] if *n == inp => DoraAxis::Input,
            _ => {
                return Err(IoError::LycorisShape {
                    problem: format!(
                        "DoRA magnitude {:?} fits neither [out={out}, 1] nor [1, in={inp}] nor \
                         [out]",
                        t.shape
                    ),
                })
            }
        };
        let n = t.numel();
        Ok(DoraScale {
            values: HostTensor::new(vec![n], t.data)?,
            axis,
        })
    }

    /// The shape LyCORIS / ComfyUI store: `[out, 1]` or `[1, in]`.
    pub fn lycoris_shape(&self) -> Vec<usize> {
        let n = self.values.numel();
        match self.axis {
            DoraAxis::Output => vec![n, 1],
            DoraAxis::Input => vec![1, n],
        }
    }

    /// The merged weight `W + s·(m ⊙ (W + ΔW)/(‖W + ΔW‖ + eps) − W)` for `base` and the
    /// LoRA's `delta`, both `[out, in]`.
    pub fn apply(
        &self,
        base: &HostTensor,
        delta: &HostTensor,
        strength: f32,
    ) -> Result<HostTensor> {
        let (o, i) = base.dims2().ok_or_else(|| IoError::LycorisShape {
            problem: format!("base weight {:?} is not 2-D", base.shape),
        })?;
        let want = match self.axis {
            DoraAxis::Output => o,
            DoraAxis::Input => i,
        };
        if delta.shape != base.shape || self.values.numel() != want {
            return Err(IoError::LycorisShape {
                problem: format!(
                    "DoRA over a base {:?} needs a change of the same shape (got {:?}) and {want} \
                     magnitudes (got {})",
                    base.shape,
                    delta.shape,
                    self.values.numel()
                ),
            });
        }
        let wc: Vec<f64> = base
            .data
            .iter()
            .zip(&delta.data)
            .map(|(w, d)| f64::from(*w) + f64::from(*d))
            .collect();
        let mut norm = vec![0f64; want];
        for r in 0..o {
            for c in 0..i {
                let v = wc[r * i + c];
                norm[if self.axis == DoraAxis::Output { r } else { c }] += v * v;
            }
        }
        let mut out = base.clone();
        for r in 0..o {
            for c in 0..i {
                let k = if self.axis == DoraAxis::Output { r } else { c };
                let g = f64::from(self.values.data[k]) / (norm[k].sqrt() + f64::from(DORA_EPS));
                let w = f64::from(base.data[r * i + c]);
                let dora = wc[r * i + c] * g;
                out.data[r * i + c] = (w + f64::from(strength) * (dora - w)) as f32;
            }
        }
        Ok(out)
    }
}

/// `kron(a, b)`: `[p·r, q·s]` with `out[i·r + k, j·s + l] = a[i, j]·b[k, l]`.
pub fn kron(a: &HostTensor, b: &HostTensor) -> Result<HostTensor> {
    let ((p, q), (r, s)) = a
        .dims2()
        .zip(b.dims2())
        .ok_or_else(|| IoError::LycorisShape {
            problem: format!("kron of {:?} and {:?} needs two matrices", a.shape, b.shape),
        })?;
    let mut out = vec![0f32; p * r * q * s];
    for i in 0..p {
        for j in 0..q {
            let x = a.data[i * q + j];
            for k in 0..r {
                for l in 0..s {
                    out[(i * r + k) * (q * s) + j * s + l] = x * b.data[k * s + l];
                }
            }
        }
    }
    HostTensor::new(vec![p * r, q * s], out)
}

/// LyCORIS key roles, longest first so `lokr_w1_a` is not read as `lokr_w1`.
const ROLES: &[&str] = &[
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2_a",
    "lokr_w2_b",
    "lokr_w1",
    "lokr_w2",
    "lokr_t1",
    "lokr_t2",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "hada_t1",
    "hada_t2",
    "dora_scale",
    "lora_magnitude_vector",
];

/// Splits a LyCORIS / DoRA key into `(module stem, role)`.
pub(crate) fn split_role(key: &str) -> Option<(&str, &'static str)> {
    ROLES.iter().find_map(|r| {
        key.strip_suffix(r)
            .and_then(|s| s.strip_suffix('.'))
            .filter(|s| !s.is_empty())
            .map(|s| (s, *r))
    })
}

/// Whether `role` belongs to a LoKr / LoHa module.
pub(crate) fn is_kron_or_hada(role: &str) -> bool {
    role.starts_with("lokr_") || role.starts_with("hada_")
}

/// A LoKr / LoHa module from its tensors by role (`get` reads one); `alpha` from `.alpha`.
pub(crate) fn from_roles(
    has: &dyn Fn(&str) -> bool,
    get: &mut dyn FnMut(&str) -> Result<HostTensor>,
    alpha: Option<f32>,
) -> Result<LycorisModule> {
    for tucker in ["lokr_t1", "lokr_t2", "hada_t1", "hada_t2"] {
        if has(tucker) {
            return Err(IoError::LycorisShape {
                problem: format!(
                    "has `{tucker}` (a Tucker core, for convolutions); a Flux linear has none — \
                     re-export the adapter without use_tucker"
                ),
            });
        }
    }
    let module = if has("hada_w1_a") {
        LycorisModule::Loha {
            w1_a: get("hada_w1_a")?,
            w1_b: get("hada_w1_b")?,
            w2_a: get("hada_w2_a")?,
            w2_b: get("hada_w2_b")?,
            alpha,
        }
    } else {
        let mut factor = |name: &str| -> Result<KronFactor> {
            if has(name) {
                Ok(KronFactor::Full(get(name)?))
            } else {
                Ok(KronFactor::LowRank {
                    a: get(&format!("{name}_a"))?,
                    b: get(&format!("{name}_b"))?,
                })
            }
        };
        let w1 = factor("lokr_w1")?;
        let w2 = factor("lokr_w2")?;
        LycorisModule::Lokr { w1, w2, alpha }
    };
    module.check()?;
    Ok(module)
}

/// The `dora_scale` / `lora_magnitude_vector` tensor of a module.
pub(crate) fn dora_tensor(stem: &str, d: &DoraScale, peft: bool) -> OutTensor {
    let (role, shape) = if peft {
        ("lora_magnitude_vector", vec![d.values.numel()])
    } else {
        ("dora_scale", d.lycoris_shape())
    };
    OutTensor::weight(
        format!("{stem}.{role}"),
        HostTensor {
            shape,
            data: d.values.data.clone(),
        },
    )
}

/// The merged weight of one LoRA module with an optional DoRA magnitude, `[out, in]`.
pub fn apply_lora(
    base: &HostTensor,
    m: &LoraModule,
    dora: Option<&DoraScale>,
    strength: f32,
) -> Result<HostTensor> {
    let delta = m.delta()?;
    match dora {
        Some(d) => d.apply(base, &delta, strength),
        None => {
            let mut out = base.clone();
            for (w, d) in out.data.iter_mut().zip(&delta.data) {
                *w += strength * d;
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_split_longest_first() {
        assert_eq!(split_role("a.lokr_w1_a"), Some(("a", "lokr_w1_a")));
        assert_eq!(split_role("a.lokr_w1"), Some(("a", "lokr_w1")));
        assert_eq!(
            split_role("x.y.lora_magnitude_vector"),
            Some(("x.y", "lora_magnitude_vector"))
        );
        assert_eq!(split_role("a.lora_down.weight"), None);
        assert_eq!(split_role(".dora_scale"), None);
    }

    #[test]
    fn kron_places_blocks() {
        let a = HostTensor::new(vec![1, 2], vec![1.0, 2.0]).unwrap();
        let b = HostTensor::new(vec![2, 1], vec![3.0, 4.0]).unwrap();
        // [1 2] ⊗ [3; 4] = [3 6; 4 8]
        assert_eq!(kron(&a, &b).unwrap().data, vec![3.0, 6.0, 4.0, 8.0]);
    }
}
