//! ComfyUI names: `diffusion_model.<bfl path>` for the transformer,
//! `text_encoders.clip_l.transformer.<CLIP path>` and `text_encoders.t5xxl.transformer.<T5 path>`
//! for the text encoders. Written with `.lora_A.weight`, `.lora_B.weight`, `.alpha` (scale =
//! alpha/rank, as ComfyUI applies it) and `.diff_b` (output-bias delta, applied as is); LyCORIS
//! modules with `.lokr_*` / `.hada_*` / `.alpha` and DoRA's `.dora_scale` (see [`super::lycoris`]).

use super::keys_flux::{is_bfl_module, Target};
use super::keys_te::{split_component, Component, TE_CLIP, TE_T5};
use super::lycoris;
use super::out_tensor::{module_tensors, OutTensor, Roles};
use super::{LoraFormat, LoraWeights};
use crate::error::IoError;

const CLIP: &str = "text_encoders.clip_l.transformer.";
const T5: &str = "text_encoders.t5xxl.transformer.";

/// Maps a ComfyUI module stem to its canonical target.
pub(crate) fn parse_stem(stem: &str) -> Option<Target> {
    if let Some(p) = stem.strip_prefix("diffusion_model.") {
        return is_bfl_module(p).then(|| Target::whole(p));
    }
    if let Some(p) = stem.strip_prefix(CLIP) {
        return Some(Target::whole(format!("{TE_CLIP}{p}")));
    }
    stem.strip_prefix(T5)
        .map(|p| Target::whole(format!("{TE_T5}{p}")))
}

/// Every tensor of a ComfyUI file.
pub(crate) fn tensors(lora: &LoraWeights) -> Result<Vec<OutTensor>, (String, IoError)> {
    let roles = Roles {
        down: ".lora_A.weight",
        up: ".lora_B.weight",
        alpha: Some(".alpha"),
        bias: ".diff_b",
    };
    let mut out = Vec::new();
    for (key, m) in &lora.modules {
        let stem = stem_for(key)?;
        out.extend(module_tensors(&stem, m, &roles));
        if let Some(d) = lora.dora.get(key) {
            out.push(lycoris::dora_tensor(&stem, d, false));
        }
    }
    for (key, m) in &lora.lycoris {
        out.extend(m.tensors(&stem_for(key)?));
    }
    Ok(out)
}

/// The ComfyUI stem of canonical `key`.
fn stem_for(key: &str) -> Result<String, (String, IoError)> {
    Ok(match split_component(key) {
        (Component::Transformer, p) if is_bfl_module(p) => format!("diffusion_model.{p}"),
        (Component::Transformer, _) => {
            let format = LoraFormat::ComfyUi.name();
            return Err((key.to_string(), IoError::LoraUnnamed { format }));
        }
        (Component::ClipL, p) => format!("{CLIP}{p}"),
        (Component::T5, p) => format!("{T5}{p}"),
    })
}
