use super::*;
use crate::config::TrainConfig;
use crate::lora_export::import_lora;
use crate::sampling::prompts::SamplePrompt;
use crate::sampling::prompts::{parse_prompt_line, SampleDefaults};
use crate::sampling::sample::tests::tiny_flux;
use crate::BaseModel;
use burn::backend::NdArray;
use fluxlora_flux::{latents, FluxInputs};
use fluxlora_io::HostTensor;

type B = NdArray;

/// Deterministic values in about [−amp, amp].
fn values(n: usize, seed: usize, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * amp)
        .collect()
}

fn module(d_in: usize, d_out: usize, rank: usize, alpha: f32, seed: usize) -> LoraModule {
    let down = HostTensor::new(vec![rank, d_in], values(rank * d_in, seed, 0.5)).unwrap();
    let up = HostTensor::new(vec![d_out, rank], values(d_out * rank, seed + 1, 0.5)).unwrap();
    LoraModule::new(down, up, alpha).unwrap()
}

fn dims_of(flux: &mut Flux<B>, path: &str) -> (usize, usize) {
    let (_, l) = flux
        .linears_mut()
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap();
    (l.d_in(), l.d_out())
}

fn weight_of(flux: &mut Flux<B>, path: &str) -> Vec<f32> {
    let (_, l) = flux
        .linears_mut()
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap();
    l.base_weight().into_data().to_vec::<f32>().unwrap()
}

/// Modules on `paths` of `flux` (rank 4, alpha 2: scale 0.5).
fn lora_for(flux: &mut Flux<B>, paths: &[&str]) -> LoraWeights {
    let mut w = LoraWeights::default();
    for (i, p) in paths.iter().enumerate() {
        let (d_in, d_out) = dims_of(flux, p);
        w.modules
            .insert(p.to_string(), module(d_in, d_out, 4, 2.0, 10 * i + 1));
    }
    w
}

fn inputs(dev: &burn::tensor::Device<B>) -> FluxInputs<B> {
    let t = |shape: Vec<usize>, seed| {
        let n = shape.iter().product();
        Tensor::<B, 3>::from_data(TensorData::new(values(n, seed, 1.0), shape), dev)
    };
    FluxInputs {
        txt_mask: None,
        img_cond_seq: None,
        img: t(vec![1, 4, 16], 3),
        img_ids: latents::img_ids(1, 2, 2, dev),
        txt: t(vec![1, 3, 8], 4),
        txt_ids: latents::txt_ids(1, 3, dev),
        timesteps: Tensor::from_data(TensorData::new(vec![0.5f32], [1]), dev),
        y: Tensor::from_data(TensorData::new(values(8, 5, 1.0), [1, 8]), dev),
        guidance: Some(Tensor::from_data(TensorData::new(vec![3.5f32], [1]), dev)),
    }
}

fn forward(flux: &Flux<B>, dev: &burn::tensor::Device<B>) -> Vec<f32> {
    flux.forward(&inputs(dev))
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PATHS: [&str; 3] = [
    "double_blocks.0.img_attn.qkv",
    "single_blocks.0.linear1",
    "img_in",
];

#[test]
fn merged_loras_match_the_same_lora_as_adapters() {
    let dev = Default::default();
    let mut base = tiny_flux(&dev);
    let lora = lora_for(&mut base, &PATHS);
    let mut extra = lora.clone();
    extra.modules.insert(
        "te1:text_model.encoder.layers.0.self_attn.q_proj".into(),
        module(8, 8, 2, 2.0, 7),
    );
    extra.modules.insert(
        "double_blocks.7.img_attn.proj".into(),
        module(32, 32, 2, 2.0, 8),
    );

    let mut merged = base.clone();
    let report = apply_loras(&mut merged, &[(extra, 1.0)]).unwrap();
    let r = &report.loras[0];
    assert_eq!(r.matched.len(), 3);
    assert_eq!(
        r.skipped_text_encoder,
        vec!["te1:text_model.encoder.layers.0.self_attn.q_proj".to_string()]
    );
    assert_eq!(
        r.skipped_missing,
        vec!["double_blocks.7.img_attn.proj".to_string()]
    );
    assert_eq!(report.modules_changed(), 3);
    let text = report.to_string();
    assert!(
        text.contains("1 module not in this model skipped (double_blocks.7"),
        "{text}"
    );
    assert!(
        report
            .to_string()
            .contains("3 modules applied; 1 text-encoder module skipped (te1:"),
        "{report}"
    );

    let mut adapters = base.clone();
    assert_eq!(
        import_lora(&mut adapters, &lora, Path::new("t.safetensors")).unwrap(),
        3
    );
    let (y_base, y_merged, y_adapters) = (
        forward(&base, &dev),
        forward(&merged, &dev),
        forward(&adapters, &dev),
    );
    assert!(
        max_diff(&y_base, &y_adapters) > 1e-2,
        "the LoRA must change the output for the test to mean anything"
    );
    let d = max_diff(&y_merged, &y_adapters);
    assert!(d < 1e-4, "merged and adapter forwards differ by {d}");
}

#[test]
fn weight_scales_the_delta_and_undo_restores() {
    let dev = Default::default();
    let mut flux = tiny_flux(&dev);
    let lora = lora_for(&mut flux, &PATHS);
    let w0 = weight_of(&mut flux, "img_in");
    apply_loras(&mut flux, &[(lora.clone(), 0.0)]).unwrap();
    assert_eq!(
        weight_of(&mut flux, "img_in"),
        w0,
        "weight 0 leaves the base bit-identical"
    );

    apply_loras(&mut flux, &[(lora.clone(), 0.5)]).unwrap();
    let w1 = weight_of(&mut flux, "img_in");
    // Expected by hand: W[i][o] + 0.5 · (alpha/rank) · Σ_r up[o][r]·down[r][i], Burn layout
    // [in, out].
    let m = &lora.modules["img_in"];
    let (d_in, d_out, rank) = (16, 32, 4);
    for i in 0..d_in {
        for o in 0..d_out {
            let dot: f32 = (0..rank)
                .map(|r| m.up.data[o * rank + r] * m.down.data[r * d_in + i])
                .sum();
            let want = w0[i * d_out + o] + 0.5 * (2.0 / 4.0) * dot;
            assert!(
                (w1[i * d_out + o] - want).abs() < 1e-5,
                "[{i},{o}]: {} vs {want}",
                w1[i * d_out + o]
            );
        }
    }
    // Two halves in one call equal the whole; taking both off restores the base.
    let mut twice = tiny_flux(&dev);
    let w_base = weight_of(&mut twice, "img_in");
    let mut once = twice.clone();
    apply_loras(&mut twice, &[(lora.clone(), 0.5), (lora.clone(), 0.5)]).unwrap();
    apply_loras(&mut once, &[(lora.clone(), 1.0)]).unwrap();
    assert!(
        max_diff(
            &weight_of(&mut twice, "img_in"),
            &weight_of(&mut once, "img_in")
        ) < 1e-6
    );
    assert!(max_diff(&weight_of(&mut once, "img_in"), &w_base) > 1e-2);
    apply_loras(&mut once, &[(lora.clone(), -1.0)]).unwrap();
    assert!(max_diff(&weight_of(&mut once, "img_in"), &w_base) < 1e-6);
}

#[test]
fn shape_mismatches_and_foreign_loras_are_errors_that_change_nothing() {
    let dev = Default::default();
    let mut flux = tiny_flux(&dev);
    let mut lora = lora_for(&mut flux, &["img_in"]);
    lora.modules.insert(
        "double_blocks.0.img_attn.proj".into(),
        module(32, 48, 2, 2.0, 3),
    );
    let before = weight_of(&mut flux, "img_in");
    let e = apply_loras(&mut flux, &[(lora, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lora #1") && e.contains("double_blocks.0.img_attn.proj"),
        "{e}"
    );
    assert!(e.contains("[48, 32]") && e.contains("[32, 32]"), "{e}");
    assert_eq!(
        weight_of(&mut flux, "img_in"),
        before,
        "nothing is applied when a LoRA does not fit"
    );

    let mut te_only = LoraWeights::default();
    te_only.modules.insert(
        "te3:encoder.block.0.layer.0.SelfAttention.q".into(),
        module(8, 8, 2, 2.0, 4),
    );
    let named = [(Path::new("te.safetensors"), &te_only, 1.0)];
    let e = apply_named_loras(&mut flux, &named)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("te.safetensors") && e.contains("none of its 1 modules"),
        "{e}"
    );
}

#[test]
fn lora_names_resolve_from_folders_or_paths() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("style.safetensors"), b"x").unwrap();
    let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
    assert_eq!(
        resolve_lora_name("style", &dirs).unwrap(),
        b.path().join("style.safetensors")
    );
    assert_eq!(
        resolve_lora_name("style.safetensors", &dirs).unwrap(),
        b.path().join("style.safetensors")
    );
    let exact = b.path().join("style.safetensors");
    assert_eq!(
        resolve_lora_name(exact.to_str().unwrap(), &[]).unwrap(),
        exact
    );
    let e = resolve_lora_name("nope", &dirs).unwrap_err().to_string();
    assert!(
        e.contains("<lora:nope>") && e.contains(&a.path().display().to_string()),
        "{e}"
    );
    assert!(e.contains(&b.path().display().to_string()), "{e}");
    assert_eq!(slug("  A red square, 4k!! "), "a-red-square-4k");
    assert_eq!(slug("猫"), "sample");
}

fn tiny_base() -> BaseModel {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-base");
    BaseModel::resolve(&TrainConfig {
        pretrained_model_name_or_path: Some(root),
        ..Default::default()
    })
    .unwrap()
}

fn prompt(line: &str) -> SamplePrompt {
    parse_prompt_line(line, &SampleDefaults::default()).unwrap()
}

#[test]
fn sample_prompts_writes_each_image_and_a_grid() {
    let dev = Default::default();
    let base = tiny_base();
    let loras = tempfile::tempdir().unwrap();
    let mut flux = base
        .load_transformer::<B>(Default::default(), 0, &dev)
        .unwrap();
    let lora = lora_for(
        &mut flux,
        &[
            "img_in",
            "double_blocks.0.img_attn.proj",
            "final_layer.linear",
        ],
    );
    let file = loras.path().join("style.safetensors");
    fluxlora_io::write_lora(
        &file,
        &lora,
        fluxlora_io::LoraFormat::Kohya,
        &BTreeMap::new(),
    )
    .unwrap();

    let out = tempfile::tempdir().unwrap();
    let prompts = [
        prompt("<lora:style:0.5> a red square --w 64 --h 64 --s 2 --d 3"),
        prompt("a red square --w 64 --h 64 --s 2 --d 3"),
        prompt("<lora:style> a red square --w 64 --h 64 --s 2 --d 3"),
    ];
    let dirs = [loras.path().to_path_buf()];
    let paths = sample_prompts::<B>(&base, &[], &prompts, &dirs, 16, out.path(), &dev).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "000-a-red-square.png",
            "001-a-red-square.png",
            "002-a-red-square.png",
            "grid.png"
        ]
    );
    let img = |p: &Path| image::open(p).unwrap().to_rgb8();
    let (half, plain, whole) = (img(&paths[0]), img(&paths[1]), img(&paths[2]));
    assert_eq!(half.dimensions(), (64, 64));
    assert_eq!(whole.dimensions(), (64, 64));
    assert!(
        half != plain && half != whole,
        "same prompt and seed: only the LoRA weight differs"
    );
    assert!(
        img(&paths[3]).width() > 64 * 2,
        "the grid holds the samples side by side"
    );

    // Each image matches a run that draws it alone: the LoRA-free prompt exactly (it runs first,
    // on the untouched base); the weight-1 one up to the rounding left by taking weight 0.5 off.
    let alone = |i: usize| {
        let dir = tempfile::tempdir().unwrap();
        let p = sample_prompts::<B>(&base, &[], &prompts[i..i + 1], &dirs, 16, dir.path(), &dev)
            .unwrap();
        img(&p[0])
    };
    assert_eq!(alone(1), plain);
    let worst = alone(2)
        .as_raw()
        .iter()
        .zip(whole.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "a pixel moved by {worst} after an earlier LoRA set was taken off"
    );

    // A missing tag fails before any model loads, naming the folders searched.
    let e = sample_prompts::<B>(&base, &[], &prompts[..1], &[], 16, out.path(), &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("<lora:style>") && e.contains("none were given"),
        "{e}"
    );
}
