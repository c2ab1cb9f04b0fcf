//! Where training batches come from: the [`BatchSource`] trait (next micro-batch, and a
//! position to save and restore for resume) and [`CachedBatches`], the real source over the data
//! crate's [`Loader`] with its latent and text caches.

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use fluxlora_data::{Dataset, LatentCache, LatentKey, Loader, LoaderState, Sample, TextCache};
use fluxlora_flux::latents;

use crate::error::TrainError;
use crate::step::{ControlLatents, TrainBatch};

/// A resumable stream of training micro-batches.
pub trait BatchSource<B: Backend> {
    /// The next micro-batch, on `device`.
    fn next_batch(&mut self, device: &B::Device) -> Result<TrainBatch<B>, TrainError>;
    /// Where the source is (saved in checkpoints).
    fn position(&self) -> serde_json::Value;
    /// Continues from a saved position.
    fn restore(&mut self, position: &serde_json::Value) -> Result<(), TrainError>;
    /// Whole epochs read so far (an epoch counts once its last micro-batch has been handed
    /// out): drives `save_every_n_epochs` and is kohya's `ss_epoch` in the saved metadata.
    fn epochs_completed(&self) -> u64;
}

/// Batches of cached latents and text embeddings in the loader's order.
#[derive(Debug)]
pub struct CachedBatches {
    loader: Loader,
    latents: LatentCache,
    texts: TextCache,
}

impl CachedBatches {
    /// A source over `loader` (built caches required: see `LatentCache::build` /
    /// `TextCache::build`).
    pub fn new(loader: Loader, latents: LatentCache, texts: TextCache) -> Self {
        Self {
            loader,
            latents,
            texts,
        }
    }

    /// The loader.
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The latent cache.
    pub fn latent_cache(&self) -> &LatentCache {
        &self.latents
    }

    /// The text-embedding cache.
    pub fn text_cache(&self) -> &TextCache {
        &self.texts
    }
}

fn missing(what: &str, name: String) -> TrainError {
    TrainError::Shape {
        what: format!("{what} cache"),
        message: format!(
            "no entry for {name}; build the caches before training (the dataset or encoder changed \
             since they were built)"
        ),
    }
}

fn stack<B: Backend, const D: usize>(
    parts: Vec<(Vec<usize>, Vec<f32>)>,
    what: &str,
    device: &B::Device,
) -> Result<Tensor<B, D>, TrainError> {
    let first = parts.first().map(|p| p.0.clone()).unwrap_or_default();
    if first.len() + 1 != D {
        return Err(TrainError::Shape {
            what: what.into(),
            message: format!("entries have shape {first:?}, expected rank {}", D - 1),
        });
    }
    let mut data = Vec::new();
    for (shape, d) in &parts {
        if *shape != first {
            return Err(TrainError::Shape {
                what: what.into(),
                message: format!(
                    "a batch mixes shapes {first:?} and {shape:?}; entries of one batch must match \
                     (same bucket and T5 length)"
                ),
            });
        }
        data.extend_from_slice(d);
    }
    let mut shape = vec![parts.len()];
    shape.extend(first);
    Ok(Tensor::from_data(TensorData::new(data, shape), device))
}

/// The micro-batch of `samples` of `dataset`, read from the caches: packed latents, their
/// alpha masks (packed like the latents), T5 tokens and pooled CLIP vectors, and the Kontext
/// controls' packed latents.
pub fn cached_batch<B: Backend>(
    dataset: &Dataset,
    samples: &[Sample],
    latents: &LatentCache,
    texts: &TextCache,
    device: &B::Device,
) -> Result<TrainBatch<B>, TrainError> {
    let (mut lat, mut masks, mut t5, mut pooled, mut is_reg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut t5_masks, mut controls) = (Vec::new(), Vec::new());
    for s in samples {
        let key = LatentKey::of(dataset, s);
        let item_path = dataset
            .items
            .get(s.item)
            .map(|i| i.path.display().to_string())
            .unwrap_or_default();
        let cached = latents
            .load(&key)
            .ok_or_else(|| missing("latent", item_path.clone()))?;
        let text = texts
            .load(&s.caption)
            .ok_or_else(|| missing("text", format!("the caption of {item_path}")))?;
        masks.push(cached.mask.map(|m| (m.shape, m.data)));
        controls.push(cached.control.map(|m| (m.shape, m.data)));
        lat.push((cached.latent.shape, cached.latent.data));
        let tokens = text.t5.shape.first().copied().unwrap_or(0);
        t5_masks.push(match text.t5_mask {
            Some(m) if m.shape == [tokens] => Some((m.shape, m.data)),
            Some(m) => {
                return Err(TrainError::Shape {
                    what: format!("cached text of {item_path}"),
                    message: format!(
                        "t5_mask {:?} does not fit {tokens} T5 tokens; delete the text cache",
                        m.shape
                    ),
                })
            }
            None => None,
        });
        t5.push((text.t5.shape, text.t5.data));
        pooled.push((text.clip_pooled.shape, text.clip_pooled.data));
        is_reg.push(s.is_reg);
    }
    let x: Tensor<B, 4> = stack(lat, "latents", device)?;
    let [b, c, hh, ww] = x.dims();
    let tokens = latents::pack(x)?;
    let mask = if masks.iter().any(Option::is_some) {
        // Samples without a mask train on every element (mask 1).
        let parts = masks
            .into_iter()
            .map(|m| m.unwrap_or_else(|| (vec![1, hh, ww], vec![1.0; hh * ww])))
            .collect();
        let m: Tensor<B, 4> = stack(parts, "alpha masks", device)?;
        // The mask at latent resolution, repeated over channels and packed like the latents:
        // the same per-element weights kohya applies to unpacked latents.
        Some(latents::pack(m.expand([b, c, hh, ww]))?)
    } else {
        None
    };
    // One encoder wrote every entry, so either all have a padding mask or none has.
    let with_mask = t5_masks.iter().filter(|m| m.is_some()).count();
    let txt_mask = match with_mask {
        0 => None,
        n if n == t5_masks.len() => Some(stack(
            t5_masks.into_iter().flatten().collect(),
            "T5 masks",
            device,
        )?),
        _ => {
            return Err(TrainError::Shape {
                what: "cached text of a batch".into(),
                message: "some entries carry a T5 padding mask and some do not; delete the \
                          text cache so one encoder writes it again"
                    .into(),
            })
        }
    };
    // Kontext pairs: every sample of a batch has a control (one dataset, one subset kind).
    let control = match controls.iter().filter(|c| c.is_some()).count() {
        0 => None,
        n if n == controls.len() => {
            let x: Tensor<B, 4> = stack(
                controls.into_iter().flatten().collect(),
                "control latents",
                device,
            )?;
            let [_, _, ch, cw] = x.dims();
            Some(ControlLatents {
                latents: latents::pack(x)?,
                grid: (ch / 2, cw / 2),
            })
        }
        _ => {
            return Err(TrainError::Shape {
                what: "training batch".into(),
                message: "some samples are edit pairs (with a control image) and some are not; \
                          give every subset of the dataset a control_directory"
                    .into(),
            })
        }
    };
    Ok(TrainBatch {
        latents: tokens,
        txt_mask,
        grid: (hh / 2, ww / 2),
        txt: stack(t5, "T5 embeddings", device)?,
        y: stack(pooled, "CLIP pooled vectors", device)?,
        mask,
        is_reg,
        control,
    })
}

impl<B: Backend> BatchSource<B> for CachedBatches {
    fn next_batch(&mut self, device: &B::Device) -> Result<TrainBatch<B>, TrainError> {
        let batch = self.loader.next_batch();
        let dataset: &Arc<Dataset> = self.loader.dataset();
        cached_batch(dataset, &batch.samples, &self.latents, &self.texts, device)
    }

    fn position(&self) -> serde_json::Value {
        serde_json::to_value(self.loader.state()).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<(), TrainError> {
        let state: LoaderState =
            serde_json::from_value(position.clone()).map_err(|e| TrainError::Shape {
                what: "saved loader position".into(),
                message: format!("{e}; the checkpoint was written with a different batch source"),
            })?;
        self.loader = Loader::resume(self.loader.dataset().clone(), state)?;
        Ok(())
    }

    fn epochs_completed(&self) -> u64 {
        self.loader.epochs_completed()
    }
}
