//! Flux transformer module names for LoRA files: module lists and shapes, and the map between
//! BFL paths (`double_blocks.3.img_attn.qkv`) and diffusers names
//! (`transformer_blocks.3.attn.to_q` …), all derived from the table in
//! [`flux_linears`](crate::flux_linears).
//!
//! BFL fuses what diffusers splits: a double block's `img_attn.qkv` is diffusers'
//! `attn.to_q/to_k/to_v` (rows `[0,h) [h,2h) [2h,3h)`), `txt_attn.qkv` is
//! `attn.add_q_proj/add_k_proj/add_v_proj`, and a single block's `linear1` is
//! `attn.to_q/to_k/to_v` + `proj_mlp` (rows `3×h` then `mlp`). `final_layer.adaLN_modulation.1`
//! is `norm_out.linear` with the two output halves swapped (BFL: shift, scale; diffusers:
//! scale, shift). A [`Target`] says where a diffusers-named piece lands in its BFL module.

use std::ops::Range;

use crate::flux_linears::{
    double, double_block_path, outer, single, single_block_path, FluxLinear, DOUBLE_BLOCK_LINEARS,
    OUTER_LINEARS, SINGLE_BLOCK_LINEARS,
};

/// Diffusers names that cover several segments of a fused BFL module (read-only aliases:
/// SimpleTuner's fused `to_qkv` / `add_qkv_proj`).
const DOUBLE_FUSED_ALIASES: &[(&str, &str)] = &[
    ("attn.to_qkv", "img_attn.qkv"),
    ("attn.add_qkv_proj", "txt_attn.qkv"),
];
const SINGLE_FUSED_ALIASES: &[(&str, &str)] = &[("attn.to_qkv", "linear1")];

/// The BFL module whose output halves are swapped relative to diffusers.
pub const SWAPPED_MODULE: &str = outer::FINAL_MODULATION.bfl;

/// Every linear inside the double and single blocks (kohya's default target set:
/// `10·depth + 3·depth_single`, 304 for Flux.1 dev/schnell).
pub fn flux_block_module_paths(depth: usize, depth_single: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(10 * depth + 3 * depth_single);
    for i in 0..depth {
        out.extend(DOUBLE_BLOCK_LINEARS.iter().map(|l| double_block_path(i, l)));
    }
    for i in 0..depth_single {
        out.extend(SINGLE_BLOCK_LINEARS.iter().map(|l| single_block_path(i, l)));
    }
    out
}

/// Every linear of the Flux transformer: the block linears ([`flux_block_module_paths`]) then
/// `img_in`, `txt_in`, `time_in.*`, `vector_in.*`, `guidance_in.*` (only when `guidance`),
/// `final_layer.linear`, `final_layer.adaLN_modulation.1`.
pub fn flux_module_paths(depth: usize, depth_single: usize, guidance: bool) -> Vec<String> {
    let mut out = flux_block_module_paths(depth, depth_single);
    out.extend(
        OUTER_LINEARS
            .iter()
            .filter(|l| guidance || !l.needs_guidance)
            .map(|l| l.bfl.to_string()),
    );
    out
}

/// Flux transformer dimensions, enough to know every linear's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FluxDims {
    /// Hidden size of the transformer stream (3072 for Flux.1).
    pub hidden: usize,
    /// Hidden width of the blocks' MLPs (12288 for Flux.1).
    pub mlp: usize,
    /// Input features of `img_in`: channels of a packed latent token (64 for Flux.1).
    pub in_channels: usize,
    /// Output features of `final_layer.linear` (64 for Flux.1).
    pub out_channels: usize,
    /// Input features of `txt_in`: the T5 embedding width (4096).
    pub context_in: usize,
    /// Input features of `vector_in.in_layer`: the pooled CLIP-L embedding width (768).
    pub vec_in: usize,
    /// Number of double-stream blocks (`double_blocks.*`, 19 for Flux.1).
    pub depth: usize,
    /// Number of single-stream blocks (`single_blocks.*`, 38 for Flux.1).
    pub depth_single: usize,
    /// Whether the model has the `guidance_in` embedder (dev: yes, schnell: no).
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
        let (kind, linear) = bfl_linear(path)?;
        let in_range = match kind {
            BflKind::Double(i) => i < self.depth,
            BflKind::Single(i) => i < self.depth_single,
            BflKind::NonBlock => self.guidance || !linear.needs_guidance,
        };
        if !in_range {
            return None;
        }
        Some(match (kind, linear) {
            (BflKind::Double(_), double::IMG_QKV | double::TXT_QKV) => (h, 3 * h),
            (BflKind::Double(_), double::IMG_PROJ | double::TXT_PROJ) => (h, h),
            (BflKind::Double(_), double::IMG_MLP_0 | double::TXT_MLP_0) => (h, m),
            (BflKind::Double(_), double::IMG_MLP_2 | double::TXT_MLP_2) => (m, h),
            (BflKind::Double(_), double::IMG_MOD | double::TXT_MOD) => (h, 6 * h),
            (BflKind::Single(_), single::LINEAR1) => (h, 3 * h + m),
            (BflKind::Single(_), single::LINEAR2) => (h + m, h),
            (BflKind::Single(_), single::MODULATION) => (h, 3 * h),
            (_, outer::IMG_IN) => (self.in_channels, h),
            (_, outer::TXT_IN) => (self.context_in, h),
            (_, outer::TIME_IN | outer::GUIDANCE_IN) => (256, h),
            (_, outer::VECTOR_IN) => (self.vec_in, h),
            (_, outer::TIME_OUT | outer::VECTOR_OUT | outer::GUIDANCE_OUT) => (h, h),
            (_, outer::FINAL_LINEAR) => (h, self.out_channels),
            (_, outer::FINAL_MODULATION) => (h, 2 * h),
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
    OUTER_LINEARS
        .iter()
        .any(|l| l.bfl == path)
        .then_some((BflKind::NonBlock, path))
}

/// The table entry of BFL linear `path`, with the block it sits in.
fn bfl_linear(path: &str) -> Option<(BflKind, FluxLinear)> {
    let (kind, rest) = parse_bfl(path)?;
    let table: &[FluxLinear] = match kind {
        BflKind::Double(_) => &DOUBLE_BLOCK_LINEARS,
        BflKind::Single(_) => &SINGLE_BLOCK_LINEARS,
        BflKind::NonBlock => &OUTER_LINEARS,
    };
    table.iter().find(|l| l.bfl == rest).map(|l| (kind, *l))
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
    bfl_linear(path).is_some()
}

/// Whether the BFL module is stored fused (several diffusers modules).
pub fn is_fused(path: &str) -> bool {
    bfl_linear(path).is_some_and(|(_, l)| l.is_fused())
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
        return block_target(
            &DOUBLE_BLOCK_LINEARS,
            DOUBLE_FUSED_ALIASES,
            "double_blocks",
            i,
            rest,
        );
    }
    if let Some((i, rest)) = indexed(name, "single_transformer_blocks.", '.') {
        return block_target(
            &SINGLE_BLOCK_LINEARS,
            SINGLE_FUSED_ALIASES,
            "single_blocks",
            i,
            rest,
        );
    }
    OUTER_LINEARS
        .iter()
        .find(|l| l.diffusers == [name])
        .map(|l| Target {
            key: l.bfl.to_string(),
            segments: None,
            swap_halves: l.bfl == SWAPPED_MODULE,
        })
}

fn block_target(
    table: &[FluxLinear],
    aliases: &[(&str, &str)],
    block: &str,
    i: usize,
    rest: &str,
) -> Option<Target> {
    for linear in table {
        if let Some(seg) = linear.diffusers.iter().position(|p| *p == rest) {
            let key = format!("{block}.{i}.{}", linear.bfl);
            let segments = linear.is_fused().then_some(seg..seg + 1);
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
    let (kind, linear) = bfl_linear(bfl)?;
    let scoped = |prefix: &str, i: usize| {
        linear
            .diffusers
            .iter()
            .map(|p| format!("{prefix}.{i}.{p}"))
            .collect()
    };
    Some(match kind {
        BflKind::Double(i) => (scoped("transformer_blocks", i), false),
        BflKind::Single(i) => (scoped("single_transformer_blocks", i), false),
        BflKind::NonBlock => (
            linear.diffusers.iter().map(|d| d.to_string()).collect(),
            linear.bfl == SWAPPED_MODULE,
        ),
    })
}

/// Inverse of `path.replace('.', '_')` for BFL paths (kohya's `lora_unet_` names).
pub fn bfl_from_underscored(s: &str) -> Option<String> {
    if let Some((i, rest)) = indexed(s, "double_blocks_", '_') {
        return DOUBLE_BLOCK_LINEARS
            .iter()
            .find(|l| l.bfl.replace('.', "_") == rest)
            .map(|l| double_block_path(i, l));
    }
    if let Some((i, rest)) = indexed(s, "single_blocks_", '_') {
        return SINGLE_BLOCK_LINEARS
            .iter()
            .find(|l| l.bfl.replace('.', "_") == rest)
            .map(|l| single_block_path(i, l));
    }
    OUTER_LINEARS
        .iter()
        .find(|l| l.bfl.replace('.', "_") == s)
        .map(|l| l.bfl.to_string())
}

/// Inverse of `name.replace('.', '_')` for diffusers transformer names (OneTrainer's
/// `lora_transformer_` names).
pub fn diffusers_from_underscored(s: &str) -> Option<String> {
    let block =
        |table: &[FluxLinear], aliases: &[(&str, &str)], prefix: &str, i: usize, rest: &str| {
            table
                .iter()
                .flat_map(|l| l.diffusers.iter().copied())
                .chain(aliases.iter().map(|(a, _)| *a))
                .find(|p| p.replace('.', "_") == rest)
                .map(|p| format!("{prefix}.{i}.{p}"))
        };
    if let Some((i, rest)) = indexed(s, "transformer_blocks_", '_') {
        return block(
            &DOUBLE_BLOCK_LINEARS,
            DOUBLE_FUSED_ALIASES,
            "transformer_blocks",
            i,
            rest,
        );
    }
    if let Some((i, rest)) = indexed(s, "single_transformer_blocks_", '_') {
        return block(
            &SINGLE_BLOCK_LINEARS,
            SINGLE_FUSED_ALIASES,
            "single_transformer_blocks",
            i,
            rest,
        );
    }
    OUTER_LINEARS
        .iter()
        .flat_map(|l| l.diffusers.iter())
        .find(|d| d.replace('.', "_") == s)
        .map(|d| d.to_string())
}

/// Row sizes of the segments of fused BFL module `path` with `in_features`/`out_features`
/// (`[h, h, h]` for qkv with h = out/3; `[h, h, h, out−3h]` for linear1 with h = in).
/// `None` when the module is not fused or the sizes do not fit.
pub fn fused_segments(path: &str, in_features: usize, out_features: usize) -> Option<Vec<usize>> {
    let (_, linear) = bfl_linear(path).filter(|(_, l)| l.is_fused())?;
    if linear == single::LINEAR1 {
        let h = in_features;
        (out_features > 3 * h && h > 0).then(|| vec![h, h, h, out_features - 3 * h])
    } else {
        (out_features.is_multiple_of(3) && out_features > 0).then(|| vec![out_features / 3; 3])
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
