//! From a config to trainable batches: the dataset (a kohya dataset TOML or an image folder,
//! with the run's resolution, batch size, caption extension and trigger word), split into the
//! items trained on and the items held out for the validation loss (`validation_split`, chosen
//! by `validation_seed`), its loader, and the latent and text caches built by the base model's
//! encoders — each encoder loaded only for its cache and dropped right after, so the transformer
//! trains without them in memory. Held-out items get cache entries for their one fixed
//! validation sample and are never in the loader's dataset.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{backend::Backend, DType};
use fluxlora_data::{
    epoch_plan, BuildOptions, BuildStats, DataError, Dataset, DatasetConfig, LatentCache,
    LatentEncoder, Loader, Progress, TextCache, TextEmbedding, TextEncoder,
};
use fluxlora_io::HostTensor;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::orchestration::base::BaseModel;
use crate::orchestration::encoders::{FluxLatentEncoder, FluxTextEncoder};
use crate::source::CachedBatches;
use crate::step::StepSettings;
use crate::validation::ValidationSet;

/// The dataset config of a run: `dataset_config` as written, or `train_data_dir` scanned
/// (kohya's `N_name` folders) with the run's resolution, batch size and caption extension. The
/// run's `trigger_word` fills every subset that has none.
pub fn dataset_config(c: &TrainConfig) -> Result<DatasetConfig, TrainError> {
    let mut d = match (&c.dataset_config, &c.train_data_dir) {
        (Some(file), _) => DatasetConfig::from_toml_file(file)?,
        (None, Some(dir)) => {
            let mut d = DatasetConfig::from_folder(dir)?;
            for ds in &mut d.datasets {
                ds.batch_size = c.train_batch_size;
                let b = &mut ds.buckets;
                b.resolution = (c.resolution, c.resolution);
                b.min_bucket_reso = b.min_bucket_reso.min(c.resolution);
                b.max_bucket_reso = b.max_bucket_reso.max(c.resolution);
                for s in &mut ds.subsets {
                    s.caption_extension = c.caption_extension.clone();
                }
            }
            d
        }
        (None, None) => {
            return Err(TrainError::Invalid {
                key: "train_data_dir".into(),
                message: "no dataset; set train_data_dir (a folder of images + .txt captions) or \
                          dataset_config (a kohya dataset TOML)"
                    .into(),
            })
        }
    };
    if let Some(n) = c.max_image_pixels {
        d.image_limits.max_pixels = n;
    }
    if let Some(n) = c.max_image_side {
        d.image_limits.max_side = n;
    }
    for s in d.datasets.iter_mut().flat_map(|ds| ds.subsets.iter_mut()) {
        if let Some(t) = &c.trigger_word {
            s.caption.trigger_word.get_or_insert_with(|| t.clone());
        }
        if s.control_dir.is_none() {
            s.control_dir.clone_from(&c.control_directory);
        }
    }
    d.validate()?;
    Ok(d)
}

/// Checks that the dataset and the base agree: a Kontext base trains on edit pairs (every
/// subset has a control folder), and control images need a Kontext base.
pub fn check_edit_pairs(d: &DatasetConfig, kontext: bool) -> Result<(), TrainError> {
    let subsets = || d.datasets.iter().flat_map(|ds| ds.subsets.iter());
    if kontext {
        if let Some(s) = subsets().find(|s| s.control_dir.is_none()) {
            return Err(TrainError::Invalid {
                key: "control_directory".into(),
                message: format!(
                    "the base is FLUX.1 Kontext, which trains on edit pairs, but the subset {} \
                     has no control images; set control_directory (the folder of control \
                     images, same names as the targets), or model_type = \"dev\" to train it \
                     as a plain Flux.1-dev LoRA",
                    s.image_dir.display()
                ),
            });
        }
    } else if let Some(s) = subsets().find(|s| s.control_dir.is_some()) {
        return Err(TrainError::Invalid {
            key: "model_type".into(),
            message: format!(
                "the subset {} has control images (edit pairs), which only FLUX.1 Kontext reads, \
                 but the base is not named as Kontext; set model_type = \"kontext\" or remove \
                 control_directory",
                s.image_dir.display()
            ),
        });
    }
    Ok(())
}

/// Training images per epoch: every non-regularisation item times its subset's `num_repeats`.
pub fn images_per_epoch(dataset: &Dataset) -> usize {
    dataset
        .items
        .iter()
        .map(|item| dataset.subset_of(item))
        .filter(|sub| !sub.is_reg)
        .map(|sub| sub.num_repeats as usize)
        .sum()
}

/// Optimizer steps in one epoch of `dataset` under `c`: the loader's micro-batches per epoch
/// (same-bucket batches of the dataset's batch size) over `gradient_accumulation_steps`, rounded
/// up.
pub fn steps_per_epoch(c: &TrainConfig, dataset: &Arc<Dataset>) -> usize {
    let batches = Loader::new(dataset.clone(), c.seed).batches_per_epoch();
    batches
        .div_ceil(c.gradient_accumulation_steps.max(1))
        .max(1)
}

/// `c` with `max_train_steps` filled in (and `max_train_epochs` cleared): the config's own, else
/// `max_train_epochs` × [`steps_per_epoch`], else the preset's steps for the dataset's size
/// ([`crate::TrainingPreset::steps_for`], repeats counted); an error names the fix when none is
/// set.
pub fn with_resolved_steps(
    c: &TrainConfig,
    dataset: &Arc<Dataset>,
) -> Result<TrainConfig, TrainError> {
    let mut c = c.clone();
    if let (None, Some(epochs)) = (c.max_train_steps, c.max_train_epochs.take()) {
        c.max_train_steps = Some(epochs * steps_per_epoch(&c, dataset));
    }
    if c.max_train_steps.is_none() {
        let preset = c.preset.ok_or_else(|| TrainError::Invalid {
            key: "max_train_steps".into(),
            message:
                "is not set: give it (e.g. --max_train_steps 1500), give max_train_epochs, or \
                 choose a --preset (character, style or concept), which derives it from the \
                 dataset's size"
                    .into(),
        })?;
        c.max_train_steps = Some(preset.steps_for(images_per_epoch(dataset)));
    }
    Ok(c)
}

/// Epochs the run reads: enough batches for `max_train_steps` optimizer steps.
pub fn epochs_needed(c: &TrainConfig, batches_per_epoch: usize) -> u64 {
    let micro = c.max_train_steps.unwrap_or(0) * c.gradient_accumulation_steps.max(1);
    micro.div_ceil(batches_per_epoch.max(1)).max(1) as u64
}

/// The folder holding the caches.
pub fn cache_dir(c: &TrainConfig) -> PathBuf {
    c.cache_dir
        .clone()
        .unwrap_or_else(|| c.output_dir.join("cache"))
}

/// The run's dataset split by `validation_split` under `validation_seed`: the training items
/// (the loader's dataset) and the held-out ones (`None` when the split is 0). Errors when the
/// split would leave nothing to train on.
pub fn split_dataset(
    c: &TrainConfig,
    dataset: Dataset,
) -> Result<(Arc<Dataset>, Option<Arc<Dataset>>), TrainError> {
    if c.validation_split <= 0.0 {
        return Ok((Arc::new(dataset), None));
    }
    let split = dataset.split_validation(f64::from(c.validation_split), c.validation_seed)?;
    Ok((Arc::new(split.train), split.validation.map(Arc::new)))
}

/// What [`prepare_data`] did.
#[derive(Debug)]
pub struct PreparedData {
    /// The batches to train on.
    pub source: CachedBatches,
    /// The training dataset (without the held-out items).
    pub dataset: Arc<Dataset>,
    /// The items held out for the validation loss.
    pub validation: Option<Arc<Dataset>>,
    /// Epochs covered by the caches.
    pub epochs: u64,
    /// The optimizer steps the caches were built for: the config's `max_train_steps`, or the
    /// preset's for this dataset when the config leaves it unset.
    pub max_train_steps: usize,
    /// Latent cache build.
    pub latents: BuildStats,
    /// Text cache build.
    pub texts: BuildStats,
}

impl PreparedData {
    /// The held-out items with their fixed draws (`None` without a validation split).
    pub fn validation_set<B: Backend>(
        &self,
        c: &TrainConfig,
        device: &B::Device,
    ) -> Result<Option<ValidationSet>, TrainError> {
        let Some(held) = &self.validation else {
            return Ok(None);
        };
        let sampler = StepSettings::from_config(c)?.sampler;
        let set = ValidationSet::from_cache::<B>(
            held,
            self.source.latent_cache(),
            self.source.text_cache(),
            &sampler,
            c.validation_seed,
            device,
        )?;
        Ok(Some(set))
    }
}

/// The caches a run needs: every (image, bucket, crop, flip) sample and every caption variant
/// of the epochs it reads, plus the one validation sample of each held-out item.
pub struct CachePlan {
    dir: PathBuf,
    dataset: Arc<Dataset>,
    validation: Option<Arc<Dataset>>,
    loader: Loader,
    epochs: u64,
    steps: usize,
    opts: BuildOptions,
}

impl CachePlan {
    /// The plan for `dataset` under the config's seed, steps (see [`with_resolved_steps`]) and
    /// cache folder.
    pub fn new(c: &TrainConfig, dataset: Arc<Dataset>, progress: bool) -> Result<Self, TrainError> {
        let c = with_resolved_steps(c, &dataset)?;
        let loader = Loader::new(dataset.clone(), c.seed);
        let epochs = epochs_needed(&c, loader.batches_per_epoch());
        let steps = c.max_train_steps.unwrap_or(0);
        let opts = BuildOptions {
            progress: Progress { enabled: progress },
            ..Default::default()
        };
        Ok(Self {
            dir: cache_dir(&c),
            dataset,
            validation: None,
            loader,
            epochs,
            steps,
            opts,
        })
    }

    /// Also caches the held-out items' validation samples (see [`split_dataset`]).
    pub fn with_validation(mut self, validation: Option<Arc<Dataset>>) -> Self {
        self.validation = validation;
        self
    }

    fn validation_samples(&self) -> Vec<fluxlora_data::Sample> {
        self.validation
            .as_ref()
            .map(|v| (0..v.items.len()).map(|i| v.validation_sample(i)).collect())
            .unwrap_or_default()
    }

    /// Builds (or reuses) the latent cache; any image that failed to load is an error naming it.
    pub fn latents(
        &self,
        encoder: &dyn LatentEncoder,
    ) -> Result<(LatentCache, BuildStats), TrainError> {
        let samples: Vec<_> = (0..self.epochs)
            .flat_map(|e| epoch_plan(&self.dataset, self.loader.state().seed, e))
            .flat_map(|b| b.samples)
            .collect();
        let cache = LatentCache::open(&self.dir.join("latents"), &encoder.identity())?;
        let mut stats = cache.build(&self.dataset, &samples, encoder, &self.opts)?;
        if let Some(held) = &self.validation {
            let v = cache.build(held, &self.validation_samples(), encoder, &self.opts)?;
            stats.built += v.built;
            stats.reused += v.reused;
            stats.failed.extend(v.failed);
            stats.removed_temporaries += v.removed_temporaries;
            stats.elapsed += v.elapsed;
        }
        if let Some((path, why)) = stats.failed.first() {
            return Err(TrainError::Data(fluxlora_data::DataError::Encoder {
                encoder: encoder.identity(),
                item: path.clone(),
                message: format!(
                    "{why} ({} image(s) failed); fix or remove them and run again",
                    stats.failed.len()
                ),
            }));
        }
        Ok((cache, stats))
    }

    /// Builds (or reuses) the text cache.
    pub fn texts(&self, encoder: &dyn TextEncoder) -> Result<(TextCache, BuildStats), TrainError> {
        let cache = TextCache::open(&self.dir.join("text"), &encoder.identity())?;
        let mut captions = self.loader.captions_for_epochs(0..self.epochs);
        captions.extend(self.validation_samples().into_iter().map(|s| s.caption));
        captions.sort();
        captions.dedup();
        let stats = cache.build(&captions, encoder, &self.opts)?;
        Ok((cache, stats))
    }

    /// The prepared data over the built caches.
    pub fn finish(
        self,
        latents: (LatentCache, BuildStats),
        texts: (TextCache, BuildStats),
    ) -> PreparedData {
        PreparedData {
            source: CachedBatches::new(self.loader, latents.0, texts.0),
            dataset: self.dataset,
            validation: self.validation,
            epochs: self.epochs,
            max_train_steps: self.steps,
            latents: latents.1,
            texts: texts.1,
        }
    }
}

/// An encoder loaded on first use, so that a complete cache costs no model load.
struct Lazy<'a, E> {
    make: &'a dyn Fn() -> Result<E, TrainError>,
    identity: String,
    cell: std::cell::OnceCell<E>,
}

impl<'a, E> Lazy<'a, E> {
    fn new(identity: String, make: &'a dyn Fn() -> Result<E, TrainError>) -> Self {
        Self {
            make,
            identity,
            cell: Default::default(),
        }
    }

    fn get(&self) -> Result<&E, DataError> {
        if let Some(e) = self.cell.get() {
            return Ok(e);
        }
        let e = (self.make)().map_err(|e| DataError::Encoder {
            encoder: self.identity.clone(),
            item: "loading the model".into(),
            message: e.to_string(),
        })?;
        Ok(self.cell.get_or_init(|| e))
    }
}

impl<B: Backend> LatentEncoder for Lazy<'_, FluxLatentEncoder<B>> {
    fn identity(&self) -> String {
        self.identity.clone()
    }
    fn encode(&self, image: &HostTensor) -> Result<HostTensor, DataError> {
        self.get()?.encode(image)
    }
}

impl<B: Backend> TextEncoder for Lazy<'_, FluxTextEncoder<B>> {
    fn identity(&self) -> String {
        self.identity.clone()
    }
    fn encode(&self, caption: &str) -> Result<TextEmbedding, DataError> {
        self.get()?.encode(caption)
    }
}

/// Opens and splits the dataset, then builds its caches with the base model's encoders, one at a
/// time: the
/// autoencoder, then CLIP + T5; each is dropped once its cache is complete.
pub fn prepare_data<B: Backend>(
    c: &TrainConfig,
    base: &BaseModel,
    device: &B::Device,
    progress: bool,
) -> Result<PreparedData, TrainError> {
    let config = dataset_config(c)?;
    check_edit_pairs(&config, base.is_kontext_as(c.model_type))?;
    let (dataset, validation) =
        split_dataset(c, Dataset::open(&config, &Progress { enabled: progress })?)?;
    let plan = CachePlan::new(c, dataset, progress)?.with_validation(validation);
    let latents = {
        let make = || FluxLatentEncoder::<B>::load(base, device);
        plan.latents(&Lazy::new(
            FluxLatentEncoder::<B>::identity_of(&base.ae, DType::F32, None),
            &make,
        ))?
    };
    let t5_len = base.t5_max_length(c)?;
    let texts = {
        let make = || FluxTextEncoder::<B>::load(base, t5_len, c.apply_t5_attn_mask, device);
        let identity =
            FluxTextEncoder::<B>::identity_of(base, t5_len, c.apply_t5_attn_mask, DType::F32);
        plan.texts(&Lazy::new(identity, &make))?
    };
    Ok(plan.finish(latents, texts))
}
