//! The one table of the Flux transformer's linears: each linear's BFL name and its diffusers
//! name(s), one per fused segment.
//!
//! Everything else that knows the linears derives from here: the checkpoint recipes
//! ([`flux_keys`](crate::flux_keys)), the LoRA key maps and module lists
//! ([`lora::keys_flux`](crate::lora::keys_flux)) and the model's own walk over its linears
//! (`fluxlora-flux`, which names each field by the constants below).
//!
//! BFL fuses what diffusers splits: a double block's `img_attn.qkv` is diffusers'
//! `attn.to_q/to_k/to_v` (rows `[0,h) [h,2h) [2h,3h)`), `txt_attn.qkv` is
//! `attn.add_q_proj/add_k_proj/add_v_proj`, and a single block's `linear1` is
//! `attn.to_q/to_k/to_v` + `proj_mlp` (rows `3×h` then `mlp`).

/// One linear of the Flux transformer, as both namings spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FluxLinear {
    /// BFL name: inside its block for block linears (`img_attn.qkv`), else the full path
    /// (`time_in.in_layer`).
    pub bfl: &'static str,
    /// diffusers names in the same scope, one per fused segment (`attn.to_q`, `attn.to_k`, …).
    pub diffusers: &'static [&'static str],
    /// Present only in guidance-distilled models (`guidance_in.*`).
    pub needs_guidance: bool,
}

impl FluxLinear {
    const fn new(bfl: &'static str, diffusers: &'static [&'static str]) -> Self {
        FluxLinear {
            bfl,
            diffusers,
            needs_guidance: false,
        }
    }

    /// Whether BFL stores several diffusers modules in this one linear.
    pub fn is_fused(&self) -> bool {
        self.diffusers.len() > 1
    }
}

/// The linears of one double-stream block, named inside `double_blocks.N.`.
pub mod double {
    use super::FluxLinear;

    /// Image-stream modulation.
    pub const IMG_MOD: FluxLinear = FluxLinear::new("img_mod.lin", &["norm1.linear"]);
    /// Image-stream fused q, k, v projection.
    pub const IMG_QKV: FluxLinear =
        FluxLinear::new("img_attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"]);
    /// Image-stream attention output projection.
    pub const IMG_PROJ: FluxLinear = FluxLinear::new("img_attn.proj", &["attn.to_out.0"]);
    /// Image-stream MLP, first layer.
    pub const IMG_MLP_0: FluxLinear = FluxLinear::new("img_mlp.0", &["ff.net.0.proj"]);
    /// Image-stream MLP, second layer.
    pub const IMG_MLP_2: FluxLinear = FluxLinear::new("img_mlp.2", &["ff.net.2"]);
    /// Text-stream modulation.
    pub const TXT_MOD: FluxLinear = FluxLinear::new("txt_mod.lin", &["norm1_context.linear"]);
    /// Text-stream fused q, k, v projection.
    pub const TXT_QKV: FluxLinear = FluxLinear::new(
        "txt_attn.qkv",
        &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    );
    /// Text-stream attention output projection.
    pub const TXT_PROJ: FluxLinear = FluxLinear::new("txt_attn.proj", &["attn.to_add_out"]);
    /// Text-stream MLP, first layer.
    pub const TXT_MLP_0: FluxLinear = FluxLinear::new("txt_mlp.0", &["ff_context.net.0.proj"]);
    /// Text-stream MLP, second layer.
    pub const TXT_MLP_2: FluxLinear = FluxLinear::new("txt_mlp.2", &["ff_context.net.2"]);
}

/// The linears of one single-stream block, named inside `single_blocks.N.`.
pub mod single {
    use super::FluxLinear;

    /// Fused q, k, v and MLP input projection.
    pub const LINEAR1: FluxLinear = FluxLinear::new(
        "linear1",
        &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    );
    /// Attention + MLP output projection.
    pub const LINEAR2: FluxLinear = FluxLinear::new("linear2", &["proj_out"]);
    /// Modulation.
    pub const MODULATION: FluxLinear = FluxLinear::new("modulation.lin", &["norm.linear"]);
}

/// The linears outside the blocks, named by their full path.
pub mod outer {
    use super::FluxLinear;

    /// Image (latent patch) input projection.
    pub const IMG_IN: FluxLinear = FluxLinear::new("img_in", &["x_embedder"]);
    /// Text (T5) input projection.
    pub const TXT_IN: FluxLinear = FluxLinear::new("txt_in", &["context_embedder"]);
    /// Timestep embedder, first layer.
    pub const TIME_IN: FluxLinear = FluxLinear::new(
        "time_in.in_layer",
        &["time_text_embed.timestep_embedder.linear_1"],
    );
    /// Timestep embedder, second layer.
    pub const TIME_OUT: FluxLinear = FluxLinear::new(
        "time_in.out_layer",
        &["time_text_embed.timestep_embedder.linear_2"],
    );
    /// Pooled-text (CLIP) embedder, first layer.
    pub const VECTOR_IN: FluxLinear = FluxLinear::new(
        "vector_in.in_layer",
        &["time_text_embed.text_embedder.linear_1"],
    );
    /// Pooled-text (CLIP) embedder, second layer.
    pub const VECTOR_OUT: FluxLinear = FluxLinear::new(
        "vector_in.out_layer",
        &["time_text_embed.text_embedder.linear_2"],
    );
    /// Guidance embedder, first layer (guidance-distilled models only).
    pub const GUIDANCE_IN: FluxLinear = FluxLinear {
        needs_guidance: true,
        ..FluxLinear::new(
            "guidance_in.in_layer",
            &["time_text_embed.guidance_embedder.linear_1"],
        )
    };
    /// Guidance embedder, second layer (guidance-distilled models only).
    pub const GUIDANCE_OUT: FluxLinear = FluxLinear {
        needs_guidance: true,
        ..FluxLinear::new(
            "guidance_in.out_layer",
            &["time_text_embed.guidance_embedder.linear_2"],
        )
    };
    /// Final output projection.
    pub const FINAL_LINEAR: FluxLinear = FluxLinear::new("final_layer.linear", &["proj_out"]);
    /// Final modulation; diffusers' `norm_out.linear` holds its two output halves swapped (BFL:
    /// shift, scale; diffusers: scale, shift).
    pub const FINAL_MODULATION: FluxLinear =
        FluxLinear::new("final_layer.adaLN_modulation.1", &["norm_out.linear"]);
}

/// Every double-block linear, in kohya's order.
pub const DOUBLE_BLOCK_LINEARS: [FluxLinear; 10] = [
    double::IMG_QKV,
    double::IMG_PROJ,
    double::IMG_MLP_0,
    double::IMG_MLP_2,
    double::IMG_MOD,
    double::TXT_QKV,
    double::TXT_PROJ,
    double::TXT_MLP_0,
    double::TXT_MLP_2,
    double::TXT_MOD,
];

/// Every single-block linear.
pub const SINGLE_BLOCK_LINEARS: [FluxLinear; 3] =
    [single::LINEAR1, single::LINEAR2, single::MODULATION];

/// Every linear outside the blocks.
pub const OUTER_LINEARS: [FluxLinear; 10] = [
    outer::IMG_IN,
    outer::TXT_IN,
    outer::TIME_IN,
    outer::TIME_OUT,
    outer::VECTOR_IN,
    outer::VECTOR_OUT,
    outer::GUIDANCE_IN,
    outer::GUIDANCE_OUT,
    outer::FINAL_LINEAR,
    outer::FINAL_MODULATION,
];

/// The BFL path of block linear `linear` in double block `index` (`double_blocks.3.img_attn.qkv`).
pub fn double_block_path(index: usize, linear: &FluxLinear) -> String {
    format!("double_blocks.{index}.{}", linear.bfl)
}

/// The BFL path of block linear `linear` in single block `index` (`single_blocks.3.linear1`).
pub fn single_block_path(index: usize, linear: &FluxLinear) -> String {
    format!("single_blocks.{index}.{}", linear.bfl)
}
