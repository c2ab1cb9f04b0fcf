//! XLabs x-flux names (read only). Double blocks carry an attention-processor LoRA:
//! `double_blocks.N.processor.qkv_lora1` (image qkv), `qkv_lora2` (text qkv), `proj_lora1`
//! (image attention out-projection), `proj_lora2` (text); single blocks
//! `single_blocks.N.processor.qkv_lora` (the q/k/v rows of `linear1`; its MLP rows get no
//! delta) and `proj_lora` (`linear2`), as diffusers' `_convert_xlabs_flux_lora_to_diffusers`
//! maps them. Roles `.down.weight` / `.up.weight`; the files carry no alpha (x-flux's
//! `network_alpha` defaults to none, i.e. scale 1). An optional `diffusion_model.` prefix is
//! accepted.

use super::keys_flux::{indexed, Target};

/// Maps an XLabs module stem to its canonical target.
pub(crate) fn parse_stem(stem: &str) -> Option<Target> {
    let s = stem.strip_prefix("diffusion_model.").unwrap_or(stem);
    if let Some((i, rest)) = indexed(s, "double_blocks.", '.') {
        let m = match rest {
            "processor.qkv_lora1" => "img_attn.qkv",
            "processor.qkv_lora2" => "txt_attn.qkv",
            "processor.proj_lora1" => "img_attn.proj",
            "processor.proj_lora2" => "txt_attn.proj",
            _ => return None,
        };
        return Some(Target::whole(format!("double_blocks.{i}.{m}")));
    }
    if let Some((i, rest)) = indexed(s, "single_blocks.", '.') {
        return match rest {
            "processor.qkv_lora" => Some(Target {
                key: format!("single_blocks.{i}.linear1"),
                segments: Some(0..3),
                swap_halves: false,
            }),
            "processor.proj_lora" => Some(Target::whole(format!("single_blocks.{i}.linear2"))),
            _ => None,
        };
    }
    None
}
