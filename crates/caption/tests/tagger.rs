//! Loading the tagger from bad inputs (each error names the file and the fix), settings inferred
//! from the weights, and tagging a folder with a corrupt image in it.

use crate::common;

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use common::{read, write_image};
use fluxlora_caption::tagger::config::{infer_config, TimmConfig};
use fluxlora_caption::{
    caption_folder, load_classifier, Activation, CaptionError, CaptionJob, FolderScan, GlobalPool,
    TaggerOptions, VitOverrides, WdTagger,
};
use fluxlora_io::{write_safetensors, HostTensor, SafeTensorsFile, TensorRef};

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/parity")
        .join(name)
}

/// A copy of the WD case folder to break things in.
fn wd_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "selected_tags.csv", "config.json"] {
        std::fs::copy(case("tagger_vit_tiny_wd").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// Rewrites `model.safetensors` in `dir` through `edit`.
fn rewrite_weights(dir: &Path, edit: impl Fn(&mut Vec<(String, HostTensor)>)) {
    let path = dir.join("model.safetensors");
    let file = SafeTensorsFile::open(&path).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = file
        .names()
        .map(|n| (n.to_string(), file.read_f32(n).unwrap()))
        .collect();
    drop(file);
    edit(&mut tensors);
    let refs: Vec<(String, TensorRef)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), TensorRef::f32(t)))
        .collect();
    write_safetensors(&path, &refs, &Default::default()).unwrap();
}

fn load_err(dir: &Path) -> String {
    WdTagger::<NdArray>::load(dir, TaggerOptions::default(), &Default::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn settings_are_inferred_from_weights_and_config() {
    let file =
        SafeTensorsFile::open(case("tagger_vit_tiny_variants").join("model.safetensors")).unwrap();
    let timm = TimmConfig::read(&case("tagger_vit_tiny_variants").join("config.json")).unwrap();
    let c = infer_config(&file, Some(&timm), &VitOverrides::default()).unwrap();
    assert_eq!(
        (
            c.img_size,
            c.patch_size,
            c.embed_dim,
            c.depth,
            c.num_heads,
            c.mlp_hidden,
            c.num_classes
        ),
        (32, 8, 32, 2, 2, 128, 10)
    );
    assert!(
        c.class_token
            && c.no_embed_class
            && c.pre_norm
            && c.fc_norm
            && c.qk_norm
            && c.layer_scale
            && !c.final_norm
    );
    assert_eq!(c.reg_tokens, 2);
    assert_eq!(c.global_pool, GlobalPool::Avg);

    // Without config.json: heads from the q-norm width, token pool (class token), exact GELU.
    let c = infer_config(&file, None, &VitOverrides::default()).unwrap();
    assert_eq!(c.num_heads, 2);
    assert_eq!(c.global_pool, GlobalPool::Token);
    assert_eq!(c.activation, Activation::Gelu);
    // Overrides win.
    let o = VitOverrides {
        num_heads: Some(4),
        global_pool: Some(GlobalPool::Max),
        activation: Some(Activation::GeluTanh),
    };
    let c = infer_config(&file, Some(&timm), &o).unwrap();
    assert_eq!(
        (c.num_heads, c.global_pool, c.activation),
        (4, GlobalPool::Max, Activation::GeluTanh)
    );
}

#[test]
fn wrong_settings_change_the_output() {
    // The config matters: the WD case run with token-less defaults but the wrong activation
    // disagrees with its reference, so the parity test really checks `act_layer` handling.
    let dir = case("tagger_vit_tiny_wd");
    let dev = Default::default();
    let io = SafeTensorsFile::open(dir.join("io.safetensors")).unwrap();
    let pixels = io.read_f32("pixels").unwrap();
    let expected = io.read_f32("out").unwrap();
    let run = |o: VitOverrides| {
        let m = load_classifier::<NdArray>(
            &dir.join("model.safetensors"),
            Some(&dir.join("config.json")),
            &o,
            &dev,
        )
        .unwrap();
        let x = burn::tensor::Tensor::<NdArray, 4>::from_data(
            burn::tensor::TensorData::new(pixels.data.clone(), [2, 3, 32, 32]),
            &dev,
        );
        let out: Vec<f32> = m.forward(x).unwrap().into_data().to_vec().unwrap();
        out.iter()
            .zip(&expected.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(run(VitOverrides::default()) < 1e-4);
    assert!(
        run(VitOverrides {
            activation: Some(Activation::Gelu),
            ..Default::default()
        }) > 1e-4
    );
    assert!(
        run(VitOverrides {
            global_pool: Some(GlobalPool::Max),
            ..Default::default()
        }) > 1e-2
    );
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = wd_copy();
    rewrite_weights(dir.path(), |t| {
        t.retain(|(n, _)| n != "blocks.1.mlp.fc2.weight")
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("blocks.1.mlp.fc2.weight") && err.contains("model.safetensors"),
        "{err}"
    );

    let dir = wd_copy();
    rewrite_weights(dir.path(), |t| {
        for (n, x) in t.iter_mut() {
            if n == "blocks.0.attn.proj.weight" {
                *x = HostTensor::zeros(vec![32, 16]);
            }
        }
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("blocks.0.attn.proj.weight") && err.contains("[32, 16]"),
        "{err}"
    );

    let dir = wd_copy();
    rewrite_weights(dir.path(), |t| t.retain(|(n, _)| n != "head.weight"));
    assert!(load_err(dir.path()).contains("head.weight"));
}

#[test]
fn bad_files_name_themselves() {
    // Truncated weights.
    let dir = wd_copy();
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(dir.path()).contains("model.safetensors"));

    // Tag list of the wrong length.
    let dir = wd_copy();
    std::fs::write(
        dir.path().join("selected_tags.csv"),
        "tag_id,name,category,count\n1,a,0,1\n",
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("selected_tags.csv") && err.contains("1 tags") && err.contains("10 classes"),
        "{err}"
    );

    // No tag list at all.
    let dir = wd_copy();
    std::fs::remove_file(dir.path().join("selected_tags.csv")).unwrap();
    assert!(load_err(dir.path()).contains("selected_tags.csv"));

    // A config that contradicts the weights.
    let dir = wd_copy();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_args": {"img_size": 448, "num_heads": 2}}"#,
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json") && err.contains("448"), "{err}");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_args": {"num_heads": 3}}"#,
    )
    .unwrap();
    assert!(load_err(dir.path()).contains("3 heads"));
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_args": {"num_heads": 2, "global_pool": "map"}}"#,
    )
    .unwrap();
    assert!(load_err(dir.path()).contains("map"));
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_args": {"num_heads": 2, "global_pool": "token"}}"#,
    )
    .unwrap();
    assert!(load_err(dir.path()).contains("class token"));

    // Out-of-range thresholds.
    let bad = TaggerOptions {
        general_threshold: 1.5,
        ..TaggerOptions::default()
    };
    let err = WdTagger::<NdArray>::load(&case("tagger_vit_tiny_wd"), bad, &Default::default())
        .unwrap_err();
    assert!(matches!(
        err,
        CaptionError::InvalidOption {
            name: "general_threshold",
            ..
        }
    ));
}

#[test]
fn input_of_the_wrong_size_is_an_error() {
    let tagger = WdTagger::<NdArray>::load(
        &case("tagger_vit_tiny_wd"),
        TaggerOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert!(matches!(
        tagger.probabilities(vec![0.0; 10]),
        Err(CaptionError::InputShape { .. })
    ));
}

#[test]
fn tagging_a_folder_survives_a_corrupt_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        case("tagger_vit_tiny_wd").join("image.png"),
        dir.path().join("good.png"),
    )
    .unwrap();
    write_image(&dir.path().join("tall.jpg"), 4, 90);
    std::fs::write(dir.path().join("zero.png"), b"").unwrap();
    // Threshold 0: every general tag, so no image gets an empty caption.
    let options = TaggerOptions {
        general_threshold: 0.0,
        character_threshold: 0.5,
        ..TaggerOptions::default()
    };
    let tagger =
        WdTagger::<NdArray>::load(&case("tagger_vit_tiny_wd"), options, &Default::default())
            .unwrap();
    let mut job = CaptionJob::new(FolderScan::new(dir.path()));
    job.threads = 2;
    let summary = caption_folder(&job, Some(&tagger)).unwrap();
    assert_eq!(summary.generated, 2, "{summary}");
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].to_string().contains("zero.png"));
    // The same tags as the reference test, via the folder runner and the caption file.
    let expected = tagger
        .predict(&dir.path().join("good.png"))
        .unwrap()
        .caption(true);
    assert_eq!(read(&dir.path().join("good.txt")), format!("{expected}\n"));
    assert!(
        !expected.contains("general") && !expected.contains("explicit"),
        "ratings never captioned: {expected}"
    );
    assert!(summary.captioner.unwrap().contains("WD tagger"));
}
