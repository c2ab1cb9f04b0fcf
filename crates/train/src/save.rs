//! Writing the LoRA: kohya keys by default (PEFT/diffusers or ComfyUI via `save_format`), F32,
//! `ss_*` / `modelspec.*` metadata, atomically (`fluxlora-io` writes a temporary file and
//! renames it). After each write a self-check reloads the file and compares key count, shapes
//! and ΔW = scale·up·down with the adapters in memory (for LyCORIS modules, the whole change
//! `W' − W` each side computes, the file's in `fluxlora-io`'s host arithmetic). Retention keeps
//! the last K checkpoint folders `<name>-step<N>`. With `ema_decay` set, the metadata carries `fluxlora_ema_decay` and
//! `fluxlora_ema_warmup` (the file then holds EMA weights; see [`crate::ema`]).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use fluxlora_flux::Flux;
use fluxlora_io::{iso8601_utc, read_lora, write_lora, FluxVariant, LoraFormat, TrainingMetadata};

use crate::config::{SaveFormat, TrainConfig};
use crate::error::TrainError;
use crate::lora_export::export_lora;
use crate::lycoris_export::FileModule;
use crate::network::{network, network_metadata};

/// The io crate's format for a `save_format`.
pub fn lora_format(f: SaveFormat) -> LoraFormat {
    match f {
        SaveFormat::Kohya => LoraFormat::Kohya,
        SaveFormat::Peft => LoraFormat::Peft,
        SaveFormat::Comfyui => LoraFormat::ComfyUi,
    }
}

/// Which Flux.1 a LoRA fits, for its `modelspec.architecture`: Kontext's for a Kontext base
/// (`model_type = "kontext"`, or a base named as Kontext), else dev's or schnell's by the
/// guidance embedder.
pub fn flux_variant(kontext: bool, guidance_model: bool) -> FluxVariant {
    if kontext {
        FluxVariant::KontextDev
    } else if guidance_model {
        FluxVariant::Dev
    } else {
        FluxVariant::Schnell
    }
}

/// kohya-style metadata for a save at `step` (`started_at`: Unix seconds of the run start).
pub fn training_metadata(
    c: &TrainConfig,
    variant: FluxVariant,
    step: u64,
    epoch: u64,
    started_at: f64,
) -> TrainingMetadata {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let dim = u32::try_from(c.network_dim).unwrap_or(u32::MAX);
    let mut m = TrainingMetadata::flux_lora(variant, dim, c.network_alpha);
    m.output_name = Some(c.output_name.clone());
    m.learning_rate = Some(c.learning_rate);
    m.max_train_steps = c.max_train_steps.map(|s| s as u64);
    m.optimizer = Some(format!("{:?}", c.optimizer_type));
    m.seed = Some(c.seed);
    m.resolution = Some((c.resolution, c.resolution));
    m.training_started_at = Some(started_at);
    m.training_finished_at = Some(now);
    m.steps = Some(step);
    m.epoch = Some(epoch);
    m.guidance_scale = Some(c.guidance_scale);
    m.timestep_sampling = Some(format!("{:?}", c.timestep_sampling).to_lowercase());
    m.discrete_flow_shift = c.discrete_flow_shift;
    m.model_prediction_type = Some(format!("{:?}", c.model_prediction_type).to_lowercase());
    m.modelspec_title = Some(format!("{} step {step}", c.output_name));
    m.modelspec_date = Some(iso8601_utc(now as i64));
    m.modelspec_resolution = Some((c.resolution, c.resolution));
    // The config was validated when it was loaded, so its network is known.
    let (module, mut args) = network_metadata(network(c).unwrap_or_default());
    m.network_module = Some(module.into());
    args.push(("lora_targets".into(), c.lora_targets.clone()));
    m.network_args = Some(args);
    if let Some(d) = c.ema_decay {
        m.extra
            .insert(crate::ema::EMA_METADATA_KEY.into(), d.to_string());
        m.extra.insert(
            crate::ema::EMA_WARMUP_METADATA_KEY.into(),
            "diffusers".into(),
        );
    }
    m
}

/// What the self-check compared.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfCheck {
    /// Modules in the file (= adapters' linears in the model).
    pub modules: usize,
    /// Largest |ΔW_file − ΔW_memory| over all modules.
    pub max_abs_diff: f32,
}

/// Exports the adapters of `model`, writes them to `path` in `format` with `metadata`, and
/// self-checks the file.
pub fn save_lora<B: Backend>(
    model: &mut Flux<B>,
    path: &Path,
    format: LoraFormat,
    metadata: &TrainingMetadata,
) -> Result<SelfCheck, TrainError> {
    let weights = export_lora(model)?;
    // The NaN guard runs before the save: a diverged run never leaves a poisoned LoRA behind.
    for (key, m) in &weights.modules {
        let tensors = [
            ("down", Some(&m.down)),
            ("up", Some(&m.up)),
            ("bias", m.up_bias.as_ref()),
        ];
        for (role, t) in tensors.into_iter().filter_map(|(r, t)| t.map(|t| (r, t))) {
            if let Some(value) = t.data.iter().find(|v| !v.is_finite()) {
                return Err(TrainError::NonFiniteWeights {
                    path: path.to_path_buf(),
                    key: format!("{key}.{role}"),
                    value: *value,
                });
            }
        }
    }
    let lycoris = weights.lycoris.iter().map(|(k, m)| (k, m.delta()));
    let dora = weights.dora.iter().map(|(k, d)| (k, Ok(d.values.clone())));
    for (key, t) in lycoris.chain(dora) {
        if let Some(value) = t?.data.iter().find(|v| !v.is_finite()) {
            return Err(TrainError::NonFiniteWeights {
                path: path.to_path_buf(),
                key: key.clone(),
                value: *value,
            });
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    write_lora(path, &weights, format, &metadata.to_map())?;
    self_check(model, path)
}

/// Reloads `path` and compares it with the adapters in `model`: the same module paths, shapes
/// `[r, in]` / `[out, r]` that fit each linear, and ΔW within 1e-5 relative (PEFT folds the
/// scale into the factors, so only ΔW is format-independent).
pub fn self_check<B: Backend>(model: &mut Flux<B>, path: &Path) -> Result<SelfCheck, TrainError> {
    let fail = |problem: String| TrainError::SelfCheck {
        path: path.to_path_buf(),
        problem,
    };
    let (file, _) = read_lora(path)?;
    let mut count = 0;
    let mut max_diff = 0.0f32;
    for (key, lin) in model.linears_mut() {
        if !lin.lycoris.is_empty() {
            count += 1;
            let m = FileModule::of(&file, &key).ok_or_else(|| {
                fail(format!(
                    "{} module `{key}` is missing from the file",
                    lin.lycoris[0].network()
                ))
            })?;
            let want = fluxlora_flux::host::download(lin.delta_weight())?.transpose()?;
            let base = fluxlora_flux::host::download(lin.base_weight())?.transpose()?;
            let mut got = m.merged(&base, 1.0)?;
            for (g, b) in got.data.iter_mut().zip(&base.data) {
                *g -= b;
            }
            let diff = got.max_abs_diff(&want)?;
            // The host and the device round W + ΔW differently; DoRA's ΔW is that difference.
            let tol = 1e-5 * want.max_abs().max(base.max_abs()).max(1e-3);
            if !(diff <= tol) {
                return Err(fail(format!(
                    "{} module `{key}`: ΔW differs by {diff:e} (tolerance {tol:e})",
                    m.kind()
                )));
            }
            max_diff = max_diff.max(diff);
            continue;
        }
        if lin.adapters.is_empty() {
            if file.modules.contains_key(&key) || file.lycoris.contains_key(&key) {
                return Err(fail(format!(
                    "module `{key}` is in the file but has no adapter in memory"
                )));
            }
            continue;
        }
        count += 1;
        let m = file
            .modules
            .get(&key)
            .ok_or_else(|| fail(format!("module `{key}` is missing from the file")))?;
        let rank: usize = lin.adapters.iter().map(|a| a.rank()).sum();
        if m.down.shape != [m.rank(), lin.d_in()]
            || m.up.shape != [lin.d_out(), m.rank()]
            || m.rank() > rank
        {
            return Err(fail(format!(
                "module `{key}`: down {:?} / up {:?} do not fit a {}→{} linear with adapters of \
                 total rank {rank}",
                m.down.shape,
                m.up.shape,
                lin.d_in(),
                lin.d_out()
            )));
        }
        let want = fluxlora_flux::host::download(lin.delta_weight())?.transpose()?; // [out, in]
        let got = m.delta()?;
        let diff = got.max_abs_diff(&want)?;
        let tol = 1e-5 * want.max_abs().max(1e-3);
        if !(diff <= tol) {
            return Err(fail(format!(
                "module `{key}`: ΔW differs by {diff:e} (tolerance {tol:e})"
            )));
        }
        max_diff = max_diff.max(diff);
    }
    if file.len() != count {
        return Err(fail(format!(
            "{} modules in the file, {count} adapters in memory",
            file.len()
        )));
    }
    Ok(SelfCheck {
        modules: count,
        max_abs_diff: max_diff,
    })
}

pub use crate::layout::checkpoint_dir_name;
use crate::layout::checkpoint_step;

/// The checkpoint folders of run `output_name` in `output_dir`, oldest step first.
pub fn list_checkpoints(
    output_dir: &Path,
    output_name: &str,
) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(output_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TrainError::io(output_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(output_dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = checkpoint_step(output_name, &name) {
            if entry.path().is_dir() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Suffix of a checkpoint folder moved aside for deletion (`.<name>-step<N>.deleting`).
const DELETING_SUFFIX: &str = ".deleting";

/// Renames checkpoint folder `dir` to the hidden `.<name>.deleting` beside it (replacing a stale
/// one), a name [`list_checkpoints`] ignores; returns the new path. One rename is atomic, so a
/// kill leaves the folder either complete under its name or gone from the listing.
pub fn move_aside(dir: &Path) -> Result<PathBuf, TrainError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let aside = dir.with_file_name(format!(".{name}{DELETING_SUFFIX}"));
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(|e| TrainError::io(&aside, e))?;
    }
    std::fs::rename(dir, &aside).map_err(|e| TrainError::io(dir, e))?;
    Ok(aside)
}

/// Deletes a checkpoint folder without ever leaving it half-deleted under its own name:
/// [`move_aside`], then remove.
pub fn remove_checkpoint_dir(dir: &Path) -> Result<(), TrainError> {
    let aside = move_aside(dir)?;
    std::fs::remove_dir_all(&aside).map_err(|e| TrainError::io(&aside, e))
}

/// Deletes all but the newest `keep` checkpoint folders of the run — sparing those in `protect`
/// (the save with the lowest validation loss) — and any of its folders left moved aside by an
/// interrupted deletion; returns the deleted checkpoints.
pub fn prune_checkpoints(
    output_dir: &Path,
    output_name: &str,
    keep: usize,
    protect: &[PathBuf],
) -> Result<Vec<PathBuf>, TrainError> {
    let all = list_checkpoints(output_dir, output_name)?;
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, dir) in all.into_iter().take(excess) {
        if protect.contains(&dir) {
            continue;
        }
        remove_checkpoint_dir(&dir)?;
        removed.push(dir);
    }
    for entry in std::fs::read_dir(output_dir).map_err(|e| TrainError::io(output_dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(output_dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let inner = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(DELETING_SUFFIX));
        if inner.is_some_and(|n| checkpoint_step(output_name, n).is_some()) && entry.path().is_dir()
        {
            std::fs::remove_dir_all(entry.path()).map_err(|e| TrainError::io(entry.path(), e))?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_parse_only_for_this_run() {
        assert_eq!(checkpoint_dir_name("lora", 120), "lora-step00000120");
        assert_eq!(checkpoint_step("lora", "lora-step00000120"), Some(120));
        assert_eq!(checkpoint_step("lora", "lora-step12"), Some(12));
        assert_eq!(checkpoint_step("lora", "lora2-step00000120"), None);
        assert_eq!(checkpoint_step("lora", "lora-step"), None);
        assert_eq!(checkpoint_step("lora", "lora-step1x"), None);
    }

    #[test]
    fn retention_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for s in [5u64, 10, 15, 20] {
            std::fs::create_dir(dir.path().join(checkpoint_dir_name("run", s))).unwrap();
        }
        std::fs::create_dir(dir.path().join("other-step00000001")).unwrap();
        let removed = prune_checkpoints(dir.path(), "run", 2, &[]).unwrap();
        assert_eq!(removed.len(), 2);
        let left: Vec<u64> = list_checkpoints(dir.path(), "run")
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(left, vec![15, 20]);
        assert!(dir.path().join("other-step00000001").exists());
    }

    #[test]
    fn retention_spares_a_protected_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        for s in [5u64, 10, 15, 20] {
            std::fs::create_dir(dir.path().join(checkpoint_dir_name("run", s))).unwrap();
        }
        let best = dir.path().join(checkpoint_dir_name("run", 5));
        let removed = prune_checkpoints(dir.path(), "run", 2, std::slice::from_ref(&best)).unwrap();
        assert_eq!(
            removed,
            vec![dir.path().join(checkpoint_dir_name("run", 10))]
        );
        let left: Vec<u64> = list_checkpoints(dir.path(), "run")
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(left, vec![5, 15, 20]);
    }

    #[test]
    fn a_folder_moved_aside_is_unlisted_and_the_next_prune_sweeps_it() {
        let dir = tempfile::tempdir().unwrap();
        for s in [5u64, 6] {
            let d = dir.path().join(checkpoint_dir_name("run", s));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("state.json"), b"{}").unwrap();
        }
        // A deletion of step 5 killed after its rename: only the hidden folder is left.
        let aside = move_aside(&dir.path().join("run-step00000005")).unwrap();
        assert_eq!(aside, dir.path().join(".run-step00000005.deleting"));
        assert!(aside.join("state.json").exists());
        let steps = |d: &Path| {
            list_checkpoints(d, "run")
                .unwrap()
                .into_iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(steps(dir.path()), vec![6]);
        // Hidden folders that are not this run's deletions stay.
        for keep in [".other-step00000001.deleting", ".run-step00000007.partial"] {
            std::fs::create_dir(dir.path().join(keep)).unwrap();
        }
        assert!(prune_checkpoints(dir.path(), "run", 5, &[])
            .unwrap()
            .is_empty());
        assert!(!aside.exists());
        assert!(dir.path().join(".other-step00000001.deleting").exists());
        assert!(dir.path().join(".run-step00000007.partial").exists());
        assert_eq!(steps(dir.path()), vec![6]);
    }
}
