//! Flux transformer module names: the BFL module table, and the map between BFL paths
//! (`double_blocks.3.img_attn.qkv`) and diffusers names (`transformer_blocks.3.attn.to_q` …).
//!
//! BFL fuses what diffusers splits: a double block's `img_attn.qkv` is diffusers'
//! `attn.to_q/to_k/to_v` (rows `[0,h) [h,2h) [2h,3h)`), `txt_attn.qkv` is
//! `attn.add_q_proj/add_k_proj/add_v_proj`, and a single block's `linear1` is
//! `attn.to_q/to_k/to_v` + `proj_mlp` (rows `3×h` then `mlp`). `final_layer.adaLN_modulation.1`
//! is `norm_out.linear` with the two output halves swapped (BFL: shift, scale; diffusers:
//! scale, shift). A [`Target`] says where a diffusers-named piece lands in its BFL module.

use std::ops::Range;

/// Per-double-block linears: (BFL suffix, diffusers suffixes — one per fused segment).
const DOUBLE: &[(&str, &[&str])] = &[
    ("img_attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("img_attn.proj", &["attn.to_out.0"]),
    ("img_mlp.0", &["ff.net.0.proj"]),
    ("img_mlp.2", &["ff.net.2"]),
    ("img_mod.lin", &["norm1.linear"]),
    (
        "txt_attn.qkv",
        &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    ),
    ("txt_attn.proj", &["attn.to_add_out"]),
    ("txt_mlp.0", &["ff_context.net.0.proj"]),
    ("txt_mlp.2", &["ff_context.net.2"]),
    ("txt_mod.lin", &["norm1_context.linear"]),
];

/// Per-single-block linears.
const SINGLE: &[(&str, &[&str])] = &[
    (
        "linear1",
        &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    ),
    ("linear2", &["proj_out"]),
    ("modulation.lin", &["norm.linear"]),
];

/// Diffusers names that cover several segments of a fused BFL module (read-only aliases:
/// SimpleTuner's fused `to_qkv` / `add_qkv_proj`).
const DOUBLE_FUSED_ALIASES: &[(&str, &str)] = &[
    ("attn.to_qkv", "img_attn.qkv"),
    ("attn.add_qkv_proj", "txt_attn.qkv"),
];
const SINGLE_FUSED_ALIASES: &[(&str, &str)] = &[("attn.to_qkv", "linear1")];

/// Linears outside the blocks: (BFL path, diffusers name, needs guidance).
const NON_BLOCK: &[(&str, &str, bool)] = &[
    ("img_in", "x_embedder", false),
    ("txt_in", "context_embedder", false),
    (
        "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_1",
        false,
    ),
    (
        "time_in.out_layer",
        "time_text_embed.timestep_embedder.linear_2",
        false,
    ),
    (
        "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_1",
        false,
    ),
    (
        "vector_in.out_layer",
        "time_text_embed.text_embedder.linear_2",
        false,
    ),
    (
        "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_1",
        true,
    ),
    (
        "guidance_in.out_layer",
        "time_text_embed.guidance_embedder.linear_2",
        true,
    ),
    ("final_layer.linear", "proj_out", false),
    ("final_layer.adaLN_modulation.1", "norm_out.linear", false),
];

/// The BFL module whose output halves are swapped relative to diffusers.
pub const SWAPPED_MODULE: &str = "final_layer.adaLN_modulation.1";

/// Every linear inside the double and single blocks (kohya's default target set:
/// `10·depth + 3·depth_single`, 304 for Flux.1 dev/schnell).
pub fn flux_block_module_paths(depth: usize, depth_single: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(10 * depth + 3 * depth_single);
    for i in 0..depth {
        out.extend(DOUBLE.iter().map(|(s, _)| format!("double_blocks.{i}.{s}")));
    }
    for i in 0..depth_single {
        out.extend(SINGLE.iter().map(|(s, _)| format!("single_blocks.{i}.{s}")));
    }
    out
}

/// Every linear of the Flux transformer: the block linears ([`flux_block_module_paths`]) then
/// `img_in`, `txt_in`, `time_in.*`, `vector_in.*`, `guidance_in.*` (only when `guidance`),
/// `final_layer.linear`, `final_layer.adaLN_modulation.1`.
pub fn flux_module_paths(depth: usize, depth_single: usize, guidance: bool) -> Vec<String> {
    let mut out = flux_block_module_paths(depth, depth_single);
    out.extend(
        NON_BLOCK
            .iter()
            .filter(|(_, _, g)| guidance || !g)
            .map(|(p, _, _)| p.to_string()),
    );
    out
}

/// Flux transformer dimensions, enough to know every linear's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FluxDims {
    pub hidden: usize,
    pub mlp: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub context_in: usize,
    pub vec_in: usize,
    pub depth: usize,
    pub depth_single: usize,
    pub guidance: bool,
}

impl FluxDims {
    /// FLUX.1-dev (guidance-distilled; schnell is the same with `guidance: false`).
    pub fn flux_dev() -> Self {
        FluxDims {
            hidden: 3072,
            mlp: 12288,
            in_channels: 64,
            out_channels: 64,
            context_in: 4096,
            vec_in: 768,
            depth: 19,
            depth_single: 38,
            guidance: true,
        }
    }

    /// `(in_features, out_features)` of the linear at BFL `path`, `None` if there is none.
    pub fn module_shape(&self, path: &str) -> Option<(usize, usize)> {
        let (h, m) = (self.hidden, self.mlp);
        let (kind, rest) = parse_bfl(path)?;
        let in_range = |i: usize, n: usize| i < n;
        Some(match kind {
            BflKind::Double(i) if in_range(i, self.depth) => match rest {
                "img_attn.qkv" | "txt_attn.qkv" => (h, 3 * h),
                "img_attn.proj" | "txt_attn.proj" => (h, h),
                "img_mlp.0" | "txt_mlp.0" => (h, m),
                "img_mlp.2" | "txt_mlp.2" => (m, h),
                "img_mod.lin" | "txt_mod.lin" => (h, 6 * h),
                _ => return None,
            },
            BflKind::Single(i) if in_range(i, self.depth_single) => match rest {
                "linear1" => (h, 3 * h + m),
                "linear2" => (h + m, h),
                "modulation.lin" => (h, 3 * h),
                _ => return None,
            },
            BflKind::NonBlock => match rest {
                "img_in" => (self.in_channels, h),
                "txt_in" => (self.context_in, h),
                "time_in.in_layer" => (256, h),
                "vector_in.in_layer" => (self.vec_in, h),
                "guidance_in.in_layer" if self.guidance => (256, h),
                "time_in.out_layer" | "vector_in.out_layer" => (h, h),
                "guidance_in.out_layer" if self.guidance => (h, h),
                "final_layer.linear" => (h, self.out_channels),
                "final_layer.adaLN_modulation.1" => (h, 2 * h),
                _ => return None,
            },
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BflKind {
    Double(usize),
    Single(usize),
    NonBlock,
}

/// Splits `double_blocks.3.img_attn.qkv` into `(Double(3), "img_attn.qkv")`.
fn parse_bfl(path: &str) -> Option<(BflKind, &str)> {
    if let Some((i, rest)) = indexed(path, "double_blocks.", '.') {
        return Some((BflKind::Double(i), rest));
    }
    if let Some((i, rest)) = indexed(path, "single_blocks.", '.') {
        return Some((BflKind::Single(i), rest));
    }
    NON_BLOCK
        .iter()
        .any(|(p, _, _)| *p == path)
        .then_some((BflKind::NonBlock, path))
}

/// `prefix` + decimal index + `sep` + rest.
pub(crate) fn indexed<'a>(s: &'a str, prefix: &str, sep: char) -> Option<(usize, &'a str)> {
    let rest = s.strip_prefix(prefix)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || (digits > 1 && rest.starts_with('0')) {
        return None;
    }
    let i = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(sep)?;
    Some((i, rest))
}

/// Whether `path` is a BFL linear module path this crate knows.
pub fn is_bfl_module(path: &str) -> bool {
    match parse_bfl(path) {
        Some((BflKind::Double(_), rest)) => DOUBLE.iter().any(|(s, _)| *s == rest),
        Some((BflKind::Single(_), rest)) => SINGLE.iter().any(|(s, _)| *s == rest),
        Some((BflKind::NonBlock, _)) => true,
        None => false,
    }
}

/// Whether the BFL module is stored fused (several diffusers modules).
pub fn is_fused(path: &str) -> bool {
    path.ends_with("_attn.qkv")
        || (path.starts_with("single_blocks.") && path.ends_with(".linear1"))
}

/// Where a diffusers-named (or otherwise partial) LoRA module lands in the canonical map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical key (BFL path or `te1:`/`te3:` text-encoder path).
    pub key: String,
    /// For pieces of a fused module: the segment range covered (`0..1` = q, `3..4` = mlp).
    pub segments: Option<Range<usize>>,
    /// Output halves must be swapped to reach BFL order.
    pub swap_halves: bool,
}

impl Target {
    /// The whole canonical module.
    pub fn whole(key: impl Into<String>) -> Self {
        Target {
            key: key.into(),
            segments: None,
            swap_halves: false,
        }
    }
}

/// Maps a diffusers transformer module name (no `transformer.` prefix) to its BFL target.
pub fn bfl_from_diffusers(name: &str) -> Option<Target> {
    if let Some((i, rest)) = indexed(name, "transformer_blocks.", '.') {
        return block_target(DOUBLE, DOUBLE_FUSED_ALIASES, "double_blocks", i, rest);
    }
    if let Some((i, rest)) = indexed(name, "single_transformer_blocks.", '.') {
        return block_target(SINGLE, SINGLE_FUSED_ALIASES, "single_blocks", i, rest);
    }
    NON_BLOCK
        .iter()
        .find(|(_, d, _)| *d == name)
        .map(|(p, _, _)| Target {
            key: p.to_string(),
            segments: None,
            swap_halves: *p == SWAPPED_MODULE,
        })
}

fn block_target(
    table: &[(&str, &[&str])],
    aliases: &[(&str, &str)],
    block: &str,
    i: usize,
    rest: &str,
) -> Option<Target> {
    for (bfl, parts) in table {
        if let Some(seg) = parts.iter().position(|p| *p == rest) {
            let key = format!("{block}.{i}.{bfl}");
            let segments = (parts.len() > 1).then_some(seg..seg + 1);
            return Some(Target {
                key,
                segments,
                swap_halves: false,
            });
        }
    }
    aliases
        .iter()
        .find(|(a, _)| *a == rest)
        .map(|(_, bfl)| Target {
            key: format!("{block}.{i}.{bfl}"),
            segments: Some(0..3),
            swap_halves: false,
        })
}

/// The diffusers names (no `transformer.` prefix) of a BFL module, one per fused segment, and
/// whether the halves are swapped. `None` for paths this crate does not know.
pub fn diffusers_names(bfl: &str) -> Option<(Vec<String>, bool)> {
    let block = |table: &[(&str, &[&str])], prefix: &str, i: usize, rest: &str| {
        table.iter().find(|(s, _)| *s == rest).map(|(_, parts)| {
            (
                parts.iter().map(|p| format!("{prefix}.{i}.{p}")).collect(),
                false,
            )
        })
    };
    match parse_bfl(bfl)? {
        (BflKind::Double(i), rest) => block(DOUBLE, "transformer_blocks", i, rest),
        (BflKind::Single(i), rest) => block(SINGLE, "single_transformer_blocks", i, rest),
        (BflKind::NonBlock, p) => NON_BLOCK
            .iter()
            .find(|(q, _, _)| *q == p)
            .map(|(_, d, _)| (vec![d.to_string()], p == SWAPPED_MODULE)),
    }
}

/// Inverse of `path.replace('.', '_')` for BFL paths (kohya's `lora_unet_` names).
pub fn bfl_from_underscored(s: &str) -> Option<String> {
    if let Some((i, rest)) = indexed(s, "double_blocks_", '_') {
        return DOUBLE
            .iter()
            .find(|(b, _)| b.replace('.', "_") == rest)
            .map(|(b, _)| format!("double_blocks.{i}.{b}"));
    }
    if let Some((i, rest)) = indexed(s, "single_blocks_", '_') {
        return SINGLE
            .iter()
            .find(|(b, _)| b.replace('.', "_") == rest)
            .map(|(b, _)| format!("single_blocks.{i}.{b}"));
    }
    NON_BLOCK
        .iter()
        .find(|(p, _, _)| p.replace('.', "_") == s)
        .map(|(p, _, _)| p.to_string())
}

/// Inverse of `name.replace('.', '_')` for diffusers transformer names (OneTrainer's
/// `lora_transformer_` names).
pub fn diffusers_from_underscored(s: &str) -> Option<String> {
    let block = |table: &[(&str, &[&str])],
                 aliases: &[(&str, &str)],
                 prefix: &str,
                 i: usize,
                 rest: &str| {
        table
            .iter()
            .flat_map(|(_, parts)| parts.iter().copied())
            .chain(aliases.iter().map(|(a, _)| *a))
            .find(|p| p.replace('.', "_") == rest)
            .map(|p| format!("{prefix}.{i}.{p}"))
    };
    if let Some((i, rest)) = indexed(s, "transformer_blocks_", '_') {
        return block(DOUBLE, DOUBLE_FUSED_ALIASES, "transformer_blocks", i, rest);
    }
    if let Some((i, rest)) = indexed(s, "single_transformer_blocks_", '_') {
        return block(
            SINGLE,
            SINGLE_FUSED_ALIASES,
            "single_transformer_blocks",
            i,
            rest,
        );
    }
    NON_BLOCK
        .iter()
        .find(|(_, d, _)| d.replace('.', "_") == s)
        .map(|(_, d, _)| d.to_string())
}

/// Row sizes of the segments of fused BFL module `path` with `in_features`/`out_features`
/// (`[h, h, h]` for qkv with h = out/3; `[h, h, h, out−3h]` for linear1 with h = in).
/// `None` when the module is not fused or the sizes do not fit.
pub fn fused_segments(path: &str, in_features: usize, out_features: usize) -> Option<Vec<usize>> {
    if !is_fused(path) {
        return None;
    }
    if path.ends_with("_attn.qkv") {
        (out_features.is_multiple_of(3) && out_features > 0).then(|| vec![out_features / 3; 3])
    } else {
        let h = in_features;
        (out_features > 3 * h && h > 0).then(|| vec![h, h, h, out_features - 3 * h])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_counts_match_the_trainers() {
        // kohya's default set is every block linear: 19·10 + 38·3 = 304.
        assert_eq!(flux_block_module_paths(19, 38).len(), 304);
        // ai-toolkit's set is the same linears split the diffusers way: 19·14 + 38·6 = 494.
        let diffusers: usize = flux_block_module_paths(19, 38)
            .iter()
            .map(|p| diffusers_names(p).unwrap().0.len())
            .sum();
        assert_eq!(diffusers, 494);
        assert_eq!(flux_module_paths(19, 38, true).len(), 314);
        assert_eq!(flux_module_paths(19, 38, false).len(), 312);
    }

    #[test]
    fn every_module_maps_both_ways() {
        let dims = FluxDims::flux_dev();
        for p in flux_module_paths(2, 3, true) {
            assert!(is_bfl_module(&p), "{p}");
            assert!(dims.module_shape(&p).is_some(), "{p}");
            assert_eq!(
                bfl_from_underscored(&p.replace('.', "_")).as_deref(),
                Some(p.as_str())
            );
            let (names, swapped) = diffusers_names(&p).unwrap();
            assert_eq!(swapped, p == SWAPPED_MODULE);
            for (k, n) in names.iter().enumerate() {
                let t = bfl_from_diffusers(n).unwrap();
                assert_eq!(t.key, p);
                assert_eq!(t.segments, (names.len() > 1).then_some(k..k + 1));
                assert_eq!(
                    diffusers_from_underscored(&n.replace('.', "_")).as_deref(),
                    Some(n.as_str())
                );
            }
        }
        assert_eq!(
            dims.module_shape("single_blocks.0.linear1"),
            Some((3072, 21504))
        );
        assert_eq!(dims.module_shape("double_blocks.19.img_mlp.0"), None);
        assert_eq!(
            fused_segments("single_blocks.0.linear1", 3072, 21504),
            Some(vec![3072, 3072, 3072, 12288])
        );
        assert_eq!(
            bfl_from_diffusers("transformer_blocks.0.attn.to_qkv")
                .unwrap()
                .segments,
            Some(0..3)
        );
        assert!(bfl_from_underscored("double_blocks_01_img_attn_qkv").is_none());
    }
}
