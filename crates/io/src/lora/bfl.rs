//! BFL reference names (`FluxLoraWrapper` / control LoRAs): bare BFL module paths with
//! `.lora_A.weight`, `.lora_B.weight` and optionally `.lora_B.bias`; no alpha (the wrapper's
//! scale is 1). fal's Kontext LoRAs use the same names under `base_model.model.`. Read only.

use super::keys_flux::{is_bfl_module, Target};

/// Maps a BFL module stem to its canonical target.
pub(crate) fn parse_stem(stem: &str) -> Option<Target> {
    let p = stem.strip_prefix("base_model.model.").unwrap_or(stem);
    is_bfl_module(p).then(|| Target::whole(p))
}
