#![cfg(test)]
#![allow(dead_code)]
use crate::flux_keys::Recipe;
/// Splits `a.b.weight` into (`a.b`, `weight`).
fn old_split_param(key: &str) -> Option<(&str, &str)> {
    key.rsplit_once('.')
}

/// BFL → diffusers, without prefix.
fn old_diffusers_recipe(bfl_key: &str) -> Option<Recipe> {
    let same = |s: String| Some(Recipe::Same(s));
    let (module, param) = old_split_param(bfl_key)?;
    // Top-level modules.
    let top = match module {
        "img_in" => Some("x_embedder"),
        "txt_in" => Some("context_embedder"),
        "time_in.in_layer" => Some("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => Some("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer" => Some("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => Some("time_text_embed.text_embedder.linear_2"),
        "guidance_in.in_layer" => Some("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => Some("time_text_embed.guidance_embedder.linear_2"),
        "final_layer.linear" => Some("proj_out"),
        _ => None,
    };
    if let Some(d) = top {
        return same(format!("{d}.{param}"));
    }
    if module == "final_layer.adaLN_modulation.1" {
        return Some(Recipe::SwapHalves(format!("norm_out.linear.{param}")));
    }
    let mut parts = module.splitn(3, '.');
    let (kind, idx, leaf) = (parts.next()?, parts.next()?, parts.next()?);
    let _: usize = idx.parse().ok()?;
    match kind {
        "double_blocks" => {
            let b = format!("transformer_blocks.{idx}");
            let qkv = |names: [&str; 3]| {
                Some(Recipe::ConcatRows(
                    names
                        .iter()
                        .map(|n| format!("{b}.attn.{n}.{param}"))
                        .collect(),
                ))
            };
            let d = match (leaf, param) {
                ("img_mod.lin", _) => format!("norm1.linear.{param}"),
                ("txt_mod.lin", _) => format!("norm1_context.linear.{param}"),
                ("img_attn.qkv", _) => return qkv(["to_q", "to_k", "to_v"]),
                ("txt_attn.qkv", _) => return qkv(["add_q_proj", "add_k_proj", "add_v_proj"]),
                ("img_attn.norm.query_norm", "scale") => "attn.norm_q.weight".into(),
                ("img_attn.norm.key_norm", "scale") => "attn.norm_k.weight".into(),
                ("txt_attn.norm.query_norm", "scale") => "attn.norm_added_q.weight".into(),
                ("txt_attn.norm.key_norm", "scale") => "attn.norm_added_k.weight".into(),
                ("img_attn.proj", _) => format!("attn.to_out.0.{param}"),
                ("txt_attn.proj", _) => format!("attn.to_add_out.{param}"),
                ("img_mlp.0", _) => format!("ff.net.0.proj.{param}"),
                ("img_mlp.2", _) => format!("ff.net.2.{param}"),
                ("txt_mlp.0", _) => format!("ff_context.net.0.proj.{param}"),
                ("txt_mlp.2", _) => format!("ff_context.net.2.{param}"),
                _ => return None,
            };
            same(format!("{b}.{d}"))
        }
        "single_blocks" => {
            let b = format!("single_transformer_blocks.{idx}");
            let d = match (leaf, param) {
                ("linear1", _) => {
                    return Some(Recipe::ConcatRows(vec![
                        format!("{b}.attn.to_q.{param}"),
                        format!("{b}.attn.to_k.{param}"),
                        format!("{b}.attn.to_v.{param}"),
                        format!("{b}.proj_mlp.{param}"),
                    ]))
                }
                ("linear2", _) => format!("proj_out.{param}"),
                ("modulation.lin", _) => format!("norm.linear.{param}"),
                ("norm.query_norm", "scale") => "attn.norm_q.weight".into(),
                ("norm.key_norm", "scale") => "attn.norm_k.weight".into(),
                _ => return None,
            };
            same(format!("{b}.{d}"))
        }
        _ => None,
    }
}

#[test]
fn new_recipes_equal_old() {
    let layout = crate::flux_keys::FluxKeyLayout {
        format: crate::flux_keys::FluxKeyFormat::Diffusers,
        prefix: String::new(),
    };
    let mut keys: Vec<String> = crate::flux_module_paths(3, 3, true)
        .iter()
        .flat_map(|p| {
            [
                format!("{p}.weight"),
                format!("{p}.bias"),
                format!("{p}.scale"),
            ]
        })
        .collect();
    for i in 0..3 {
        for n in [
            "img_attn.norm.query_norm",
            "img_attn.norm.key_norm",
            "txt_attn.norm.query_norm",
            "txt_attn.norm.key_norm",
            "norm.query_norm",
            "norm.key_norm",
        ] {
            for b in ["double_blocks", "single_blocks"] {
                for p in ["scale", "weight"] {
                    keys.push(format!("{b}.{i}.{n}.{p}"));
                }
            }
        }
    }
    keys.extend(
        [
            "foo",
            "foo.weight",
            "double_blocks.x.img_mod.lin.weight",
            "double_blocks.0.linear1.weight",
            "single_blocks.0.img_mod.lin.weight",
            "other_blocks.0.linear1.weight",
        ]
        .map(String::from),
    );
    assert!(keys.len() > 100);
    for k in keys {
        assert_eq!(
            crate::flux_keys::recipe(&layout, &k),
            old_diffusers_recipe(&k),
            "{k}"
        );
    }
}
