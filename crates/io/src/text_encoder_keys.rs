//! Checkpoint key layouts of the text encoders, CLIP-L and T5: the key that identifies each
//! model's weights, and the prefix a file puts before every key (`text_model.`, ComfyUI bundles'
//! `text_encoders.clip_l.transformer.`, …). The models (`fluxlora-flux`'s `clip` and `t5`) are
//! built from the names after the prefix.

/// How to recognise one text encoder's weights in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEncoderKeys {
    /// The model, as messages name it (`CLIP text model`).
    pub model: &'static str,
    /// A key every checkpoint of the model holds, after its prefix.
    pub probe: &'static str,
    /// What a checkpoint must hold, for the message when none is found.
    pub expected: &'static str,
}

impl TextEncoderKeys {
    /// The prefix before [`probe`](Self::probe) in the first key that ends with it; `None` when
    /// no key does (the checkpoint is not this model).
    pub fn detect_prefix<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
        key_prefix(names, self.probe)
    }
}

/// CLIP text model keys: `text_model.embeddings.…` (FLUX.1's `text_encoder/`, ComfyUI's
/// `clip_l.safetensors`, transformers < 5), `embeddings.…` (transformers ≥ 5
/// `save_pretrained`), or either under a further prefix.
pub const CLIP_KEYS: TextEncoderKeys = TextEncoderKeys {
    model: "CLIP text model",
    probe: "embeddings.token_embedding.weight",
    expected: "`[text_model.]embeddings.token_embedding.weight` (transformers CLIPTextModel keys)",
};

/// T5 encoder keys: `encoder.block.N.layer.…` and `shared.weight`, optionally prefixed
/// (ComfyUI's `t5xxl_*.safetensors`, a diffusers `text_encoder_2/` folder, a full T5).
pub const T5_KEYS: TextEncoderKeys = TextEncoderKeys {
    model: "T5 encoder",
    probe: "encoder.block.0.layer.0.SelfAttention.q.weight",
    expected: "`encoder.block.0.layer.0.SelfAttention.q.weight` (transformers T5EncoderModel keys)",
};

/// What stands before `probe` in the first of `names` that ends with it; `None` when none does.
pub fn key_prefix<'a>(names: impl IntoIterator<Item = &'a str>, probe: &str) -> Option<String> {
    names
        .into_iter()
        .find(|n| n.ends_with(probe))
        .map(|n| n[..n.len() - probe.len()].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_what_stands_before_the_probe() {
        let comfy =
            ["text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"];
        assert_eq!(
            CLIP_KEYS.detect_prefix(comfy).as_deref(),
            Some("text_encoders.clip_l.transformer.text_model.")
        );
        assert_eq!(
            T5_KEYS
                .detect_prefix(["encoder.block.0.layer.0.SelfAttention.q.weight"])
                .as_deref(),
            Some("")
        );
        assert_eq!(T5_KEYS.detect_prefix(comfy), None);
    }
}
