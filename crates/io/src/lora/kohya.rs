//! kohya sd-scripts names: `lora_unet_<bfl path with _>` for the transformer, `lora_te1_<CLIP
//! path with _>` and `lora_te3_<T5 path with _>` for the text encoders (`lora_te_` and
//! `lora_te2_` are read as CLIP and T5 too — the latter is OneTrainer's T5 prefix). Roles
//! `.lora_down.weight`, `.lora_up.weight`, `.alpha` (scalar, scale = alpha/rank), `.diff_b`.
//! Fused modules stay fused (kohya's `split_qkv` also saves fused, block-diagonal). LyCORIS
//! modules and DoRA magnitudes use the same stems (see [`super::lycoris`]).

use super::keys_flux::{bfl_from_underscored, is_bfl_module, Target};
use super::keys_te::{
    clip_from_underscored, is_clip_module, is_t5_module, split_component, t5_from_underscored,
    Component, TE_CLIP, TE_T5,
};
use super::lycoris;
use super::out_tensor::{module_tensors, OutTensor, Roles};
use super::{LoraFormat, LoraWeights};
use crate::error::IoError;

/// Maps a kohya module stem to its canonical target.
pub(crate) fn parse_stem(stem: &str) -> Option<Target> {
    if let Some(s) = stem.strip_prefix("lora_unet_") {
        return bfl_from_underscored(s).map(Target::whole);
    }
    te_from_kohya(stem)
}

/// `lora_te1_…` / `lora_te_…` (CLIP-L) and `lora_te3_…` / `lora_te2_…` (T5).
pub(crate) fn te_from_kohya(stem: &str) -> Option<Target> {
    if let Some(s) = stem
        .strip_prefix("lora_te1_")
        .or_else(|| stem.strip_prefix("lora_te_"))
    {
        return clip_from_underscored(s).map(|p| Target::whole(format!("{TE_CLIP}{p}")));
    }
    if let Some(s) = stem
        .strip_prefix("lora_te3_")
        .or_else(|| stem.strip_prefix("lora_te2_"))
    {
        return t5_from_underscored(s).map(|p| Target::whole(format!("{TE_T5}{p}")));
    }
    None
}

/// The kohya stem of canonical `key`, or [`IoError::LoraUnnamed`] when it has none.
pub(crate) fn stem_for(key: &str) -> Result<String, IoError> {
    let (component, path) = split_component(key);
    let ok = match component {
        Component::Transformer => is_bfl_module(path),
        Component::ClipL => is_clip_module(path),
        Component::T5 => is_t5_module(path),
    };
    if !ok {
        return Err(IoError::LoraUnnamed {
            format: LoraFormat::Kohya.name(),
        });
    }
    let prefix = match component {
        Component::Transformer => "lora_unet_",
        Component::ClipL => "lora_te1_",
        Component::T5 => "lora_te3_",
    };
    Ok(format!("{prefix}{}", path.replace('.', "_")))
}

/// Every tensor of a kohya file.
pub(crate) fn tensors(lora: &LoraWeights) -> Result<Vec<OutTensor>, (String, IoError)> {
    let roles = Roles {
        down: ".lora_down.weight",
        up: ".lora_up.weight",
        alpha: Some(".alpha"),
        bias: ".diff_b",
    };
    let mut out = Vec::new();
    for (key, m) in &lora.modules {
        let stem = stem_for(key).map_err(|e| (key.clone(), e))?;
        out.extend(module_tensors(&stem, m, &roles));
        if let Some(d) = lora.dora.get(key) {
            out.push(lycoris::dora_tensor(&stem, d, false));
        }
    }
    for (key, m) in &lora.lycoris {
        let stem = stem_for(key).map_err(|e| (key.clone(), e))?;
        out.extend(m.tensors(&stem));
    }
    Ok(out)
}
