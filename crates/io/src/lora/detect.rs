//! Telling LoRA formats apart from their key names, in the order diffusers'
//! `FluxLoraLoaderMixin.lora_state_dict` uses:
//!
//! 1. any `.lora_down`/`.lora_up` key ⇒ the kohya family: `transformer.` keys ⇒ PEFT,
//!    `lora_transformer_` ⇒ OneTrainer, `diffusion_model.`/`text_encoders.` ⇒ ComfyUI, else
//!    kohya;
//! 2. any `.processor.` key ⇒ XLabs;
//! 3. any `query_norm.scale` key (control LoRA) or `base_model.model.` key (fal Kontext) ⇒ BFL;
//! 4. then by prefix: `lora_transformer_` ⇒ OneTrainer, `lora_unet_`/`lora_te*` ⇒ kohya,
//!    `diffusion_model.`/`text_encoders.` ⇒ ComfyUI, `transformer.`/`text_encoder(_2).` ⇒ PEFT;
//! 5. bare names: a BFL module path ⇒ BFL, a diffusers module name ⇒ PEFT.

use super::keys_flux::{bfl_from_diffusers, is_bfl_module};
use super::role::split_role;
use super::LoraFormat;
use crate::error::{IoError, Result};
use crate::safetensors::SafeTensorsFile;

/// Detects the format of an opened LoRA file.
pub fn detect(file: &SafeTensorsFile) -> Result<LoraFormat> {
    detect_names(file.names()).ok_or_else(|| IoError::UnknownLoraFormat {
        path: file.path().into(),
        examples: {
            let ex: Vec<String> = file.names().take(3).map(|n| format!("`{n}`")).collect();
            if ex.is_empty() {
                "none: the file has no tensors".into()
            } else {
                ex.join(", ")
            }
        },
    })
}

/// Detects the format from tensor names; `None` if none fits.
pub fn detect_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<LoraFormat> {
    let names: Vec<&str> = names.into_iter().collect();
    let any = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n));
    let starts = |p: &'static str| move |n: &str| n.starts_with(p);

    if any(&|n| n.ends_with(".lora_down.weight") || n.ends_with(".lora_up.weight")) {
        return Some(if any(&starts("transformer.")) {
            LoraFormat::Peft
        } else if any(&starts("lora_transformer_")) {
            LoraFormat::OneTrainer
        } else if any(&|n| n.starts_with("diffusion_model.") || n.starts_with("text_encoders.")) {
            LoraFormat::ComfyUi
        } else {
            LoraFormat::Kohya
        });
    }
    if any(&|n| n.contains(".processor.")) {
        return Some(LoraFormat::XLabs);
    }
    if any(&|n| n.ends_with("query_norm.scale")) || any(&starts("base_model.model.")) {
        return Some(LoraFormat::Bfl);
    }
    if any(&starts("lora_transformer_")) || any(&starts("lycoris_")) {
        return Some(LoraFormat::OneTrainer);
    }
    if any(&|n| n.starts_with("lora_unet_") || n.starts_with("lora_te")) {
        return Some(LoraFormat::Kohya);
    }
    if any(&|n| n.starts_with("diffusion_model.") || n.starts_with("text_encoders.")) {
        return Some(LoraFormat::ComfyUi);
    }
    if any(&|n| {
        n.starts_with("transformer.")
            || n.starts_with("text_encoder.")
            || n.starts_with("text_encoder_2.")
    }) {
        return Some(LoraFormat::Peft);
    }
    let stems: Vec<&str> = names
        .iter()
        .filter_map(|n| split_role(n).map(|(s, _)| s))
        .collect();
    if stems.iter().any(|s| is_bfl_module(s)) {
        return Some(LoraFormat::Bfl);
    }
    if stems.iter().any(|s| bfl_from_diffusers(s).is_some()) {
        return Some(LoraFormat::Peft);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_key_names() {
        let cases: &[(&[&str], LoraFormat)] = &[
            (
                &["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"],
                LoraFormat::Kohya,
            ),
            (
                &["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"],
                LoraFormat::Kohya,
            ),
            (
                &["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"],
                LoraFormat::Peft,
            ),
            (
                &["transformer.x_embedder.lora_down.weight"],
                LoraFormat::Peft,
            ),
            (&["proj_out.lora_A.weight"], LoraFormat::Peft),
            (
                &["diffusion_model.img_in.lora_A.weight"],
                LoraFormat::ComfyUi,
            ),
            (
                &["diffusion_model.img_in.lora_down.weight"],
                LoraFormat::ComfyUi,
            ),
            (
                &["double_blocks.0.img_attn.qkv.lora_B.bias"],
                LoraFormat::Bfl,
            ),
            (
                &["double_blocks.0.processor.qkv_lora1.down.weight"],
                LoraFormat::XLabs,
            ),
            (
                &[
                    "lora_transformer_proj_out.lora_down.weight",
                    "lora_te1_x.alpha",
                ],
                LoraFormat::OneTrainer,
            ),
        ];
        for (names, want) in cases {
            assert_eq!(
                detect_names(names.iter().copied()),
                Some(*want),
                "{names:?}"
            );
        }
        assert_eq!(detect_names(["model.embed.weight"]), None);
    }
}
