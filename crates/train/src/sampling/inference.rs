//! Inference with LoRAs: bake weighted LoRA files into a loaded transformer
//! ([`apply_loras`]) and draw a set of prompts with them ([`SampleRun`], [`sample_prompts`]).
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
//!
//! A sampling run encodes every prompt's text first (CLIP-L + T5, then drops both), loads the
//! autoencoder and transformer, groups the prompts by their LoRA set (the run's LoRAs plus the
//! prompt's `<lora:name:w>` tags, resolved by [`resolve_lora_name`]), draws the prompts without
//! LoRAs first on the untouched base, then for each set applies it, draws its prompts with
//! [`generate`] and takes it off again by subtracting it. That keeps memory at one model, but
//! leaves rounding of about one ulp per touched weight per set (seen as ±1 in a few pixels).
//! Images are written as `NNN-<slug>.png` (NNN = the prompt's index) plus `grid.png` of all.

use fluxlora_flux::FluxBackend;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use fluxlora_flux::host::upload;
use fluxlora_flux::Flux;
use fluxlora_io::lora::keys_te::{split_component, Component};
use fluxlora_io::{read_lora, LoraModule, LoraWeights};

use crate::config::ModelType;
use crate::error::TrainError;
use crate::lycoris_export::FileModule;
use crate::orchestration::encoders::FluxTextEncoder;
use crate::sampling::prompts::SamplePrompt;
use crate::sampling::sample::{generate, PromptText};
use crate::BaseModel;
use fluxlora_render::{save_png, SampleGrid};

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
        for (prompt, img) in self.prompts.iter().zip(images) {
            if let Some(img) = img {
                grid.push(img, prompt.prompt.clone(), prompt.seed);
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

#[cfg(test)]
mod tests;
