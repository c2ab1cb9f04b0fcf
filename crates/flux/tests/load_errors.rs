//! A wrong or partial checkpoint fails cleanly, naming the key and both shapes.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::NdArray;
use fluxlora_flux::{Flux, FluxCheckpoint, FluxError, LoadOptions};
use fluxlora_io::{write_safetensors, HostTensor, SafeTensorsFile, TensorRef};

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

fn load(path: &Path, axes: &[usize]) -> Result<Flux<NdArray>, FluxError> {
    let opts = LoadOptions {
        axes_dim: Some(axes.to_vec()),
        ..Default::default()
    };
    Flux::<NdArray>::load(path, &opts, &Default::default())
}

fn bfl_case() -> std::path::PathBuf {
    common::fixtures_dir().join("transformer_schnell_bfl_batch2/model.safetensors")
}

#[test]
fn missing_tensor_is_named_with_its_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("partial.safetensors");
    copy_with(&bfl_case(), &dst, |n, t| {
        (n != "double_blocks.1.txt_mlp.2.bias").then(|| (n.to_string(), t))
    });
    let err = load(&dst, &[2, 2, 4]).unwrap_err();
    match &err {
        FluxError::MissingKey { key, expected, .. } => {
            assert_eq!(key, "double_blocks.1.txt_mlp.2.bias");
            assert_eq!(expected, &vec![16]);
        }
        other => panic!("expected MissingKey, got {other}"),
    }
    assert!(
        err.to_string().contains("double_blocks.1.txt_mlp.2.bias"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_key_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("bad.safetensors");
    copy_with(&bfl_case(), &dst, |n, t| {
        if n == "single_blocks.0.linear2.weight" {
            // [16, 80] → [16, 79]: drop the last column.
            Some((n.to_string(), t.cols(0, 79).unwrap()))
        } else {
            Some((n.to_string(), t))
        }
    });
    let err = load(&dst, &[2, 2, 4]).unwrap_err();
    match &err {
        FluxError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "single_blocks.0.linear2.weight");
            assert_eq!(expected, &vec![16, 80]);
            assert_eq!(found, &vec![16, 79]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("[16, 80]") && msg.contains("[16, 79]"),
        "{msg}"
    );
}

#[test]
fn missing_diffusers_piece_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("partial.safetensors");
    let src = common::fixtures_dir().join("transformer_schnell_diffusers/model.safetensors");
    copy_with(&src, &dst, |n, t| {
        (n != "transformer_blocks.0.attn.add_k_proj.weight").then(|| (n.to_string(), t))
    });
    match load(&dst, &[2, 2, 4]).unwrap_err() {
        FluxError::MissingKey { key, expected, .. } => {
            assert_eq!(key, "transformer_blocks.0.attn.add_k_proj.weight");
            assert_eq!(expected, vec![48, 16]);
        }
        other => panic!("expected MissingKey, got {other}"),
    }
}

#[test]
fn not_a_flux_checkpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("other.safetensors");
    let t = HostTensor::zeros(vec![2, 2]);
    write_safetensors(
        &dst,
        &[("encoder.conv_in.weight", TensorRef::f32(&t))],
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(matches!(
        FluxCheckpoint::open(&dst),
        Err(FluxError::UnknownFormat { .. })
    ));
    assert!(matches!(
        FluxCheckpoint::open(dir.path().join("absent.safetensors")),
        Err(FluxError::Io { .. })
    ));
}

#[test]
fn bf16_base_is_kept_as_codes_where_the_backend_has_no_bf16() {
    // NdArray stores f32/f64 only (`supports_dtype(BF16)` is false): the weights are kept as
    // bf16 codes and decoded to f32 for each matmul.
    let opts = LoadOptions {
        axes_dim: Some(vec![2, 2, 4]),
        base_dtype: fluxlora_lora::BaseDtype::Bf16,
        ..Default::default()
    };
    let m = Flux::<NdArray>::load(bfl_case(), &opts, &Default::default()).unwrap();
    let qkv = m.double_blocks[0].img_attn.qkv.frozen.as_ref().unwrap();
    assert_eq!(
        qkv.meta().format,
        fluxlora_lora::FrozenFormat::Quantized(fluxlora_io::QuantFormat::Bf16)
    );
    assert_eq!(qkv.meta().compute, burn::tensor::DType::F32);
}
