//! Inference with LoRAs: bake weighted LoRA files into a loaded transformer
//! ([`apply_loras`]); [`crate::sampling::run`] draws a set of prompts with them ([`SampleRun`],
//! [`sample_prompts`]).
//!
//! Applying adds `Σᵢ wᵢ·ΔWᵢ` (ΔW = (alpha/rank)·up·down, `[out, in]`) to the base
//! weight of every linear a LoRA names, on the device: `downᵀ·upᵀ` is already Burn's
//! `[in, out]` layout. An output-bias delta (`Δb`) goes into the bias. It works on a frozen model
//! without adapters (any adapters present keep working on top). LoRA keys the model lacks
//! (text-encoder modules, blocks beyond its depth) are skipped and listed in the [`ApplyReport`]; a
//! LoRA none of whose modules fit is an error, and so is a module whose shape differs from the
//! model's linear. Every LoRA is checked before any weight changes. LyCORIS modules follow the
//! file's own convention (`fluxlora-io`): LoKr / LoHa add their ΔW the same way; DoRA, whose
//! change depends on the weight, is stacked as an adapter, as LoKr / LoHa are over a quantised
//! base; [`remove_named_loras`] takes the stacked ones off again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use fluxlora_flux::host::upload;
use fluxlora_flux::Flux;
use fluxlora_io::lora::keys_te::{split_component, Component};
use fluxlora_io::{LoraModule, LoraWeights};

use crate::error::TrainError;
use crate::lycoris_export::FileModule;

pub use crate::sampling::run::{sample_prompts, slug, SampleOutput, SampleRun};

/// How many skipped names a report prints.
const SHOWN: usize = 5;

/// What one LoRA contributed.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedLora {
    /// The file (or `lora #N` when applied from memory).
    pub origin: PathBuf,
    /// Its multiplier.
    pub weight: f32,
    /// Module paths that were added into the model.
    pub matched: Vec<String>,
    /// Text-encoder modules (`te1:` / `te3:`), not applied: sampling uses the base encoders.
    pub skipped_text_encoder: Vec<String>,
    /// Transformer modules this model has no linear for (another depth or architecture).
    pub skipped_missing: Vec<String>,
}

/// What [`apply_loras`] did, per LoRA.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// One entry per LoRA, in the order given.
    pub loras: Vec<AppliedLora>,
}

impl ApplyReport {
    /// Distinct model linears that changed.
    pub fn modules_changed(&self) -> usize {
        self.loras
            .iter()
            .flat_map(|l| &l.matched)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

fn first_names(v: &[String]) -> String {
    let mut s = v
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if v.len() > SHOWN {
        s.push_str(", …");
    }
    s
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        for l in &self.loras {
            write!(
                f,
                "{} ×{}: {} applied",
                l.origin.display(),
                l.weight,
                count(l.matched.len(), "module")
            )?;
            if !l.skipped_text_encoder.is_empty() {
                let n = count(l.skipped_text_encoder.len(), "text-encoder module");
                write!(
                    f,
                    "; {n} skipped ({})",
                    first_names(&l.skipped_text_encoder)
                )?;
            }
            if !l.skipped_missing.is_empty() {
                let n = count(l.skipped_missing.len(), "module");
                write!(
                    f,
                    "; {n} not in this model skipped ({})",
                    first_names(&l.skipped_missing)
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Adds `Σ wᵢ·ΔWᵢ` of `loras` into the matching linears of `flux` (see the module docs).
/// LoRAs are named `lora #1`, `lora #2`, … in errors; [`apply_named_loras`] names their files.
pub fn apply_loras<B: Backend>(
    flux: &mut Flux<B>,
    loras: &[(LoraWeights, f32)],
) -> Result<ApplyReport, TrainError> {
    let origins: Vec<PathBuf> = (1..=loras.len())
        .map(|i| PathBuf::from(format!("lora #{i}")))
        .collect();
    let named: Vec<(&Path, &LoraWeights, f32)> = loras
        .iter()
        .zip(&origins)
        .map(|((w, m), o)| (o.as_path(), w, *m))
        .collect();
    apply_named_loras(flux, &named)
}

/// [`apply_loras`] with each LoRA's file (or other origin) for errors and the report.
pub fn apply_named_loras<B: Backend>(
    flux: &mut Flux<B>,
    loras: &[(&Path, &LoraWeights, f32)],
) -> Result<ApplyReport, TrainError> {
    apply_or_remove(flux, loras, false)
}

/// Takes `loras`, applied by [`apply_named_loras`] with the same weights and nothing applied
/// since, off `flux` again: additive changes are subtracted, and the adapters the apply
/// stacked (DoRA; LoKr / LoHa over a quantised base) are removed.
pub fn remove_named_loras<B: Backend>(
    flux: &mut Flux<B>,
    loras: &[(&Path, &LoraWeights, f32)],
) -> Result<ApplyReport, TrainError> {
    apply_or_remove(flux, loras, true)
}

fn apply_or_remove<B: Backend>(
    flux: &mut Flux<B>,
    loras: &[(&Path, &LoraWeights, f32)],
    remove: bool,
) -> Result<ApplyReport, TrainError> {
    let dims: BTreeMap<String, (usize, usize)> = flux
        .linears_mut()
        .into_iter()
        .map(|(p, l)| (p, (l.d_in(), l.d_out())))
        .collect();
    let mut report = ApplyReport::default();
    for &(origin, lora, weight) in loras {
        report.loras.push(check_lora(origin, lora, weight, &dims)?);
    }
    let sign = if remove { -1.0 } else { 1.0 };
    let mut per_linear: BTreeMap<&str, Vec<(&LoraModule, f32)>> = BTreeMap::new();
    let mut per_linear_lycoris: BTreeMap<&str, Vec<(FileModule<'_>, f32)>> = BTreeMap::new();
    for (&(_, lora, weight), applied) in loras.iter().zip(&report.loras) {
        if weight == 0.0 {
            continue;
        }
        for path in &applied.matched {
            match FileModule::of(lora, path) {
                Some(m) => per_linear_lycoris
                    .entry(path.as_str())
                    .or_default()
                    .push((m, weight)),
                None => per_linear
                    .entry(path.as_str())
                    .or_default()
                    .push((&lora.modules[path], sign * weight)),
            }
        }
    }
    for (path, lin) in flux.linears_mut() {
        if let Some(parts) = per_linear_lycoris.get(path.as_str()) {
            apply_lycoris(&path, lin, parts, remove)?;
        }
        let Some(parts) = per_linear.get(path.as_str()) else {
            continue;
        };
        let device = lin.device();
        densify(lin, &device);
        let mut delta: Option<Tensor<B, 2>> = None;
        let mut delta_bias: Option<Tensor<B, 1>> = None;
        for &(m, weight) in parts {
            let factor = weight * m.scale();
            let down_t = upload::<B, 2>(&m.down.transpose()?, &device)?;
            let up_t = upload::<B, 2>(&m.up.transpose()?.scaled(factor), &device)?;
            if lin.weight.is_none() {
                // A quantised base keeps the LoRA as an adapter (scale folded into `up`).
                let rank = down_t.dims()[1];
                let spec = fluxlora_lora::AdapterSpec::new(rank, rank as f32);
                let adapter = fluxlora_lora::LoraAdapter::from_factors(&path, down_t, up_t, &spec);
                lin.push_adapter(&path, adapter).map_err(|e| {
                    fluxlora_flux::FluxError::Config(format!("applying a LoRA: {e}"))
                })?;
            } else {
                let d = down_t.matmul(up_t);
                delta = Some(match delta {
                    Some(acc) => acc + d,
                    None => d,
                });
            }
            if let Some(b) = &m.up_bias {
                let db = Tensor::<B, 1>::from_data(
                    TensorData::new(b.scaled(factor).data, [b.numel()]),
                    &device,
                );
                delta_bias = Some(match delta_bias {
                    Some(acc) => acc + db,
                    None => db,
                });
            }
        }
        if let Some(d) = delta {
            lin.weight = lin.weight.take().map(|p| p.map(|w| add_delta(w, d)));
        }
        if let Some(db) = delta_bias {
            lin.bias = Some(match lin.bias.take() {
                Some(b) => b.map(|b| add_delta(b, db)),
                None => burn::module::Param::from_tensor(db).set_require_grad(false),
            });
        }
    }
    Ok(report)
}

/// Applies (or with `remove`, takes off) the LyCORIS modules of one linear: LoKr / LoHa add
/// their ΔW into a dense base (made dense from an unstreamed f32 / bf16 frozen one, as plain
/// LoRAs are); DoRA, and LoKr / LoHa over a quantised base, are stacked as adapters and removed
/// again by count.
fn apply_lycoris<B: Backend>(
    path: &str,
    lin: &mut fluxlora_lora::LoraLinear<B>,
    parts: &[(FileModule<'_>, f32)],
    remove: bool,
) -> Result<(), TrainError> {
    let device = lin.device();
    densify(lin, &device);
    let additive = |m: &FileModule<'_>| matches!(m, FileModule::Lycoris(_));
    let dense = lin.weight.is_some();
    let stacked = parts
        .iter()
        .filter(|(m, _)| !(dense && additive(m)))
        .count();
    if remove {
        let keep = lin.lycoris.len().saturating_sub(stacked);
        lin.lycoris.truncate(keep);
    }
    for (m, weight) in parts {
        if dense && additive(m) {
            let (out, inp) = m.dims();
            let zero = fluxlora_io::HostTensor::new(vec![out, inp], vec![0.0; out * inp])?;
            let w = if remove { -weight } else { *weight };
            let delta = m.merged(&zero, w)?.transpose()?;
            let d = upload::<B, 2>(&delta, &device)?;
            lin.weight = lin.weight.take().map(|p| p.map(|w| add_delta(w, d)));
        } else if !remove {
            let a = m.adapter::<B>(path, *weight, &device)?;
            lin.push_lycoris(path, a)
                .map_err(|e| fluxlora_flux::FluxError::Config(format!("applying a LoRA: {e}")))?;
        }
    }
    Ok(())
}

/// Makes an unstreamed f32 / bf16 frozen base dense, so file LoRAs merge into it; a quantised
/// (or streamed) one stays frozen and takes them as adapters.
fn densify<B: Backend>(lin: &mut fluxlora_lora::LoraLinear<B>, device: &B::Device) {
    if let Some(f) = lin.frozen.as_ref() {
        if f.meta().format == fluxlora_lora::FrozenFormat::Float && !f.is_streamed() {
            let w = f.dequantize(device).transpose();
            lin.weight = Some(burn::module::Param::from_tensor(w).set_require_grad(false));
            lin.frozen = None;
        }
    }
}

/// Sorts one LoRA's modules into matched / skipped and checks every matched shape.
fn check_lora(
    origin: &Path,
    lora: &LoraWeights,
    weight: f32,
    dims: &BTreeMap<String, (usize, usize)>,
) -> Result<AppliedLora, TrainError> {
    let mismatch = |key: &str, problem: String, fix: &str| TrainError::LoraMismatch {
        path: origin.to_path_buf(),
        key: key.to_string(),
        problem,
        fix: fix.to_string(),
    };
    if !weight.is_finite() {
        return Err(mismatch(
            "(multiplier)",
            format!("the weight {weight} is not finite"),
            "give a finite weight such as 0.8",
        ));
    }
    let mut out = AppliedLora {
        origin: origin.to_path_buf(),
        weight,
        matched: Vec::new(),
        skipped_text_encoder: Vec::new(),
        skipped_missing: Vec::new(),
    };
    for (key, m) in &lora.modules {
        if split_component(key).0 != Component::Transformer {
            out.skipped_text_encoder.push(key.clone());
            continue;
        }
        let Some(&(d_in, d_out)) = dims.get(key) else {
            out.skipped_missing.push(key.clone());
            continue;
        };
        m.check()
            .map_err(|e| mismatch(key, e.to_string(), "the file is damaged; re-export it"))?;
        if m.in_features() != d_in || m.out_features() != d_out {
            return Err(mismatch(
                key,
                format!(
                    "ΔW is [{}, {}] ([out, in]) but the model's linear is [{d_out}, {d_in}]",
                    m.out_features(),
                    m.in_features()
                ),
                "the LoRA was trained for a different Flux model size; use one made for this base",
            ));
        }
        out.matched.push(key.clone());
    }
    for (key, m) in &lora.lycoris {
        let Some(&(d_in, d_out)) = dims.get(key) else {
            out.skipped_missing.push(key.clone());
            continue;
        };
        m.check()
            .map_err(|e| mismatch(key, e.to_string(), "the file is damaged; re-export it"))?;
        if m.dims() != (d_out, d_in) {
            return Err(mismatch(
                key,
                format!(
                    "the {} ΔW is {:?} ([out, in]) but the model's linear is [{d_out}, {d_in}]",
                    m.kind(),
                    m.dims()
                ),
                "the LoRA was trained for a different Flux model size; use one made for this base",
            ));
        }
        out.matched.push(key.clone());
    }
    if out.matched.is_empty() {
        let skipped: Vec<String> = out
            .skipped_text_encoder
            .iter()
            .chain(&out.skipped_missing)
            .cloned()
            .collect();
        return Err(mismatch(
            skipped.first().map_or("(none)", String::as_str),
            format!(
                "none of its {} modules is a linear of this transformer (first: {})",
                lora.len(),
                first_names(&skipped)
            ),
            "the LoRA is for another model or only for the text encoders; use a Flux transformer \
             LoRA",
        ));
    }
    Ok(out)
}

/// `w + delta` in f32, back in `w`'s dtype, keeping its gradient requirement.
fn add_delta<B: Backend, const D: usize>(w: Tensor<B, D>, delta: Tensor<B, D>) -> Tensor<B, D> {
    let require_grad = w.is_require_grad();
    let dtype = w.dtype();
    let out = if dtype == DType::F32 {
        w.detach() + delta.cast(DType::F32)
    } else {
        (w.detach().cast(DType::F32) + delta.cast(DType::F32)).cast(dtype)
    };
    if require_grad {
        out.require_grad()
    } else {
        out
    }
}

/// The file of an A1111 tag `<lora:name:w>`: `name` itself when it is an existing file, else
/// the first of `<dir>/<name>.safetensors` and `<dir>/<name>` that exists in `search_dirs`.
pub fn resolve_lora_name(name: &str, search_dirs: &[PathBuf]) -> Result<PathBuf, TrainError> {
    let direct = Path::new(name);
    if direct.is_file() {
        return Ok(direct.to_path_buf());
    }
    for dir in search_dirs {
        for candidate in [dir.join(format!("{name}.safetensors")), dir.join(name)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let searched: Vec<String> = search_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(TrainError::Invalid {
        key: format!("<lora:{name}>"),
        message: format!(
            "no file `{name}.safetensors` in {}; put the LoRA there, pass its folder with \
             --lora-dir, or write the tag with a file path",
            if searched.is_empty() {
                "any LoRA folder (none were given)".to_string()
            } else {
                searched.join(", ")
            }
        ),
    })
}

#[cfg(test)]
mod tests;
