//! OneTrainer's legacy ("mixture") names, read only: `lora_transformer_<diffusers name with _>`
//! (e.g. `lora_transformer_single_transformer_blocks_0_attn_to_q`) with `.lora_down.weight`,
//! `.lora_up.weight` and `.alpha`; text encoders `lora_te1_` (CLIP-L) and `lora_te2_` (T5).
//! The diffusers pieces are fused into BFL modules like PEFT files. SimpleTuner's and
//! ai-toolkit's LyCORIS names (`lycoris_<diffusers name with _>`) use the same map.

use super::keys_flux::{bfl_from_diffusers, diffusers_from_underscored, Target};

/// Maps a OneTrainer module stem to its canonical target.
pub(crate) fn parse_stem(stem: &str) -> Option<Target> {
    if let Some(s) = stem
        .strip_prefix("lora_transformer_")
        .or_else(|| stem.strip_prefix("lycoris_"))
    {
        return diffusers_from_underscored(s).and_then(|d| bfl_from_diffusers(&d));
    }
    super::kohya::te_from_kohya(stem)
}
