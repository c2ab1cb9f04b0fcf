//! Command-line overrides of a config (`--key value`, `--key=value`, `--set key=value`) and
//! the TOML parsing they share with config files.

use crate::error::TrainError;

pub(super) fn parse_table(text: &str, origin: &str) -> Result<toml::Table, TrainError> {
    text.parse::<toml::Table>().map_err(|e| TrainError::Config {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// A command-line value as TOML: numbers, booleans, arrays and quoted strings parse as such,
/// anything else is a bare string.
pub(super) fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

pub(super) fn cli_table(args: &[String]) -> Result<toml::Table, TrainError> {
    let mut table = toml::Table::new();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(TrainError::Config {
                origin: "command line".into(),
                message: format!("unexpected argument {arg:?}; options look like --network_dim 32"),
            });
        };
        let (key, value) = if flag == "set" {
            let kv = it.next().ok_or_else(|| cli_err("--set needs key=value"))?;
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| cli_err(&format!("--set {kv}: expected key=value")))?;
            (k.to_string(), v.to_string())
        } else if let Some((k, v)) = flag.split_once('=') {
            (k.to_string(), v.to_string())
        } else {
            match it.peek() {
                Some(next) if !next.starts_with("--") => {
                    (flag.to_string(), it.next().cloned().unwrap_or_default())
                }
                _ => (flag.to_string(), "true".to_string()), // a bare flag is a boolean switch
            }
        };
        table.insert(key.replace('-', "_"), parse_value(&value));
    }
    Ok(table)
}

fn cli_err(message: &str) -> TrainError {
    TrainError::Config {
        origin: "command line".into(),
        message: message.to_string(),
    }
}
