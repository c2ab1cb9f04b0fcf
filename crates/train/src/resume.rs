//! Resumable checkpoints: a folder `<output_dir>/<name>-step<N>/` holding
//! - `<name>.safetensors` — the LoRA (in `save_format`, self-checked),
//! - `optimizer.safetensors` — the optimizer state (`fluxlora_optim::state_file`),
//! - `state.json` — [`TrainState`]: step, epoch, batch-source position, RNG seed and counter,
//!   LR step, optimizer name, config hash,
//! - `config.toml` — the effective config (to name what changed when the hash differs),
//! - with `ema_decay` set: `ema.safetensors` — the EMA state ([`LoraEma::save`]), and
//!   `live.safetensors` — the live adapter weights training continues from (the LoRA file then
//!   holds the averages). Resume restores both, so EMA runs resume bit-exactly too.
//!
//! The folder is written under a temporary name and renamed into place, so an interruption
//! during a save leaves the previous checkpoints intact and no half-written folder under the
//! final name. σ/ε draws derive from (seed, step, micro-batch) and dropout reseeds the backend
//! from the same numbers, so step + seed are the whole RNG state.

use fluxlora_flux::FluxAutodiffBackend;
use std::path::{Path, PathBuf};

use fluxlora_flux::Flux;
use fluxlora_io::{read_lora, TrainingMetadata};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::ema::{read_adapter_file, read_adapters, restore_adapters, write_adapters, LoraEma};
use crate::error::TrainError;
use crate::lora_export::import_lora;
use crate::optimizer::TrainOptimizer;
use crate::save::{lora_format, move_aside, save_lora};

/// Format tag of `state.json`.
pub const STATE_FORMAT: &str = "fluxlora-train-state/1";
/// File names inside a checkpoint folder.
pub const STATE_FILE: &str = "state.json";
/// Optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Effective config file.
pub const CONFIG_FILE: &str = "config.toml";
/// EMA state file (runs with `ema_decay`).
pub const EMA_FILE: &str = "ema.safetensors";
/// Live adapter weights (runs with `ema_decay`, whose LoRA file holds the averages).
pub const LIVE_FILE: &str = "live.safetensors";

/// Config keys that do not change the training math (may differ on resume).
const BOOKKEEPING_KEYS: &[&str] = &[
    "output_dir",
    "output_name",
    "save_every_n_steps",
    "save_every_n_epochs",
    "save_last_n_saves",
    "save_format",
    "sample_prompts",
    "sample_every_n_steps",
    "sample_at_first",
    "validate_every_n_steps",
    "max_train_steps",
    "max_train_epochs",
    "logging_dir",
    "backend",
];

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`].
    pub format: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// Whole data epochs read at the checkpoint (`ss_epoch`).
    pub epoch: u64,
    /// The batch source's position (e.g. a `fluxlora_data::LoaderState`).
    pub source: serde_json::Value,
    /// Seed of the σ/ε streams and the backend RNG.
    pub seed: u64,
    /// Next RNG counter (the streams of step `k` use counter `k`).
    pub rng_counter: u64,
    /// Steps the LR schedule has advanced.
    pub lr_step: u64,
    /// Optimizer name.
    pub optimizer: String,
    /// [`config_hash`] of the run's config.
    pub config_hash: String,
    /// The LoRA file name inside the folder.
    pub lora_file: String,
}

fn training_table(c: &TrainConfig) -> toml::Table {
    let mut t: toml::Table = toml::from_str(&c.to_toml()).unwrap_or_default();
    for k in BOOKKEEPING_KEYS {
        t.remove(*k);
    }
    t
}

/// FNV-1a 64 of the config's training-relevant keys (bookkeeping keys such as `output_dir` and
/// `max_train_steps` excluded), as 16 hex digits.
pub fn config_hash(c: &TrainConfig) -> String {
    let text = toml::to_string(&training_table(c)).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The LoRA file name used inside checkpoint folders.
pub fn lora_file_name(c: &TrainConfig) -> String {
    crate::layout::RunLayout::new(c).lora_file_name()
}

/// Writes a checkpoint folder at `dir` (replacing one of the same name) and returns its path.
/// With `ema`, the LoRA file holds its averages and the folder also gets [`EMA_FILE`] and
/// [`LIVE_FILE`].
pub fn save_checkpoint<B: FluxAutodiffBackend>(
    dir: &Path,
    model: &mut Flux<B>,
    optimizer: &TrainOptimizer<B>,
    state: &TrainState,
    config: &TrainConfig,
    metadata: &TrainingMetadata,
    ema: Option<&LoraEma>,
) -> Result<PathBuf, TrainError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "checkpoint".into());
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    // Every file of the checkpoint, each fsynced, into the temporary folder.
    let written = (|| -> Result<(), TrainError> {
        let lora_path = tmp.join(&state.lora_file);
        match ema {
            Some(ema) => {
                save_lora(
                    &mut ema.averaged(model)?,
                    &lora_path,
                    lora_format(config.save_format),
                    metadata,
                )?;
                ema.save(&tmp.join(EMA_FILE))?;
                write_adapters(
                    &tmp.join(LIVE_FILE),
                    &read_adapters(model)?,
                    &Default::default(),
                )?;
            }
            None => {
                save_lora(model, &lora_path, lora_format(config.save_format), metadata)?;
            }
        }
        optimizer.save_state(&tmp.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Checkpoint {
            path: tmp.to_path_buf(),
            problem: format!("cannot encode state.json: {e}"),
            fix: "report this as a bug".into(),
        })?;
        // Every file is fsynced before the folder is renamed into place, and the rename itself is
        // flushed, so a power loss cannot leave a complete-looking folder with empty files.
        let write = |p: PathBuf, text: &str| -> Result<(), TrainError> {
            Ok(fluxlora_io::atomic_write(&p, |w| {
                w.write_all(text.as_bytes())
            })?)
        };
        write(tmp.join(STATE_FILE), &json)?;
        write(tmp.join(CONFIG_FILE), &config.to_toml())
    })();
    if let Err(e) = written {
        // Nothing half-written stays behind (the NaN guard refuses diverged weights here).
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Replacing a folder of the same step: move the old one aside (one atomic rename) rather
    // than deleting it in place, where a kill would leave it half-deleted under its name.
    let old = if dir.exists() {
        Some(move_aside(dir)?)
    } else {
        None
    };
    fluxlora_io::sync_dir(&tmp)?;
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    fluxlora_io::sync_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &parent
    })?;
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(dir.to_path_buf())
}

/// Reads `state.json` of a checkpoint folder and checks it belongs to `config`.
pub fn read_state(dir: &Path, config: &TrainConfig) -> Result<TrainState, TrainError> {
    let bad = |problem: String, fix: &str| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        problem,
        fix: fix.into(),
    };
    let state = read_state_file(dir)?;
    let hash = config_hash(config);
    if state.config_hash != hash {
        let changed = changed_keys(dir, config);
        return Err(bad(
            format!(
                "it was written with a different training config (hash {} vs {hash}; changed: \
                 {changed})",
                state.config_hash
            ),
            "resume with the same settings (see its config.toml), or start a new run",
        ));
    }
    Ok(state)
}

/// Checks the folder ([`check_checkpoint_folder`]) and reads its `state.json`.
fn read_state_file(dir: &Path) -> Result<TrainState, TrainError> {
    let bad = |problem: String, fix: &str| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        problem,
        fix: fix.into(),
    };
    check_checkpoint_folder(dir)?;
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(
            format!("cannot read {STATE_FILE}: {e}"),
            "point --resume at a <name>-step<N> folder written by this trainer",
        )
    })?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| {
        bad(
            format!("{STATE_FILE} is malformed: {e}"),
            "the folder is damaged; resume from an earlier checkpoint",
        )
    })?;
    if state.format != STATE_FORMAT {
        return Err(bad(
            format!("state format `{}`, expected `{STATE_FORMAT}`", state.format),
            "resume with the trainer version that wrote it",
        ));
    }
    if !is_plain_file_name(&state.lora_file) || !state.lora_file.ends_with(".safetensors") {
        return Err(bad(
            format!(
                "{STATE_FILE} names the LoRA file {:?}, which is not a file name inside the folder",
                state.lora_file
            ),
            "the folder is damaged or was not written by fluxlora; resume from another checkpoint",
        ));
    }
    Ok(state)
}

/// Largest `state.json` read (a real one is under 2 KB).
const MAX_STATE_BYTES: u64 = 1 << 20;

/// Checks that `dir` looks like a checkpoint folder written by fluxlora before anything in it is
/// read: a folder holding a regular, small
/// [`STATE_FILE`] and an [`OPTIMIZER_FILE`].
pub fn check_checkpoint_folder(dir: &Path) -> Result<(), TrainError> {
    let fix = "point --resume at a <output_name>-step<N> folder written by fluxlora (they hold \
               state.json, optimizer.safetensors and the LoRA)";
    let bad = |problem: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        problem,
        fix: fix.into(),
    };
    match std::fs::metadata(dir) {
        Err(e) => return Err(bad(format!("cannot be read: {e}"))),
        Ok(m) if !m.is_dir() => return Err(bad("is a file, not a checkpoint folder".into())),
        Ok(_) => {}
    }
    for (file, max) in [(STATE_FILE, Some(MAX_STATE_BYTES)), (OPTIMIZER_FILE, None)] {
        let m = std::fs::metadata(dir.join(file)).map_err(|_| bad(format!("has no {file}")))?;
        if !m.is_file() {
            return Err(bad(format!("{file} is not a regular file")));
        }
        if max.is_some_and(|max| m.len() > max) {
            return Err(bad(format!(
                "{file} is {} bytes, far more than a fluxlora state file",
                m.len()
            )));
        }
    }
    Ok(())
}

/// A name with no separators, `..` or drive: it stays inside the folder it is joined to.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\', ':'])
        && !name.contains("..")
        && !name.starts_with('.')
}

/// Checks a checkpoint folder without a model or config: its layout, its `state.json` and that
/// every tensor it holds is finite (what `prep --resume` reports). Returns the state.
pub fn verify_checkpoint(dir: &Path) -> Result<TrainState, TrainError> {
    let state = read_state_file(dir)?;
    check_checkpoint_finite(dir, &state)?;
    Ok(state)
}

/// Checks that every float tensor of the checkpoint's safetensors files is finite, before any of
/// them is loaded: a poisoned checkpoint is named here, not at the NaN loss it would cause.
fn check_checkpoint_finite(dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    for file in [
        state.lora_file.as_str(),
        OPTIMIZER_FILE,
        EMA_FILE,
        LIVE_FILE,
    ] {
        let path = dir.join(file);
        if path.exists() {
            fluxlora_io::SafeTensorsFile::open(&path)?.check_finite()?;
        }
    }
    Ok(())
}

fn changed_keys(dir: &Path, config: &TrainConfig) -> String {
    let Ok(text) = std::fs::read_to_string(dir.join(CONFIG_FILE)) else {
        return "unknown, config.toml missing".into();
    };
    let Ok(old) = toml::from_str::<TrainConfig>(&text) else {
        return "unknown, config.toml unreadable".into();
    };
    let (a, b) = (training_table(&old), training_table(config));
    let keys: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    let mut keys: Vec<String> = keys.into_iter().cloned().collect();
    keys.dedup();
    if keys.is_empty() {
        "nothing visible".into()
    } else {
        keys.join(", ")
    }
}

/// Restores the LoRA values and optimizer state of a checkpoint into `model` / `optimizer`
/// (whose adapters must already be applied with the run's targets), and with `ema` its EMA
/// state and the live weights from [`LIVE_FILE`]; returns the state.
pub fn load_checkpoint<B: FluxAutodiffBackend>(
    dir: &Path,
    model: &mut Flux<B>,
    optimizer: &mut TrainOptimizer<B>,
    config: &TrainConfig,
    ema: Option<&mut LoraEma>,
) -> Result<TrainState, TrainError> {
    let state = read_state(dir, config)?;
    check_checkpoint_finite(dir, &state)?;
    if state.optimizer != optimizer.name() {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            problem: format!(
                "written by optimizer {}, this run uses {}",
                state.optimizer,
                optimizer.name()
            ),
            fix: "resume with the same optimizer_type".into(),
        });
    }
    match ema {
        Some(ema) => {
            let missing = |f: &str| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                problem: format!("{f} is missing, but this run has ema_decay set"),
                fix:
                    "resume with the ema_decay of the run that wrote it (none), or start a new run"
                        .into(),
            };
            let (ema_path, live_path) = (dir.join(EMA_FILE), dir.join(LIVE_FILE));
            if !ema_path.exists() {
                return Err(missing(EMA_FILE));
            }
            if !live_path.exists() {
                return Err(missing(LIVE_FILE));
            }
            let loaded = LoraEma::load(&ema_path, ema.decay(), model)?;
            if loaded.updates() != state.step {
                return Err(TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    problem: format!(
                        "{EMA_FILE} has {} updates but the checkpoint is at step {}",
                        loaded.updates(),
                        state.step
                    ),
                    fix: "the folder is inconsistent; resume from another checkpoint".into(),
                });
            }
            let (live, _) = read_adapter_file(&live_path)?;
            restore_adapters(model, &live, &live_path)?;
            *ema = loaded;
        }
        None => {
            let lora_path = dir.join(&state.lora_file);
            let (weights, _) = read_lora(&lora_path)?;
            import_lora(model, &weights, &lora_path)?;
        }
    }
    optimizer.load_state(&dir.join(OPTIMIZER_FILE), model)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_bookkeeping_but_not_training_keys() {
        let base = TrainConfig::default();
        let h = config_hash(&base);
        let moved = TrainConfig {
            output_dir: "elsewhere".into(),
            max_train_steps: Some(99),
            ..base.clone()
        };
        assert_eq!(config_hash(&moved), h);
        let other = TrainConfig {
            learning_rate: 2e-4,
            ..base
        };
        assert_ne!(config_hash(&other), h);
    }
}
