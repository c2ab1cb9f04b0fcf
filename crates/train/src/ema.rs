//! Exponential moving average (EMA) of the LoRA adapter weights (`ema_decay`; ai-toolkit's
//! `ema_config`, diffusers' `EMAModel`).
//!
//! After every optimizer step [`LoraEma::update`] moves a shadow copy of every adapter factor
//! (`lora_a`, `lora_b` of each adapter; every tensor of a LyCORIS adapter) towards the live value:
//! `ema ← ema − (1 − d_k)·(ema − w)` (= `d_k·ema + (1 − d_k)·w`), in f32, with
//! diffusers' default decay schedule for the k-th update (k = 1, 2, …):
//! `d_k = min(d, (1 + s)/(10 + s))`, `s = k − 1` — so the first update copies the weights
//! (`d_1 = 0`) and the decay ramps up (0.5 at k = 9, 0.9 at k = 81, 0.99 at k = 891) until it
//! reaches `ema_decay`. Without this warmup an average over the zero-initialised `lora_b` would
//! stay near zero for ~1/(1 − d) steps.
//!
//! Memory: the shadow lives on the host as f32, one value per trainable adapter parameter
//! (4 bytes × parameters, e.g. ≈ 75 MB at rank 16 on all Flux linears); each update reads the
//! adapters back from the device once.
//!
//! Saving: LoRA files written with EMA on hold the averages ([`LoraEma::apply_to`] on a clone of
//! the model), marked by the metadata key [`EMA_METADATA_KEY`]; training continues on the live
//! weights. The EMA state is a safetensors file ([`LoraEma::save`], `ema.safetensors` in a
//! checkpoint) keyed `<linear path>.<adapter index>.lora_a|lora_b` in the model's layout (LyCORIS:
//! `<linear path>.lycoris<index>.<role>`, roles as `LycorisAdapter::tensors` names them), with
//! the decay and update count as metadata. [`read_adapters`] / [`write_adapters`] /
//! [`restore_adapters`] use the same layout for the live weights (`live.safetensors`).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use fluxlora_flux::Flux;
use fluxlora_io::{write_safetensors, HostTensor, SafeTensorsFile, TensorRef};

use crate::error::TrainError;
use fluxlora_flux::host::{download, upload};

/// Metadata key of saved LoRA files that hold EMA weights; the value is the decay.
pub const EMA_METADATA_KEY: &str = "fluxlora_ema_decay";
/// Metadata key naming the decay schedule (`diffusers`: `min(d, (1 + s)/(10 + s))`).
pub const EMA_WARMUP_METADATA_KEY: &str = "fluxlora_ema_warmup";
/// Format tag in the metadata of an EMA state file.
pub const EMA_FORMAT: &str = "fluxlora-ema/1";

/// Adapter factors by key `<linear path>.<adapter index>.lora_a|lora_b`, in model order.
pub type AdapterTensors = Vec<(String, HostTensor)>;

/// Every adapter factor of `model` on the host, in `linears_mut` order.
pub fn read_adapters<B: Backend>(model: &mut Flux<B>) -> Result<AdapterTensors, TrainError> {
    let mut out = Vec::new();
    for (path, lin) in model.linears_mut() {
        for (i, a) in lin.adapters.iter().enumerate() {
            out.push((format!("{path}.{i}.lora_a"), download(a.lora_a.val())?));
            out.push((format!("{path}.{i}.lora_b"), download(a.lora_b.val())?));
        }
        for (i, a) in lin.lycoris.iter().enumerate() {
            for (role, t) in a.tensors() {
                out.push((format!("{path}.lycoris{i}.{role}"), download(t)?));
            }
        }
    }
    Ok(out)
}

/// Sets the adapter factors of `model` to `tensors` (keys and shapes as [`read_adapters`]
/// gives them; all must be present and no others), keeping parameter ids so optimizer state
/// still applies. `origin` names the source in errors.
pub fn restore_adapters<B: Backend>(
    model: &mut Flux<B>,
    tensors: &AdapterTensors,
    origin: &Path,
) -> Result<(), TrainError> {
    let by_key: BTreeMap<&str, &HostTensor> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mismatch = |key: &str, problem: String| TrainError::LoraMismatch {
        path: origin.to_path_buf(),
        key: key.to_string(),
        problem,
        fix: "resume with the same lora_targets / block lists / network_dim / network_type as the \
             run that wrote it"
            .into(),
    };
    let mut used = 0;
    for (path, lin) in model.linears_mut() {
        let device = lin.device();
        for (i, a) in lin.adapters.iter_mut().enumerate() {
            for (suffix, param) in [("lora_a", &mut a.lora_a), ("lora_b", &mut a.lora_b)] {
                let key = format!("{path}.{i}.{suffix}");
                let t = by_key.get(key.as_str()).ok_or_else(|| {
                    mismatch(&key, "missing, but the model trains this adapter".into())
                })?;
                let want = param.val().dims().to_vec();
                if t.shape != want {
                    return Err(mismatch(
                        &key,
                        format!("shape {:?} in the file, {want:?} in the model", t.shape),
                    ));
                }
                let id = param.id;
                *param = Param::initialized(id, upload::<B, 2>(t, &device)?.require_grad());
                used += 1;
            }
        }
        for (i, a) in lin.lycoris.iter_mut().enumerate() {
            let roles: Vec<(&'static str, Vec<usize>)> = a
                .tensors()
                .into_iter()
                .map(|(r, t)| (r, t.dims().to_vec()))
                .collect();
            for (role, want) in roles {
                let key = format!("{path}.lycoris{i}.{role}");
                let t = by_key.get(key.as_str()).ok_or_else(|| {
                    mismatch(&key, "missing, but the model trains this adapter".into())
                })?;
                if t.shape != want {
                    return Err(mismatch(
                        &key,
                        format!("shape {:?} in the file, {want:?} in the model", t.shape),
                    ));
                }
                a.set_tensor(&path, role, upload::<B, 2>(t, &device)?)
                    .map_err(|e| mismatch(&key, e.to_string()))?;
                used += 1;
            }
        }
    }
    if used != by_key.len() {
        let known: std::collections::BTreeSet<String> =
            read_adapters(model)?.into_iter().map(|(k, _)| k).collect();
        let extra = by_key
            .keys()
            .find(|k| !known.contains(**k))
            .map_or("?", |k| k);
        return Err(mismatch(
            extra,
            "the model has no adapter for this key".into(),
        ));
    }
    Ok(())
}

/// Writes adapter factors (f32) with `metadata` to `path`, atomically.
pub fn write_adapters(
    path: &Path,
    tensors: &AdapterTensors,
    metadata: &BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let refs: Vec<(&str, TensorRef<'_>)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(path, &refs, metadata)?;
    Ok(())
}

/// Reads a file written by [`write_adapters`]: its tensors (in file order) and metadata.
pub fn read_adapter_file(
    path: &Path,
) -> Result<(AdapterTensors, BTreeMap<String, String>), TrainError> {
    let file = SafeTensorsFile::open(path)?;
    let names: Vec<String> = file.names().map(str::to_string).collect();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let t = file.read_f32(&n)?;
        out.push((n, t));
    }
    Ok((out, file.metadata().clone()))
}

/// The shadow (EMA) copy of a model's adapter factors.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraEma {
    decay: f32,
    updates: u64,
    shadow: AdapterTensors,
}

impl LoraEma {
    /// An EMA with target decay `decay` ∈ [0, 1) and no updates yet.
    pub fn new(decay: f32) -> Result<Self, TrainError> {
        if !(0.0..1.0).contains(&decay) {
            return Err(TrainError::Invalid {
                key: "ema_decay".into(),
                message: format!("{decay} must be in [0, 1), e.g. 0.999"),
            });
        }
        Ok(Self {
            decay,
            updates: 0,
            shadow: Vec::new(),
        })
    }

    /// The target decay `ema_decay`.
    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// Updates applied so far (= optimizer steps of the run).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The shadow tensors (empty before the first update).
    pub fn shadow(&self) -> &AdapterTensors {
        &self.shadow
    }

    /// The decay of update number `k` (1-based): diffusers' `min(d, (1 + s)/(10 + s))` with
    /// `s = k − 1`, and 0 for the first update.
    pub fn decay_at(&self, k: u64) -> f64 {
        let s = k.saturating_sub(1);
        if s == 0 {
            return 0.0;
        }
        let s = s as f64;
        ((1.0 + s) / (10.0 + s)).min(f64::from(self.decay))
    }

    /// One update from the live adapters of `model` (call after each optimizer step).
    pub fn update<B: Backend>(&mut self, model: &mut Flux<B>) -> Result<(), TrainError> {
        let live = read_adapters(model)?;
        let k = self.updates + 1;
        let decay = self.decay_at(k);
        if self.shadow.is_empty() || decay == 0.0 {
            self.shadow = live;
        } else {
            if live.len() != self.shadow.len() {
                return Err(TrainError::Shape {
                    what: "EMA update".into(),
                    message: format!(
                        "{} adapter tensors in the model, {} in the EMA",
                        live.len(),
                        self.shadow.len()
                    ),
                });
            }
            let one_minus = (1.0 - decay) as f32;
            for ((ks, e), (kw, w)) in self.shadow.iter_mut().zip(&live) {
                if ks != kw || e.shape != w.shape {
                    return Err(TrainError::Shape {
                        what: "EMA update".into(),
                        message: format!(
                            "EMA tensor `{ks}` {:?} does not match model tensor `{kw}` {:?}",
                            e.shape, w.shape
                        ),
                    });
                }
                for (e, &w) in e.data.iter_mut().zip(&w.data) {
                    *e -= one_minus * (*e - w);
                }
            }
        }
        self.updates = k;
        Ok(())
    }

    /// Puts the averages into `model`'s adapters (use on a clone to save them). Before the
    /// first update there is nothing to apply and `model` is left as it is.
    pub fn apply_to<B: Backend>(&self, model: &mut Flux<B>) -> Result<(), TrainError> {
        if self.shadow.is_empty() {
            return Ok(());
        }
        restore_adapters(model, &self.shadow, Path::new("<EMA weights>"))
    }

    /// A clone of `model` carrying the averages (adapters only; the base is shared).
    pub fn averaged<B: Backend>(&self, model: &Flux<B>) -> Result<Flux<B>, TrainError> {
        let mut m = model.clone();
        self.apply_to(&mut m)?;
        Ok(m)
    }

    /// Writes the EMA state to `path` (atomically): shadow tensors, decay, update count.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let meta: BTreeMap<String, String> = [
            ("format".to_string(), EMA_FORMAT.to_string()),
            ("decay".to_string(), format!("{}", self.decay)),
            ("updates".to_string(), self.updates.to_string()),
            ("warmup".to_string(), "diffusers".to_string()),
        ]
        .into();
        write_adapters(path, &self.shadow, &meta)
    }

    /// Reads an EMA state written by [`save`](Self::save), checking it was written with the
    /// decay `decay` and that its tensors fit `model`'s adapters (same keys and shapes; the
    /// shadow is put back in model order).
    pub fn load<B: Backend>(
        path: &Path,
        decay: f32,
        model: &mut Flux<B>,
    ) -> Result<Self, TrainError> {
        let bad = |problem: String, fix: &str| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem,
            fix: fix.into(),
        };
        let (shadow, meta) = read_adapter_file(path)?;
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        if get("format") != EMA_FORMAT {
            return Err(bad(
                format!(
                    "EMA state format `{}`, expected `{EMA_FORMAT}`",
                    get("format")
                ),
                "resume with the trainer version that wrote it",
            ));
        }
        let saved: f32 = get("decay").parse().map_err(|_| {
            bad(
                format!("EMA decay `{}` is not a number", get("decay")),
                "the file is damaged; resume from an earlier checkpoint",
            )
        })?;
        if saved.to_bits() != decay.to_bits() {
            return Err(bad(
                format!("EMA written with decay {saved}, this run uses {decay}"),
                "resume with the same ema_decay",
            ));
        }
        let updates = get("updates").parse().map_err(|_| {
            bad(
                format!("EMA update count `{}` is not a number", get("updates")),
                "the file is damaged; resume from an earlier checkpoint",
            )
        })?;
        if updates == 0 {
            return Ok(Self {
                decay,
                updates,
                shadow: Vec::new(),
            });
        }
        let mut by_key: BTreeMap<String, HostTensor> = shadow.into_iter().collect();
        let mut ordered = Vec::with_capacity(by_key.len());
        for (key, live) in read_adapters(model)? {
            let t = by_key.remove(&key).ok_or_else(|| {
                bad(
                    format!("EMA tensor `{key}` is missing"),
                    "resume with the lora_targets / network_dim of the run that wrote it",
                )
            })?;
            if t.shape != live.shape {
                return Err(bad(
                    format!(
                        "EMA tensor `{key}` has shape {:?}, the model's adapter {:?}",
                        t.shape, live.shape
                    ),
                    "resume with the network_dim of the run that wrote it",
                ));
            }
            ordered.push((key, t));
        }
        if let Some(extra) = by_key.keys().next() {
            return Err(bad(
                format!("EMA tensor `{extra}` has no adapter in the model"),
                "resume with the lora_targets of the run that wrote it",
            ));
        }
        Ok(Self {
            decay,
            updates,
            shadow: ordered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_schedule_is_diffusers_default() {
        let e = LoraEma::new(0.99).unwrap();
        assert_eq!(e.decay_at(1), 0.0);
        assert!((e.decay_at(2) - 2.0 / 11.0).abs() < 1e-15);
        assert!((e.decay_at(10) - 10.0 / 19.0).abs() < 1e-15);
        // (1 + s)/(10 + s) reaches 0.99 at s = 890 (k = 891): 891/900.
        assert!(e.decay_at(890) < 0.99);
        assert!((e.decay_at(891) - 0.99).abs() < 1e-15);
        assert_eq!(e.decay_at(892), f64::from(0.99f32));
        assert_eq!(e.decay_at(100_000), f64::from(0.99f32));
    }

    #[test]
    fn out_of_range_decay_is_refused() {
        assert!(LoraEma::new(1.0).is_err());
        assert!(LoraEma::new(-0.1).is_err());
        assert!(LoraEma::new(f32::NAN).is_err());
        assert!(LoraEma::new(0.0).is_ok());
    }
}
