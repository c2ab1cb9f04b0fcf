//! The pre-training report of a run's dataset (`prep`): the data crate's [`QualityReport`]
//! (buckets, captions, duplicates, blur, upscaling, trigger word, tags) plus the preset's advice
//! on dataset size and image resolution. Text for the terminal, JSON for tools; blocking problems
//! make [`DatasetReport::is_blocking`] true.

use fluxlora_data::{Analysis, DatasetSpec, Progress, QualityReport, QualitySettings};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::orchestration::prepare::dataset_config;
use crate::preset::TrainingPreset;

/// The quality report and the preset's advice.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// Everything the data crate checks.
    pub quality: QualityReport,
    /// The preset compared with (the config's, else `concept`).
    pub preset: TrainingPreset,
    /// What to add or fix for that preset; empty when the dataset fits.
    pub advice: Vec<String>,
    /// Short side of the smallest readable image, px.
    pub smallest_side: Option<u32>,
}

impl DatasetReport {
    /// Scans, decodes (in parallel) and checks the config's dataset.
    pub fn build(c: &TrainConfig, settings: &QualitySettings) -> Result<Self, TrainError> {
        let spec = DatasetSpec::scan(&dataset_config(c)?);
        let analysis = Analysis::run(
            &spec,
            &Progress {
                enabled: settings.progress,
            },
        );
        let quality = QualityReport::from_analysis(&spec, &analysis, settings);
        let smallest_side = analysis
            .images
            .values()
            .filter_map(|r| r.as_ref().ok())
            .map(|i| i.width.min(i.height))
            .min();
        let preset = c.preset.unwrap_or(TrainingPreset::Concept);
        let advice = preset.dataset_advice(quality.images_usable, smallest_side.unwrap_or(0));
        Ok(Self {
            quality,
            preset,
            advice,
            smallest_side,
        })
    }

    /// Whether training would refuse this dataset (a blocking problem).
    pub fn is_blocking(&self) -> bool {
        self.quality.has_blocking_problems()
    }

    /// The terminal report.
    pub fn to_text(&self) -> String {
        let mut s = self.quality.to_text();
        let name = format!("{:?}", self.preset).to_lowercase();
        if self.advice.is_empty() {
            s.push_str(&format!(
                "\nPreset `{name}`: the dataset fits its advice.\n"
            ));
        } else {
            s.push_str(&format!("\nPreset `{name}` advice:\n"));
            for a in &self.advice {
                s.push_str(&format!("  - {a}\n"));
            }
        }
        s
    }

    /// The JSON report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
