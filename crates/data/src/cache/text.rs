//! Text-embedding cache: one entry per (caption text, encoder). Entries hold `t5` (T5 hidden
//! states, `[tokens, 4096]` for Flux), `clip_pooled` (`[768]`) and, from an encoder that masks
//! T5's padding (`apply_t5_attn_mask`), `t5_mask` (`[tokens]`, 1 for a token, 0 for padding).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use fluxlora_io::HostTensor;

use super::{digest, BuildOptions, BuildStats, CacheDir};
use crate::error::{DataError, Result};

/// The text conditioning of one caption.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbedding {
    /// T5 hidden states of the caption's tokens, `[tokens, 4096]` for Flux.
    pub t5: HostTensor,
    /// T5's attention mask, `[tokens]`: 1 for text and special tokens, 0 for padding. Present
    /// when the encoder masks padding (`apply_t5_attn_mask`); the transformer then hides the
    /// padding from its attention too, as kohya does.
    pub t5_mask: Option<HostTensor>,
    /// CLIP's pooled text embedding, `[768]`.
    pub clip_pooled: HostTensor,
}

/// The text encoders (T5 + CLIP), implemented by the model crate.
pub trait TextEncoder {
    /// Everything that changes the output: model file hashes, tokenizer, T5 max length, dtype.
    fn identity(&self) -> String;
    /// Encodes one caption (possibly "", for caption dropout).
    fn encode(&self, caption: &str) -> Result<TextEmbedding>;
}

/// A folder of text entries for one encoder.
#[derive(Debug, Clone)]
pub struct TextCache {
    dir: CacheDir,
    encoder: String,
}

impl TextCache {
    /// Opens (creating) the cache folder for an encoder identity.
    pub fn open(dir: &Path, encoder_identity: &str) -> Result<Self> {
        Ok(Self {
            dir: CacheDir::create(dir)?,
            encoder: encoder_identity.to_string(),
        })
    }

    /// The digest (file stem) of a caption.
    pub fn digest(&self, caption: &str) -> String {
        digest(&[
            ("kind", "text"),
            ("encoder", &self.encoder),
            ("caption", caption),
        ])
    }

    /// A valid entry, or `None`.
    pub fn load(&self, caption: &str) -> Option<TextEmbedding> {
        let mut t = self
            .dir
            .load(&self.digest(caption), &["t5", "clip_pooled"])?;
        Some(TextEmbedding {
            t5: t.remove("t5")?,
            t5_mask: t.remove("t5_mask"),
            clip_pooled: t.remove("clip_pooled")?,
        })
    }

    /// Makes sure every caption has a valid entry. Stops at the first encoder error, keeping
    /// everything written so far.
    pub fn build(
        &self,
        captions: &[String],
        encoder: &dyn TextEncoder,
        opts: &BuildOptions,
    ) -> Result<BuildStats> {
        let start = Instant::now();
        let mut stats = self.dir.begin_build(&self.encoder, &encoder.identity())?;
        let unique: BTreeSet<&String> = captions.iter().collect();
        let todo: Vec<&String> = unique
            .into_iter()
            .filter(|c| {
                let hit = self.load(c).is_some();
                stats.reused += hit as usize;
                !hit
            })
            .collect();
        let bar = opts.progress.bar(todo.len() as u64, "encoding captions");
        for caption in todo {
            let emb = encoder.encode(caption).map_err(|e| DataError::Encoder {
                encoder: self.encoder.clone(),
                item: format!("caption {caption:?}"),
                message: e.to_string(),
            })?;
            let meta = BTreeMap::from([
                ("caption".to_string(), caption.clone()),
                ("encoder".to_string(), self.encoder.clone()),
            ]);
            let mut tensors = vec![("t5", &emb.t5), ("clip_pooled", &emb.clip_pooled)];
            if let Some(m) = &emb.t5_mask {
                tensors.push(("t5_mask", m));
            }
            self.dir.store(&self.digest(caption), &tensors, meta)?;
            stats.built += 1;
            bar.inc(1);
        }
        bar.finish();
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Deletes entries for captions not in `captions`.
    pub fn prune(&self, captions: &[String]) -> Result<usize> {
        let keep: BTreeSet<String> = captions.iter().map(|c| self.digest(c)).collect();
        self.dir.prune(&keep)
    }
}
