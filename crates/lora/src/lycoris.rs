//! The LyCORIS adapters on a linear: [`LycorisAdapter`] (LoKr, LoHa or DoRA), how a stack of
//! them adds to the output, merges into and unmerges from a dense weight, and the small tensor
//! helpers the three kinds share.
//!
//! Every adapter sees the *unmerged* base: the forward adds each adapter's contribution to the
//! base output (LoRA's and LoKr/LoHa's `ΔW·x`, DoRA's `m_u·((g−1)⊙(x·W) + g⊙ΔW·x)`), and a
//! merge folds the same sum into the weight, `W' = W⊙(1 + Σ gain) + Σ ΔW_add`, where only DoRA
//! has a gain (see [`crate::dora`]). Unmerge inverts that column by column with the norms kept
//! at merge time.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::{Distribution, Tensor};

use crate::adapter::AdapterSpec;
use crate::dora::DoraAdapter;
use crate::error::LoraError;
use crate::loha::LohaAdapter;
use crate::lokr::LokrAdapter;
use crate::network::Network;

/// One LyCORIS adapter.
// One per adapted linear, a few hundred per model: the size of the largest variant does not
// matter, and Burn's `Module` derive has no boxed fields.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum LycorisAdapter<B: Backend> {
    /// Kronecker product.
    Lokr(LokrAdapter<B>),
    /// Hadamard product.
    Loha(LohaAdapter<B>),
    /// Weight-decomposed LoRA.
    Dora(DoraAdapter<B>),
}

impl<B: Backend> LycorisAdapter<B> {
    /// A fresh adapter of `spec.network` over a `[d_in, d_out]` base (`base` is only called
    /// for DoRA, whose magnitude starts at `‖W‖`); `None` for plain LoRA.
    pub fn init(
        path: &str,
        spec: &AdapterSpec,
        d_in: usize,
        d_out: usize,
        base: impl FnOnce() -> Tensor<B, 2>,
        device: &B::Device,
    ) -> Result<Option<Self>, LoraError> {
        Ok(Some(match spec.network {
            Network::Lora => return Ok(None),
            Network::Lokr { factor, full_rank } => Self::Lokr(LokrAdapter::init(
                path, d_in, d_out, spec, factor, full_rank, device,
            )?),
            Network::Loha => Self::Loha(LohaAdapter::init(path, d_in, d_out, spec, device)?),
            Network::Dora => Self::Dora(DoraAdapter::init(path, base(), spec, device)?),
        }))
    }

    /// The algorithm (LoKr with its factor of the stored shapes unknown: `factor = -1`).
    pub fn network(&self) -> Network {
        match self {
            Self::Lokr(a) => Network::Lokr {
                factor: -1,
                full_rank: a.rank().is_none(),
            },
            Self::Loha(_) => Network::Loha,
            Self::Dora(_) => Network::Dora,
        }
    }

    /// Output rows written, `None` = all.
    pub fn rows(&self) -> Option<(usize, usize)> {
        match self {
            Self::Lokr(a) => a.rows,
            Self::Loha(a) => a.rows,
            Self::Dora(a) => a.rows(),
        }
    }

    /// The trained tensors by role, 2-D: LoKr's `lokr_w1[_a/_b]` / `lokr_w2[_a/_b]` and LoHa's
    /// `hada_w{1,2}_{a,b}` in file layout `[out, in]`; DoRA's `lora_a [d_in, r]` /
    /// `lora_b [r, rows]` in Burn layout and its `magnitude` as `[1, rows]`. Keys of EMA and
    /// live-weight files ([`set_tensor`](Self::set_tensor) takes them back).
    pub fn tensors(&self) -> Vec<(&'static str, Tensor<B, 2>)> {
        let mut out = Vec::new();
        let mut push = |role: &'static str, p: &Option<Param<Tensor<B, 2>>>| {
            if let Some(p) = p {
                out.push((role, p.val()));
            }
        };
        match self {
            Self::Lokr(a) => {
                push("lokr_w1", &a.w1);
                push("lokr_w1_a", &a.w1_a);
                push("lokr_w1_b", &a.w1_b);
                push("lokr_w2", &a.w2);
                push("lokr_w2_a", &a.w2_a);
                push("lokr_w2_b", &a.w2_b);
            }
            Self::Loha(a) => {
                for (role, p) in [
                    ("hada_w1_a", &a.w1_a),
                    ("hada_w1_b", &a.w1_b),
                    ("hada_w2_a", &a.w2_a),
                    ("hada_w2_b", &a.w2_b),
                ] {
                    out.push((role, p.val()));
                }
            }
            Self::Dora(a) => {
                out.push(("lora_a", a.lora.lora_a.val()));
                out.push(("lora_b", a.lora.lora_b.val()));
                out.push(("magnitude", a.magnitude.val().unsqueeze_dim(0)));
            }
        }
        out
    }

    /// Replaces the tensor `role` (as [`tensors`](Self::tensors) names and shapes it), keeping
    /// its parameter id so optimizer state still applies; `path` names the linear in errors.
    pub fn set_tensor(
        &mut self,
        path: &str,
        role: &str,
        value: Tensor<B, 2>,
    ) -> Result<(), LoraError> {
        let fail = |reason: String| LoraError::Setting {
            what: path.to_string(),
            reason,
        };
        fn put<B: Backend, const D: usize>(
            p: &mut Param<Tensor<B, D>>,
            v: Tensor<B, D>,
        ) -> Result<(), String> {
            let want = p.val().dims();
            if v.dims() != want {
                return Err(format!("shape {:?}, the adapter has {want:?}", v.dims()));
            }
            *p = Param::initialized(p.id, v.require_grad());
            Ok(())
        }
        fn slot<'a, B: Backend>(
            p: Option<&'a mut Param<Tensor<B, 2>>>,
            role: &str,
        ) -> Result<&'a mut Param<Tensor<B, 2>>, String> {
            p.ok_or_else(|| format!("this {} adapter has no tensor {role:?}", self_kind(role)))
        }
        let done = match (self, role) {
            (Self::Lokr(a), "lokr_w1") => slot(a.w1.as_mut(), role).and_then(|p| put(p, value)),
            (Self::Lokr(a), "lokr_w1_a") => slot(a.w1_a.as_mut(), role).and_then(|p| put(p, value)),
            (Self::Lokr(a), "lokr_w1_b") => slot(a.w1_b.as_mut(), role).and_then(|p| put(p, value)),
            (Self::Lokr(a), "lokr_w2") => slot(a.w2.as_mut(), role).and_then(|p| put(p, value)),
            (Self::Lokr(a), "lokr_w2_a") => slot(a.w2_a.as_mut(), role).and_then(|p| put(p, value)),
            (Self::Lokr(a), "lokr_w2_b") => slot(a.w2_b.as_mut(), role).and_then(|p| put(p, value)),
            (Self::Loha(a), "hada_w1_a") => put(&mut a.w1_a, value),
            (Self::Loha(a), "hada_w1_b") => put(&mut a.w1_b, value),
            (Self::Loha(a), "hada_w2_a") => put(&mut a.w2_a, value),
            (Self::Loha(a), "hada_w2_b") => put(&mut a.w2_b, value),
            (Self::Dora(a), "lora_a") => put(&mut a.lora.lora_a, value),
            (Self::Dora(a), "lora_b") => put(&mut a.lora.lora_b, value),
            (Self::Dora(a), "magnitude") => match value.dims() {
                [1, _] => put(&mut a.magnitude, value.squeeze_dim(0)),
                d => Err(format!("magnitude shape {d:?}, expected [1, rows]")),
            },
            (a, _) => Err(format!("a {} adapter has no tensor {role:?}", a.network())),
        };
        done.map_err(fail)
    }

    /// Number of stored values.
    pub fn num_params(&self) -> usize {
        match self {
            Self::Lokr(a) => a.num_params(),
            Self::Loha(a) => a.num_params(),
            Self::Dora(a) => a.num_params(),
        }
    }

    /// `(rows, d_in)` the stored tensors describe.
    fn shape(&self) -> Result<(usize, usize), String> {
        match self {
            Self::Lokr(a) => {
                let [l, m] = a.w1_dense().dims();
                let [k, n] = a.w2_dense().dims();
                Ok((l * k, m * n))
            }
            Self::Loha(a) => {
                let ([r1, i1], [r2, i2]) = (a.w1_a.dims(), a.w2_a.dims());
                let ([k1, n1], [k2, n2]) = (a.w1_b.dims(), a.w2_b.dims());
                if r1 != r2 || i1 != k1 || i2 != k2 || n1 != n2 {
                    return Err(format!(
                        "LoHa factors {:?}·{:?} and {:?}·{:?} do not multiply to one shape",
                        [r1, i1],
                        [k1, n1],
                        [r2, i2],
                        [k2, n2]
                    ));
                }
                Ok((r1, n1))
            }
            Self::Dora(a) => {
                let [d_in, _] = a.lora.lora_a.dims();
                let [_, rows] = a.lora.lora_b.dims();
                if a.magnitude.dims()[0] != rows {
                    return Err(format!(
                        "DoRA magnitude has {} values for {rows} output rows",
                        a.magnitude.dims()[0]
                    ));
                }
                Ok((rows, d_in))
            }
        }
    }

    /// Checks that the adapter fits a `d_in → d_out` linear; `path` names it in the error.
    pub fn check_fits(&self, path: &str, d_in: usize, d_out: usize) -> Result<(), LoraError> {
        let (rows, cols) = self.shape().map_err(|reason| LoraError::Setting {
            what: path.to_string(),
            reason,
        })?;
        let (s, e) = self.rows().unwrap_or((0, d_out));
        if cols != d_in || e > d_out || e < s || e - s != rows {
            return Err(LoraError::Rows {
                path: path.to_string(),
                start: s,
                end: s + rows,
                d_out,
            });
        }
        Ok(())
    }

    /// The weight change of LoKr / LoHa in Burn layout `[d_in, d_out]`; `None` for DoRA
    /// (whose change depends on the base, see [`merged_weight`]).
    pub fn delta_weight(&self, d_out: usize) -> Option<Tensor<B, 2>> {
        match self {
            Self::Lokr(a) => Some(a.delta_weight(d_out)),
            Self::Loha(a) => Some(a.delta_weight(d_out)),
            Self::Dora(_) => None,
        }
    }
}

/// The sum of the adapters' contributions to a linear's output, `None` when there are none.
/// `base_y` is the base output without bias and `base` the `[d_in, d_out]` weight; both are
/// only evaluated when a DoRA adapter is present.
pub(crate) fn forward_all<B: Backend, const D: usize>(
    adapters: &[LycorisAdapter<B>],
    x: Tensor<B, D>,
    base_y: impl FnOnce() -> Tensor<B, D>,
    base: impl FnOnce() -> Tensor<B, 2>,
    d_out: usize,
) -> Option<Tensor<B, D>> {
    let dora = adapters
        .iter()
        .any(|a| matches!(a, LycorisAdapter::Dora(_)));
    let (base_y, base) = if dora {
        (Some(base_y()), Some(base()))
    } else {
        (None, None)
    };
    adapters
        .iter()
        .map(|a| match a {
            LycorisAdapter::Lokr(a) => a.forward(x.clone(), d_out),
            LycorisAdapter::Loha(a) => a.forward(x.clone(), d_out),
            LycorisAdapter::Dora(a) => a.forward(
                x.clone(),
                base_y.clone().expect("evaluated when a DoRA is present"),
                base.clone().expect("evaluated when a DoRA is present"),
                d_out,
            ),
        })
        .reduce(|acc, y| acc + y)
}

/// `W' = W⊙(1 + Σ gain) + Σ add + other`, where `other` is the base-independent ΔW of the
/// plain LoRAs; records each DoRA's norm for [`unmerged_weight`].
pub(crate) fn merged_weight<B: Backend>(
    adapters: &mut [LycorisAdapter<B>],
    w: Tensor<B, 2>,
    other: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [d_in, d_out] = w.dims();
    let (gain, add) = terms(adapters, Some(w.clone()), [d_in, d_out], &w.device());
    for a in adapters.iter_mut() {
        if let LycorisAdapter::Dora(d) = a {
            let (_, norm) = d.gain(w.clone());
            d.merged_norm = norm.into_data().to_vec::<f32>().ok();
        }
    }
    w * (gain + 1.0).unsqueeze_dim(0) + add + other
}

/// Inverts [`merged_weight`] with the norms it kept: `W = (W' − Σ add − other)/(1 + Σ gain)`.
pub(crate) fn unmerged_weight<B: Backend>(
    adapters: &mut [LycorisAdapter<B>],
    merged: Tensor<B, 2>,
    other: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let dims = merged.dims();
    let (gain, add) = terms(adapters, None, dims, &merged.device());
    for a in adapters.iter_mut() {
        if let LycorisAdapter::Dora(d) = a {
            d.merged_norm = None;
        }
    }
    (merged - add - other) / (gain + 1.0).unsqueeze_dim(0)
}

/// `(Σ gain [d_out], Σ add [d_in, d_out])` over the adapters; DoRA's from `base` when given,
/// else from the norm kept at merge time.
fn terms<B: Backend>(
    adapters: &[LycorisAdapter<B>],
    base: Option<Tensor<B, 2>>,
    [d_in, d_out]: [usize; 2],
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let mut gain = Tensor::<B, 1>::zeros([d_out], device);
    let mut add: Option<Tensor<B, 2>> = None;
    let mut push = |t: Tensor<B, 2>| add = Some(add.take().map_or(t.clone(), |a| a + t));
    for a in adapters {
        match a {
            LycorisAdapter::Dora(d) => {
                let norm = match (&base, &d.merged_norm) {
                    (None, Some(n)) => Some(Tensor::<B, 1>::from_floats(n.as_slice(), device)),
                    _ => None,
                };
                let (g, t) = d.merge_terms(base.clone(), norm, d_out);
                gain = gain + g;
                push(t);
            }
            other => push(other.delta_weight(d_out).expect("LoKr/LoHa").detach()),
        }
    }
    let add = add.unwrap_or_else(|| Tensor::zeros([d_in, d_out], device));
    (gain, add)
}

/// The parameter-id tag of an adapter: its path, plus the row range when it has one.
pub(crate) fn tag(path: &str, rows: Option<(usize, usize)>) -> String {
    match rows {
        Some((s, e)) => format!("{path}[{s}..{e}]"),
        None => path.to_string(),
    }
}

/// The row range `[s, e)` of `rows` on a linear with `d_out` outputs, checked.
pub(crate) fn check_rows(
    path: &str,
    rows: Option<(usize, usize)>,
    d_out: usize,
) -> Result<(usize, usize), LoraError> {
    let (s, e) = rows.unwrap_or((0, d_out));
    if e > d_out || s >= e {
        return Err(LoraError::Rows {
            path: path.to_string(),
            start: s,
            end: e,
            d_out,
        });
    }
    Ok((s, e))
}

/// PyTorch's `kaiming_uniform_(a=√5)` on a `[rows, cols]` weight: U(−1/√cols, 1/√cols).
pub(crate) fn kaiming<B: Backend>(shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    let bound = 1.0 / (shape[1] as f64).sqrt();
    Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
}

/// The adapter kind a role name belongs to (for messages).
fn self_kind(role: &str) -> &'static str {
    if role.starts_with("lokr") {
        "LoKr"
    } else if role.starts_with("hada") {
        "LoHa"
    } else {
        "DoRA"
    }
}

/// `kron(a, b)` of `a [p, q]` and `b [r, s]`: `[p·r, q·s]`, `out[i·r + k, j·s + l] =
/// a[i, j]·b[k, l]`.
pub fn kron<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    let [p, q] = a.dims();
    let [r, s] = b.dims();
    let a4 = a.reshape([p, 1, q, 1]).expand([p, r, q, s]);
    let b4 = b.reshape([1, r, 1, s]).expand([p, r, q, s]);
    (a4 * b4).reshape([p * r, q * s])
}

/// Zero-pads the last dimension from the adapter's rows to `d_out`.
pub(crate) fn pad_last<B: Backend, const D: usize>(
    y: Tensor<B, D>,
    rows: Option<(usize, usize)>,
    d_out: usize,
) -> Tensor<B, D> {
    match rows {
        Some((s, e)) if s > 0 || e < d_out => y.pad([(s, d_out - e)], PadMode::Constant(0.0)),
        _ => y,
    }
}

/// `x` in the dtype of `like`.
pub(crate) fn cast_like<B: Backend, const D: usize, const E: usize>(
    x: Tensor<B, D>,
    like: &Tensor<B, E>,
) -> Tensor<B, D> {
    if x.dtype() != like.dtype() {
        x.cast(like.dtype())
    } else {
        x
    }
}

/// Element dropout with `1/(1-p)` rescaling.
pub(crate) fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
    x * keep * (1.0 / (1.0 - p))
}

/// LyCORIS's LoKr/LoHa dropouts on an output `[n, rows]`: whole output channels
/// (`rank_dropout`, one mask for the step) and elements (`dropout`), when training.
pub(crate) fn output_dropouts<B: Backend>(
    mut h: Tensor<B, 2>,
    p: f64,
    rank_p: f64,
    training: bool,
) -> Tensor<B, 2> {
    if !training {
        return h;
    }
    if rank_p > 0.0 {
        let rows = h.dims()[1];
        let mask = Tensor::<B, 2>::random(
            [1, rows],
            Distribution::Bernoulli(1.0 - rank_p),
            &h.device(),
        );
        h = h * mask * (1.0 / (1.0 - rank_p));
    }
    if p > 0.0 {
        h = dropout(h, p);
    }
    h
}

/// Skips the whole contribution with probability `p`, when training.
pub(crate) fn module_dropout<B: Backend, const D: usize>(
    y: Tensor<B, D>,
    p: f64,
    training: bool,
) -> Tensor<B, D> {
    if training && p > 0.0 {
        let keep = Tensor::<B, D>::random([1; D], Distribution::Bernoulli(1.0 - p), &y.device());
        y * keep
    } else {
        y
    }
}
