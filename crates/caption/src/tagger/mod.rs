//! The WD14-style tagger (wd-vit-tagger-v3 and other timm ViT taggers) in Burn.
//!
//! A tagger folder holds `model.safetensors` (timm ViT state dict), `selected_tags.csv` and,
//! optionally, timm's `config.json` (read for the settings the weights do not fix: heads,
//! global pool, activation, normalisation — see [`config`]). Flow for one image:
//! [`crate::image_io::load_rgb`] → [`preprocess::preprocess_rgb`] → [`vit::VitClassifier`] →
//! sigmoid → [`select::select_tags`] (general / character thresholds, ratings excluded) →
//! comma-separated caption sorted by score.

pub mod config;
pub mod labels;
pub mod preprocess;
pub mod select;
pub mod vit;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_io::SafeTensorsFile;
use image::RgbImage;

use crate::error::{CaptionError, Result};
use crate::image_io::load_rgb;
use crate::run::Captioner;
use config::{infer_config, TimmConfig, VitConfig, VitOverrides};
use labels::Labels;
use preprocess::{preprocess_rgb, Preprocess};
use select::{select_tags, sigmoid, TagPrediction};
use vit::VitClassifier;

/// The ViT weights (safetensors) in a tagger folder; file names as in the SmilingWolf hub
/// repositories.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tag list, one row per classifier output (see [`labels`]).
pub const LABELS_FILE: &str = "selected_tags.csv";
/// timm's model configuration; optional — when absent, settings are inferred from the weights.
pub const CONFIG_FILE: &str = "config.json";

/// Tag selection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggerOptions {
    /// General tags need a probability above this (default 0.35).
    pub general_threshold: f32,
    /// Character tags need a probability above this (default 0.85).
    pub character_threshold: f32,
    /// Write `long hair` instead of `long_hair` (kaomoji kept; default true).
    pub underscores_to_spaces: bool,
    /// Model settings to force instead of reading `config.json`.
    pub overrides: VitOverrides,
}

impl Default for TaggerOptions {
    fn default() -> Self {
        Self {
            general_threshold: 0.35,
            character_threshold: 0.85,
            underscores_to_spaces: true,
            overrides: VitOverrides::default(),
        }
    }
}

impl TaggerOptions {
    /// Checks the thresholds lie in [0, 1].
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("general_threshold", self.general_threshold),
            ("character_threshold", self.character_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(CaptionError::InvalidOption {
                    name,
                    message: format!("{v} is outside [0, 1]; 0.35 is typical"),
                });
            }
        }
        Ok(())
    }
}

/// A loaded tagger.
#[derive(Debug)]
pub struct WdTagger<B: Backend> {
    model: VitClassifier<B>,
    labels: Labels,
    options: TaggerOptions,
    preprocess: Preprocess,
    device: B::Device,
    weights_path: PathBuf,
}

/// Loads just the classifier (no tag list), e.g. for parity checks: the weights file and an
/// optional timm `config.json`.
pub fn load_classifier<B: Backend>(
    weights: &Path,
    timm_config: Option<&Path>,
    overrides: &VitOverrides,
    device: &B::Device,
) -> Result<VitClassifier<B>> {
    let file = SafeTensorsFile::open(weights)?;
    let timm = timm_config.map(TimmConfig::read).transpose()?;
    let config = infer_config(&file, timm.as_ref(), overrides)?;
    VitClassifier::load(&file, config, device)
}

impl<B: Backend> WdTagger<B> {
    /// Loads a tagger folder (or its `model.safetensors`, with the other files beside it).
    pub fn load(path: &Path, options: TaggerOptions, device: &B::Device) -> Result<Self> {
        let (dir, weights) = if path.is_dir() {
            (path.to_path_buf(), path.join(WEIGHTS_FILE))
        } else {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        };
        let config = dir.join(CONFIG_FILE);
        let config = config.is_file().then_some(config);
        Self::from_files(
            &weights,
            &dir.join(LABELS_FILE),
            config.as_deref(),
            options,
            device,
        )
    }

    /// Loads from explicit paths.
    pub fn from_files(
        weights: &Path,
        labels: &Path,
        timm_config: Option<&Path>,
        options: TaggerOptions,
        device: &B::Device,
    ) -> Result<Self> {
        options.validate()?;
        let labels = Labels::read(labels)?;
        let model = load_classifier::<B>(weights, timm_config, &options.overrides, device)?;
        let c = model.config();
        if labels.len() != c.num_classes {
            return Err(CaptionError::LabelCount {
                labels_path: labels.path.clone(),
                labels: labels.len(),
                weights_path: weights.to_path_buf(),
                classes: c.num_classes,
            });
        }
        let preprocess = Preprocess {
            size: c.img_size as u32,
            mean: c.mean,
            std: c.std,
            bgr: true,
        };
        Ok(Self {
            model,
            labels,
            options,
            preprocess,
            device: device.clone(),
            weights_path: weights.to_path_buf(),
        })
    }

    /// The model's settings.
    pub fn config(&self) -> &VitConfig {
        self.model.config()
    }

    /// The tag list.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The preprocessing this model expects.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Probabilities for one preprocessed image (`[3, S, S]` from [`preprocess_rgb`]).
    pub fn probabilities(&self, pixels: Vec<f32>) -> Result<Vec<f32>> {
        let s = self.preprocess.size as usize;
        if pixels.len() != 3 * s * s {
            return Err(CaptionError::InputShape {
                found: vec![pixels.len()],
                size: s,
            });
        }
        let input = Tensor::<B, 4>::from_data(TensorData::new(pixels, [1, 3, s, s]), &self.device);
        let logits = self.model.forward(input)?.into_data();
        let logits = logits
            .to_vec::<f32>()
            .map_err(|e| CaptionError::ModelConfig {
                path: self.weights_path.clone(),
                message: format!(
                    "the backend returned logits that are not f32 ({e:?}); run the tagger on an \
                     f32 backend"
                ),
            })?;
        Ok(logits.into_iter().map(sigmoid).collect())
    }

    /// The tags of a decoded RGB image.
    pub fn predict_rgb(&self, image: &RgbImage) -> Result<TagPrediction> {
        let probs = self.probabilities(preprocess_rgb(image, &self.preprocess))?;
        Ok(select_tags(
            &self.labels,
            &probs,
            self.options.general_threshold,
            self.options.character_threshold,
        ))
    }

    /// The tags of an image file.
    pub fn predict(&self, image: &Path) -> Result<TagPrediction> {
        self.predict_rgb(&load_rgb(image)?)
    }
}

impl<B: Backend> Captioner for WdTagger<B>
where
    WdTagger<B>: Sync,
{
    fn describe(&self) -> String {
        let c = self.config();
        format!(
            "WD tagger {} ({} tags, {}px, general > {}, character > {})",
            self.weights_path.display(),
            c.num_classes,
            c.img_size,
            self.options.general_threshold,
            self.options.character_threshold
        )
    }

    fn caption(&self, image: &Path) -> Result<String> {
        Ok(self
            .predict(image)?
            .caption(self.options.underscores_to_spaces))
    }
}
