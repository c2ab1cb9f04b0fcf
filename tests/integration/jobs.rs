//! The jobs on tiny inputs: what they return and the exit codes they document.

use std::path::Path;

use fluxlora::jobs::{prep, PrepArgs};

fn dataset(dir: &Path, corrupt: bool) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-world/dataset");
    for i in 0..3 {
        std::fs::copy(
            src.join(format!("sks_0{i}.png")),
            dir.join(format!("img{i}.png")),
        )
        .unwrap();
        std::fs::write(dir.join(format!("img{i}.txt")), "sks disc").unwrap();
    }
    if corrupt {
        std::fs::write(
            dir.join("broken.png"),
            b"\x89PNG\r\n\x1a\n not really a png",
        )
        .unwrap();
        std::fs::write(dir.join("broken.txt"), "sks disc").unwrap();
    }
}

fn run_prep(corrupt: bool) -> (fluxlora::jobs::PrepOutcome, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data, corrupt);
    let args = PrepArgs {
        dataset: Some(data),
        trigger: Some("sks".into()),
        resolution: Some(64),
        json: Some(tmp.path().join("report.json")),
        ..Default::default()
    };
    (prep(&args).unwrap(), tmp)
}

#[test]
fn prep_reports_a_clean_dataset_with_exit_code_0() {
    let (outcome, tmp) = run_prep(false);
    assert!(!outcome.blocking, "{}", outcome.report);
    assert_eq!(outcome.exit_code(), 0);
    let json = std::fs::read_to_string(tmp.path().join("report.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(value.is_object());
    assert!(outcome.to_string().contains("JSON report:"));
}

#[test]
fn prep_names_a_corrupt_image_and_exits_with_2() {
    let (outcome, _tmp) = run_prep(true);
    assert!(outcome.blocking);
    assert_eq!(outcome.exit_code(), 2);
    assert!(outcome.report.contains("broken.png"), "{}", outcome.report);
}

#[test]
fn prep_names_a_missing_kontext_control_and_exits_with_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, ctl) = (tmp.path().join("data"), tmp.path().join("control"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&ctl).unwrap();
    dataset(&data, false);
    for i in 0..2 {
        std::fs::copy(
            data.join(format!("img{i}.png")),
            ctl.join(format!("img{i}.png")),
        )
        .unwrap();
    }
    let args = PrepArgs {
        dataset: Some(data),
        control_directory: Some(ctl),
        resolution: Some(64),
        json: Some(tmp.path().join("report.json")),
        ..Default::default()
    };
    let outcome = prep(&args).unwrap();
    assert_eq!(outcome.exit_code(), 2, "{}", outcome.report);
    assert!(
        outcome.report.contains("img2.png") && outcome.report.contains("no control image"),
        "{}",
        outcome.report
    );
}

/// CRC-32 (IEEE) of PNG chunk type + data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A 60-byte PNG whose header declares `w`×`h` RGB pixels (a decompression bomb).
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes()[..], &[8, 2, 0, 0, 0]].concat();
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// A checkpoint folder as fluxlora writes it, whose LoRA holds a NaN in `key`.
fn poisoned_checkpoint(dir: &Path, key: &str) {
    use fluxlora::io::{write_safetensors, HostTensor, TensorRef};
    std::fs::create_dir_all(dir).unwrap();
    let state = serde_json::json!({
        "format": "fluxlora-train-state/1", "step": 20, "epoch": 1, "source": null, "seed": 42,
        "rng_counter": 20, "lr_step": 20, "optimizer": "AdamW", "config_hash": "0",
        "lora_file": "tiny.safetensors",
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    let fine = HostTensor::new(vec![2, 2], vec![0.5; 4]).unwrap();
    let bad = HostTensor::new(vec![2, 2], vec![0.5, f32::NAN, 0.5, 0.5]).unwrap();
    let meta = Default::default();
    write_safetensors(
        dir.join("optimizer.safetensors"),
        &[("m", TensorRef::f32(&fine))],
        &meta,
    )
    .unwrap();
    let lora = [
        (key, TensorRef::f32(&bad)),
        ("lora_unet_x.lora_down.weight", TensorRef::f32(&fine)),
    ];
    write_safetensors(dir.join("tiny.safetensors"), &lora, &meta).unwrap();
}

#[test]
fn prep_names_a_bomb_an_escaping_output_name_and_a_poisoned_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data, false);
    std::fs::write(data.join("bomb.png"), png_bomb(100_000, 100_000)).unwrap();
    std::fs::write(data.join("bomb.txt"), "sks disc").unwrap();
    let config = tmp.path().join("shared.toml");
    std::fs::write(&config, "output_name = \"../../escape\"\n").unwrap();
    let ckpt = tmp.path().join("tiny-step00000020");
    let key = "lora_unet_single_blocks_0_linear1.lora_up.weight";
    poisoned_checkpoint(&ckpt, key);
    let args = PrepArgs {
        dataset: Some(data),
        config: Some(config),
        resume: Some(ckpt),
        trigger: Some("sks".into()),
        resolution: Some(64),
        json: Some(tmp.path().join("report.json")),
        ..Default::default()
    };
    let outcome = prep(&args).unwrap();
    assert_eq!(outcome.exit_code(), 2);
    let text = outcome.to_string();
    for needle in [
        "bomb.png",
        "max_image_pixels",
        "shared.toml",
        "output_name",
        "tiny.safetensors",
        key,
        "NaN",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // The good images are still read and counted: 4 listed, 3 usable.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("report.json")).unwrap())
            .unwrap();
    let quality = &json["quality"];
    assert_eq!(
        (
            quality["images_listed"].as_u64(),
            quality["images_usable"].as_u64()
        ),
        (Some(4), Some(3)),
        "{json}"
    );
    assert!(!tmp
        .path()
        .parent()
        .unwrap()
        .join("escape.safetensors")
        .exists());
}

#[test]
fn sample_names_a_poisoned_lora_before_drawing() {
    use clap::Parser;
    use fluxlora::io::{write_safetensors, HostTensor, TensorRef};
    let tmp = tempfile::tempdir().unwrap();
    let lora = tmp.path().join("poisoned.safetensors");
    let down = HostTensor::new(vec![2, 4], vec![0.1; 8]).unwrap();
    let up = HostTensor::new(
        vec![4, 2],
        vec![0.1, 0.1, f32::INFINITY, 0.1, 0.1, 0.1, 0.1, 0.1],
    )
    .unwrap();
    let key = "lora_unet_final_layer_linear";
    let (dk, uk) = (
        format!("{key}.lora_down.weight"),
        format!("{key}.lora_up.weight"),
    );
    let tensors = [
        (dk.as_str(), TensorRef::f32(&down)),
        (uk.as_str(), TensorRef::f32(&up)),
    ];
    write_safetensors(&lora, &tensors, &Default::default()).unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-world/base");
    let out = tmp.path().join("out");
    let args = fluxlora::jobs::SampleArgs::try_parse_from([
        "sample".as_ref(),
        "--model".as_ref(),
        base.as_os_str(),
        "--lora".as_ref(),
        lora.as_os_str(),
        "--prompt".as_ref(),
        "a disc".as_ref(),
        "--backend".as_ref(),
        "ndarray".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ] as [&std::ffi::OsStr; 11])
    .unwrap();
    let err = fluxlora::jobs::sample(&args, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("poisoned.safetensors") && err.contains(&uk) && err.contains("inf"),
        "{err}"
    );
    assert!(!out.exists(), "nothing was drawn");
}
