//! The jobs' shared command-line pieces: every config key as a flag, and `FILE:WEIGHT`.

use std::path::PathBuf;

use clap::Parser;
use fluxlora::cli::parse_weighted;
use fluxlora::jobs::TrainArgs;
use fluxlora::train::TrainConfig;

fn parse(args: &[&str]) -> TrainArgs {
    TrainArgs::try_parse_from(std::iter::once("train").chain(args.iter().copied())).unwrap()
}

#[test]
fn every_flag_form_reaches_the_config() {
    let args = parse(&[
        "run.toml",
        "--learning_rate",
        "1e-4",
        "--max-train-steps=7",
        "--gradient_checkpointing",
        "--logit_mean",
        "-0.5",
        "--set",
        "seed=3",
        "--resume",
        "ckpt",
        "--no-progress",
    ]);
    assert_eq!(args.config, Some(PathBuf::from("run.toml")));
    assert_eq!(args.resume, Some(PathBuf::from("ckpt")));
    assert!(args.no_progress && !args.concept_score);
    let c = TrainConfig::load(None, &args.keys.overrides).unwrap();
    assert_eq!(c.learning_rate, 1e-4);
    assert_eq!(c.max_train_steps, Some(7));
    assert!(c.gradient_checkpointing);
    assert_eq!(c.logit_mean, -0.5);
    assert_eq!(c.seed, 3);
}

#[test]
fn no_flags_means_no_overrides() {
    let args = parse(&[]);
    assert_eq!(args.config, None);
    assert!(args.keys.overrides.is_empty());
}

#[test]
fn an_unknown_key_is_refused_with_a_suggestion() {
    let err = TrainArgs::try_parse_from(["train", "--learning_rat", "1e-4"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--learning_rat"), "{err}");
    assert!(err.contains("--learning_rate"), "no suggestion in: {err}");
}

#[test]
fn weighted_lora_paths() {
    assert_eq!(
        parse_weighted("a.safetensors:0.8").unwrap(),
        (PathBuf::from("a.safetensors"), 0.8)
    );
    assert_eq!(
        parse_weighted("dir/a.safetensors").unwrap(),
        (PathBuf::from("dir/a.safetensors"), 1.0)
    );
    let err = parse_weighted("a.safetensors:inf").unwrap_err();
    assert!(err.contains("FILE:WEIGHT"), "{err}");
    assert!(parse_weighted("a.safetensors:x").is_err());
}
