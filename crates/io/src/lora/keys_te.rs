//! Text-encoder module names.
//!
//! Canonical keys for text-encoder LoRA modules are the Hugging Face module path behind a
//! component prefix: [`TE_CLIP`] (`te1:`, CLIP-L, `CLIPTextModel`, e.g.
//! `te1:text_model.encoder.layers.0.self_attn.q_proj`) and [`TE_T5`] (`te3:`, T5-XXL,
//! `T5EncoderModel`, e.g. `te3:encoder.block.0.layer.0.SelfAttention.q`). The prefixes follow
//! kohya's `lora_te1_` / `lora_te3_`.
//!
//! Underscored names (kohya, OneTrainer) lose the dots; [`clip_from_underscored`] and
//! [`t5_from_underscored`] restore them for the linears LoRA trainers target (CLIP attention
//! q/k/v/out and MLP fc1/fc2; T5 attention q/k/v/o and gated-MLP wi_0/wi_1/wo).

use super::keys_flux::indexed;

/// Canonical prefix of CLIP-L modules.
pub const TE_CLIP: &str = "te1:";
/// Canonical prefix of T5-XXL modules.
pub const TE_T5: &str = "te3:";

/// Which model a canonical key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The Flux transformer (key = BFL path).
    Transformer,
    /// CLIP-L (key = `te1:` + HF path).
    ClipL,
    /// T5-XXL (key = `te3:` + HF path).
    T5,
}

/// Splits a canonical key into its component and the module path inside it.
pub fn split_component(key: &str) -> (Component, &str) {
    if let Some(p) = key.strip_prefix(TE_CLIP) {
        (Component::ClipL, p)
    } else if let Some(p) = key.strip_prefix(TE_T5) {
        (Component::T5, p)
    } else {
        (Component::Transformer, key)
    }
}

const CLIP_LAYER: &[&str] = &[
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
];

const T5_BLOCK: &[&str] = &[
    "layer.0.SelfAttention.q",
    "layer.0.SelfAttention.k",
    "layer.0.SelfAttention.v",
    "layer.0.SelfAttention.o",
    "layer.1.DenseReluDense.wi_0",
    "layer.1.DenseReluDense.wi_1",
    "layer.1.DenseReluDense.wo",
    "layer.1.DenseReluDense.wi",
];

fn from_underscored(s: &str, prefix_us: &str, prefix: &str, table: &[&str]) -> Option<String> {
    let (i, rest) = indexed(s, prefix_us, '_')?;
    table
        .iter()
        .find(|t| t.replace('.', "_") == rest)
        .map(|t| format!("{prefix}.{i}.{t}"))
}

/// `text_model_encoder_layers_0_self_attn_q_proj` →
/// `text_model.encoder.layers.0.self_attn.q_proj`.
pub fn clip_from_underscored(s: &str) -> Option<String> {
    from_underscored(
        s,
        "text_model_encoder_layers_",
        "text_model.encoder.layers",
        CLIP_LAYER,
    )
}

/// `encoder_block_0_layer_1_DenseReluDense_wi_0` → `encoder.block.0.layer.1.DenseReluDense.wi_0`.
pub fn t5_from_underscored(s: &str) -> Option<String> {
    from_underscored(s, "encoder_block_", "encoder.block", T5_BLOCK)
}

/// Whether `path` (no prefix) is a CLIP linear this crate can name in every format.
pub fn is_clip_module(path: &str) -> bool {
    clip_from_underscored(&path.replace('.', "_")).as_deref() == Some(path)
}

/// Whether `path` (no prefix) is a T5 linear this crate can name in every format.
pub fn is_t5_module(path: &str) -> bool {
    t5_from_underscored(&path.replace('.', "_")).as_deref() == Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscored_names_round_trip() {
        let c = "text_model.encoder.layers.11.mlp.fc2";
        assert_eq!(
            clip_from_underscored(&c.replace('.', "_")).as_deref(),
            Some(c)
        );
        let t = "encoder.block.23.layer.1.DenseReluDense.wi_1";
        assert_eq!(
            t5_from_underscored(&t.replace('.', "_")).as_deref(),
            Some(t)
        );
        assert!(is_clip_module(
            "text_model.encoder.layers.0.self_attn.out_proj"
        ));
        assert!(!is_clip_module("text_model.embeddings.token_embedding"));
        assert_eq!(
            split_component("te3:encoder.block.0.layer.0.SelfAttention.q").0,
            Component::T5
        );
        assert_eq!(
            split_component("img_in"),
            (Component::Transformer, "img_in")
        );
    }
}
