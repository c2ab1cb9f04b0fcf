//! Block swap (kohya's `blocks_to_swap`): the frozen weights of some blocks live in host memory
//! and are copied to the device for each matmul that uses them, forward and backward, then
//! dropped. Copies go host → device only: frozen weights never change, so nothing comes back.
//!
//! `N` counts double-block equivalents, as kohya counts them: `N / 2` double blocks and
//! `2 · (N − N / 2)` single blocks are swapped (a single block holds about half a double
//! block's weights), taken from the end of each stack.

use burn::tensor::backend::Backend;
use fluxlora_lora::LoraLinear;

use crate::error::{FluxError, Result};
use crate::transformer::model::Flux;

/// How many blocks of each kind are streamed from host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SwapPlan {
    /// Double blocks streamed (the last ones).
    pub double: usize,
    /// Single blocks streamed (the last ones).
    pub single: usize,
}

impl SwapPlan {
    /// kohya's split of `blocks_to_swap` over a model with `depth` double and `single_depth`
    /// single blocks; an error names the largest value that fits.
    pub fn kohya(blocks_to_swap: usize, depth: usize, single_depth: usize) -> Result<Self> {
        let plan = |n: usize| SwapPlan {
            double: n / 2,
            single: 2 * (n - n / 2),
        };
        let fits = |p: SwapPlan| p.double <= depth && p.single <= single_depth;
        if fits(plan(blocks_to_swap)) {
            return Ok(plan(blocks_to_swap));
        }
        let max = (0..=blocks_to_swap)
            .rev()
            .find(|&n| fits(plan(n)))
            .unwrap_or(0);
        Err(FluxError::Config(format!(
            "blocks_to_swap = {blocks_to_swap} is larger than the model: it would stream {} \
             double and {} single blocks, but the model has {depth} and {single_depth}; use \
             blocks_to_swap ≤ {max}",
            plan(blocks_to_swap).double,
            plan(blocks_to_swap).single
        )))
    }

    /// Whether the linear at BFL path `path` lies in a streamed block of a model with `depth`
    /// double and `single_depth` single blocks.
    pub fn covers(&self, path: &str, depth: usize, single_depth: usize) -> bool {
        let index = |prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
        };
        if let Some(i) = index("double_blocks.") {
            return i >= depth.saturating_sub(self.double);
        }
        if let Some(i) = index("single_blocks.") {
            return i >= single_depth.saturating_sub(self.single);
        }
        false
    }

    /// Whether nothing is streamed.
    pub fn is_empty(&self) -> bool {
        self.double == 0 && self.single == 0
    }
}

fn stream<B: Backend>(lin: &mut LoraLinear<B>) {
    *lin = lin.clone().stream_base_from_host();
}

impl<B: Backend> Flux<B> {
    /// Streams the frozen weights of `blocks_to_swap` blocks from host memory (kohya's split,
    /// see [`SwapPlan::kohya`]); returns the plan.
    pub fn swap_blocks(&mut self, blocks_to_swap: usize) -> Result<SwapPlan> {
        let plan = SwapPlan::kohya(
            blocks_to_swap,
            self.double_blocks.len(),
            self.single_blocks.len(),
        )?;
        let (nd, ns) = (self.double_blocks.len(), self.single_blocks.len());
        for b in &mut self.double_blocks[nd - plan.double..] {
            for lin in [
                &mut b.img_mod.lin,
                &mut b.img_attn.qkv,
                &mut b.img_attn.proj,
                &mut b.img_mlp.layer0,
                &mut b.img_mlp.layer2,
                &mut b.txt_mod.lin,
                &mut b.txt_attn.qkv,
                &mut b.txt_attn.proj,
                &mut b.txt_mlp.layer0,
                &mut b.txt_mlp.layer2,
            ] {
                stream(lin);
            }
        }
        for b in &mut self.single_blocks[ns - plan.single..] {
            for lin in [&mut b.linear1, &mut b.linear2, &mut b.modulation.lin] {
                stream(lin);
            }
        }
        Ok(plan)
    }

    /// Bytes of base linear weights held on the device (streamed weights count 0).
    pub fn device_base_bytes(&mut self) -> usize {
        self.linears_mut()
            .into_iter()
            .map(|(_, l)| match (&l.weight, &l.frozen) {
                (Some(w), _) => w.val().shape().num_elements() * w.val().dtype().size(),
                (None, Some(f)) => f.device_bytes(),
                (None, None) => 0,
            })
            .sum()
    }
}
