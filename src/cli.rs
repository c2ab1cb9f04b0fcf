//! Command-line pieces shared by the jobs' argument structs: every [`TrainConfig`] key as a
//! `--key VALUE` flag ([`ConfigFlags`]) and the `FILE:WEIGHT` LoRA syntax ([`parse_weighted`]).

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use fluxlora_train::TrainConfig;

/// Every training-config key as a flag: `--key VALUE`, `--key=VALUE`, a bare `--key` for
/// `true`, hyphens or underscores alike, and `--set key=value`. The values stay text; they are
/// parsed as TOML (numbers, booleans, `"strings"`, arrays, else bare words) by
/// [`TrainConfig::load`], which also checks every key again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFlags {
    /// The flags as [`TrainConfig::load`] takes them, in key order.
    pub overrides: Vec<String>,
}

const HEADING: &str = "Config keys (kohya names; see TrainConfig)";

impl Args for ConfigFlags {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("set")
                .long("set")
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .help("A config key as KEY=VALUE (repeatable)")
                .help_heading(HEADING),
        );
        TrainConfig::keys().into_iter().fold(cmd, |cmd, key| {
            let dashed = key.replace('_', "-");
            let mut arg = Arg::new(key.clone())
                .long(key)
                .value_name("VALUE")
                .num_args(0..=1)
                .default_missing_value("true")
                .allow_negative_numbers(true)
                .hide(true)
                .help_heading(HEADING);
            if dashed != arg.get_id().as_str() {
                arg = arg.alias(dashed);
            }
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut overrides = Vec::new();
        for key in TrainConfig::keys() {
            if let Some(v) = m.get_one::<String>(&key) {
                overrides.extend([format!("--{key}"), v.clone()]);
            }
        }
        for kv in m.get_many::<String>("set").into_iter().flatten() {
            overrides.extend(["--set".to_string(), kv.clone()]);
        }
        Ok(Self { overrides })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// Parses `FILE` (weight 1) or `FILE:WEIGHT` (a finite number), as `--lora` takes it.
pub fn parse_weighted(s: &str) -> Result<(PathBuf, f32), String> {
    match s.rsplit_once(':') {
        Some((file, w)) if !file.is_empty() => match w.parse::<f32>() {
            Ok(w) if w.is_finite() => Ok((file.into(), w)),
            _ => Err(format!(
                "`{w}` in `{s}` is not a finite weight; write FILE:WEIGHT, e.g. \
                 lora.safetensors:0.8"
            )),
        },
        _ => Ok((s.into(), 1.0)),
    }
}
