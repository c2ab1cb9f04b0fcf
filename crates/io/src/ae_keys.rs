//! Checkpoint key layouts of the Flux autoencoder: BFL `ae.safetensors` (the LDM layout,
//! `encoder.down.N.block.M.conv1.weight`) and diffusers `vae/` `AutoencoderKL`
//! (`encoder.down_blocks.N.resnets.M.conv1.weight`), each possibly under a prefix (e.g.
//! `first_stage_model.` or `vae.` in single-file bundles).
//!
//! The model (`fluxlora-flux`'s autoencoder) is built from BFL names; [`file_key`] translates a
//! BFL name into the key of the opened file. Host-side only: names in, names out.

/// Which naming scheme a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeKeyFormat {
    /// BFL / LDM names (`encoder.down.0.block.0…`, `encoder.mid.attn_1.q…`, `decoder.up…`).
    Bfl,
    /// diffusers `AutoencoderKL` names (`encoder.down_blocks.0.resnets.0…`,
    /// `encoder.mid_block.attentions.0.to_q…`, `decoder.up_blocks…`).
    Diffusers,
}

/// The detected layout of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AeKeyLayout {
    /// Naming scheme.
    pub format: AeKeyFormat,
    /// Prefix before every autoencoder key (`""` for plain files).
    pub prefix: String,
    /// Number of resolution levels (`len(ch_mult)`), needed to reverse the decoder's level order.
    pub levels: usize,
}

const BFL_PROBE: &str = "encoder.down.0.block.0.conv1.weight";
const DIFFUSERS_PROBE: &str = "encoder.down_blocks.0.resnets.0.conv1.weight";

/// Detects the layout from the key names; `None` when no autoencoder key is present.
pub fn detect_layout<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<AeKeyLayout> {
    let names: Vec<&str> = names.into_iter().collect();
    for (format, probe) in [
        (AeKeyFormat::Bfl, BFL_PROBE),
        (AeKeyFormat::Diffusers, DIFFUSERS_PROBE),
    ] {
        let Some(prefix) = crate::text_encoder_keys::key_prefix(names.iter().copied(), probe)
        else {
            continue;
        };
        let level_key = |i: usize| match format {
            AeKeyFormat::Bfl => format!("{prefix}encoder.down.{i}.block.0.conv1.weight"),
            AeKeyFormat::Diffusers => {
                format!("{prefix}encoder.down_blocks.{i}.resnets.0.conv1.weight")
            }
        };
        let levels = (0..)
            .take_while(|&i| names.contains(&level_key(i).as_str()))
            .count();
        return Some(AeKeyLayout {
            format,
            prefix,
            levels,
        });
    }
    None
}

/// The key in the file for BFL name `bfl`.
pub fn file_key(layout: &AeKeyLayout, bfl: &str) -> String {
    match layout.format {
        AeKeyFormat::Bfl => format!("{}{bfl}", layout.prefix),
        AeKeyFormat::Diffusers => {
            format!("{}{}", layout.prefix, bfl_to_diffusers(bfl, layout.levels))
        }
    }
}

/// Translates a BFL autoencoder name into diffusers' `AutoencoderKL` name; `levels` is the number
/// of resolution levels (diffusers numbers decoder levels from the lowest resolution up, BFL from
/// the highest down). Names outside the encoder and decoder (`quant_conv`, `post_quant_conv`)
/// are the same in both.
pub fn bfl_to_diffusers(bfl: &str, levels: usize) -> String {
    let Some((side, rest)) = bfl.split_once('.') else {
        return bfl.to_string();
    };
    if side != "encoder" && side != "decoder" {
        return bfl.to_string();
    }
    let segs: Vec<&str> = rest.split('.').collect();
    let reversed = |i: &str| -> String {
        match i.parse::<usize>() {
            Ok(i) if i < levels => (levels - 1 - i).to_string(),
            _ => i.to_string(),
        }
    };
    let mapped = match segs.as_slice() {
        ["down", i, "block", j, tail @ ..] => {
            format!("down_blocks.{i}.resnets.{j}.{}", resnet_tail(tail))
        }
        ["down", i, "downsample", tail @ ..] => {
            format!("down_blocks.{i}.downsamplers.0.{}", tail.join("."))
        }
        ["up", i, "block", j, tail @ ..] => format!(
            "up_blocks.{}.resnets.{j}.{}",
            reversed(i),
            resnet_tail(tail)
        ),
        ["up", i, "upsample", tail @ ..] => {
            format!("up_blocks.{}.upsamplers.0.{}", reversed(i), tail.join("."))
        }
        ["mid", "block_1", tail @ ..] => format!("mid_block.resnets.0.{}", resnet_tail(tail)),
        ["mid", "block_2", tail @ ..] => format!("mid_block.resnets.1.{}", resnet_tail(tail)),
        ["mid", "attn_1", layer, tail @ ..] => {
            let layer = match *layer {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                other => other,
            };
            format!("mid_block.attentions.0.{layer}.{}", tail.join("."))
        }
        ["norm_out", tail @ ..] => format!("conv_norm_out.{}", tail.join(".")),
        _ => rest.to_string(),
    };
    format!("{side}.{mapped}")
}

fn resnet_tail(tail: &[&str]) -> String {
    match tail {
        ["nin_shortcut", rest @ ..] => format!("conv_shortcut.{}", rest.join(".")),
        _ => tail.join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected names are diffusers' own, as listed in its `convert_ldm_vae_checkpoint`
    // (diffusers/loaders/single_file_utils.py) and in the FLUX.1-dev `vae/` checkpoint.
    #[test]
    fn maps_every_kind_of_bfl_name() {
        let cases = [
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            (
                "encoder.down.1.block.0.nin_shortcut.bias",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "encoder.down.2.downsample.conv.weight",
                "encoder.down_blocks.2.downsamplers.0.conv.weight",
            ),
            (
                "encoder.mid.block_2.norm1.weight",
                "encoder.mid_block.resnets.1.norm1.weight",
            ),
            (
                "encoder.mid.attn_1.proj_out.weight",
                "encoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "decoder.mid.attn_1.norm.bias",
                "decoder.mid_block.attentions.0.group_norm.bias",
            ),
            (
                "decoder.up.0.block.2.conv2.weight",
                "decoder.up_blocks.3.resnets.2.conv2.weight",
            ),
            (
                "decoder.up.3.upsample.conv.bias",
                "decoder.up_blocks.0.upsamplers.0.conv.bias",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("decoder.conv_out.bias", "decoder.conv_out.bias"),
            ("quant_conv.weight", "quant_conv.weight"),
        ];
        for (bfl, dif) in cases {
            assert_eq!(bfl_to_diffusers(bfl, 4), dif, "{bfl}");
        }
    }

    #[test]
    fn detects_format_prefix_and_levels() {
        let names = [
            "vae.encoder.down_blocks.0.resnets.0.conv1.weight",
            "vae.encoder.down_blocks.1.resnets.0.conv1.weight",
            "vae.decoder.conv_in.weight",
        ];
        let l = detect_layout(names).unwrap();
        assert_eq!(
            l,
            AeKeyLayout {
                format: AeKeyFormat::Diffusers,
                prefix: "vae.".into(),
                levels: 2
            }
        );
        assert_eq!(
            file_key(&l, "decoder.up.1.block.0.conv1.weight"),
            "vae.decoder.up_blocks.0.resnets.0.conv1.weight"
        );
        let b = detect_layout(["encoder.down.0.block.0.conv1.weight"]).unwrap();
        assert_eq!(
            (b.format, b.prefix.as_str(), b.levels),
            (AeKeyFormat::Bfl, "", 1)
        );
        assert!(detect_layout(["double_blocks.0.img_attn.qkv.weight"]).is_none());
    }
}
