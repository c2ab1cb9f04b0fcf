//! PEFT / diffusers names: `transformer.<diffusers name>` (split q/k/v/mlp, `norm_out.linear`
//! with swapped halves), `text_encoder.<CLIP path>`, `text_encoder_2.<T5 path>`; roles
//! `.lora_A.weight`, `.lora_B.weight`, `.lora_B.bias`. PEFT-wrapped names
//! (`transformer.base_model.model.…`) and bare diffusers names (no component prefix) are read
//! as transformer modules.
//!
//! Alpha on read: `.alpha` tensors if present; else the diffusers header
//! `lora_adapter_metadata` (JSON with `transformer.lora_alpha`, `transformer.alpha_pattern`,
//! `transformer.use_rslora`, … per component; a `<component>_lora_adapter_metadata` JSON of
//! the bare `LoraConfig` is accepted too); else alpha = rank. `alpha_pattern` keys match a
//! module the way PEFT does: the regex `(.*\.)?(KEY)$` over the whole module name.
//!
//! On write the scale is folded into the weights (see [`super`]); no alpha is written. DoRA
//! magnitudes are `.lora_magnitude_vector [out]` (PEFT's own key, split with the rows of
//! fused modules: the norm is per output channel, so the split is exact); LoKr/LoHa have no
//! PEFT layout and are refused.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde_json::Value;

use super::fuse::{split_rows, swap_halves};
use super::keys_flux::{bfl_from_diffusers, diffusers_names, fused_segments, Target};
use super::keys_te::{split_component, Component, TE_CLIP, TE_T5};
use super::lycoris::{dora_tensor, DoraAxis, DoraScale};
use super::out_tensor::OutTensor;
use super::{LoraFormat, LoraModule, LoraWeights};
use crate::error::IoError;
use crate::tensor::HostTensor;

/// Header key diffusers stores the adapter configs under.
pub const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// `(component prefix in keys, component name in adapter metadata)`.
fn component_of(stem: &str) -> (Component, &'static str, &str) {
    let (c, name, rest) = if let Some(r) = stem.strip_prefix("transformer.") {
        (Component::Transformer, "transformer", r)
    } else if let Some(r) = stem.strip_prefix("text_encoder_2.") {
        (Component::T5, "text_encoder_2", r)
    } else if let Some(r) = stem.strip_prefix("text_encoder.") {
        (Component::ClipL, "text_encoder", r)
    } else {
        (Component::Transformer, "transformer", stem)
    };
    (
        c,
        name,
        rest.strip_prefix("base_model.model.").unwrap_or(rest),
    )
}

/// Maps a PEFT module stem to its canonical target.
pub(crate) fn parse_stem(stem: &str) -> Option<Target> {
    match component_of(stem) {
        (Component::Transformer, _, rest) => bfl_from_diffusers(rest),
        (Component::ClipL, _, rest) => Some(Target::whole(format!("{TE_CLIP}{rest}"))),
        (Component::T5, _, rest) => Some(Target::whole(format!("{TE_T5}{rest}"))),
    }
}

#[derive(Default, Debug)]
struct ComponentAlpha {
    lora_alpha: Option<f32>,
    alpha_pattern: Vec<(Regex, f32)>,
    use_rslora: bool,
}

/// The alpha settings found in a PEFT file's header.
#[derive(Default, Debug)]
pub(crate) struct AlphaConfig {
    components: BTreeMap<String, ComponentAlpha>,
}

impl AlphaConfig {
    /// Parses `lora_adapter_metadata` (and `<component>_lora_adapter_metadata`) if present;
    /// `path` names the file in errors.
    pub fn from_metadata(path: &Path, meta: &BTreeMap<String, String>) -> Result<Self, IoError> {
        let mut cfg = AlphaConfig::default();
        let parse = |k: &str, v: &str| -> Result<serde_json::Map<String, Value>, IoError> {
            match serde_json::from_str::<Value>(v) {
                Ok(Value::Object(o)) => Ok(o),
                _ => Err(IoError::AdapterMetadataJson {
                    path: path.into(),
                    key: k.to_string(),
                }),
            }
        };
        if let Some(v) = meta.get(ADAPTER_METADATA_KEY) {
            for (k, val) in parse(ADAPTER_METADATA_KEY, v)? {
                if let Some((component, field)) = k.split_once('.') {
                    cfg.set(path, ADAPTER_METADATA_KEY, component, field, &val)?;
                }
            }
        }
        for (k, v) in meta {
            if let Some(component) = k.strip_suffix("_lora_adapter_metadata") {
                for (field, val) in parse(k, v)? {
                    cfg.set(path, k, component, &field, &val)?;
                }
            }
        }
        Ok(cfg)
    }

    /// Applies `field` = `v` of `component`, read from metadata entry `key` of file `path`.
    fn set(
        &mut self,
        path: &Path,
        key: &str,
        component: &str,
        field: &str,
        v: &Value,
    ) -> Result<(), IoError> {
        let c = self.components.entry(component.to_string()).or_default();
        let num = |v: &Value| v.as_f64().map(|x| x as f32);
        let not_a_number = |field: String| IoError::AdapterAlpha {
            path: path.into(),
            key: key.to_string(),
            component: component.to_string(),
            field,
        };
        match field {
            "lora_alpha" => {
                c.lora_alpha = Some(num(v).ok_or_else(|| not_a_number(field.to_string()))?)
            }
            "use_rslora" => c.use_rslora = v.as_bool().unwrap_or(false),
            "alpha_pattern" => {
                let Some(obj) = v.as_object() else {
                    return Ok(());
                };
                for (pat, a) in obj {
                    let a = num(a).ok_or_else(|| not_a_number(format!("alpha_pattern[{pat}]")))?;
                    let re = Regex::new(&format!(r"^(.*\.)?({pat})$"))
                        .or_else(|_| Regex::new(&format!(r"^(.*\.)?({})$", regex::escape(pat))))
                        .map_err(|source| IoError::AdapterAlphaPattern {
                            path: path.into(),
                            key: key.to_string(),
                            pattern: pat.clone(),
                            source,
                        })?;
                    c.alpha_pattern.push((re, a));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Alpha of the module with PEFT stem `stem` and rank `rank` (canonical semantics: the
    /// returned alpha divided by `rank` is PEFT's scaling).
    pub fn alpha_for(&self, stem: &str, rank: usize) -> f32 {
        let (_, component, name) = component_of(stem);
        let Some(c) = self.components.get(component) else {
            return rank as f32;
        };
        let alpha = c
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(name))
            .map(|(_, a)| *a)
            .or(c.lora_alpha)
            .unwrap_or(rank as f32);
        if c.use_rslora {
            alpha * (rank as f32).sqrt()
        } else {
            alpha
        }
    }
}

/// `(down factor, up factor)` with product `scale`: the up factor is the power of two nearest
/// √scale, so both factors are exact powers of two whenever `scale` is.
pub fn fold_factors(scale: f32) -> (f32, f32) {
    if scale == 0.0 || !scale.is_finite() {
        return (scale, 1.0);
    }
    let k = (scale.abs().log2() / 2.0).round() as i32;
    let up = 2f32.powi(k);
    (scale / up, up)
}

fn folded(stem: &str, m: &LoraModule, out: &mut Vec<OutTensor>) {
    let s = m.scale();
    let (fd, fu) = fold_factors(s);
    out.push(OutTensor::weight(
        format!("{stem}.lora_A.weight"),
        m.down.scaled(fd),
    ));
    out.push(OutTensor::weight(
        format!("{stem}.lora_B.weight"),
        m.up.scaled(fu),
    ));
    if let Some(b) = &m.up_bias {
        out.push(OutTensor::weight(
            format!("{stem}.lora_B.bias"),
            b.scaled(s),
        ));
    }
}

/// Every tensor of a PEFT file.
pub(crate) fn tensors(lora: &LoraWeights) -> Result<Vec<OutTensor>, (String, IoError)> {
    if let Some(key) = lora.lycoris.keys().next() {
        let problem = "LoKr/LoHa have no PEFT/diffusers layout; write kohya or ComfyUI".into();
        return Err((key.clone(), IoError::LycorisShape { problem }));
    }
    let mut out = Vec::new();
    for (key, m) in &lora.modules {
        let err = |e: IoError| (key.clone(), e);
        let dora = match lora.dora.get(key) {
            Some(d) if d.axis == DoraAxis::Input => {
                let problem = "a per-input DoRA magnitude (LyCORIS wd_on_out=False) has no PEFT \
                               layout; write kohya or ComfyUI"
                    .into();
                return Err(err(IoError::LycorisShape { problem }));
            }
            other => other,
        };
        let mag = |stem: &str, values: &[f32], out: &mut Vec<OutTensor>| {
            let values = HostTensor {
                shape: vec![values.len()],
                data: values.to_vec(),
            };
            let d = DoraScale {
                values,
                axis: DoraAxis::Output,
            };
            out.push(dora_tensor(stem, &d, true));
        };
        match split_component(key) {
            (Component::ClipL, p) => {
                let stem = format!("text_encoder.{p}");
                folded(&stem, m, &mut out);
                if let Some(d) = dora {
                    mag(&stem, &d.values.data, &mut out);
                }
            }
            (Component::T5, p) => {
                let stem = format!("text_encoder_2.{p}");
                folded(&stem, m, &mut out);
                if let Some(d) = dora {
                    mag(&stem, &d.values.data, &mut out);
                }
            }
            (Component::Transformer, p) => {
                let (names, swapped) = diffusers_names(p).ok_or_else(|| {
                    err(IoError::LoraUnnamed {
                        format: LoraFormat::Peft.name(),
                    })
                })?;
                let m = if swapped {
                    swap_halves(m).map_err(err)?
                } else {
                    m.clone()
                };
                let parts = if names.len() > 1 {
                    let dims =
                        fused_segments(p, m.in_features(), m.out_features()).ok_or_else(|| {
                            err(IoError::LoraUnsplittable {
                                shape: [m.out_features(), m.in_features()],
                            })
                        })?;
                    split_rows(&m, &dims).map_err(err)?
                } else {
                    vec![m]
                };
                let mut values = dora.map(|d| d.values.data.clone());
                if let (Some(v), true) = (values.as_mut(), swapped) {
                    let h = v.len() / 2;
                    v.rotate_left(h);
                }
                let mut row = 0;
                for (name, part) in names.iter().zip(&parts) {
                    let stem = format!("transformer.{name}");
                    folded(&stem, part, &mut out);
                    let rows = part.out_features();
                    if let Some(v) = &values {
                        mag(&stem, &v[row..row + rows], &mut out);
                    }
                    row += rows;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_factors_multiply_to_scale() {
        for s in [1.0 / 16.0, 0.3, 1.0, 2.0, 7.5, 1e-4] {
            let (d, u) = fold_factors(s);
            assert!((d * u - s).abs() <= 1e-7 * s, "{s}");
            assert_eq!(u.log2().fract(), 0.0);
        }
        assert_eq!(fold_factors(1.0 / 16.0), (0.25, 0.25));
    }

    #[test]
    fn alpha_from_adapter_metadata() {
        let mut meta = BTreeMap::new();
        meta.insert(
            ADAPTER_METADATA_KEY.to_string(),
            concat!(
                r#"{"transformer.r": 4, "transformer.lora_alpha": 8, "#,
                r#""transformer.alpha_pattern": {"single_transformer_blocks.0.attn.to_q": 2}}"#
            )
            .into(),
        );
        let cfg = AlphaConfig::from_metadata(Path::new("t.safetensors"), &meta).unwrap();
        assert_eq!(
            cfg.alpha_for("transformer.transformer_blocks.0.attn.to_q", 4),
            8.0
        );
        assert_eq!(
            cfg.alpha_for("transformer.single_transformer_blocks.0.attn.to_q", 4),
            2.0
        );
        assert_eq!(
            cfg.alpha_for("transformer.single_transformer_blocks.10.attn.to_q", 4),
            8.0
        );
        assert_eq!(
            cfg.alpha_for(
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                4
            ),
            4.0
        );
    }
}
