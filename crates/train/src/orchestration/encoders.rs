//! The Flux encoders behind the data crate's cache traits: [`FluxLatentEncoder`] (the
//! autoencoder, for [`LatentEncoder`]) and [`FluxTextEncoder`] (CLIP-L pooled + T5 hidden
//! states, for [`TextEncoder`]). Each turns host buffers into device tensors, runs the model and
//! brings the result back, so the caches stay free of Burn; drop them after the caches are built.
//!
//! Identities (what a cache entry is keyed by besides its input) name every weight file with its
//! size and modification time, the storage dtype, and every option that changes the output
//! (autoencoder tiling; T5 length and mask), so a changed model or setting rebuilds the entries.

use std::path::Path;

use burn::tensor::{backend::Backend, DType, Tensor};
use fluxlora_data::{DataError, LatentEncoder, TextEmbedding, TextEncoder};
use fluxlora_flux::host::{download, upload};
use fluxlora_flux::tokenizer::{ids_tensor, mask_tensor};
use fluxlora_flux::{Autoencoder, ClipTextModel, T5Encoder, TextTokenizer, TileOptions};
use fluxlora_io::HostTensor;

use crate::error::TrainError;
use crate::orchestration::base::BaseModel;

/// `path (bytes, mtime)` of a file, or of every file in a folder (sorted), for identities.
pub fn file_identity(path: &Path) -> String {
    let one = |p: &Path| {
        let meta = std::fs::metadata(p).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        format!("{}({len},{mtime})", p.display())
    };
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.iter().map(|p| one(p)).collect::<Vec<_>>().join("+")
    } else {
        one(path)
    }
}

fn encoder_error(e: impl std::fmt::Display) -> DataError {
    DataError::Encoder {
        encoder: "flux".into(),
        item: String::new(),
        message: e.to_string(),
    }
}

/// The autoencoder as a [`LatentEncoder`]: `[3, H, W]` in [−1, 1] → the Flux latent `[C, H/8,
/// W/8]`.
pub struct FluxLatentEncoder<B: Backend> {
    ae: Autoencoder<B>,
    tiles: Option<TileOptions>,
    device: B::Device,
    identity: String,
}

impl<B: Backend> FluxLatentEncoder<B> {
    /// Wraps a loaded autoencoder; `weights` is the file or folder it came from (for the
    /// identity); `tiles` switches to tiled encoding for large images.
    pub fn new(
        ae: Autoencoder<B>,
        weights: &Path,
        tiles: Option<TileOptions>,
        device: B::Device,
    ) -> Self {
        let identity = Self::identity_of(weights, ae.dtype(), tiles.as_ref());
        Self {
            ae,
            tiles,
            device,
            identity,
        }
    }

    /// The identity of the encoder `new` would make, without loading it. A model folder's
    /// `config.json` (scale, shift, groups) is part of its file identity.
    pub fn identity_of(weights: &Path, dtype: DType, tiles: Option<&TileOptions>) -> String {
        format!(
            "flux-ae/{}/dtype={dtype:?}/tiles={tiles:?}",
            file_identity(weights)
        )
    }

    /// Loads the base model's autoencoder (f32).
    pub fn load(base: &BaseModel, device: &B::Device) -> Result<Self, TrainError> {
        Ok(Self::new(
            base.load_autoencoder(None, device)?,
            &base.ae,
            None,
            device.clone(),
        ))
    }

    /// The wrapped autoencoder (e.g. to decode samples), consuming the encoder.
    pub fn into_autoencoder(self) -> Autoencoder<B> {
        self.ae
    }
}

impl<B: Backend> LatentEncoder for FluxLatentEncoder<B> {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn encode(&self, image: &HostTensor) -> Result<HostTensor, DataError> {
        if image.shape.len() != 3 {
            return Err(encoder_error(format!(
                "image of shape {:?}, expected [3, H, W]",
                image.shape
            )));
        }
        let mut shape = vec![1];
        shape.extend_from_slice(&image.shape);
        let x = upload::<B, 4>(
            &HostTensor {
                shape,
                data: image.data.clone(),
            },
            &self.device,
        )
        .map_err(encoder_error)?;
        let z = match &self.tiles {
            Some(t) => self.ae.encode_tiled(x, t),
            None => self.ae.encode(x),
        }
        .map_err(encoder_error)?;
        let [_, c, h, w] = z.dims();
        download(z.reshape([c, h, w])).map_err(encoder_error)
    }
}

/// CLIP-L + T5 as a [`TextEncoder`]: a caption → T5 hidden states `[L, d_t5]` and CLIP's pooled
/// vector `[d_clip]`.
pub struct FluxTextEncoder<B: Backend> {
    clip: ClipTextModel<B>,
    t5: T5Encoder<B>,
    clip_tokenizer: TextTokenizer,
    t5_tokenizer: TextTokenizer,
    t5_mask: bool,
    device: B::Device,
    identity: String,
}

impl<B: Backend> FluxTextEncoder<B> {
    /// Loads both text encoders and tokenizers of `base` (f32). `t5_mask` hides T5 padding
    /// inside T5's own attention (kohya's `apply_t5_attn_mask`; BFL inference does not).
    pub fn load(
        base: &BaseModel,
        t5_max_length: usize,
        t5_mask: bool,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let (clip_tokenizer, t5_tokenizer) = base.tokenizers(t5_max_length)?;
        let clip = base.load_clip(None, device)?;
        let t5 = base.load_t5(None, device)?;
        let identity = Self::identity_of(base, t5_max_length, t5_mask, clip.dtype());
        Ok(Self {
            clip,
            t5,
            clip_tokenizer,
            t5_tokenizer,
            t5_mask,
            device: device.clone(),
            identity,
        })
    }

    /// The identity of the encoder `load` would make, without loading it.
    pub fn identity_of(
        base: &BaseModel,
        t5_max_length: usize,
        t5_mask: bool,
        dtype: DType,
    ) -> String {
        // Masked entries also keep the mask for the transformer; those written before it was
        // kept must not be reused.
        let mask_kept = if t5_mask { "+kept" } else { "" };
        format!(
            "flux-text/clip={}/t5={}/tok={}+{}/t5_len={t5_max_length}/\
             t5_mask={t5_mask}{mask_kept}/dtype={dtype:?}",
            file_identity(&base.clip),
            file_identity(&base.t5),
            file_identity(&base.clip_tokenizer),
            file_identity(&base.t5_tokenizer),
        )
    }

    /// Encodes one caption to device tensors: T5 `[1, L, d]` and pooled `[1, d]`.
    pub fn encode_tensors(
        &self,
        caption: &str,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), TrainError> {
        let clip_tokens = self.clip_tokenizer.encode(caption)?;
        let t5_tokens = self.t5_tokenizer.encode(caption)?;
        let clip_ids = ids_tensor::<B>(std::slice::from_ref(&clip_tokens), &self.device)?;
        let t5_ids = ids_tensor::<B>(std::slice::from_ref(&t5_tokens), &self.device)?;
        let mask = if self.t5_mask {
            Some(mask_tensor::<B>(
                std::slice::from_ref(&t5_tokens),
                &self.device,
            )?)
        } else {
            None
        };
        let pooled = self.clip.forward(clip_ids)?.pooled;
        let hidden = self.t5.forward(t5_ids, mask)?;
        Ok((hidden, pooled))
    }
}

impl<B: Backend> TextEncoder for FluxTextEncoder<B> {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn encode(&self, caption: &str) -> Result<TextEmbedding, DataError> {
        let (hidden, pooled) = self.encode_tensors(caption).map_err(encoder_error)?;
        let [_, l, d] = hidden.dims();
        let [_, p] = pooled.dims();
        let t5 = download(hidden.reshape([l, d])).map_err(encoder_error)?;
        let t5_mask = if self.t5_mask {
            let tokens = self.t5_tokenizer.encode(caption).map_err(encoder_error)?;
            let m = tokens.attention_mask.iter().map(|&v| v as f32).collect();
            Some(HostTensor::new(vec![l], m).map_err(encoder_error)?)
        } else {
            None
        };
        Ok(TextEmbedding {
            t5,
            t5_mask,
            clip_pooled: download(pooled.reshape([p])).map_err(encoder_error)?,
        })
    }
}
