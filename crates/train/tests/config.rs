//! Config layering, overrides, unknown keys and validation.

use std::io::Write;

use fluxlora_train::{OptimizerType, TimestepSampling, TrainConfig, TrainError, TrainingPreset};

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_are_the_safe_flux_defaults() {
    let c = TrainConfig::load(None, &[]).unwrap();
    assert_eq!(
        (c.network_dim, c.network_alpha, c.learning_rate),
        (16, 16.0, 1e-4)
    );
    assert_eq!(c.optimizer_type, OptimizerType::AdamW8bit);
    assert_eq!(c.guidance_scale, 1.0);
    assert_eq!(c.timestep_sampling, TimestepSampling::Shift);
    assert!(!c.apply_t5_attn_mask);
    assert_eq!(c.t5_tokens(true), 512);
    assert_eq!(c.t5_tokens(false), 256);
}

#[test]
fn file_then_command_line_override_in_that_order() {
    let f = file("network_dim = 8\nlearning_rate = 2e-4\noptimizer_type = \"Prodigy\"\n");
    let c = TrainConfig::load(
        Some(f.path()),
        &args("--network-dim 32 --learning_rate=1.0 --gradient_checkpointing"),
    )
    .unwrap();
    assert_eq!(c.network_dim, 32);
    assert_eq!(c.learning_rate, 1.0);
    assert_eq!(c.optimizer_type, OptimizerType::Prodigy);
    assert!(c.gradient_checkpointing);
    let c = TrainConfig::load(
        None,
        &args("--set output_name=my_lora --set optimizer_args=[\"weight_decay=0.01\"]"),
    )
    .unwrap();
    assert_eq!(c.output_name, "my_lora");
    assert_eq!(
        c.optimizer_arg_map().unwrap()["weight_decay"].as_float(),
        Some(0.01)
    );
}

#[test]
fn preset_values_sit_under_file_and_flags() {
    let c = TrainConfig::load(None, &args("--preset style")).unwrap();
    assert_eq!((c.network_dim, c.network_alpha), (32, 32.0));
    assert_eq!(c.preset, Some(TrainingPreset::Style));
    let f = file("preset = \"style\"\nnetwork_dim = 8\n");
    let c = TrainConfig::load(Some(f.path()), &[]).unwrap();
    assert_eq!(c.network_dim, 8);
    assert_eq!(TrainingPreset::Character.steps_for(20), 2000);
    assert_eq!(TrainingPreset::Character.steps_for(5), 1000);
    assert_eq!(TrainingPreset::Style.steps_for(500), 5000);
    assert!(TrainingPreset::Character
        .dataset_advice(20, 1024)
        .is_empty());
    let advice = TrainingPreset::Style.dataset_advice(12, 512);
    assert_eq!(advice.len(), 2);
    assert!(advice[0].contains("add 38 more"));
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    let f = file("netwrk_dim = 8\n");
    let err = TrainConfig::load(Some(f.path()), &[]).unwrap_err();
    assert!(
        matches!(&err, TrainError::UnknownKey { suggestion: Some(s), .. } if s == "network_dim"),
        "{err}"
    );
    assert!(err.to_string().contains(&f.path().display().to_string()));
    let err = TrainConfig::load(None, &args("--learnig-rate 1e-3"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("learning_rate"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_the_key_named() {
    for (flags, key) in [
        ("--network_dim 0", "network_dim"),
        ("--learning_rate -1", "learning_rate"),
        ("--resolution 1000", "resolution"),
        (
            "--optimizer_type Prodigy --learning_rate 1e-4",
            "learning_rate",
        ),
        ("--ema_decay 1.5", "ema_decay"),
        ("--network_dropout 1.0", "network_dropout"),
    ] {
        let err = TrainConfig::load(None, &args(flags)).unwrap_err();
        assert!(
            matches!(&err, TrainError::Invalid { key: k, .. } if k == key),
            "{flags}: {err}"
        );
    }
    let err = TrainConfig::load(None, &args("--optimizer_type SGD"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("AdamW8bit"), "{err}");
    assert!(TrainConfig::load(None, &args("stray")).is_err());
}

#[test]
fn an_output_name_that_would_leave_output_dir_is_refused() {
    for name in [
        "../../escape",
        "sub/dir",
        "a\\b",
        "/etc/passwd",
        "..",
        "  ",
        "",
        "C:evil",
        " pad",
    ] {
        let f = file(&format!("output_name = {name:?}\n"));
        let err = TrainConfig::load(Some(f.path()), &[]).unwrap_err();
        assert!(
            matches!(&err, TrainError::Invalid { key, .. } if key == "output_name"),
            "{name:?}: {err}"
        );
        assert!(err.to_string().contains("plain name"), "{err}");
    }
    for name in ["my_lora", "sks-v2.1", "ümlaut lora"] {
        let f = file(&format!("output_name = {name:?}\n"));
        assert_eq!(
            TrainConfig::load(Some(f.path()), &[]).unwrap().output_name,
            name
        );
    }
}

#[test]
fn effective_config_round_trips_through_toml() {
    let c = TrainConfig::load(
        None,
        &args("--network_dim 4 --trigger_word sks --discrete_flow_shift 3.1582"),
    )
    .unwrap();
    let f = file(&c.to_toml());
    assert_eq!(TrainConfig::load(Some(f.path()), &[]).unwrap(), c);
}

#[test]
fn a_preset_without_max_train_steps_takes_its_steps_from_the_dataset_size() {
    use fluxlora_train::{dataset_config, with_resolved_steps};

    let tmp = tempfile::tempdir().unwrap();
    // kohya's folder naming: `2_sks` repeats each of its 6 images twice, 12 per epoch.
    let dir = tmp.path().join("images").join("2_sks");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([
                ((x * 7 + i * 40) % 256) as u8,
                ((y * 3 + i * 11) % 256) as u8,
                90,
            ])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
        std::fs::write(dir.join(format!("img{i}.txt")), format!("sks number {i}")).unwrap();
    }
    let c = TrainConfig::load(None, &args("--preset character --resolution 64")).unwrap();
    let c = TrainConfig {
        train_data_dir: Some(tmp.path().join("images")),
        ..c
    };
    assert_eq!(c.max_train_steps, None);
    let dataset = std::sync::Arc::new(
        fluxlora_data::Dataset::open(&dataset_config(&c).unwrap(), &Default::default()).unwrap(),
    );
    // Character: 100 steps per image seen in an epoch, within 1000–3000.
    let advice = TrainingPreset::Character.advice();
    assert_eq!(
        (advice.steps_per_image, advice.min_steps, advice.max_steps),
        (100, 1000, 3000)
    );
    assert_eq!(
        with_resolved_steps(&c, &dataset).unwrap().max_train_steps,
        Some(1200)
    );
    // The config's own value wins; with neither, the error names the key and both fixes.
    let own = TrainConfig {
        max_train_steps: Some(7),
        ..c.clone()
    };
    assert_eq!(
        with_resolved_steps(&own, &dataset).unwrap().max_train_steps,
        Some(7)
    );
    // Epochs (kohya's max_train_epochs) win over the preset: 12 images per epoch in batches of 4
    // are 3 micro-batches, 2 optimizer steps with 2 accumulated per step; 3 epochs are 6 steps.
    let by_epochs = TrainConfig {
        max_train_epochs: Some(3),
        train_batch_size: 4,
        gradient_accumulation_steps: 2,
        ..c.clone()
    };
    let batched = std::sync::Arc::new(
        fluxlora_data::Dataset::open(&dataset_config(&by_epochs).unwrap(), &Default::default())
            .unwrap(),
    );
    assert_eq!(fluxlora_train::steps_per_epoch(&by_epochs, &batched), 2);
    assert_eq!(
        with_resolved_steps(&by_epochs, &batched)
            .unwrap()
            .max_train_steps,
        Some(6)
    );
    let single = TrainConfig {
        max_train_epochs: Some(3),
        ..c.clone()
    };
    assert_eq!(
        with_resolved_steps(&single, &dataset)
            .unwrap()
            .max_train_steps,
        Some(36)
    );
    match with_resolved_steps(&TrainConfig { preset: None, ..c }, &dataset) {
        Err(TrainError::Invalid { key, message }) => {
            assert_eq!(key, "max_train_steps");
            assert!(
                message.contains("--max_train_steps") && message.contains("--preset"),
                "{message}"
            );
        }
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn run_length_and_save_intervals_are_checked() {
    let err =
        TrainConfig::load(None, &args("--max_train_steps 100 --max_train_epochs 4")).unwrap_err();
    assert!(
        matches!(
            &err,
            TrainError::Invalid { key, message }
                if key == "max_train_epochs" && message.contains("keep one")
        ),
        "{err}"
    );
    for flags in [
        "--max_train_epochs 0",
        "--save_every_n_epochs 0",
        "--save_every_n_steps 0",
    ] {
        let err = TrainConfig::load(None, &args(flags)).unwrap_err();
        let key = flags
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("--");
        assert!(
            matches!(&err, TrainError::Invalid { key: k, .. } if k == key),
            "{flags}: {err}"
        );
    }
    let ok =
        TrainConfig::load(None, &args("--max_train_epochs 4 --save_every_n_epochs 2")).unwrap();
    assert_eq!(
        (ok.max_train_epochs, ok.save_every_n_epochs),
        (Some(4), Some(2))
    );
}

#[test]
fn image_limits_reach_a_plain_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    image::RgbImage::new(64, 64)
        .save(tmp.path().join("a.png"))
        .unwrap();
    let c = TrainConfig::load(None, &args("--max_image_pixels 4096 --max_image_side 80")).unwrap();
    let c = TrainConfig {
        train_data_dir: Some(tmp.path().to_path_buf()),
        ..c
    };
    let limits = fluxlora_train::dataset_config(&c).unwrap().image_limits;
    assert_eq!((limits.max_pixels, limits.max_side), (4096, 80));
    let defaults = fluxlora_train::dataset_config(&TrainConfig {
        max_image_pixels: None,
        max_image_side: None,
        ..c
    })
    .unwrap();
    assert_eq!(defaults.image_limits, fluxlora_data::ImageLimits::default());
}

#[test]
fn base_dtype_accepts_kohya_fp8_base_and_refuses_a_conflict() {
    use fluxlora_lora::BaseDtype;
    use fluxlora_train::memory::requested_base;
    let c = TrainConfig::load(None, &args("--fp8_base true")).unwrap();
    assert_eq!(requested_base(&c, false).unwrap(), BaseDtype::Fp8);
    let c = TrainConfig::load(None, &args("--base_dtype int8 --blocks_to_swap 4")).unwrap();
    assert_eq!(requested_base(&c, true).unwrap(), BaseDtype::Int8);
    assert_eq!(c.blocks_to_swap, 4);
    // Unset: bf16 where the backend computes in bf16, else f32 (`base_bf16`, on by default).
    let c = TrainConfig::load(None, &[]).unwrap();
    assert_eq!(requested_base(&c, true).unwrap(), BaseDtype::Bf16);
    assert_eq!(requested_base(&c, false).unwrap(), BaseDtype::F32);
    let c = TrainConfig::load(None, &args("--fp8_base true --base_dtype bf16")).unwrap();
    match requested_base(&c, true) {
        Err(TrainError::Invalid { key, message }) => {
            assert_eq!(key, "fp8_base");
            assert!(message.contains("base_dtype"), "{message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(TrainConfig::load(None, &args("--base_dtype fp4")).is_err());
}

#[test]
fn the_planner_counts_the_base_by_dtype_and_streaming() {
    use fluxlora_lora::BaseDtype;
    use fluxlora_train::memory::{estimate, gib, MemoryInputs};
    let m = |base, swap| MemoryInputs {
        flux: fluxlora_flux::FluxConfig::dev(),
        base,
        blocks_to_swap: swap,
        lora_params: 0,
        optimizer_bytes: 0.0,
        ema: false,
        batch: 1,
        image_tokens: 4096,
        text_tokens: 512,
        checkpointing: true,
        host_device: false,
    };
    let part = |e: &fluxlora_train::memory::MemoryEstimate| e.parts[0].1;
    let f32_base = part(&estimate(&m(BaseDtype::F32, 0)).unwrap());
    let fp8_base = part(&estimate(&m(BaseDtype::Fp8, 0)).unwrap());
    // Flux.1-dev's linears: 11.9 B weights (47.6 GB in f32, 11.9 GB in fp8, from the model card
    // sizes in shared/reference/scale-and-variants.md).
    assert!(
        (gib(f32_base) * 1.073741824 - 47.6).abs() < 0.6,
        "{}",
        gib(f32_base)
    );
    assert!(
        (gib(fp8_base) * 1.073741824 - 11.9).abs() < 0.3,
        "{}",
        gib(fp8_base)
    );
    let swapped = part(&estimate(&m(BaseDtype::Fp8, 20)).unwrap());
    assert!(
        swapped < fp8_base * 0.55,
        "{} vs {}",
        gib(swapped),
        gib(fp8_base)
    );
    assert!(estimate(&m(BaseDtype::Fp8, 40)).is_err());
}
