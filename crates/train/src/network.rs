//! Which adapter algorithm a config trains ([`Network`]): `network_type` with `lokr_factor` /
//! `lokr_full_rank`, or kohya's LyCORIS spelling, `network_module = "lycoris.kohya"` with
//! `network_args = ["algo=lokr", "factor=8", "full_matrix=true"]` (`algo=lora` +
//! `dora_wd=true` is DoRA, as in LyCORIS). Both spellings may be given when they agree; a
//! conflict is an error that names both keys.

use fluxlora_lora::Network;

use crate::config::{SaveFormat, TrainConfig};
use crate::error::TrainError;

/// The `network_args` keys understood here.
const KNOWN_ARGS: &str = "algo, factor, full_matrix, dora_wd";

fn invalid(key: &str, message: String) -> TrainError {
    TrainError::Invalid {
        key: key.into(),
        message,
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, TrainError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(
            "network_args",
            format!("{key}={v:?} is not a boolean; write {key}=true or {key}=false"),
        )),
    }
}

/// What `network_args` says, each value parsed.
#[derive(Debug, Default)]
struct NetworkArgs {
    algo: Option<Network>,
    factor: Option<i64>,
    full_matrix: Option<bool>,
    dora_wd: Option<bool>,
}

impl NetworkArgs {
    fn parse(args: &[String]) -> Result<Self, TrainError> {
        let mut out = NetworkArgs::default();
        for arg in args {
            let Some((k, v)) = arg.split_once('=') else {
                return Err(invalid(
                    "network_args",
                    format!("{arg:?} is not key=value; write e.g. \"algo=lokr\""),
                ));
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"'));
            match k.as_str() {
                "algo" => {
                    out.algo = Some(
                        Network::parse(v)
                            .map_err(|e| invalid("network_args", format!("algo: {e}")))?,
                    )
                }
                "factor" => {
                    out.factor = Some(v.parse().map_err(|_| {
                        invalid(
                            "network_args",
                            format!("factor={v:?} is not an integer; write e.g. factor=8"),
                        )
                    })?)
                }
                "full_matrix" => out.full_matrix = Some(parse_bool(&k, v)?),
                "dora_wd" => out.dora_wd = Some(parse_bool(&k, v)?),
                "preset" => {
                    return Err(invalid(
                        "network_args",
                        "LyCORIS's preset= is not read here; choose the modules with \
                         lora_targets and the block lists"
                            .into(),
                    ))
                }
                other => {
                    return Err(invalid(
                        "network_args",
                        format!("unknown argument {other:?}; known: {KNOWN_ARGS}"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// `cfg` or `arg`, the config key `name` and its `network_args` twin; both set differently is
/// an error.
fn pick<T: PartialEq + std::fmt::Debug>(
    name: &str,
    cfg: Option<T>,
    arg: Option<T>,
) -> Result<Option<T>, TrainError> {
    match (cfg, arg) {
        (Some(x), Some(y)) if x != y => Err(invalid(
            name,
            format!("{name} = {x:?} but network_args give {y:?}; keep one of them"),
        )),
        (x, y) => Ok(x.or(y)),
    }
}

/// The adapter algorithm `c` asks for, with LoKr's settings; every conflict or misplaced
/// setting is an error naming its key.
pub fn network(c: &TrainConfig) -> Result<Network, TrainError> {
    let args = NetworkArgs::parse(&c.network_args)?;
    match c.network_module.as_deref().map(str::trim) {
        None | Some("lycoris.kohya") => {}
        Some("networks.lora_flux" | "networks.lora") => {
            if args.algo.is_some() || args.dora_wd.is_some() {
                return Err(invalid(
                    "network_module",
                    "algo= and dora_wd= are LyCORIS arguments; set network_module = \
                     \"lycoris.kohya\" or drop them"
                        .into(),
                ));
            }
        }
        Some(other) => {
            return Err(invalid(
                "network_module",
                format!(
                    "{other:?} is not a network module trained here; use networks.lora_flux \
                     or lycoris.kohya (or network_type)"
                ),
            ))
        }
    }
    let mut from_args = args.algo;
    if args.dora_wd == Some(true) {
        from_args = match from_args {
            None | Some(Network::Lora) => Some(Network::Dora),
            Some(Network::Dora) => Some(Network::Dora),
            Some(other) => {
                return Err(invalid(
                    "network_args",
                    format!("dora_wd=true with algo={other}: DoRA is trained over plain LoRA only"),
                ))
            }
        };
    }
    let from_type = c
        .network_type
        .as_deref()
        .map(|t| Network::parse(t).map_err(|e| invalid("network_type", e.to_string())))
        .transpose()?;
    let mut net = match (from_type, from_args) {
        (Some(t), Some(a)) if t.name() != a.name() => {
            return Err(invalid(
                "network_type",
                format!(
                    "network_type = {t:?} but network_args say {a}; keep one of them",
                    t = t.name()
                ),
            ))
        }
        (Some(t), _) => t,
        (None, Some(a)) => a,
        (None, None) => Network::Lora,
    };
    let factor = pick("lokr_factor", c.lokr_factor, args.factor)?;
    let full = pick("lokr_full_rank", c.lokr_full_rank, args.full_matrix)?;
    if let Network::Lokr {
        factor: f,
        full_rank,
    } = &mut net
    {
        if let Some(v) = factor {
            if v == 0 || v < -1 {
                return Err(invalid(
                    "lokr_factor",
                    format!("{v} must be -1 (as balanced as possible) or at least 1 (e.g. 8)"),
                ));
            }
            *f = v;
        }
        *full_rank = full.unwrap_or(false);
    } else if factor.is_some() || full.is_some() {
        let key = if factor.is_some() {
            "lokr_factor"
        } else {
            "lokr_full_rank"
        };
        return Err(invalid(
            key,
            format!(
                "only LoKr has it, this run trains {}; set network_type = \"lokr\" or drop it",
                net.name()
            ),
        ));
    }
    if c.loraplus_lr_ratio.is_some() && matches!(net, Network::Lokr { .. } | Network::Loha) {
        return Err(invalid(
            "loraplus_lr_ratio",
            format!(
                "LoRA+ speeds up LoRA's B factors; {} has none. Drop it, or train lora / dora",
                net.name()
            ),
        ));
    }
    if c.save_format == SaveFormat::Peft && matches!(net, Network::Lokr { .. } | Network::Loha) {
        return Err(invalid(
            "save_format",
            format!(
                "PEFT / diffusers files have no {} layout that loaders read; save as kohya or \
                 comfyui (ComfyUI and Forge read those)",
                net.name()
            ),
        ));
    }
    Ok(net)
}

/// `ss_network_module` and the LyCORIS `ss_network_args` a save of `net` carries (kohya
/// writes `lycoris.kohya` with `algo`, `factor`, `full_matrix`, `dora_wd`).
pub fn network_metadata(net: Network) -> (&'static str, Vec<(String, String)>) {
    let kv = |k: &str, v: String| (k.to_string(), v);
    match net {
        Network::Lora => ("networks.lora_flux", Vec::new()),
        Network::Lokr { factor, full_rank } => (
            "lycoris.kohya",
            vec![
                kv("algo", "lokr".into()),
                kv("factor", factor.to_string()),
                kv(
                    "full_matrix",
                    if full_rank { "True" } else { "False" }.into(),
                ),
            ],
        ),
        Network::Loha => ("lycoris.kohya", vec![kv("algo", "loha".into())]),
        Network::Dora => (
            "lycoris.kohya",
            vec![kv("algo", "lora".into()), kv("dora_wd", "True".into())],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut TrainConfig)) -> TrainConfig {
        let mut c = TrainConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn both_spellings_select_the_same_network() {
        let lokr8 = Network::Lokr {
            factor: 8,
            full_rank: true,
        };
        let by_type = cfg(|c| {
            c.network_type = Some("lokr".into());
            c.lokr_factor = Some(8);
            c.lokr_full_rank = Some(true);
        });
        assert_eq!(network(&by_type).unwrap(), lokr8);
        let by_args = cfg(|c| {
            c.network_module = Some("lycoris.kohya".into());
            c.network_args = vec![
                "algo=lokr".into(),
                "factor=8".into(),
                "full_matrix=True".into(),
            ];
        });
        assert_eq!(network(&by_args).unwrap(), lokr8);
        let dora = cfg(|c| c.network_args = vec!["algo=lora".into(), "dora_wd=true".into()]);
        assert_eq!(network(&dora).unwrap(), Network::Dora);
        assert_eq!(network(&TrainConfig::default()).unwrap(), Network::Lora);
        let lokr_default = cfg(|c| c.network_type = Some("lokr".into()));
        assert_eq!(
            network(&lokr_default).unwrap(),
            Network::Lokr {
                factor: -1,
                full_rank: false
            }
        );
    }

    #[test]
    fn conflicts_and_misplaced_settings_name_their_key() {
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                cfg(|c| {
                    c.network_type = Some("loha".into());
                    c.network_args = vec!["algo=lokr".into()];
                }),
                "network_type",
            ),
            (
                cfg(|c| {
                    c.network_type = Some("lokr".into());
                    c.lokr_factor = Some(4);
                    c.network_args = vec!["factor=8".into()];
                }),
                "lokr_factor",
            ),
            (cfg(|c| c.lokr_factor = Some(4)), "lokr_factor"),
            (
                cfg(|c| {
                    c.network_type = Some("lokr".into());
                    c.lokr_factor = Some(0);
                }),
                "lokr_factor",
            ),
            (
                cfg(|c| c.network_args = vec!["algo".into()]),
                "network_args",
            ),
            (
                cfg(|c| c.network_args = vec!["conv_dim=4".into()]),
                "network_args",
            ),
            (
                cfg(|c| c.network_args = vec!["algo=oft".into()]),
                "network_args",
            ),
            (
                cfg(|c| {
                    c.network_module = Some("networks.lora_flux".into());
                    c.network_args = vec!["algo=lokr".into()];
                }),
                "network_module",
            ),
            (
                cfg(|c| c.network_module = Some("lycoris.oft".into())),
                "network_module",
            ),
            (
                cfg(|c| {
                    c.network_type = Some("loha".into());
                    c.loraplus_lr_ratio = Some(16.0);
                }),
                "loraplus_lr_ratio",
            ),
            (
                cfg(|c| {
                    c.network_type = Some("lokr".into());
                    c.save_format = SaveFormat::Peft;
                }),
                "save_format",
            ),
        ];
        for (c, key) in cases {
            match network(&c) {
                Err(TrainError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{message}");
                    assert!(!message.is_empty());
                }
                other => panic!("{key}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn metadata_is_what_kohya_writes_for_lycoris() {
        let (module, args) = network_metadata(Network::Loha);
        assert_eq!(module, "lycoris.kohya");
        assert_eq!(args, vec![("algo".to_string(), "loha".to_string())]);
        assert_eq!(network_metadata(Network::Lora).0, "networks.lora_flux");
    }
}
