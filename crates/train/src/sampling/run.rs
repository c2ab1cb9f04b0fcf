//! A sampling run: prompts drawn from a base model with LoRAs ([`SampleRun`]).
//!
//! A sampling run encodes every prompt's text first (CLIP-L + T5, then drops both), loads the
//! autoencoder and transformer, groups the prompts by their LoRA set (the run's LoRAs plus the
//! prompt's `<lora:name:w>` tags, resolved by [`resolve_lora_name`]), draws the prompts without
//! LoRAs first on the untouched base, then for each set applies it, draws its prompts with
//! [`generate`] and takes it off again by subtracting it. That keeps memory at one model, but
//! leaves rounding of about one ulp per touched weight per set (seen as ±1 in a few pixels).
//! Images are written as `NNN-<slug>.png` (NNN = the prompt's index) plus `grid.png` of all.

use fluxlora_flux::FluxBackend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType};
use fluxlora_io::{read_lora, LoraWeights};
use fluxlora_render::{save_png, SampleGrid};

use crate::config::ModelType;
use crate::error::TrainError;
use crate::orchestration::encoders::FluxTextEncoder;
use crate::sampling::control::push_control_row;
use crate::sampling::inference::{
    apply_named_loras, remove_named_loras, resolve_lora_name, ApplyReport,
};
use crate::sampling::prompts::SamplePrompt;
use crate::sampling::sample::{generate, PromptText};
use crate::BaseModel;

/// A batch of prompts to draw from a base model with LoRAs.
#[derive(Debug, Clone)]
pub struct SampleRun {
    /// LoRAs applied to every prompt: file and multiplier.
    pub loras: Vec<(PathBuf, f32)>,
    /// The prompts (their `<lora:...>` tags add LoRAs for that prompt).
    pub prompts: Vec<SamplePrompt>,
    /// Folders searched for `<lora:name>` tags.
    pub lora_dirs: Vec<PathBuf>,
    /// T5 tokens per prompt.
    pub t5_max_length: usize,
    /// Where the images and the grid go (created if missing).
    pub out_dir: PathBuf,
    /// Dev (shifted schedule) or schnell (linear); `Auto` reads it from the weights.
    pub model_type: ModelType,
    /// Storage dtype of the transformer weights (`None` = f32).
    pub base_dtype: Option<DType>,
}

/// What a [`SampleRun`] wrote.
#[derive(Debug, Clone, Default)]
pub struct SampleOutput {
    /// One image per prompt, in prompt order.
    pub images: Vec<PathBuf>,
    /// The grid of all images.
    pub grid: PathBuf,
    /// One report per distinct LoRA set that was applied.
    pub reports: Vec<ApplyReport>,
    /// The prompts' parse warnings.
    pub warnings: Vec<String>,
}

impl SampleOutput {
    /// Every written file: the images, then the grid.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.images
            .iter()
            .cloned()
            .chain(std::iter::once(self.grid.clone()))
            .collect()
    }
}

/// `a red square, 4k!` → `a-red-square-4k` (ASCII letters and digits, at most 48 bytes).
pub fn slug(prompt: &str) -> String {
    let mut s = String::new();
    for c in prompt.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
        if s.len() >= 48 {
            break;
        }
    }
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "sample".into()
    } else {
        s
    }
}

/// A LoRA set as a grouping key: files and weight bits, in order.
type LoraSet = Vec<(PathBuf, u32)>;

impl SampleRun {
    /// Draws every prompt (see the module docs) and writes the images and the grid.
    pub fn run<B: FluxBackend>(
        &self,
        base: &BaseModel,
        device: &B::Device,
    ) -> Result<SampleOutput, TrainError> {
        if self.prompts.is_empty() {
            return Err(TrainError::Invalid {
                key: "prompts".into(),
                message: "no prompts to draw; give --prompt or --prompts".into(),
            });
        }
        let sets = self.lora_sets()?;
        let mut files: BTreeMap<PathBuf, LoraWeights> = BTreeMap::new();
        for (path, _) in sets.iter().flatten() {
            if !files.contains_key(path) {
                // A NaN in a LoRA would only show as black samples: name the tensor instead.
                fluxlora_io::SafeTensorsFile::open(path)?.check_finite()?;
                files.insert(path.clone(), read_lora(path)?.0);
            }
        }
        let shift = base.is_dev_as(self.model_type)?;
        let texts = self.encode_texts::<B>(base, device)?;
        let ae = base.load_autoencoder::<B>(None, device)?;
        let base_dtype = match self.base_dtype {
            Some(DType::BF16) => fluxlora_lora::BaseDtype::Bf16,
            _ => fluxlora_lora::BaseDtype::F32,
        };
        let mut flux = base.load_transformer::<B>(base_dtype, 0, device)?;
        std::fs::create_dir_all(&self.out_dir).map_err(|e| TrainError::io(&self.out_dir, e))?;

        let mut groups: Vec<(LoraSet, Vec<usize>)> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            match groups.iter_mut().find(|(s, _)| s == set) {
                Some((_, members)) => members.push(i),
                None => groups.push((set.clone(), vec![i])),
            }
        }
        // Prompts without LoRAs first, on the untouched base (stable: otherwise first-seen order).
        groups.sort_by_key(|(set, _)| !set.is_empty());
        let mut out = SampleOutput {
            images: vec![PathBuf::new(); self.prompts.len()],
            warnings: self
                .prompts
                .iter()
                .flat_map(|p| p.warnings.iter().cloned())
                .collect(),
            ..Default::default()
        };
        let mut images = vec![None; self.prompts.len()];
        // Kontext rows show the base beside the LoRA: draw those first, on the untouched base.
        let mut base_images = vec![None; self.prompts.len()];
        for (i, prompt) in self.prompts.iter().enumerate() {
            if prompt.control.is_some() && !sets[i].is_empty() {
                base_images[i] = Some(generate(&flux, &ae, &texts[i], prompt, shift, device)?);
            }
        }
        let n_groups = groups.len();
        for (g, (set, members)) in groups.iter().enumerate() {
            let named: Vec<(&Path, &LoraWeights, f32)> = set
                .iter()
                .map(|(p, w)| (p.as_path(), &files[p], f32::from_bits(*w)))
                .collect();
            if !named.is_empty() {
                out.reports.push(apply_named_loras(&mut flux, &named)?);
            }
            for &i in members {
                let prompt = &self.prompts[i];
                let img = generate(&flux, &ae, &texts[i], prompt, shift, device)?;
                let path = self
                    .out_dir
                    .join(format!("{i:03}-{}.png", slug(&prompt.prompt)));
                save_png(&path, &img, &image_text(prompt, set))?;
                out.images[i] = path;
                images[i] = Some(img);
            }
            if !named.is_empty() && g + 1 < n_groups {
                remove_named_loras(&mut flux, &named)?;
            }
        }
        let mut grid = SampleGrid::new(grid_title(base), 0);
        let kontext = self.prompts.iter().any(|p| p.control.is_some());
        let columns = if base_images.iter().any(Option::is_some) {
            3
        } else {
            2
        };
        if kontext {
            grid.columns = Some(columns);
        }
        for (i, (prompt, img)) in self.prompts.iter().zip(images).enumerate() {
            let Some(img) = img else { continue };
            match (kontext, base_images[i].take()) {
                (false, _) => grid.push(img, prompt.prompt.clone(), prompt.seed),
                (true, Some(b)) => push_control_row(&mut grid, columns, prompt, b, Some(img))?,
                (true, None) => push_control_row(&mut grid, columns, prompt, img, None)?,
            }
        }
        out.grid = self.out_dir.join("grid.png");
        grid.save(&out.grid)?;
        Ok(out)
    }

    /// Each prompt's LoRA set: the run's LoRAs, then its tags resolved to files.
    fn lora_sets(&self) -> Result<Vec<LoraSet>, TrainError> {
        self.prompts
            .iter()
            .map(|p| {
                let mut set: LoraSet = self
                    .loras
                    .iter()
                    .map(|(f, w)| (f.clone(), w.to_bits()))
                    .collect();
                for (name, w) in &p.loras {
                    set.push((resolve_lora_name(name, &self.lora_dirs)?, w.to_bits()));
                }
                Ok(set)
            })
            .collect()
    }

    /// Every prompt's text embedding; the encoders are dropped on return.
    fn encode_texts<B: Backend>(
        &self,
        base: &BaseModel,
        device: &B::Device,
    ) -> Result<Vec<PromptText>, TrainError> {
        let encoder = FluxTextEncoder::<B>::load(base, self.t5_max_length, false, device)?;
        self.prompts
            .iter()
            .map(|p| PromptText::encode(&encoder, p))
            .collect()
    }
}

fn grid_title(base: &BaseModel) -> String {
    let name = base
        .transformer
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("fluxlora sample · {name}")
}

/// PNG text chunks of one image: what it was drawn from.
fn image_text(p: &SamplePrompt, set: &LoraSet) -> Vec<(String, String)> {
    let loras: Vec<String> = set
        .iter()
        .map(|(f, w)| format!("{}:{}", f.display(), f32::from_bits(*w)))
        .collect();
    vec![
        ("Software".into(), "fluxlora".into()),
        ("prompt".into(), p.prompt.clone()),
        ("seed".into(), p.seed.to_string()),
        ("steps".into(), p.steps.to_string()),
        ("size".into(), format!("{}x{}", p.width, p.height)),
        ("guidance".into(), p.guidance.to_string()),
        ("loras".into(), loras.join(", ")),
    ]
}

/// Draws `prompts` from `base` with `loras` (+ each prompt's tags, looked up in `lora_dirs`) and
/// returns the written files: one PNG per prompt, then the grid. See [`SampleRun`].
pub fn sample_prompts<B: FluxBackend>(
    base: &BaseModel,
    loras: &[(PathBuf, f32)],
    prompts: &[SamplePrompt],
    lora_dirs: &[PathBuf],
    t5_max_length: usize,
    out_dir: &Path,
    device: &B::Device,
) -> Result<Vec<PathBuf>, TrainError> {
    let run = SampleRun {
        loras: loras.to_vec(),
        prompts: prompts.to_vec(),
        lora_dirs: lora_dirs.to_vec(),
        t5_max_length,
        out_dir: out_dir.to_path_buf(),
        model_type: ModelType::Auto,
        base_dtype: None,
    };
    Ok(run.run::<B>(base, device)?.paths())
}
