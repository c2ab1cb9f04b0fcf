//! The CLIP and T5 tokenizers, from the `tokenizer.json` files of a Flux model folder
//! (`tokenizer/` for CLIP, `tokenizer_2/` for T5), with the padding and truncation of the Flux
//! pipelines (`padding="max_length", truncation=True`):
//!
//! - CLIP: `<|startoftext|> … <|endoftext|>`, truncated to 77 tokens (the EOS is kept), padded
//!   with `<|endoftext|>` to 77.
//! - T5: `… </s>`, truncated to the max length (512 dev, 256 schnell; the EOS is kept), padded
//!   with `<pad>` (id 0).
//!
//! Normalisation, pre-tokenisation, the BPE/Unigram model and the special tokens all come from
//! the file, through the `tokenizers` crate (the same engine transformers uses).

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::{FluxError, Result};

/// CLIP's context length.
pub const CLIP_MAX_LENGTH: usize = 77;
/// T5 length for FLUX.1-dev.
pub const T5_MAX_LENGTH_DEV: usize = 512;
/// T5 length for FLUX.1-schnell.
pub const T5_MAX_LENGTH_SCHNELL: usize = 256;

/// One tokenized text, exactly `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, padded.
    pub ids: Vec<u32>,
    /// 1 for text and special tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

/// A `tokenizer.json` with fixed-length padding and truncation.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    max_length: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl TextTokenizer {
    /// CLIP tokenizer: 77 tokens, padded with `<|endoftext|>`. `path` is a `tokenizer.json`, a
    /// folder holding one, or a Flux model folder (its `tokenizer/`).
    pub fn clip(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(
            resolve(path.as_ref(), "tokenizer"),
            CLIP_MAX_LENGTH,
            "<|endoftext|>",
        )
    }

    /// T5 tokenizer: `max_length` tokens ([`T5_MAX_LENGTH_DEV`] or [`T5_MAX_LENGTH_SCHNELL`]),
    /// padded with `<pad>`. `path` as for [`clip`](Self::clip), with `tokenizer_2/`.
    pub fn t5(path: impl AsRef<Path>, max_length: usize) -> Result<Self> {
        Self::from_file(resolve(path.as_ref(), "tokenizer_2"), max_length, "<pad>")
    }

    /// Any `tokenizer.json`, padded with `pad_token` and truncated to `max_length`.
    pub fn from_file(path: impl AsRef<Path>, max_length: usize, pad_token: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let err = |message: String| FluxError::Tokenizer {
            path: path.clone(),
            message,
        };
        let mut inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            err(format!(
                "cannot load: {e}; point at the model's tokenizer.json"
            ))
        })?;
        let pad_id = inner.token_to_id(pad_token).ok_or_else(|| {
            err(format!(
                "has no padding token `{pad_token}`; it is not the expected tokenizer"
            ))
        })?;
        let specials = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_length <= specials {
            return Err(err(format!(
                "max_length {max_length} leaves no room beside {specials} special tokens"
            )));
        }
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(format!("cannot set truncation: {e}")))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.to_string(),
        }));
        Ok(Self {
            inner,
            path,
            max_length,
        })
    }

    /// The fixed output length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokenizes one text (with special tokens, truncated and padded to `max_length`).
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| FluxError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            attention_mask: enc.get_attention_mask().to_vec(),
        })
    }

    /// Tokenizes several texts.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }
}

fn resolve(path: &Path, sub: &str) -> PathBuf {
    if path.is_dir() {
        let nested = path.join(sub).join("tokenizer.json");
        if nested.is_file() {
            return nested;
        }
        return path.join("tokenizer.json");
    }
    path.to_path_buf()
}

/// Token ids `[N, L]` as an int tensor (all rows must have the same length, as the tokenizers
/// produce).
pub fn ids_tensor<B: Backend>(tokens: &[Tokens], device: &B::Device) -> Result<Tensor<B, 2, Int>> {
    rows_tensor(tokens.iter().map(|t| t.ids.as_slice()), "input_ids", device)
}

/// Attention masks `[N, L]` (1 = token, 0 = padding) as an int tensor.
pub fn mask_tensor<B: Backend>(tokens: &[Tokens], device: &B::Device) -> Result<Tensor<B, 2, Int>> {
    rows_tensor(
        tokens.iter().map(|t| t.attention_mask.as_slice()),
        "attention_mask",
        device,
    )
}

fn rows_tensor<'a, B: Backend>(
    rows: impl Iterator<Item = &'a [u32]>,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>> {
    let rows: Vec<&[u32]> = rows.collect();
    let l = rows.first().map_or(0, |r| r.len());
    if rows.is_empty() || l == 0 || rows.iter().any(|r| r.len() != l) {
        return Err(FluxError::Input {
            name: name.into(),
            message: "expected at least one row, all of the same non-zero length".into(),
        });
    }
    let data: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&v| v as i64))
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(data, [rows.len(), l]),
        device,
    ))
}
