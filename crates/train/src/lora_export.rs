//! Between the adapters inside a [`Flux`] and the canonical [`LoraWeights`] of `fluxlora-io`.
//!
//! Layouts: an adapter stores `lora_a [d_in, r]` and `lora_b [r, rows]` (Burn's `x·W`); a
//! canonical module stores `down [r, d_in]` and `up [rows, r]` (kohya/PyTorch), so each factor is
//! transposed. Keys are BFL module paths; a linear with several row-range adapters (diffusers
//! granularity on the fused `qkv` / `linear1`) is exported as one fused module, as kohya keeps
//! them, and split back along the same row ranges and ranks on import. LyCORIS adapters (LoKr,
//! LoHa, DoRA; always whole modules) go through [`crate::lycoris_export`].

use burn::module::Param;
use burn::tensor::backend::Backend;
use fluxlora_flux::host::{download, upload};
use fluxlora_flux::Flux;
use fluxlora_io::lora::fuse::fuse_rows;
use fluxlora_io::{LoraModule, LoraWeights};
use fluxlora_lora::{AdapterSpec, LoraAdapter};
use std::path::Path;

use crate::error::TrainError;
use crate::lycoris_export::{export_adapter, FileModule};

fn adapter_module<B: Backend>(a: &LoraAdapter<B>) -> Result<LoraModule, TrainError> {
    let down = download(a.lora_a.val())?.transpose()?;
    let up = download(a.lora_b.val())?.transpose()?;
    let m = LoraModule::new(down, up, a.alpha * a.multiplier).map_err(|e| TrainError::Shape {
        what: "adapter".into(),
        message: e.to_string(),
    })?;
    Ok(m)
}

/// The trained adapters of `model` as canonical LoRA modules (no metadata).
pub fn export_lora<B: Backend>(model: &mut Flux<B>) -> Result<LoraWeights, TrainError> {
    let mut out = LoraWeights::default();
    for (path, lin) in model.linears_mut() {
        for a in &lin.lycoris {
            export_adapter(&path, a, &mut out)?;
        }
        if lin.adapters.is_empty() {
            continue;
        }
        let d_out = lin.d_out();
        let pieces = lin
            .adapters
            .iter()
            .map(|a| Ok((a.rows.map_or(0, |r| r.0), adapter_module(a)?)))
            .collect::<Result<Vec<_>, TrainError>>()?;
        let module = if pieces.len() == 1 && pieces[0].0 == 0 && pieces[0].1.out_features() == d_out
        {
            pieces.into_iter().next().map(|p| p.1)
        } else {
            let refs: Vec<(usize, &LoraModule)> = pieces.iter().map(|(s, m)| (*s, m)).collect();
            let what = format!("adapters of `{path}`");
            Some(fuse_rows(&refs, d_out).map_err(|e| TrainError::Shape {
                what,
                message: e.to_string(),
            })?)
        };
        if let Some(m) = module {
            out.modules.insert(path, m);
        }
    }
    Ok(out)
}

/// Puts the modules of `lora` into `model`'s adapters and returns how many linears were set.
///
/// A linear that already has adapters (resume: the same targets were applied) gets their values
/// replaced, keeping parameter ids, row ranges and ranks; its module must be in the file. A
/// linear without adapters gets a new full-width adapter for each module the file has for it
/// (self-check, sampling). `origin` names the file in errors.
pub fn import_lora<B: Backend>(
    model: &mut Flux<B>,
    lora: &LoraWeights,
    origin: &Path,
) -> Result<usize, TrainError> {
    let mismatch = |key: &str, problem: String, fix: &str| TrainError::LoraMismatch {
        path: origin.to_path_buf(),
        key: key.to_string(),
        problem,
        fix: fix.to_string(),
    };
    let mut used = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (path, lin) in model.linears_mut() {
        let device = lin.device();
        if let Some(file) = FileModule::of(lora, &path) {
            seen.insert(path.clone());
            let (out, inp) = file.dims();
            if (out, inp) != (lin.d_out(), lin.d_in()) {
                return Err(mismatch(
                    &path,
                    format!(
                        "ΔW is [{out}, {inp}] ([out, in]), the linear [{}, {}]",
                        lin.d_out(),
                        lin.d_in()
                    ),
                    "the LoRA is for a different model",
                ));
            }
            if !lin.adapters.is_empty() {
                return Err(mismatch(
                    &path,
                    format!("the file has a {} module, the run trains LoRA", file.kind()),
                    "resume with the network_type of the run that wrote it",
                ));
            }
            match lin.lycoris.as_mut_slice() {
                [] => {
                    let a = file.adapter::<B>(&path, 1.0, &device)?;
                    lin.push_lycoris(&path, a).map_err(|e| {
                        mismatch(&path, e.to_string(), "the LoRA is for a different model")
                    })?;
                }
                [a] => file.restore(&path, a).map_err(|e| {
                    mismatch(
                        &path,
                        e.to_string(),
                        "resume with the network_type, lokr_factor and network_dim of the run \
                         that wrote it",
                    )
                })?,
                _ => {
                    return Err(mismatch(
                        &path,
                        "the linear carries several LyCORIS adapters".into(),
                        "import into a model with at most one adapter per linear",
                    ))
                }
            }
            used += 1;
            continue;
        }
        if !lin.lycoris.is_empty() {
            let kind = lin.lycoris[0].network();
            return Err(mismatch(
                &path,
                format!("missing from the file, but the model trains a {kind} adapter there"),
                "resume with the network_type of the run that wrote it",
            ));
        }
        let module = lora.modules.get(&path);
        if let Some(m) = module {
            seen.insert(path.clone());
            if m.up_bias.is_some() {
                return Err(mismatch(
                    &path,
                    "has an output-bias delta".into(),
                    "bias deltas cannot be trained or resumed here; drop them from the file",
                ));
            }
            if m.in_features() != lin.d_in() {
                return Err(mismatch(
                    &path,
                    format!(
                        "down has {} inputs, the linear {}",
                        m.in_features(),
                        lin.d_in()
                    ),
                    "the LoRA is for a different model",
                ));
            }
        }
        if lin.adapters.is_empty() {
            let Some(m) = module else { continue };
            let spec = AdapterSpec::new(m.rank(), m.alpha);
            let a = LoraAdapter::from_factors(
                &path,
                upload(&m.down.transpose()?, &device)?,
                upload(&m.up.transpose()?, &device)?,
                &spec,
            );
            lin.push_adapter(&path, a)
                .map_err(|e| mismatch(&path, e.to_string(), "the LoRA is for a different model"))?;
            used += 1;
            continue;
        }
        let Some(m) = module else {
            return Err(mismatch(
                &path,
                "missing from the file, but the model trains an adapter there".into(),
                "resume with the same lora_targets / block lists / network_dim as the run that \
                 wrote it",
            ));
        };
        let d_out = lin.d_out();
        let mut order: Vec<usize> = (0..lin.adapters.len()).collect();
        order.sort_by_key(|&i| lin.adapters[i].rows.map_or(0, |r| r.0));
        let total_rank: usize = lin.adapters.iter().map(|a| a.rank()).sum();
        if m.rank() != total_rank || m.out_features() != d_out {
            return Err(mismatch(
                &path,
                format!(
                    "rank {} × out {} in the file, the model's adapters have total rank \
                     {total_rank} × out {d_out}",
                    m.rank(),
                    m.out_features()
                ),
                "resume with the network_dim and lora_targets of the run that wrote it",
            ));
        }
        let mut c0 = 0;
        for i in order {
            let a = &mut lin.adapters[i];
            let r = a.rank();
            let (s, e) = a.rows.unwrap_or((0, d_out));
            let down = m.down.rows(c0, c0 + r)?;
            let mut up = m.up.rows(s, e)?.cols(c0, c0 + r)?;
            if m.scale().to_bits() != a.scale().to_bits() {
                up = up.scaled(m.scale() / a.scale());
            }
            let id_a = a.lora_a.id;
            let id_b = a.lora_b.id;
            a.lora_a =
                Param::initialized(id_a, upload(&down.transpose()?, &device)?.require_grad());
            a.lora_b = Param::initialized(id_b, upload(&up.transpose()?, &device)?.require_grad());
            c0 += r;
        }
        used += 1;
    }
    let keys = lora.modules.keys().chain(lora.lycoris.keys());
    if let Some(extra) = keys.into_iter().find(|k| !seen.contains(*k)) {
        return Err(mismatch(
            extra,
            "the model has no linear with this path".into(),
            "the LoRA is for a different model or architecture",
        ));
    }
    Ok(used)
}
