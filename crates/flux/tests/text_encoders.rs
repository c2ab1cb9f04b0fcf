//! CLIP / T5 / tokenizer loading errors, input checks, Flux folder layout, and the tokenize →
//! encode → drop pipeline against the reference (parity itself is in `parity_encoders.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use fluxlora_flux::tokenizer::{ids_tensor, mask_tensor, Tokens};
use fluxlora_flux::{
    ClipLoadOptions, ClipTextModel, FluxError, T5Encoder, T5LoadOptions, TextTokenizer,
};
use fluxlora_io::{write_safetensors, HostTensor, SafeTensorsFile, TensorRef};

type B = NdArray;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

fn clip_model() -> PathBuf {
    fixtures().join("clip_transformers/model.safetensors")
}

fn t5_model() -> PathBuf {
    fixtures().join("t5_transformers/model.safetensors")
}

fn clip_options() -> ClipLoadOptions {
    ClipLoadOptions {
        num_heads: Some(2),
        ..Default::default()
    }
}

fn copy_with(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, HostTensor) -> Option<(String, HostTensor)>,
) {
    let f = SafeTensorsFile::open(src).unwrap();
    let tensors: Vec<(String, HostTensor)> = f
        .names()
        .filter_map(|n| edit(n, f.read_f32(n).unwrap()))
        .collect();
    let refs: Vec<(&str, TensorRef)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(dst, &refs, &BTreeMap::new()).unwrap();
}

fn case_texts(case: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(case).join("case.json")).unwrap(),
    )
    .unwrap();
    v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn reference(case: &str, name: &str) -> HostTensor {
    SafeTensorsFile::open(fixtures().join(case).join("io.safetensors"))
        .unwrap()
        .read_f32(name)
        .unwrap()
}

fn max_rel_err(ours: Vec<f32>, reference: &HostTensor) -> f32 {
    assert_eq!(ours.len(), reference.data.len());
    let max_ref = reference.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    ours.iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / max_ref
}

#[test]
fn clip_pipeline_tokenize_encode_drop_matches_reference() {
    let dev = Default::default();
    let tok = TextTokenizer::clip(fixtures().join("tokenize_clip/tokenizer.json")).unwrap();
    let texts = case_texts("tokenize_clip");
    let refs: Vec<&str> = texts.iter().take(3).map(String::as_str).collect();
    let tokens = tok.encode_batch(&refs).unwrap();
    let pooled = {
        let clip = ClipTextModel::<B>::load(clip_model(), &clip_options(), &dev).unwrap();
        clip.forward(ids_tensor(&tokens, &dev).unwrap())
            .unwrap()
            .pooled
        // `clip` is dropped here: its weights are freed, the embeddings stay.
    };
    let err = max_rel_err(
        pooled.into_data().to_vec().unwrap(),
        &reference("clip_transformers", "out"),
    );
    assert!(err < 1e-4, "pooled error {err}");
}

#[test]
fn t5_pipeline_with_attention_mask_matches_reference() {
    let dev = Default::default();
    let tok = TextTokenizer::from_file(
        fixtures().join("tokenize_t5_dev/tokenizer.json"),
        24,
        "<pad>",
    )
    .unwrap();
    let texts = case_texts("tokenize_t5_dev");
    let refs: Vec<&str> = texts.iter().take(3).map(String::as_str).collect();
    let tokens = tok.encode_batch(&refs).unwrap();
    let t5 = T5Encoder::<B>::load(
        fixtures().join("t5_transformers_masked/model.safetensors"),
        &T5LoadOptions::default(),
        &dev,
    )
    .unwrap();
    let out = t5
        .forward(
            ids_tensor(&tokens, &dev).unwrap(),
            Some(mask_tensor(&tokens, &dev).unwrap()),
        )
        .unwrap();
    drop(t5);
    let err = max_rel_err(
        out.into_data().to_vec().unwrap(),
        &reference("t5_transformers_masked", "out"),
    );
    assert!(err < 1e-4, "hidden error {err}");
}

#[test]
fn flux_model_folder_layout_is_resolved() {
    // A Flux model folder: tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/.
    let dir = tempfile::tempdir().unwrap();
    for (sub, src) in [
        (
            "tokenizer/tokenizer.json",
            fixtures().join("tokenize_clip/tokenizer.json"),
        ),
        (
            "tokenizer_2/tokenizer.json",
            fixtures().join("tokenize_t5_dev/tokenizer.json"),
        ),
        ("text_encoder/model.safetensors", clip_model()),
        ("text_encoder_2/model.safetensors", t5_model()),
    ] {
        let dst = dir.path().join(sub);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    let clip_tok = TextTokenizer::clip(dir.path()).unwrap();
    let t5_tok = TextTokenizer::t5(dir.path(), 256).unwrap();
    assert_eq!((clip_tok.max_length(), t5_tok.max_length()), (77, 256));
    let c = clip_tok.encode("a photo of a cat").unwrap();
    assert_eq!(c.ids.len(), 77);
    assert_eq!(c.ids[0], clip_tok.token_to_id("<|startoftext|>").unwrap());
    let t = t5_tok.encode("a photo of a cat").unwrap();
    assert_eq!(t.ids.len(), 256);
    assert_eq!(
        t.ids[t.attention_mask.iter().sum::<u32>() as usize - 1],
        1,
        "T5 ends the text with </s> (id 1)"
    );
    let dev = Default::default();
    let clip = ClipTextModel::<B>::load(dir.path(), &clip_options(), &dev).unwrap();
    assert_eq!(clip.config().num_layers, 2);
    let t5 = T5Encoder::<B>::load(dir.path(), &T5LoadOptions::default(), &dev).unwrap();
    assert_eq!(
        (
            t5.config().num_heads,
            t5.config().d_kv,
            t5.config().num_buckets
        ),
        (4, 8, 32)
    );
}

#[test]
fn clip_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("partial.safetensors");
    copy_with(&clip_model(), &dst, |n, t| {
        (n != "text_model.encoder.layers.1.mlp.fc2.bias").then(|| (n.to_string(), t))
    });
    match ClipTextModel::<B>::load(&dst, &clip_options(), &Default::default()).unwrap_err() {
        FluxError::MissingKey { key, expected, .. } => {
            assert_eq!(key, "text_model.encoder.layers.1.mlp.fc2.bias");
            assert_eq!(expected, vec![32]);
        }
        other => panic!("expected MissingKey, got {other}"),
    }
}

#[test]
fn t5_wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("bad.safetensors");
    copy_with(&t5_model(), &dst, |n, t| {
        let t = if n == "encoder.block.1.layer.1.DenseReluDense.wo.weight" {
            HostTensor::zeros(vec![32, 48])
        } else {
            t
        };
        Some((n.to_string(), t))
    });
    match T5Encoder::<B>::load(&dst, &T5LoadOptions::default(), &Default::default()).unwrap_err() {
        FluxError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "encoder.block.1.layer.1.DenseReluDense.wo.weight");
            assert_eq!((expected, found), (vec![32, 64], vec![32, 48]));
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
}

#[test]
fn t5_v1_0_feed_forward_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("v10.safetensors");
    copy_with(&t5_model(), &dst, |n, t| match n {
        "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" => None,
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" => {
            Some(("encoder.block.0.layer.1.DenseReluDense.wi.weight".into(), t))
        }
        _ => Some((n.to_string(), t)),
    });
    let err = T5Encoder::<B>::load(&dst, &T5LoadOptions::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("v1.0") && err.contains("wi.weight"), "{err}");
}

#[test]
fn wrong_model_files_are_named() {
    let ae = fixtures().join("ae_decode_bfl/model.safetensors");
    let dev = Default::default();
    match ClipTextModel::<B>::load(&ae, &clip_options(), &dev).unwrap_err() {
        FluxError::UnknownModelFormat { model, path, .. } => {
            assert_eq!((model, path), ("CLIP text model", ae.clone()))
        }
        other => panic!("expected UnknownModelFormat, got {other}"),
    }
    match T5Encoder::<B>::load(clip_model(), &T5LoadOptions::default(), &dev).unwrap_err() {
        FluxError::UnknownModelFormat { model, .. } => assert_eq!(model, "T5 encoder"),
        other => panic!("expected UnknownModelFormat, got {other}"),
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dev = Default::default();
    let clip = ClipTextModel::<B>::load(clip_model(), &clip_options(), &dev).unwrap();
    let ids =
        |v: Vec<i64>, l: usize| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, l]), &dev);
    assert!(
        matches!(
            clip.forward(ids(vec![1; 78], 78)),
            Err(FluxError::Input { .. })
        ),
        "78 tokens > 77 positions"
    );
    let vocab = clip.config().vocab_size as i64;
    assert!(
        matches!(
            clip.forward(ids(vec![vocab; 5], 5)),
            Err(FluxError::Input { .. })
        ),
        "id outside vocabulary"
    );
    let t5 = T5Encoder::<B>::load(t5_model(), &T5LoadOptions::default(), &dev).unwrap();
    let mask = Tensor::<B, 2, Int>::ones([1, 4], &dev);
    assert!(
        matches!(
            t5.forward(ids(vec![1; 5], 5), Some(mask)),
            Err(FluxError::Input { .. })
        ),
        "mask shape"
    );
    let ragged = [
        Tokens {
            ids: vec![1, 2],
            attention_mask: vec![1, 1],
        },
        Tokens {
            ids: vec![1],
            attention_mask: vec![1],
        },
    ];
    assert!(matches!(
        ids_tensor::<B>(&ragged, &dev),
        Err(FluxError::Input { .. })
    ));
}

#[test]
fn tokenizer_errors_name_the_file() {
    let missing = fixtures().join("no_such_tokenizer.json");
    match TextTokenizer::clip(&missing).unwrap_err() {
        FluxError::Tokenizer { path, .. } => assert_eq!(path, missing),
        other => panic!("expected Tokenizer error, got {other}"),
    }
    // A CLIP tokenizer has no `<pad>`: loading it as T5 must say so.
    let clip_json = fixtures().join("tokenize_clip/tokenizer.json");
    let err = TextTokenizer::t5(&clip_json, 256).unwrap_err().to_string();
    assert!(
        err.contains("<pad>") && err.contains("tokenize_clip"),
        "{err}"
    );
}

#[test]
fn long_text_keeps_its_end_token_after_truncation() {
    // transformers truncates the text, not the special tokens: the last id is EOS.
    let tok = TextTokenizer::clip(fixtures().join("tokenize_clip/tokenizer.json")).unwrap();
    let long = "a photo of a cat ".repeat(100);
    let t = tok.encode(&long).unwrap();
    assert_eq!(t.ids.len(), 77);
    assert!(t.attention_mask.iter().all(|&m| m == 1));
    assert_eq!(t.ids[76], tok.token_to_id("<|endoftext|>").unwrap());
}

#[test]
fn bf16_text_encoders_stay_close_to_the_f32_reference() {
    // Flex supports bf16 (NdArray and wgpu do not): weights stored and computed in bf16, norms
    // and outputs in f32; bf16 keeps ~3 significant digits, hence the loose bound.
    use burn::backend::Flex;
    let dev = Default::default();
    let dtype = fluxlora_flux::bf16_if_supported::<Flex>(&dev);
    assert_eq!(dtype, Some(burn::tensor::DType::BF16));
    let ints = |case: &str, name: &str| {
        let h = reference(case, name);
        let v: Vec<i64> = h.data.iter().map(|&x| x as i64).collect();
        Tensor::<Flex, 2, Int>::from_data(TensorData::new(v, h.shape), &dev)
    };
    let clip = ClipTextModel::<Flex>::load(
        clip_model(),
        &ClipLoadOptions {
            dtype,
            ..clip_options()
        },
        &dev,
    )
    .unwrap();
    assert_eq!(clip.dtype(), burn::tensor::DType::BF16);
    let out = clip
        .forward(ints("clip_transformers", "input_ids"))
        .unwrap();
    let err = max_rel_err(
        out.pooled.into_data().to_vec().unwrap(),
        &reference("clip_transformers", "out"),
    );
    println!("CLIP bf16 pooled relative error {err:.2e}");
    assert!(err < 3e-2, "CLIP bf16 pooled error {err}");
    let t5 = T5Encoder::<Flex>::load(
        t5_model(),
        &T5LoadOptions {
            dtype,
            ..Default::default()
        },
        &dev,
    )
    .unwrap();
    let out = t5
        .forward(ints("t5_transformers", "input_ids"), None)
        .unwrap();
    let err = max_rel_err(
        out.into_data().to_vec().unwrap(),
        &reference("t5_transformers", "out"),
    );
    println!("T5 bf16 relative error {err:.2e}");
    assert!(err < 3e-2, "T5 bf16 error {err}");
}
