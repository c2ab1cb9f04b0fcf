//! Flux.1 transformer checkpoint key layouts, host-side and framework-free.
//!
//! Two layouts hold the same transformer:
//! - **BFL** (`flux1-dev.safetensors`, `double_blocks.N.img_attn.qkv.weight`, …), also with the
//!   ComfyUI prefix `model.diffusion_model.` (or `diffusion_model.`);
//! - **diffusers** `FluxTransformer2DModel` (`transformer_blocks.N.attn.to_q.weight`, …), a
//!   single file or the sharded `transformer/` folder.
//!
//! The model is written against BFL names. For each BFL key, [`recipe`] says how to build that
//! tensor from the checkpoint at hand: the same tensor under another name, a row-wise
//! concatenation (diffusers splits BFL's fused `qkv` into `to_q/to_k/to_v`, and single-block
//! `linear1` into `to_q/to_k/to_v/proj_mlp`), or a swap of the two row halves (diffusers'
//! `norm_out.linear` is (scale, shift), BFL's `final_layer.adaLN_modulation.1` is (shift, scale)).
//! These are the inverses of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`; the
//! linears' names come from the one table in [`flux_linears`](crate::flux_linears).
//!
//! Nothing here reads tensors: callers look shapes up with [`Recipe::shape`] and assemble data
//! themselves, one tensor at a time.

use crate::flux_linears::{outer, DOUBLE_BLOCK_LINEARS, OUTER_LINEARS, SINGLE_BLOCK_LINEARS};

/// Which naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxKeyFormat {
    /// Black Forest Labs reference names.
    Bfl,
    /// diffusers `FluxTransformer2DModel` names.
    Diffusers,
}

/// A checkpoint's naming plus the prefix every key carries (`""`, `"model.diffusion_model."`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxKeyLayout {
    /// The naming.
    pub format: FluxKeyFormat,
    /// Prefix before every transformer key.
    pub prefix: String,
}

/// Prefixes under which BFL keys are found (bare, ComfyUI full checkpoint, ComfyUI UNet-only).
pub const BFL_PREFIXES: [&str; 3] = ["", "model.diffusion_model.", "diffusion_model."];
/// Prefixes under which diffusers keys are found (bare, pipeline-level single file).
pub const DIFFUSERS_PREFIXES: [&str; 2] = ["", "transformer."];

const BFL_PROBES: [&str; 3] = [
    "img_in.weight",
    "double_blocks.0.img_attn.qkv.weight",
    "single_blocks.0.linear1.weight",
];
const DIFFUSERS_PROBES: [&str; 3] = [
    "x_embedder.weight",
    "transformer_blocks.0.attn.to_q.weight",
    "single_transformer_blocks.0.attn.to_q.weight",
];

/// Detects the layout from the checkpoint's key names; `None` when it is not a Flux transformer.
pub fn detect_layout<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<FluxKeyLayout> {
    let names: Vec<&str> = names.into_iter().collect();
    let has = |k: &str| names.contains(&k);
    for prefix in BFL_PREFIXES {
        if BFL_PROBES.iter().any(|p| has(&format!("{prefix}{p}")))
            && has(&format!("{prefix}img_in.weight"))
        {
            return Some(FluxKeyLayout {
                format: FluxKeyFormat::Bfl,
                prefix: prefix.into(),
            });
        }
    }
    for prefix in DIFFUSERS_PREFIXES {
        if DIFFUSERS_PROBES
            .iter()
            .any(|p| has(&format!("{prefix}{p}")))
            && has(&format!("{prefix}x_embedder.weight"))
        {
            return Some(FluxKeyLayout {
                format: FluxKeyFormat::Diffusers,
                prefix: prefix.into(),
            });
        }
    }
    None
}

/// How one BFL tensor is built from checkpoint tensors (names include the layout's prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// The tensor stored under this name.
    Same(String),
    /// These tensors stacked along dim 0, in order.
    ConcatRows(Vec<String>),
    /// This tensor with its two dim-0 halves swapped.
    SwapHalves(String),
}

impl Recipe {
    /// The checkpoint tensors the recipe reads.
    pub fn sources(&self) -> Vec<&str> {
        match self {
            Recipe::Same(s) | Recipe::SwapHalves(s) => vec![s.as_str()],
            Recipe::ConcatRows(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The resulting shape, from the sources' shapes; `None` if a source is missing or the
    /// sources cannot be stacked (different inner dimensions, odd row count to swap).
    pub fn shape(&self, shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Option<Vec<usize>> {
        match self {
            Recipe::Same(s) => shape_of(s),
            Recipe::SwapHalves(s) => {
                shape_of(s).filter(|sh| sh.first().is_some_and(|r| r % 2 == 0))
            }
            Recipe::ConcatRows(v) => {
                let mut out: Option<Vec<usize>> = None;
                for s in v {
                    let sh = shape_of(s)?;
                    if sh.is_empty() {
                        return None;
                    }
                    out = match out {
                        None => Some(sh),
                        Some(mut acc) if acc[1..] == sh[1..] => {
                            acc[0] += sh[0];
                            Some(acc)
                        }
                        Some(_) => return None,
                    };
                }
                out
            }
        }
    }
}

/// The recipe for BFL key `bfl_key` (no prefix, e.g. `double_blocks.0.img_attn.qkv.weight`) in
/// `layout`; `None` when the key has no counterpart in that layout.
pub fn recipe(layout: &FluxKeyLayout, bfl_key: &str) -> Option<Recipe> {
    let p = &layout.prefix;
    match layout.format {
        FluxKeyFormat::Bfl => Some(Recipe::Same(format!("{p}{bfl_key}"))),
        FluxKeyFormat::Diffusers => diffusers_recipe(bfl_key).map(|r| prefixed(r, p)),
    }
}

fn prefixed(r: Recipe, p: &str) -> Recipe {
    match r {
        Recipe::Same(s) => Recipe::Same(format!("{p}{s}")),
        Recipe::SwapHalves(s) => Recipe::SwapHalves(format!("{p}{s}")),
        Recipe::ConcatRows(v) => {
            Recipe::ConcatRows(v.into_iter().map(|s| format!("{p}{s}")).collect())
        }
    }
}

/// Splits `a.b.weight` into (`a.b`, `weight`).
fn split_param(key: &str) -> Option<(&str, &str)> {
    key.rsplit_once('.')
}

/// BFL → diffusers, without prefix.
fn diffusers_recipe(bfl_key: &str) -> Option<Recipe> {
    let same = |s: String| Some(Recipe::Same(s));
    let (module, param) = split_param(bfl_key)?;
    // Linears outside the blocks.
    if let Some(linear) = OUTER_LINEARS.iter().find(|l| l.bfl == module) {
        let d = linear.diffusers[0];
        return if *linear == outer::FINAL_MODULATION {
            Some(Recipe::SwapHalves(format!("{d}.{param}")))
        } else {
            same(format!("{d}.{param}"))
        };
    }
    let mut parts = module.splitn(3, '.');
    let (kind, idx, leaf) = (parts.next()?, parts.next()?, parts.next()?);
    let _: usize = idx.parse().ok()?;
    let (block, linears) = match kind {
        "double_blocks" => (
            format!("transformer_blocks.{idx}"),
            &DOUBLE_BLOCK_LINEARS[..],
        ),
        "single_blocks" => (
            format!("single_transformer_blocks.{idx}"),
            &SINGLE_BLOCK_LINEARS[..],
        ),
        _ => return None,
    };
    // Block linears: one diffusers module, or the rows of several.
    if let Some(linear) = linears.iter().find(|l| l.bfl == leaf) {
        let mut names = linear
            .diffusers
            .iter()
            .map(|d| format!("{block}.{d}.{param}"));
        return if linear.is_fused() {
            Some(Recipe::ConcatRows(names.collect()))
        } else {
            names.next().map(Recipe::Same)
        };
    }
    // QK-norm scales.
    let d = match (kind, leaf, param) {
        ("double_blocks", "img_attn.norm.query_norm", "scale") => "attn.norm_q.weight",
        ("double_blocks", "img_attn.norm.key_norm", "scale") => "attn.norm_k.weight",
        ("double_blocks", "txt_attn.norm.query_norm", "scale") => "attn.norm_added_q.weight",
        ("double_blocks", "txt_attn.norm.key_norm", "scale") => "attn.norm_added_k.weight",
        ("single_blocks", "norm.query_norm", "scale") => "attn.norm_q.weight",
        ("single_blocks", "norm.key_norm", "scale") => "attn.norm_k.weight",
        _ => return None,
    };
    same(format!("{block}.{d}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diffusers() -> FluxKeyLayout {
        FluxKeyLayout {
            format: FluxKeyFormat::Diffusers,
            prefix: String::new(),
        }
    }

    #[test]
    fn detects_layouts_and_prefixes() {
        let bfl = ["img_in.weight", "double_blocks.0.img_attn.qkv.weight"];
        assert_eq!(detect_layout(bfl).unwrap().format, FluxKeyFormat::Bfl);
        let comfy = [
            "model.diffusion_model.img_in.weight",
            "model.diffusion_model.single_blocks.0.linear1.weight",
        ];
        assert_eq!(
            detect_layout(comfy).unwrap().prefix,
            "model.diffusion_model."
        );
        let diff = ["x_embedder.weight", "transformer_blocks.0.attn.to_q.weight"];
        assert_eq!(detect_layout(diff).unwrap(), diffusers());
        assert_eq!(detect_layout(["foo.weight"]), None);
    }

    #[test]
    fn diffusers_recipes_follow_the_converter() {
        let d = diffusers();
        assert_eq!(
            recipe(&d, "double_blocks.3.img_attn.qkv.bias"),
            Some(Recipe::ConcatRows(vec![
                "transformer_blocks.3.attn.to_q.bias".into(),
                "transformer_blocks.3.attn.to_k.bias".into(),
                "transformer_blocks.3.attn.to_v.bias".into()
            ]))
        );
        assert_eq!(
            recipe(&d, "double_blocks.0.txt_attn.norm.key_norm.scale"),
            Some(Recipe::Same(
                "transformer_blocks.0.attn.norm_added_k.weight".into()
            ))
        );
        assert_eq!(
            recipe(&d, "single_blocks.7.linear1.weight")
                .unwrap()
                .sources()[3],
            "single_transformer_blocks.7.proj_mlp.weight"
        );
        assert_eq!(
            recipe(&d, "final_layer.adaLN_modulation.1.weight"),
            Some(Recipe::SwapHalves("norm_out.linear.weight".into()))
        );
        assert_eq!(
            recipe(&d, "guidance_in.out_layer.bias"),
            Some(Recipe::Same(
                "time_text_embed.guidance_embedder.linear_2.bias".into()
            ))
        );
        assert_eq!(recipe(&d, "double_blocks.x.img_mod.lin.weight"), None);
        let comfy = FluxKeyLayout {
            format: FluxKeyFormat::Bfl,
            prefix: "model.diffusion_model.".into(),
        };
        assert_eq!(
            recipe(&comfy, "img_in.weight"),
            Some(Recipe::Same("model.diffusion_model.img_in.weight".into()))
        );
    }

    #[test]
    fn recipe_shapes() {
        let shapes = |k: &str| match k {
            "a" => Some(vec![4, 3]),
            "b" => Some(vec![2, 3]),
            "c" => Some(vec![2, 5]),
            _ => None,
        };
        assert_eq!(
            Recipe::ConcatRows(vec!["a".into(), "b".into()]).shape(shapes),
            Some(vec![6, 3])
        );
        assert_eq!(
            Recipe::ConcatRows(vec!["a".into(), "c".into()]).shape(shapes),
            None
        );
        assert_eq!(
            Recipe::ConcatRows(vec!["a".into(), "z".into()]).shape(shapes),
            None
        );
        assert_eq!(
            Recipe::SwapHalves("a".into()).shape(shapes),
            Some(vec![4, 3])
        );
    }
}
