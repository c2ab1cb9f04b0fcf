//! Where a run's files go: every file name built from `output_dir` and `output_name`, in one
//! place. A run writes, under `<output_dir>`:
//!
//! | file | path |
//! |---|---|
//! | the final LoRA | `<name>.safetensors` |
//! | the effective config | `<name>-config.toml` |
//! | the per-step CSV log | `<name>-log.csv` |
//! | the loss curve | `<name>-loss.png` |
//! | sample grids | `samples/<name>-stepNNNNNNNN.png` |
//! | checkpoint folders | `<name>-stepNNNNNNNN/` (holding `<name>.safetensors`, ...) |
//! | the tiny world's concept grid | `<name>-concept.png` |
//!
//! and TensorBoard event files under `<logging_dir>/<name>/`.

use std::path::{Path, PathBuf};

use crate::config::TrainConfig;

/// The output files of one run (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    /// `output_dir`.
    pub dir: PathBuf,
    /// `output_name`: the stem of every file.
    pub name: String,
}

impl RunLayout {
    /// The layout of the config's run.
    pub fn new(c: &TrainConfig) -> Self {
        Self {
            dir: c.output_dir.clone(),
            name: c.output_name.clone(),
        }
    }

    fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", self.name))
    }

    /// The LoRA's file name, as the final save and every checkpoint folder hold it.
    pub fn lora_file_name(&self) -> String {
        format!("{}.safetensors", self.name)
    }

    /// `<dir>/<name>.safetensors`: the final LoRA.
    pub fn lora(&self) -> PathBuf {
        self.dir.join(self.lora_file_name())
    }

    /// `<dir>/<name>-config.toml`: the effective config, written at the start.
    pub fn config_copy(&self) -> PathBuf {
        self.file("-config.toml")
    }

    /// `<dir>/<name>-log.csv`: one row per step.
    pub fn csv(&self) -> PathBuf {
        self.file("-log.csv")
    }

    /// `<dir>/<name>-loss.png`: the loss curve.
    pub fn loss_curve(&self) -> PathBuf {
        self.file("-loss.png")
    }

    /// `<dir>/<name>-concept.png`: the tiny world's concept-score grid.
    pub fn concept_grid(&self) -> PathBuf {
        self.file("-concept.png")
    }

    /// `<dir>/samples/<name>-stepNNNNNNNN.png`: the sample grid at `step`.
    pub fn sample_grid(&self, step: u64) -> PathBuf {
        self.dir
            .join("samples")
            .join(format!("{}.png", checkpoint_dir_name(&self.name, step)))
    }

    /// `<dir>/<name>-stepNNNNNNNN/`: the checkpoint folder of `step`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.dir.join(checkpoint_dir_name(&self.name, step))
    }

    /// `<logging_dir>/<name>/`: the run's TensorBoard event files.
    pub fn events(&self, logging_dir: &Path) -> PathBuf {
        logging_dir.join(&self.name)
    }
}

/// Name of the checkpoint folder for `step`.
pub fn checkpoint_dir_name(output_name: &str, step: u64) -> String {
    format!("{output_name}-step{step:08}")
}

/// The step of a checkpoint folder name of this run, if it is one.
pub(crate) fn checkpoint_step(output_name: &str, name: &str) -> Option<u64> {
    let rest = name.strip_prefix(output_name)?.strip_prefix("-step")?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_derives_from_dir_and_name() {
        let c = TrainConfig {
            output_dir: "out".into(),
            output_name: "sks".into(),
            ..Default::default()
        };
        let l = RunLayout::new(&c);
        assert_eq!(l.lora(), Path::new("out/sks.safetensors"));
        assert_eq!(l.config_copy(), Path::new("out/sks-config.toml"));
        assert_eq!(l.csv(), Path::new("out/sks-log.csv"));
        assert_eq!(l.loss_curve(), Path::new("out/sks-loss.png"));
        assert_eq!(l.concept_grid(), Path::new("out/sks-concept.png"));
        assert_eq!(
            l.sample_grid(200),
            Path::new("out/samples/sks-step00000200.png")
        );
        assert_eq!(l.checkpoint(7), Path::new("out/sks-step00000007"));
        assert_eq!(l.events(Path::new("logs")), Path::new("logs/sks"));
    }
}
