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
use super::role::split_role;
use super::{bfl, comfy, kohya, onetrainer, peft, xlabs, LoraFormat, LoraModule, LoraWeights};
use crate::error::{IoError, Result};
use crate::safetensors::SafeTensorsFile;

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
        let (stem, role) = split_role(key).ok_or_else(|| key_err(key, unsupported_hint(key)))?;
        let g = groups.entry(stem.to_string()).or_default();
        if let Some(prev) = g.keys.insert(role.name(), key.to_string()) {
            return Err(key_err(
                key,
                format!("gives the {} of the same module as `{prev}`", role.name()),
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
    for (stem, g) in &groups {
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
        asm.add(target, module, stem)
            .map_err(|(module, e)| module_err(&module, e))?;
    }
    let modules = asm.finish().map_err(|(module, e)| module_err(&module, e))?;
    Ok(LoraWeights {
        modules,
        metadata: file.metadata().clone(),
    })
}

fn unsupported_hint(key: &str) -> String {
    if key.ends_with("dora_scale") || key.contains("lora_magnitude_vector") {
        "DoRA magnitude vectors are not supported; export the LoRA without DoRA".into()
    } else if key.contains("lora_mid") || key.contains("lokr_") || key.contains("hada_") {
        "LoCon/LoKr/LoHa tensors are not plain LoRA; convert the file to plain LoRA first".into()
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
