//! Reading BFL-named tensors from a full transformer [`Checkpoint`] in either key layout
//! (BFL, ComfyUI-prefixed BFL, or diffusers) through [`crate::flux_keys`] recipes.

use super::op_error;
use crate::error::Result;
use crate::flux_keys::{detect_layout, recipe, FluxKeyLayout, Recipe};
use crate::lora::keys_flux::flux_block_module_paths;
use crate::sharded::Checkpoint;
use crate::tensor::HostTensor;

/// The checkpoint's key layout, or an error saying it is not a Flux transformer.
pub(crate) fn layout_of(ckpt: &Checkpoint, op: &'static str) -> Result<FluxKeyLayout> {
    detect_layout(ckpt.names()).ok_or_else(|| {
        op_error(
            ckpt.source(),
            op,
            "not a Flux transformer checkpoint (no `img_in.weight` / `x_embedder.weight` with \
             block weights, bare or under `model.diffusion_model.` / `transformer.`); pass the \
             transformer weights (flux1-dev.safetensors or a diffusers `transformer/` folder)"
                .into(),
        )
    })
}

/// The recipe for BFL tensor `key` when every source tensor is present.
pub(crate) fn present_recipe(
    ckpt: &Checkpoint,
    layout: &FluxKeyLayout,
    key: &str,
) -> Option<Recipe> {
    recipe(layout, key).filter(|r| r.sources().iter().all(|s| ckpt.contains(s)))
}

/// Builds BFL tensor `key` (`None` when the checkpoint lacks it).
pub(crate) fn read_bfl(
    ckpt: &Checkpoint,
    layout: &FluxKeyLayout,
    key: &str,
    op: &'static str,
) -> Result<Option<HostTensor>> {
    let Some(r) = present_recipe(ckpt, layout, key) else {
        return Ok(None);
    };
    let bad = |problem: String| op_error(ckpt.source(), op, problem);
    Ok(Some(match r {
        Recipe::Same(s) => ckpt.read_f32(&s)?,
        Recipe::ConcatRows(v) => {
            let parts = v
                .iter()
                .map(|s| ckpt.read_f32(s))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&HostTensor> = parts.iter().collect();
            HostTensor::concat_rows(&refs).map_err(|_| {
                bad(format!(
                    "`{}` cannot be stacked into `{key}` (shapes {:?}); the checkpoint is damaged \
                     or not Flux",
                    v.join("`, `"),
                    parts.iter().map(|p| p.shape.clone()).collect::<Vec<_>>()
                ))
            })?
        }
        Recipe::SwapHalves(s) => {
            let t = ckpt.read_f32(&s)?;
            let n = t.shape.first().copied().unwrap_or(0);
            if n % 2 != 0 {
                return Err(bad(format!(
                    "`{s}` has {n} rows, which cannot be split into (scale, shift) halves"
                )));
            }
            let (a, b) = (t.rows(0, n / 2)?, t.rows(n / 2, n)?);
            HostTensor::concat_rows(&[&b, &a])?
        }
    }))
}

/// `(double blocks, single blocks)` present in the checkpoint.
pub(crate) fn block_counts(ckpt: &Checkpoint, layout: &FluxKeyLayout) -> (usize, usize) {
    let present = |p: &String| present_recipe(ckpt, layout, &format!("{p}.weight")).is_some();
    let mut depth = 0;
    while flux_block_module_paths(depth + 1, 0)[depth * 10..]
        .iter()
        .any(present)
    {
        depth += 1;
    }
    let mut single = 0;
    while flux_block_module_paths(0, single + 1)[single * 3..]
        .iter()
        .any(present)
    {
        single += 1;
    }
    (depth, single)
}
