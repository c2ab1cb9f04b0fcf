//! Between a [`LycorisAdapter`] inside a [`Flux`](fluxlora_flux::Flux) linear and the file
//! modules of `fluxlora-io`: LoKr / LoHa as a [`LycorisModule`], DoRA as a plain
//! [`LoraModule`] plus its [`DoraScale`] (per output channel, LyCORIS's `wd_on_out`).
//!
//! Layouts: LoKr and LoHa factors are stored in the file's `[out, in]` layout in the adapter
//! too, so they move without a transpose; DoRA's inner LoRA is Burn's `x·W` layout and is
//! transposed as plain LoRAs are (see [`crate::lora_export`]). A multiplier other than 1 is
//! folded into the file: into alpha (LoHa), into W1 (LoKr, whose scale is 1 when both factors
//! are full); DoRA's strength has no place in a file and is an error.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use fluxlora_flux::host::{download, upload};
use fluxlora_io::lora::lycoris::{DoraAxis, DoraScale, KronFactor};
use fluxlora_io::{HostTensor, LoraModule, LoraWeights, LycorisModule};
use fluxlora_lora::lokr::Factor;
use fluxlora_lora::LycorisAdapter;
use fluxlora_lora::{AdapterSpec, DoraAdapter, LohaAdapter, LokrAdapter, LoraAdapter};

use crate::error::TrainError;

fn shape_error(what: &str, message: String) -> TrainError {
    TrainError::Shape {
        what: what.into(),
        message,
    }
}

/// Puts the file form of `a` (the adapter of linear `path`) into `out`.
pub(crate) fn export_adapter<B: Backend>(
    path: &str,
    a: &LycorisAdapter<B>,
    out: &mut LoraWeights,
) -> Result<(), TrainError> {
    let get = |p: &Option<burn::module::Param<Tensor<B, 2>>>| p.as_ref().map(|p| p.val());
    match a {
        LycorisAdapter::Lokr(k) => {
            let m = k.multiplier;
            let factor = |full: Option<Tensor<B, 2>>,
                          lo: Option<Tensor<B, 2>>,
                          hi: Option<Tensor<B, 2>>,
                          scale: f32|
             -> Result<KronFactor, TrainError> {
                Ok(match (full, lo, hi) {
                    (Some(w), _, _) => KronFactor::Full(download(w * scale)?),
                    (None, Some(a), Some(b)) => KronFactor::LowRank {
                        a: download(a * scale)?,
                        b: download(b)?,
                    },
                    _ => return Err(shape_error(path, "a LoKr factor is incomplete".into())),
                })
            };
            out.lycoris.insert(
                path.to_string(),
                LycorisModule::Lokr {
                    w1: factor(get(&k.w1), get(&k.w1_a), get(&k.w1_b), m)?,
                    w2: factor(get(&k.w2), get(&k.w2_a), get(&k.w2_b), 1.0)?,
                    alpha: Some(k.alpha),
                },
            );
        }
        LycorisAdapter::Loha(h) => {
            out.lycoris.insert(
                path.to_string(),
                LycorisModule::Loha {
                    w1_a: download(h.w1_a.val())?,
                    w1_b: download(h.w1_b.val())?,
                    w2_a: download(h.w2_a.val())?,
                    w2_b: download(h.w2_b.val())?,
                    alpha: Some(h.alpha * h.multiplier),
                },
            );
        }
        LycorisAdapter::Dora(d) => {
            if d.multiplier() != 1.0 {
                return Err(shape_error(
                    path,
                    format!(
                        "a DoRA strength of {} has no place in a file; save at strength 1",
                        d.multiplier()
                    ),
                ));
            }
            let down = download(d.lora.lora_a.val())?.transpose()?;
            let up = download(d.lora.lora_b.val())?.transpose()?;
            let m = LoraModule::new(down, up, d.lora.alpha)
                .map_err(|e| shape_error(path, e.to_string()))?;
            let values = download(d.magnitude.val())?;
            out.modules.insert(path.to_string(), m);
            out.dora.insert(
                path.to_string(),
                DoraScale {
                    values,
                    axis: DoraAxis::Output,
                },
            );
        }
    }
    Ok(())
}

/// One linear's LyCORIS content in a file: a LoKr / LoHa module, or a LoRA with a DoRA
/// magnitude.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileModule<'a> {
    /// LoKr or LoHa.
    Lycoris(&'a LycorisModule),
    /// DoRA.
    Dora(&'a LoraModule, &'a DoraScale),
}

impl<'a> FileModule<'a> {
    /// The LyCORIS content `lora` has for module `path`, if any.
    pub(crate) fn of(lora: &'a LoraWeights, path: &str) -> Option<Self> {
        if let Some(m) = lora.lycoris.get(path) {
            return Some(FileModule::Lycoris(m));
        }
        match (lora.modules.get(path), lora.dora.get(path)) {
            (Some(m), Some(d)) => Some(FileModule::Dora(m, d)),
            _ => None,
        }
    }

    /// `(out, in)` of the weight it changes.
    pub(crate) fn dims(self) -> (usize, usize) {
        match self {
            FileModule::Lycoris(m) => m.dims(),
            FileModule::Dora(m, _) => (m.out_features(), m.in_features()),
        }
    }

    /// Its kind, as the config spells it.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            FileModule::Lycoris(m) => m.kind(),
            FileModule::Dora(..) => "dora",
        }
    }

    /// The merged weight `W'` `[out, in]` over the base `w` `[out, in]` at `strength`, in host
    /// arithmetic (the file's own convention, `fluxlora-io`).
    pub(crate) fn merged(self, w: &HostTensor, strength: f32) -> Result<HostTensor, TrainError> {
        Ok(match self {
            FileModule::Lycoris(m) => {
                let d = m.delta()?;
                let mut out = w.clone();
                for (o, d) in out.data.iter_mut().zip(&d.data) {
                    *o += strength * d;
                }
                out
            }
            FileModule::Dora(m, d) => {
                fluxlora_io::lora::lycoris::apply_lora(w, m, Some(d), strength)?
            }
        })
    }

    /// The tensors by role, in the shapes [`LycorisAdapter::tensors`] gives, for an adapter
    /// whose scale is `scale` (a DoRA file of another alpha has its `up` rescaled, as plain
    /// LoRA resumes are).
    fn roles(self, path: &str, scale: f32) -> Result<Vec<(&'static str, HostTensor)>, TrainError> {
        let mut out = Vec::new();
        match self {
            FileModule::Lycoris(LycorisModule::Lokr { w1, w2, .. }) => {
                for (f, full, a, b) in [
                    (w1, "lokr_w1", "lokr_w1_a", "lokr_w1_b"),
                    (w2, "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
                ] {
                    match f {
                        KronFactor::Full(t) => out.push((full, t.clone())),
                        KronFactor::LowRank { a: ta, b: tb } => {
                            out.push((a, ta.clone()));
                            out.push((b, tb.clone()));
                        }
                    }
                }
            }
            FileModule::Lycoris(LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                ..
            }) => {
                out.push(("hada_w1_a", w1_a.clone()));
                out.push(("hada_w1_b", w1_b.clone()));
                out.push(("hada_w2_a", w2_a.clone()));
                out.push(("hada_w2_b", w2_b.clone()));
            }
            FileModule::Dora(m, d) => {
                if d.axis != DoraAxis::Output {
                    return Err(shape_error(
                        path,
                        "the DoRA magnitude is per input column (LyCORIS wd_on_out=False); \
                         only per-output-channel DoRA is trained here"
                            .into(),
                    ));
                }
                let mut up = m.up.transpose()?;
                if m.scale().to_bits() != scale.to_bits() {
                    up = up.scaled(m.scale() / scale);
                }
                out.push(("lora_a", m.down.transpose()?));
                out.push(("lora_b", up));
                let n = d.values.numel();
                out.push((
                    "magnitude",
                    HostTensor::new(vec![1, n], d.values.data.clone())?,
                ));
            }
        }
        Ok(out)
    }

    /// The scale `alpha/r` the file applies (1 for full LoKr or no alpha).
    fn scale(self) -> f32 {
        match self {
            FileModule::Lycoris(m) => m.scale(),
            FileModule::Dora(m, _) => m.scale(),
        }
    }

    /// A new adapter carrying this module at strength `multiplier`, on `device`.
    pub(crate) fn adapter<B: Backend>(
        self,
        path: &str,
        multiplier: f32,
        device: &B::Device,
    ) -> Result<LycorisAdapter<B>, TrainError> {
        let up = |t: &HostTensor| upload::<B, 2>(t, device).map_err(TrainError::from);
        let spec = |rank: usize, alpha: f32| {
            let mut s = AdapterSpec::new(rank.max(1), alpha);
            s.multiplier = multiplier;
            s
        };
        Ok(match self {
            FileModule::Lycoris(LycorisModule::Lokr { w1, w2, alpha }) => {
                let factor = |f: &KronFactor| -> Result<Factor<B>, TrainError> {
                    Ok(match f {
                        KronFactor::Full(t) => Factor::Full(up(t)?),
                        KronFactor::LowRank { a, b } => Factor::LowRank(up(a)?, up(b)?),
                    })
                };
                let r = w2.rank().or(w1.rank()).unwrap_or(1);
                // No alpha means scale 1 (ComfyUI), which alpha = r gives.
                let s = spec(r, alpha.unwrap_or(r as f32));
                LycorisAdapter::Lokr(LokrAdapter::from_factors(
                    path,
                    factor(w1)?,
                    factor(w2)?,
                    &s,
                ))
            }
            FileModule::Lycoris(LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                alpha,
            }) => {
                let r = w1_b.shape.first().copied().unwrap_or(1);
                let s = spec(r, alpha.unwrap_or(r as f32));
                let f = [up(w1_a)?, up(w1_b)?, up(w2_a)?, up(w2_b)?];
                LycorisAdapter::Loha(LohaAdapter::from_factors(path, f, &s))
            }
            FileModule::Dora(m, d) => {
                let s = spec(m.rank(), m.alpha);
                let roles = self.roles(path, m.scale())?;
                let lora = LoraAdapter::from_factors(path, up(&roles[0].1)?, up(&roles[1].1)?, &s);
                let mag = upload::<B, 1>(&d.values, device)?;
                LycorisAdapter::Dora(DoraAdapter::from_parts(path, lora, mag, None))
            }
        })
    }

    /// Sets the tensors of `adapter` (built by the run's targets) to this module's, keeping
    /// parameter ids; a kind, shape or scale that differs is an error with the fix.
    pub(crate) fn restore<B: Backend>(
        self,
        path: &str,
        adapter: &mut LycorisAdapter<B>,
    ) -> Result<(), TrainError> {
        let mismatch = |problem: String| shape_error(path, problem);
        if adapter.network().name() != self.kind() {
            return Err(mismatch(format!(
                "the file has a {} module, the run trains {}",
                self.kind(),
                adapter.network()
            )));
        }
        let scale = match &*adapter {
            LycorisAdapter::Lokr(k) => k.scale(),
            LycorisAdapter::Loha(h) => h.scale(),
            LycorisAdapter::Dora(d) => d.lora.scale(),
        };
        if !matches!(self, FileModule::Dora(..)) && (self.scale() - scale).abs() > 1e-6 * scale {
            return Err(mismatch(format!(
                "scale {} in the file, {scale} in the run (another network_alpha or rank)",
                self.scale()
            )));
        }
        let device = adapter
            .tensors()
            .first()
            .map(|(_, t)| t.device())
            .ok_or_else(|| mismatch("the adapter has no tensors".into()))?;
        let want: Vec<&str> = adapter.tensors().iter().map(|(r, _)| *r).collect();
        let roles = self.roles(path, scale)?;
        let got: Vec<&str> = roles.iter().map(|(r, _)| *r).collect();
        if want != got {
            return Err(mismatch(format!(
                "the file stores {got:?}, the run's adapter {want:?} (another lokr_factor, \
                 lokr_full_rank or network_dim)"
            )));
        }
        for (role, t) in roles {
            adapter
                .set_tensor(path, role, upload::<B, 2>(&t, &device)?)
                .map_err(|e| mismatch(e.to_string()))?;
        }
        Ok(())
    }
}
