//! Tagger parity: every `fixtures/parity/*/case.json` with `"component": "tagger"` (and those
//! under `$FLUXLORA_PARITY_DIR`) against timm's logits, on NdArray; the WD-layout case end to end
//! (image file → probabilities → caption) against the WD v3 timm reference preprocessing; one
//! tiny case on Wgpu.

use std::path::{Path, PathBuf};

use burn::backend::{NdArray, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_caption::{load_classifier, TaggerOptions, VitOverrides, WdTagger};
use fluxlora_io::SafeTensorsFile;
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

/// Case folders under `root` whose `case.json` says `"component": "tagger"`.
fn tagger_cases(root: &Path) -> Vec<(PathBuf, f64)> {
    let mut cases = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return cases };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("case.json")) else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}/case.json: {e}", dir.display()));
        if v["component"] == "tagger" {
            assert_eq!(v["format"], "timm", "{}: tagger cases use timm keys", dir.display());
            cases.push((dir, v["tolerance"].as_f64().unwrap_or(1e-4)));
        }
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

/// Max |ours − reference| and the pass bound `tolerance · max(1, max |reference|)`.
fn run_case<B: Backend>(dir: &Path, tolerance: f64, device: &B::Device) -> Result<(f32, f32), String> {
    let config = dir.join("config.json");
    let config = config.is_file().then_some(config);
    let model = load_classifier::<B>(&dir.join("model.safetensors"), config.as_deref(), &VitOverrides::default(), device)
        .map_err(|e| e.to_string())?;
    let io = SafeTensorsFile::open(dir.join("io.safetensors")).map_err(|e| e.to_string())?;
    let pixels = io.read_f32("pixels").map_err(|e| e.to_string())?;
    let expected = io.read_f32("out").map_err(|e| e.to_string())?;
    let shape: [usize; 4] = pixels.shape.clone().try_into().map_err(|_| format!("pixels shape {:?}", pixels.shape))?;
    let input = Tensor::<B, 4>::from_data(TensorData::new(pixels.data, shape), device);
    let out = model.forward(input).map_err(|e| e.to_string())?;
    if out.dims().to_vec() != expected.shape {
        return Err(format!("output shape {:?}, reference {:?}", out.dims(), expected.shape));
    }
    let ours = out.into_data().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    let max_err = ours.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let bound = tolerance as f32 * expected.max_abs().max(1.0);
    Ok((max_err, bound))
}

#[test]
fn every_tagger_case_matches_timm() {
    let mut cases = tagger_cases(&fixtures_dir());
    assert!(cases.len() >= 3, "expected the committed tagger cases in {}", fixtures_dir().display());
    if let Ok(extra) = std::env::var("FLUXLORA_PARITY_DIR") {
        cases.extend(tagger_cases(Path::new(&extra)));
    }
    let device = Default::default();
    let mut failures = Vec::new();
    for (dir, tolerance) in &cases {
        let name = dir.file_name().unwrap().to_string_lossy();
        match run_case::<NdArray>(dir, *tolerance, &device) {
            Ok((max_err, bound)) => {
                println!("{name:32} tagger max_err {max_err:.3e} (bound {bound:.1e})");
                if !(max_err <= bound) {
                    failures.push(format!("{name}: max error {max_err:.3e} > {bound:.3e}"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "tagger parity failures:\n{}", failures.join("\n"));
}

#[test]
fn wd_layout_tags_images_like_the_reference() {
    let dir = fixtures_dir().join("tagger_vit_tiny_wd");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let expected = |name: &str| -> Vec<f32> {
        reference["probabilities"][name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
    };

    let options = TaggerOptions { general_threshold: 0.5, character_threshold: 0.5, ..TaggerOptions::default() };
    let tagger = WdTagger::<NdArray>::load(&dir, options, &Default::default()).unwrap();
    let config = tagger.config();
    assert!(!config.class_token);
    assert_eq!(config.global_pool, fluxlora_caption::GlobalPool::Avg);
    assert_eq!(config.activation, fluxlora_caption::Activation::GeluTanh);

    let probabilities = |name: &str| {
        let rgb = fluxlora_caption::image_io::load_rgb(&dir.join(name)).unwrap();
        tagger.probabilities(fluxlora_caption::tagger::preprocess::preprocess_rgb(&rgb, tagger.preprocess())).unwrap()
    };
    let max_err = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);

    // Padding only (no resize): alpha on white, centring, /255, mean/std, BGR must be exact.
    let (ours, want) = (probabilities("image_32x20.png"), expected("image_32x20.png"));
    println!("wd 32x20 (pad only) max probability error {:.3e}", max_err(&ours, &want));
    assert!(max_err(&ours, &want) < 1e-5, "{ours:?} vs reference {want:?}");

    // Padding + resize: our bicubic is not PIL's bit for bit (PIL rounds between passes).
    let (ours, want) = (probabilities("image.png"), expected("image.png"));
    println!("wd 48x30 (pad + resize) max probability error {:.3e}", max_err(&ours, &want));
    assert!(max_err(&ours, &want) < 1e-2, "{ours:?} vs reference {want:?}");

    // The caption: tags above 0.5 (ratings excluded), by reference probability.
    let labels = ["general", "sensitive", "questionable", "explicit", "1girl", "long hair", "smile", "^_^", "outdoors", "hatsune miku"];
    let mut picked: Vec<(usize, f32)> = want.iter().copied().enumerate().filter(|&(i, p)| i >= 4 && p > 0.5).collect();
    picked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let caption: Vec<&str> = picked.iter().map(|&(i, _)| labels[i]).collect();
    let prediction = tagger.predict(&dir.join("image.png")).unwrap();
    assert_eq!(prediction.caption(true), caption.join(", "));
    assert_eq!(prediction.rating.len(), 4);
}

#[test]
fn tiny_tagger_case_matches_on_wgpu() {
    let dir = fixtures_dir().join("tagger_vit_tiny");
    let (max_err, bound) = run_case::<Wgpu>(&dir, 1e-4, &Default::default()).unwrap();
    println!("wgpu tagger_vit_tiny max_err {max_err:.3e} (bound {bound:.1e})");
    assert!(max_err <= bound, "max error {max_err:.3e} > {bound:.3e}");
}
