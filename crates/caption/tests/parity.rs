//! Tagger parity: every `fixtures/parity/*/case.json` with `"component": "tagger"` (and those
//! under `$FLUXLORA_PARITY_DIR`) against timm's logits, on NdArray; the WD-layout case end to end
//! (image file → probabilities → caption) against the WD v3 timm reference preprocessing. The
//! wgpu case is in the root package's `tests/integration/wgpu_backend.rs`.

use std::path::Path;

use burn::backend::NdArray;
use fluxlora_caption::{TaggerOptions, WdTagger};
use serde_json::Value;

#[path = "common/tagger.rs"]
mod tagger;

use tagger::{fixtures_dir, run_case, tagger_cases};

#[test]
fn every_tagger_case_matches_timm() {
    let mut cases = tagger_cases(&fixtures_dir());
    assert!(
        cases.len() >= 3,
        "expected the committed tagger cases in {}",
        fixtures_dir().display()
    );
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
    assert!(
        failures.is_empty(),
        "tagger parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn wd_layout_tags_images_like_the_reference() {
    let dir = fixtures_dir().join("tagger_vit_tiny_wd");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let expected = |name: &str| -> Vec<f32> {
        reference["probabilities"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };

    let options = TaggerOptions {
        general_threshold: 0.5,
        character_threshold: 0.5,
        ..TaggerOptions::default()
    };
    let tagger = WdTagger::<NdArray>::load(&dir, options, &Default::default()).unwrap();
    let config = tagger.config();
    assert!(!config.class_token);
    assert_eq!(config.global_pool, fluxlora_caption::GlobalPool::Avg);
    assert_eq!(config.activation, fluxlora_caption::Activation::GeluTanh);

    let probabilities = |name: &str| {
        let rgb = fluxlora_caption::image_io::load_rgb(&dir.join(name)).unwrap();
        tagger
            .probabilities(fluxlora_caption::tagger::preprocess::preprocess_rgb(
                &rgb,
                tagger.preprocess(),
            ))
            .unwrap()
    };
    let max_err = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };

    // Padding only (no resize): alpha on white, centring, /255, mean/std, BGR must be exact.
    let (ours, want) = (
        probabilities("image_32x20.png"),
        expected("image_32x20.png"),
    );
    println!(
        "wd 32x20 (pad only) max probability error {:.3e}",
        max_err(&ours, &want)
    );
    assert!(
        max_err(&ours, &want) < 1e-5,
        "{ours:?} vs reference {want:?}"
    );

    // Padding + resize: our bicubic is not PIL's bit for bit (PIL rounds between passes).
    let (ours, want) = (probabilities("image.png"), expected("image.png"));
    println!(
        "wd 48x30 (pad + resize) max probability error {:.3e}",
        max_err(&ours, &want)
    );
    assert!(
        max_err(&ours, &want) < 1e-2,
        "{ours:?} vs reference {want:?}"
    );

    // The caption: tags above 0.5 (ratings excluded), by reference probability.
    let labels = [
        "general",
        "sensitive",
        "questionable",
        "explicit",
        "1girl",
        "long hair",
        "smile",
        "^_^",
        "outdoors",
        "hatsune miku",
    ];
    let mut picked: Vec<(usize, f32)> = want
        .iter()
        .copied()
        .enumerate()
        .filter(|&(i, p)| i >= 4 && p > 0.5)
        .collect();
    picked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let caption: Vec<&str> = picked.iter().map(|&(i, _)| labels[i]).collect();
    let prediction = tagger.predict(&dir.join("image.png")).unwrap();
    assert_eq!(prediction.caption(true), caption.join(", "));
    assert_eq!(prediction.rating.len(), 4);
}
