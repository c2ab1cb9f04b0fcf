//! Diffusers-style sharded checkpoints: an index whose `weight_map` names the shard of each
//! tensor, opened through the index or the folder, read tensor by tensor across shards.

use crate::common;

use common::{f32_raw, values, write_reference};
use fluxlora_io::{Checkpoint, IoError};

fn make_sharded(dir: &std::path::Path) -> (Vec<f32>, Vec<f32>) {
    let a = values(1, 6);
    let b = values(2, 4);
    write_reference(
        &dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
        &[("x_embedder.weight".into(), f32_raw(&[2, 3], &a))],
        Some([("format".to_string(), "pt".to_string())].into()),
    );
    write_reference(
        &dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        &[
            ("proj_out.weight".into(), f32_raw(&[4], &b)),
            ("proj_out.bias".into(), f32_raw(&[1], &[0.5])),
        ],
        None,
    );
    let index = r#"{
      "metadata": {"total_size": 44},
      "weight_map": {
        "x_embedder.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
        "proj_out.weight": "diffusion_pytorch_model-00002-of-00002.safetensors",
        "proj_out.bias": "diffusion_pytorch_model-00002-of-00002.safetensors"
      }
    }"#;
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index,
    )
    .unwrap();
    (a, b)
}

#[test]
fn reads_across_shards_via_index_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = make_sharded(dir.path());
    for ck in [
        Checkpoint::open(
            dir.path()
                .join("diffusion_pytorch_model.safetensors.index.json"),
        )
        .unwrap(),
        Checkpoint::open(dir.path()).unwrap(),
    ] {
        assert_eq!(ck.shards().len(), 2);
        assert_eq!(
            ck.names().collect::<Vec<_>>(),
            ["proj_out.bias", "proj_out.weight", "x_embedder.weight"]
        );
        assert_eq!(ck.read_f32("x_embedder.weight").unwrap().data, a);
        assert_eq!(ck.read_f32("proj_out.weight").unwrap().data, b);
        assert_eq!(ck.info("x_embedder.weight").unwrap().1, &[2, 3]);
        assert_eq!(ck.metadata().get("format").map(String::as_str), Some("pt"));
        let e = ck.read_f32("nope").unwrap_err();
        assert!(matches!(e, IoError::TensorNotFound { .. }), "{e}");
    }
}

#[test]
fn single_file_and_single_file_folder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flux1-dev.safetensors");
    write_reference(
        &p,
        &[("img_in.weight".into(), f32_raw(&[2], &[1.0, 2.0]))],
        None,
    );
    for ck in [
        Checkpoint::open(&p).unwrap(),
        Checkpoint::open(dir.path()).unwrap(),
    ] {
        assert_eq!(ck.len(), 1);
        assert_eq!(ck.read_f32("img_in.weight").unwrap().data, vec![1.0, 2.0]);
    }
}

#[test]
fn missing_shard_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    make_sharded(dir.path());
    std::fs::remove_file(
        dir.path()
            .join("diffusion_pytorch_model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    match &e {
        IoError::MissingShard { shard, .. } => {
            assert_eq!(shard, "diffusion_pytorch_model-00002-of-00002.safetensors")
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("index.json") && msg.contains("00002-of-00002") && msg.contains("proj_out"),
        "{msg}"
    );
}

#[test]
fn inconsistent_or_ambiguous_inputs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    make_sharded(dir.path());
    let idx = dir
        .path()
        .join("diffusion_pytorch_model.safetensors.index.json");
    // Index pointing a tensor at the wrong shard.
    std::fs::write(
        &idx,
        concat!(
            r#"{"weight_map": {"x_embedder.weight": "#,
            r#""diffusion_pytorch_model-00002-of-00002.safetensors"}}"#
        ),
    )
    .unwrap();
    let e = Checkpoint::open(&idx).unwrap_err();
    assert!(
        matches!(e, IoError::ShardIndex { .. }) && e.to_string().contains("x_embedder.weight"),
        "{e}"
    );
    // Path traversal in the index.
    std::fs::write(&idx, r#"{"weight_map": {"a": "../evil.safetensors"}}"#).unwrap();
    assert!(matches!(
        Checkpoint::open(&idx).unwrap_err(),
        IoError::ShardIndex { .. }
    ));
    // Not an index.
    std::fs::write(&idx, r#"{"foo": 1}"#).unwrap();
    let e = Checkpoint::open(&idx).unwrap_err();
    assert!(e.to_string().contains("weight_map"), "{e}");
    // A folder with several files and no index.
    std::fs::remove_file(&idx).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, IoError::ShardIndex { .. }) && e.to_string().contains("several"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Checkpoint::open(empty.path()).unwrap_err(),
        IoError::ShardIndex { .. }
    ));
}
