//! Reading any supported LoRA file into [`LoraWeights`].
//!
//! Keys are split into a module stem and a role (down / up / alpha / bias / diff_b), the stem is
//! mapped to its canonical target by the format's key map (falling back to the other maps, so
//! mixed files such as OneTrainer's `lora_transformer_*` + `lora_te1_*` load), alphas are
//! resolved per the format's semantics, and split pieces are fused ([`super::fuse`]).
//! Unknown keys are an error naming the key: a silently dropped key is a LoRA that "does
//! nothing".

use std::collections::BTreeMap;
use std::path::Path;

use super::detect::detect;
use super::fuse::Assembler;
use super::keys_flux::Target;
use super::lycoris::{self, DoraAxis, DoraScale};
use super::role::split_role;
use super::{bfl, comfy, kohya, onetrainer, peft, xlabs, LoraFormat, LoraModule, LoraWeights};
use crate::error::{IoError, Result};
use crate::safetensors::SafeTensorsFile;
use crate::tensor::HostTensor;

#[derive(Default)]
struct Group {
    keys: BTreeMap<&'static str, String>,
}

/// Opens `path`, detects its format and reads it.
pub fn read_lora(path: impl AsRef<Path>) -> Result<(LoraWeights, LoraFormat)> {
    let file = SafeTensorsFile::open(path)?;
    let format = detect(&file)?;
    Ok((read_lora_from(&file, format)?, format))
}

fn parse_stem(format: LoraFormat, stem: &str) -> Option<Target> {
    let parsers: [fn(&str) -> Option<Target>; 6] = [
        kohya::parse_stem,
        peft::parse_stem,
        comfy::parse_stem,
        bfl::parse_stem,
        xlabs::parse_stem,
        onetrainer::parse_stem,
    ];
    let own = match format {
        LoraFormat::Kohya => 0,
        LoraFormat::Peft => 1,
        LoraFormat::ComfyUi => 2,
        LoraFormat::Bfl => 3,
        LoraFormat::XLabs => 4,
        LoraFormat::OneTrainer => 5,
    };
    parsers[own](stem).or_else(|| {
        parsers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != own)
            .find_map(|(_, p)| p(stem))
    })
}

/// Reads an already opened file as `format`.
pub fn read_lora_from(file: &SafeTensorsFile, format: LoraFormat) -> Result<LoraWeights> {
    let path = file.path();
    let fmt = format.name();
    let key_err = |key: &str, problem: String| IoError::LoraKey {
        path: path.into(),
        key: key.into(),
        format: fmt,
        problem,
    };

    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for key in file.names() {
        let (stem, role) = match lycoris::split_role(key) {
            Some(found) => found,
            None => split_role(key)
                .map(|(s, r)| (s, r.name()))
                .ok_or_else(|| key_err(key, unsupported_hint(key)))?,
        };
        let g = groups.entry(stem.to_string()).or_default();
        if let Some(prev) = g.keys.insert(role, key.to_string()) {
            return Err(key_err(
                key,
                format!("gives the {role} of the same module as `{prev}`"),
            ));
        }
    }

    let module_err = |module: &str, source: IoError| IoError::LoraModule {
        path: path.into(),
        module: module.into(),
        format: fmt,
        source: Box::new(source),
    };

    let peft_alphas = peft::AlphaConfig::from_metadata(path, file.metadata())?;
    let mut asm = Assembler::default();
    let mut lyco = BTreeMap::new();
    let mut dora = DoraPieces::default();
    for (stem, g) in &groups {
        if g.keys.keys().any(|r| lycoris::is_kron_or_hada(r)) {
            let (key, module) = read_lycoris(file, format, stem, g).map_err(|e| match e {
                e @ IoError::LoraKey { .. } => e,
                e => module_err(stem, e),
            })?;
            if lyco.insert(key.clone(), module).is_some() {
                return Err(key_err(
                    stem,
                    format!("a second LyCORIS module for `{key}`"),
                ));
            }
            continue;
        }
        let (Some(down_k), Some(up_k)) = (g.keys.get("down"), g.keys.get("up")) else {
            let have = g.keys.values().next().cloned().unwrap_or_default();
            let missing = if g.keys.contains_key("down") {
                "up"
            } else {
                "down"
            };
            return Err(key_err(
                &have,
                format!("module `{stem}` has no {missing} weight"),
            ));
        };
        let target = parse_stem(format, stem).ok_or_else(|| {
            key_err(
                down_k,
                format!(
                    "module `{stem}` is not a Flux transformer, CLIP-L or T5 linear this crate \
                     knows"
                ),
            )
        })?;
        let down = file.read_f32(down_k)?;
        let up = file.read_f32(up_k)?;
        let rank = down.shape.first().copied().unwrap_or(0);
        let alpha = match g.keys.get("alpha") {
            Some(k) => file.read_scalar(k)?,
            None if format == LoraFormat::Peft => peft_alphas.alpha_for(stem, rank),
            None => rank as f32,
        };
        let mut module = LoraModule {
            down,
            up,
            alpha,
            up_bias: None,
        };
        module.check().map_err(|e| module_err(stem, e))?;
        match (g.keys.get("bias"), g.keys.get("diff_b")) {
            (Some(b), Some(d)) => {
                return Err(key_err(
                    d,
                    format!("module `{stem}` has both `{b}` and a diff_b"),
                ))
            }
            (Some(b), None) => module.up_bias = Some(file.read_f32(b)?),
            (None, Some(d)) => {
                let s = module.scale();
                if s == 0.0 {
                    return Err(key_err(
                        d,
                        "a bias delta on a module with alpha 0 cannot be represented".into(),
                    ));
                }
                module.up_bias = Some(file.read_f32(d)?.scaled(1.0 / s));
            }
            (None, None) => {}
        }
        module.check().map_err(|e| module_err(stem, e))?;
        let magnitude = g
            .keys
            .get("dora_scale")
            .or(g.keys.get("lora_magnitude_vector"));
        if let Some(k) = magnitude {
            let t = file.read_f32(k)?;
            let d = DoraScale::from_file(t, module.out_features(), module.in_features())
                .map_err(|e| module_err(stem, e))?;
            dora.add(&target, d).map_err(|e| module_err(stem, e))?;
        }
        asm.add(target, module, stem)
            .map_err(|(module, e)| module_err(&module, e))?;
    }
    let modules = asm.finish().map_err(|(module, e)| module_err(&module, e))?;
    if let Some(k) = lyco.keys().find(|k| modules.contains_key(*k)) {
        return Err(module_err(
            k,
            IoError::LycorisShape {
                problem: "has both a LoRA and a LoKr/LoHa module; keep one".into(),
            },
        ));
    }
    let dora = dora
        .finish(&modules)
        .map_err(|(module, e)| module_err(&module, e))?;
    Ok(LoraWeights {
        modules,
        lycoris: lyco,
        dora,
        metadata: file.metadata().clone(),
    })
}

/// A LoKr / LoHa module of group `g` (stem `stem`) and its canonical key.
fn read_lycoris(
    file: &SafeTensorsFile,
    format: LoraFormat,
    stem: &str,
    g: &Group,
) -> Result<(String, lycoris::LycorisModule)> {
    let key_err = |key: &str, problem: String| IoError::LoraKey {
        path: file.path().into(),
        key: key.into(),
        format: format.name(),
        problem,
    };
    let first = g.keys.values().next().cloned().unwrap_or_default();
    let target = parse_stem(format, stem).ok_or_else(|| {
        key_err(
            &first,
            format!(
                "module `{stem}` is not a Flux transformer, CLIP-L or T5 linear this crate knows"
            ),
        )
    })?;
    if target.segments.is_some() || target.swap_halves {
        return Err(key_err(
            &first,
            format!(
                "module `{stem}` is one piece of BFL's fused `{}`; a LoKr/LoHa change on a piece \
                 cannot be stored as the fused module — merge the file into a base checkpoint with \
                 the tool that wrote it, or train on BFL module names",
                target.key
            ),
        ));
    }
    if let Some(k) = ["down", "up", "bias", "diff_b"]
        .iter()
        .find_map(|r| g.keys.get(r))
    {
        return Err(key_err(
            k,
            format!("module `{stem}` mixes LoRA and LoKr/LoHa keys"),
        ));
    }
    let alpha = g
        .keys
        .get("alpha")
        .map(|k| file.read_scalar(k))
        .transpose()?;
    let has = |r: &str| g.keys.contains_key(r);
    let mut get = |r: &str| match g.keys.get(r) {
        Some(k) => file.read_f32(k),
        None => Err(key_err(&first, format!("module `{stem}` has no `{r}`"))),
    };
    let module = lycoris::from_roles(&has, &mut get, alpha)?;
    if let Some(d) = g.keys.get("dora_scale") {
        return Err(key_err(
            d,
            "DoRA on a LoKr/LoHa module is not supported; export it without weight_decompose"
                .into(),
        ));
    }
    Ok((target.key, module))
}

/// DoRA magnitudes as read: whole modules, and pieces of fused ones (PEFT's to_q / to_k / …).
#[derive(Default)]
struct DoraPieces {
    whole: BTreeMap<String, DoraScale>,
    pieces: BTreeMap<String, Vec<(usize, Vec<f32>)>>,
}

impl DoraPieces {
    fn add(&mut self, target: &Target, mut d: DoraScale) -> Result<()> {
        if target.swap_halves {
            let n = d.values.numel();
            if d.axis != DoraAxis::Output || !n.is_multiple_of(2) {
                return Err(IoError::LycorisShape {
                    problem: "a DoRA magnitude on norm_out.linear must be per output channel"
                        .into(),
                });
            }
            d.values.data.rotate_left(n / 2);
        }
        match &target.segments {
            None => {
                self.whole.insert(target.key.clone(), d);
            }
            Some(segs) => {
                if d.axis != DoraAxis::Output {
                    return Err(IoError::LycorisShape {
                        problem: "a per-input DoRA magnitude on a piece of a fused module cannot \
                                  be fused"
                            .into(),
                    });
                }
                self.pieces
                    .entry(target.key.clone())
                    .or_default()
                    .push((segs.start, d.values.data));
            }
        }
        Ok(())
    }

    /// Concatenates the pieces in row order; they must cover the fused module's rows.
    fn finish(
        self,
        modules: &BTreeMap<String, LoraModule>,
    ) -> std::result::Result<BTreeMap<String, DoraScale>, (String, IoError)> {
        let mut out = self.whole;
        for (key, mut pieces) in self.pieces {
            pieces.sort_by_key(|p| p.0);
            let values: Vec<f32> = pieces.into_iter().flat_map(|p| p.1).collect();
            let rows = modules.get(&key).map_or(0, LoraModule::out_features);
            if values.len() != rows {
                let problem = format!(
                    "DoRA magnitudes cover {} of the {rows} output rows; every piece of a fused \
                     module needs one",
                    values.len()
                );
                return Err((key, IoError::LycorisShape { problem }));
            }
            let n = values.len();
            let values = HostTensor::new(vec![n], values).map_err(|e| (key.clone(), e))?;
            out.insert(
                key,
                DoraScale {
                    values,
                    axis: DoraAxis::Output,
                },
            );
        }
        Ok(out)
    }
}

fn unsupported_hint(key: &str) -> String {
    if key.contains("lora_mid") {
        "LoCon mid weights (convolutions) have no place on a Flux linear".into()
    } else if key.contains("lokr_") || key.contains("hada_") || key.contains("dora_scale") {
        "unknown LyCORIS role; expected lokr_w1(_a/_b), lokr_w2(_a/_b), hada_w1_a/_b, \
         hada_w2_a/_b, dora_scale or lora_magnitude_vector"
            .into()
    } else if key.ends_with(".scale") || key.ends_with(".diff") || key.ends_with(".set_weight") {
        "full-weight replacements (e.g. BFL control LoRA norm scales) are not LoRA and cannot be \
         loaded as one"
            .into()
    } else {
        "unknown key suffix; expected .lora_down/.lora_up/.lora_A/.lora_B(.weight), .alpha, \
         .lora_B.bias or .diff_b"
            .into()
    }
}
