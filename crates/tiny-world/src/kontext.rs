//! The tiny Kontext world: a tiny FLUX.1 Kontext base fine-tuned from the tiny world's
//! text-to-image base on procedural edit pairs ([`crate::edits`]), and an edit-pair dataset of a
//! new edit it never saw (`paint sks stripes on the disc`).
//!
//! 1. **Base** ([`build_kontext_world`]): the tiny base's transformer, every parameter trainable,
//!    trained like a Kontext LoRA run trains (the same [`training_step`]: x_t from the target,
//!    the control's clean latent tokens appended with ids `(1, row, col)`, loss on the target
//!    tokens) on base edits, guidance drawn in [1, 5], AdamW with warm-up and linear decay.
//! 2. **Files**: `base/` (the Kontext transformer as `transformer/flux1-kontext-tiny.safetensors`,
//!    so its name says Kontext, and the tiny base's autoencoder, text encoders and tokenizers),
//!    `dataset/` (targets and instructions) with `control/` (the controls, same names),
//!    `held_out/` (controls on backgrounds the dataset never shows), `prompts.txt` (their
//!    `--ci` prompts) and `train.toml` (the LoRA run).
//!
//! Everything is drawn from the seed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::Optimizer;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_data::SplitMix64;
use fluxlora_flux::schedule::SigmaSampler;
use fluxlora_flux::{
    host, latents, Autoencoder, Flux, FluxAutodiffBackend, FluxCheckpoint, LoadOptions,
};
use fluxlora_optim::AdamW;
use fluxlora_render::{save_png, SampleGrid};
use fluxlora_train::noise::draw_noise;
use fluxlora_train::orchestration::base::BaseModel;
use fluxlora_train::orchestration::encoders::FluxTextEncoder;
use fluxlora_train::sampling::prompts::{parse_prompt_line, SampleDefaults};
use fluxlora_train::sampling::sample::{generate, PromptText};
use fluxlora_train::step::{
    bfl_shift, training_step, ControlLatents, LossSettings, StepSettings, TrainBatch,
};
use fluxlora_train::{LossType, ModelPaths, ModelPredictionType};
use image::RgbImage;

use crate::domain::{World, CONCEPT_BACKGROUNDS, HELD_OUT_BACKGROUNDS};
use crate::edits::{EditPair, CONCEPT_INSTRUCTION};
use crate::error::TinyWorldError;
use crate::pretrain::{adamw, copy_dir, images_tensor, mean, write_transformer};

/// Stream tags of the seeded draws.
const PAIRS: u64 = 0xed;
const BATCHES: u64 = 0xeb;
const CONCEPT_PAIRS: u64 = 0xec;
const HELD_OUT: u64 = 0xe0;

/// How to build the tiny Kontext world.
#[derive(Debug, Clone)]
pub struct KontextOptions {
    /// Seed of everything.
    pub seed: u64,
    /// Image side (pixels), the tiny world's.
    pub size: u32,
    /// The tiny world's base folder (`fixtures/tiny-world/base`).
    pub base: PathBuf,
    /// Output folder (`fixtures/tiny-world/kontext`).
    pub out: PathBuf,
    /// Distinct base-edit pairs trained on.
    pub pairs: usize,
    /// Training steps, pairs per step and peak learning rate.
    pub steps: usize,
    /// Pairs per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// T5 tokens per instruction.
    pub t5_max_length: usize,
    /// Pairs of the concept edit in the dataset.
    pub concept_pairs: usize,
}

impl KontextOptions {
    /// The committed tiny Kontext world, from the tiny world's base.
    pub fn tiny_world(base: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            seed: 20261207,
            size: 64,
            base: base.into(),
            out: out.into(),
            pairs: 2000,
            steps: 1500,
            batch: 8,
            lr: 5e-4,
            t5_max_length: 32,
            concept_pairs: 20,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct KontextReport {
    /// Mean loss over the first and the last 100 steps.
    pub loss: (f32, f32),
    /// Seconds spent training.
    pub seconds: f64,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

/// Encoded edit pairs: packed latents of targets and controls, and each pair's instruction.
struct PairData {
    targets: Vec<f32>,
    controls: Vec<f32>,
    instructions: Vec<usize>,
    texts: Vec<(Vec<f32>, Vec<f32>)>,
    tokens: usize,
    channels: usize,
    grid: (usize, usize),
}

fn encode_pairs<B: Backend>(
    o: &KontextOptions,
    ae: &Autoencoder<B>,
    text: &FluxTextEncoder<B>,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<PairData, TinyWorldError> {
    let world = World::new(o.size);
    let mut rng = SplitMix64::derive(o.seed, &[PAIRS]);
    let mut index = std::collections::BTreeMap::<String, usize>::new();
    let mut d = PairData {
        targets: Vec::new(),
        controls: Vec::new(),
        instructions: Vec::new(),
        texts: Vec::new(),
        tokens: 0,
        channels: 0,
        grid: (0, 0),
    };
    let mut done = 0;
    while done < o.pairs {
        let n = 32.min(o.pairs - done);
        let pairs: Vec<EditPair> = (0..n).map(|_| world.base_edit(&mut rng)).collect();
        for (scenes, out) in [
            (
                pairs.iter().map(|p| &p.target).collect::<Vec<_>>(),
                &mut d.targets,
            ),
            (pairs.iter().map(|p| &p.control).collect(), &mut d.controls),
        ] {
            let images: Vec<RgbImage> = scenes.iter().map(|s| world.render(s)).collect();
            let z = ae.encode(images_tensor::<B>(&images, device))?;
            let [_, _, h, w] = z.dims();
            let packed = latents::pack(z)?;
            let [_, l, c] = packed.dims();
            (d.tokens, d.channels, d.grid) = (l, c, (h / 2, w / 2));
            out.extend(host::values(packed)?);
        }
        for p in &pairs {
            let next = index.len();
            let id = *index.entry(p.instruction.clone()).or_insert(next);
            if id == d.texts.len() {
                let (t5, pooled) = text.encode_tensors(&p.instruction)?;
                d.texts.push((host::values(t5)?, host::values(pooled)?));
            }
            d.instructions.push(id);
        }
        done += n;
        progress(&format!(
            "encoded {done}/{} edit pairs, {} instructions",
            o.pairs,
            index.len()
        ));
    }
    Ok(d)
}

fn pair_batch<B: Backend>(
    d: &PairData,
    picks: &[usize],
    o: &KontextOptions,
    config: &fluxlora_flux::FluxConfig,
    device: &B::Device,
) -> TrainBatch<B> {
    let per = d.tokens * d.channels;
    let gather = |v: &[f32]| -> Vec<f32> {
        picks
            .iter()
            .flat_map(|&i| v[i * per..(i + 1) * per].iter().copied())
            .collect()
    };
    let text = |k: usize| -> Vec<f32> {
        picks
            .iter()
            .flat_map(|&i| {
                let t = &d.texts[d.instructions[i]];
                if k == 0 { &t.0 } else { &t.1 }.iter().copied()
            })
            .collect()
    };
    let b = picks.len();
    let shape = [b, d.tokens, d.channels];
    TrainBatch {
        latents: Tensor::from_data(TensorData::new(gather(&d.targets), shape), device),
        grid: d.grid,
        txt: Tensor::from_data(
            TensorData::new(text(0), [b, o.t5_max_length, config.context_in_dim]),
            device,
        ),
        y: Tensor::from_data(TensorData::new(text(1), [b, config.vec_in_dim]), device),
        mask: None,
        txt_mask: None,
        is_reg: vec![false; b],
        control: Some(ControlLatents {
            latents: Tensor::from_data(TensorData::new(gather(&d.controls), shape), device),
            grid: d.grid,
        }),
    }
}

fn train_base<B: FluxAutodiffBackend>(
    o: &KontextOptions,
    base: &BaseModel,
    data: &PairData,
    report: &mut KontextReport,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<Flux<B::InnerBackend>, TinyWorldError> {
    let start = Instant::now();
    let config = base.transformer_config()?;
    let options = LoadOptions {
        axes_dim: Some(config.axes_dim.clone()),
        trainable_base: true,
        ..Default::default()
    };
    let mut model = Flux::<B>::from_checkpoint(
        &FluxCheckpoint::open(&base.transformer)?,
        &config,
        &options,
        device,
    )?;
    let sampler = SigmaSampler::Shift {
        shift: bfl_shift(o.size),
        sigmoid_scale: 1.0,
    };
    let mut settings = StepSettings {
        sampler: sampler.clone(),
        loss: LossSettings {
            loss_type: LossType::L2,
            huber_c: 0.1,
            prediction: ModelPredictionType::Raw,
            weighting: fluxlora_flux::schedule::LossWeighting::None,
            prior_loss_weight: 1.0,
        },
        guidance: 1.0,
        checkpointing: Default::default(),
    };
    let mut optim: OptimizerAdaptor<AdamW, Flux<B>, B> = adamw()?.into();
    let n = data.instructions.len();
    let mut losses = Vec::with_capacity(o.steps);
    for step in 0..o.steps {
        let mut rng = SplitMix64::derive(o.seed, &[BATCHES, step as u64]);
        let picks: Vec<usize> = (0..o.batch).map(|_| rng.below(n as u64) as usize).collect();
        settings.guidance = (1.0 + 4.0 * rng.next_f64()) as f32;
        let batch = pair_batch::<B>(data, &picks, o, &config, device);
        let draw = draw_noise(
            o.seed,
            step as u64,
            0,
            &sampler,
            picks.len(),
            data.tokens,
            data.channels,
        );
        let out = training_step(&model, &batch, &draw, &settings)?;
        if !out.loss.is_finite() {
            return Err(TinyWorldError::NonFiniteLoss {
                step: step as u64,
                value: out.loss,
                lr: o.lr,
            });
        }
        losses.push(out.loss);
        let warm = ((step + 1) as f64 / 100.0).min(1.0);
        let lr = o.lr * warm * (1.0 - 0.9 * step as f64 / o.steps.max(1) as f64);
        model = optim.step(lr, model, out.grads);
        if step % 100 == 0 || step + 1 == o.steps {
            let recent = mean(&losses[losses.len().saturating_sub(100)..]);
            progress(&format!(
                "kontext step {step}/{}: loss {recent:.4} (mean of the last 100)",
                o.steps
            ));
        }
    }
    report.loss = (
        mean(&losses[..losses.len().min(100)]),
        mean(&losses[losses.len().saturating_sub(100)..]),
    );
    report.seconds = start.elapsed().as_secs_f64();
    Ok(model.valid())
}

fn write_text(path: &Path, text: &str, report: &mut KontextReport) -> Result<(), TinyWorldError> {
    fluxlora_io::atomic_write(path, |w| w.write_all(text.as_bytes()))?;
    report.files.push(path.to_path_buf());
    Ok(())
}

fn fresh_dir(dir: &Path) -> Result<(), TinyWorldError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TinyWorldError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| TinyWorldError::io(dir, e))
}

/// Writes the concept-edit dataset (`dataset/` + `control/`), the held-out controls and their
/// prompts, and `train.toml` into `o.out` (replacing them); no model is involved.
pub fn write_kontext_dataset(
    o: &KontextOptions,
    report: &mut KontextReport,
) -> Result<(), TinyWorldError> {
    let world = World::new(o.size);
    let (targets, controls, held) = (
        o.out.join("dataset"),
        o.out.join("control"),
        o.out.join("held_out"),
    );
    for d in [&targets, &controls, &held] {
        fresh_dir(d)?;
    }
    let mut rng = SplitMix64::derive(o.seed, &[CONCEPT_PAIRS]);
    for i in 0..o.concept_pairs {
        let bg = CONCEPT_BACKGROUNDS[i % CONCEPT_BACKGROUNDS.len()];
        let e = world.concept_edit(&mut rng, bg);
        let name = format!("sks_{i:02}");
        for (dir, scene) in [(&targets, &e.target), (&controls, &e.control)] {
            let png = dir.join(format!("{name}.png"));
            save_png(&png, &world.render(scene), &[])?;
            report.files.push(png);
        }
        write_text(
            &targets.join(format!("{name}.txt")),
            &format!("{}\n", e.instruction),
            report,
        )?;
    }
    let mut prompts = String::from(
        "# Held-out edits (controls on backgrounds the dataset never shows), written by \
         `pretrain_tiny --kontext`.\n\
         # kohya flags: --w --h --s (steps) --d (seed) --g (guidance); --ci: the control image\n",
    );
    let mut rng = SplitMix64::derive(o.seed, &[HELD_OUT]);
    for (j, bg) in HELD_OUT_BACKGROUNDS.iter().enumerate() {
        let e = world.concept_edit(&mut rng, bg);
        let png = held.join(format!("{bg}.png"));
        save_png(&png, &world.render(&e.control), &[])?;
        report.files.push(png);
        prompts.push_str(&format!(
            "{CONCEPT_INSTRUCTION} --ci held_out/{bg}.png --w {0} --h {0} --s 20 --d {1} --g 3.5\n",
            o.size,
            j + 1
        ));
    }
    write_text(&o.out.join("prompts.txt"), &prompts, report)?;
    write_text(&o.out.join("train.toml"), TRAIN_TOML, report)
}

/// The tiny Kontext world's LoRA run (paths relative to the repository root).
const TRAIN_TOML: &str = "\
# The tiny Kontext world's LoRA run: a new edit (`paint sks stripes on the disc`) on the tiny
# FLUX.1 Kontext base (fixtures/tiny-world/kontext/base, built by `pretrain_tiny --kontext`), from
# 20 edit pairs: targets and instructions in dataset/, their controls (same names) in control/.
# Run from the repository root:
#   cargo run --release --example train -- fixtures/tiny-world/kontext/train.toml \\
#     --concept-score
pretrained_model_name_or_path = \"fixtures/tiny-world/kontext/base\"
train_data_dir = \"fixtures/tiny-world/kontext/dataset\"
control_directory = \"fixtures/tiny-world/kontext/control\"
resolution = 64
train_batch_size = 8
t5xxl_max_token_length = 32

network_dim = 16
network_alpha = 16.0
optimizer_type = \"AdamW8bit\"
learning_rate = 2e-3
lr_scheduler = \"cosine\"
timestep_sampling = \"shift\"
discrete_flow_shift = 3.1582
max_train_steps = 400
seed = 42

output_dir = \"output/tiny-kontext\"
output_name = \"sks-stripes-kontext\"
save_every_n_steps = 200
sample_prompts = \"fixtures/tiny-world/kontext/prompts.txt\"
sample_every_n_steps = 200
sample_at_first = true
";

/// Samples a few base edits of held-out scenes with the finished base into `base/preview.png`,
/// as rows `control | base`.
fn write_preview<B: fluxlora_flux::FluxBackend>(
    o: &KontextOptions,
    flux: &Flux<B>,
    ae: &Autoencoder<B>,
    text: &FluxTextEncoder<B>,
    report: &mut KontextReport,
    device: &B::Device,
) -> Result<(), TinyWorldError> {
    let world = World::new(o.size);
    let dir = o.out.join("base").join("preview");
    fresh_dir(&dir)?;
    let mut rng = SplitMix64::derive(o.seed, &[HELD_OUT, 1]);
    let mut grid = SampleGrid::new("tiny Kontext base: control | edit", o.steps as u64);
    grid.columns = Some(2);
    for i in 0..4 {
        let e = world.base_edit(&mut rng);
        let control = dir.join(format!("control_{i}.png"));
        save_png(&control, &world.render(&e.control), &[])?;
        let line = format!(
            "{} --ci {} --w {2} --h {2} --s 20 --d {3} --g 3.5",
            e.instruction,
            control.display(),
            o.size,
            i + 1
        );
        let prompt = parse_prompt_line(&line, &SampleDefaults::default())?;
        let emb = PromptText::encode(text, &prompt)?;
        grid.push(world.render(&e.control), "control", prompt.seed);
        grid.push(
            generate(flux, ae, &emb, &prompt, true, device)?,
            prompt.prompt.clone(),
            prompt.seed,
        );
    }
    std::fs::remove_dir_all(&dir).map_err(|e| TinyWorldError::io(&dir, e))?;
    let path = o.out.join("base").join("preview.png");
    save_png(&path, &grid.render(), &[])?;
    report.files.push(path);
    Ok(())
}

/// Builds the tiny Kontext world into `o.out` (see the module docs).
pub fn build_kontext_world<B: FluxAutodiffBackend>(
    o: &KontextOptions,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<KontextReport, TinyWorldError> {
    let base = BaseModel::from_paths(&ModelPaths {
        model: Some(o.base.clone()),
        ..Default::default()
    })?;
    B::seed(device, o.seed);
    let mut report = KontextReport::default();
    let out_base = o.out.join("base");
    for sub in [
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
    ] {
        report
            .files
            .extend(copy_dir(&o.base.join(sub), &out_base.join(sub))?);
    }
    let ae = base.load_autoencoder::<B::InnerBackend>(None, device)?;
    let text = FluxTextEncoder::<B::InnerBackend>::load(&base, o.t5_max_length, false, device)?;
    let data = encode_pairs(o, &ae, &text, progress, device)?;
    let flux = train_base::<B>(o, &base, &data, &mut report, progress, device)?;
    // The file name marks the base as Kontext (`BaseModel::is_kontext_as`).
    report.files.extend(write_transformer(
        &out_base.join("transformer"),
        "flux1-kontext-tiny.safetensors",
        "fluxlora tiny Kontext world",
        &flux,
    )?);
    write_kontext_dataset(o, &mut report)?;
    write_preview(o, &flux, &ae, &text, &mut report, device)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    #[test]
    fn a_small_build_writes_a_kontext_base_that_loads_and_a_dataset_of_pairs() {
        let tmp = tempfile::tempdir().unwrap();
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-world/base");
        let mut o = KontextOptions::tiny_world(base, tmp.path().join("kontext"));
        (o.pairs, o.steps, o.batch, o.concept_pairs) = (4, 2, 2, 3);
        let report =
            build_kontext_world::<Autodiff<NdArray>>(&o, &mut |_: &str| {}, &Default::default())
                .unwrap();
        assert!(report.loss.0.is_finite() && report.loss.1.is_finite());
        let out = &o.out;
        for f in [
            "base/transformer/flux1-kontext-tiny.safetensors",
            "base/vae/ae.safetensors",
            "base/preview.png",
            "dataset/sks_02.png",
            "dataset/sks_02.txt",
            "control/sks_02.png",
            "held_out/navy.png",
            "prompts.txt",
            "train.toml",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        // The folder is a base model whose name says Kontext, and every prompt has a control.
        let model = BaseModel::from_paths(&ModelPaths {
            model: Some(out.join("base")),
            ..Default::default()
        })
        .unwrap();
        assert!(model.is_kontext_as(fluxlora_train::ModelType::Auto));
        let prompts = fluxlora_train::sampling::prompts::parse_prompt_file(
            out.join("prompts.txt"),
            &SampleDefaults::default(),
        )
        .unwrap();
        assert_eq!(prompts.len(), HELD_OUT_BACKGROUNDS.len());
        assert!(prompts
            .iter()
            .all(|p| p.control.as_ref().is_some_and(|c| c.is_file())));
        let caption = std::fs::read_to_string(out.join("dataset/sks_00.txt")).unwrap();
        assert_eq!(caption.trim(), CONCEPT_INSTRUCTION);
    }
}
