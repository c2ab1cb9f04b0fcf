//! Latent cache: one entry per (image content, bucket, crop, flip, mask use) and encoder.
//! Entries hold `latent` (whatever shape the encoder returns, e.g. `[16, H/8, W/8]`) and, for
//! subsets with `alpha_mask`, `mask` — the alpha mask average-pooled to the latent's spatial
//! size — and, for Kontext edit pairs, `control` — the control image's latent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use fluxlora_io::HostTensor;
use rayon::prelude::*;

use super::{digest, BuildOptions, BuildStats, CacheDir};
use crate::bucket::{Bucket, CropRect};
use crate::dataset::{Dataset, Sample};
use crate::error::{DataError, Result};

/// Version of the pixel pipeline; bump when cropping/resizing/normalisation changes.
pub const PIXELS_VERSION: &str = "pixels-v1:lanczos3:chw:[-1,1]";

/// An image encoder (the Flux autoencoder), implemented by the model crate.
pub trait LatentEncoder {
    /// Everything about the encoder that changes its output: model file hash, dtype, scaling and
    /// shift factors... Entries made by another identity are not reused.
    fn identity(&self) -> String;
    /// Encodes `[3, H, W]` pixels in [-1, 1] to a latent `[C, h, w]`.
    fn encode(&self, image: &HostTensor) -> Result<HostTensor>;
}

/// The inputs that determine one latent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatentKey {
    /// SHA-256 (hex) of the image file's bytes.
    pub content_hash: String,
    /// The bucket (width, height) the crop is resized to.
    pub bucket: (u32, u32),
    /// The crop in source pixels: (x, y, width, height).
    pub crop: (u32, u32, u32, u32),
    /// Whether the image is mirrored horizontally.
    pub flip: bool,
    /// Whether a loss mask is stored: the subset has `alpha_mask` and the image has alpha.
    pub alpha_mask: bool,
    /// SHA-256 (hex) of the Kontext control image, whose latent is stored beside the target's
    /// (cropped, resized and flipped with it).
    pub control: Option<String>,
}

impl LatentKey {
    /// The key of a sample of `dataset`.
    pub fn of(dataset: &Dataset, sample: &Sample) -> LatentKey {
        let it = &dataset.items[sample.item];
        let Bucket { width, height } = sample.bucket;
        let CropRect {
            x,
            y,
            width: cw,
            height: ch,
        } = sample.crop;
        LatentKey {
            content_hash: it.info.content_hash.clone(),
            bucket: (width, height),
            crop: (x, y, cw, ch),
            flip: sample.flip,
            alpha_mask: dataset.subset_of(it).alpha_mask && it.info.has_alpha,
            control: it.control.as_ref().map(|c| c.info.content_hash.clone()),
        }
    }
}

/// A cached latent.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedLatent {
    /// The encoder's output for the sample's pixels, e.g. `[16, H/8, W/8]`.
    pub latent: HostTensor,
    /// The alpha mask average-pooled to the latent's size, `[1, h, w]` in [0, 1]; `None`
    /// unless the key's `alpha_mask` is set.
    pub mask: Option<HostTensor>,
    /// The control image's latent (same shape as `latent`); `None` unless the key's `control`
    /// is set.
    pub control: Option<HostTensor>,
}

/// A folder of latent entries for one encoder.
#[derive(Debug, Clone)]
pub struct LatentCache {
    dir: CacheDir,
    encoder: String,
}

impl LatentCache {
    /// Opens (creating) the cache folder for an encoder identity.
    pub fn open(dir: &Path, encoder_identity: &str) -> Result<Self> {
        Ok(Self {
            dir: CacheDir::create(dir)?,
            encoder: encoder_identity.to_string(),
        })
    }

    /// The digest (file stem) of a key.
    pub fn digest(&self, key: &LatentKey) -> String {
        let (x, y, w, h) = key.crop;
        let (bucket, crop) = (
            format!("{}x{}", key.bucket.0, key.bucket.1),
            format!("{x},{y},{w},{h}"),
        );
        let mut parts = vec![
            ("kind", "latent"),
            ("pixels", PIXELS_VERSION),
            ("encoder", &self.encoder),
            ("content", &key.content_hash),
            ("bucket", &bucket),
            ("crop", &crop),
            ("flip", if key.flip { "1" } else { "0" }),
            ("mask", if key.alpha_mask { "1" } else { "0" }),
        ];
        // Only pairs add a field, so entries of plain images keep their names.
        if let Some(c) = &key.control {
            parts.push(("control", c));
        }
        digest(&parts)
    }

    /// The file of a key.
    pub fn path(&self, key: &LatentKey) -> std::path::PathBuf {
        self.dir.path_for(&self.digest(key))
    }

    /// A valid entry, or `None` (missing, damaged, or made for another key).
    pub fn load(&self, key: &LatentKey) -> Option<CachedLatent> {
        let mut t = self.dir.load(&self.digest(key), &["latent"])?;
        let latent = t.remove("latent")?;
        let mask = t.remove("mask");
        let control = t.remove("control");
        if (key.alpha_mask && mask.is_none()) || (key.control.is_some() && control.is_none()) {
            return None;
        }
        Some(CachedLatent {
            latent,
            mask,
            control,
        })
    }

    /// Makes sure every sample has a valid entry: reuses valid ones, builds the rest (inputs
    /// prepared in parallel, encoder called in order on this thread). Stops at the first encoder
    /// error, keeping everything written so far.
    pub fn build(
        &self,
        dataset: &Dataset,
        samples: &[Sample],
        encoder: &dyn LatentEncoder,
        opts: &BuildOptions,
    ) -> Result<BuildStats> {
        let start = Instant::now();
        let mut stats = self.dir.begin_build(&self.encoder, &encoder.identity())?;
        let mut todo: BTreeMap<LatentKey, &Sample> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for s in samples {
            let key = LatentKey::of(dataset, s);
            if !seen.insert(key.clone()) {
                continue;
            }
            if self.load(&key).is_some() {
                stats.reused += 1;
            } else {
                todo.insert(key, s);
            }
        }
        let todo: Vec<(LatentKey, &Sample)> = todo.into_iter().collect();
        let bar = opts.progress.bar(todo.len() as u64, "encoding latents");
        for chunk in todo.chunks(opts.chunk.max(1)) {
            let prepared: Vec<_> = chunk
                .par_iter()
                .map(|(k, s)| (k, s, dataset.load_pixels(s)))
                .collect();
            for (key, sample, pixels) in prepared {
                let pixels = match pixels {
                    Ok(p) => p,
                    Err(e) => {
                        stats.failed.push((
                            dataset.items[sample.item].path.display().to_string(),
                            e.to_string(),
                        ));
                        bar.inc(1);
                        continue;
                    }
                };
                let latent = encoder
                    .encode(&pixels.image)
                    .map_err(|e| DataError::Encoder {
                        encoder: self.encoder.clone(),
                        item: dataset.items[sample.item].path.display().to_string(),
                        message: e.to_string(),
                    })?;
                let mask = match (&pixels.mask, key.alpha_mask) {
                    (Some(m), true) => Some(pool_mask(m, &latent)?),
                    _ => None,
                };
                let control = match &pixels.control {
                    Some(c) => Some(encoder.encode(c).map_err(|e| {
                        DataError::Encoder {
                            encoder: self.encoder.clone(),
                            item: dataset.items[sample.item]
                                .control
                                .as_ref()
                                .map_or_else(String::new, |c| c.path.display().to_string()),
                            message: e.to_string(),
                        }
                    })?),
                    None => None,
                };
                let mut tensors = vec![("latent", &latent)];
                if let Some(m) = &mask {
                    tensors.push(("mask", m));
                }
                if let Some(c) = &control {
                    tensors.push(("control", c));
                }
                let meta = BTreeMap::from([
                    (
                        "source".to_string(),
                        dataset.items[sample.item].path.display().to_string(),
                    ),
                    ("bucket".to_string(), sample.bucket.to_string()),
                    ("encoder".to_string(), self.encoder.clone()),
                ]);
                self.dir.store(&self.digest(key), &tensors, meta)?;
                stats.built += 1;
                bar.inc(1);
            }
        }
        bar.finish();
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Deletes entries not needed by `samples` (e.g. after images or settings changed).
    pub fn prune(&self, dataset: &Dataset, samples: &[Sample]) -> Result<usize> {
        let keep: BTreeSet<String> = samples
            .iter()
            .map(|s| self.digest(&LatentKey::of(dataset, s)))
            .collect();
        self.dir.prune(&keep)
    }
}

/// Average-pools a `[1, H, W]` mask to the spatial size of a `[C, h, w]` latent.
pub fn pool_mask(mask: &HostTensor, latent: &HostTensor) -> Result<HostTensor> {
    let (&[_, mh, mw], Some(&lw), Some(&lh)) = (
        mask.shape.as_slice(),
        latent.shape.last(),
        latent.shape.iter().rev().nth(1),
    ) else {
        return Err(DataError::Cache {
            path: "<mask>".into(),
            message: format!(
                "mask {:?} / latent {:?} are not [1,H,W] / [C,h,w]",
                mask.shape, latent.shape
            ),
        });
    };
    if lh == 0 || lw == 0 || mh % lh != 0 || mw % lw != 0 {
        return Err(DataError::Cache {
            path: "<mask>".into(),
            message: format!(
                "latent size {lh}×{lw} does not divide the image size {mh}×{mw}; the encoder's \
                 downsampling must be an integer factor"
            ),
        });
    }
    let (fy, fx) = (mh / lh, mw / lw);
    let mut out = vec![0.0f32; lh * lw];
    for y in 0..mh {
        for x in 0..mw {
            out[(y / fy) * lw + x / fx] += mask.data[y * mw + x];
        }
    }
    let n = (fy * fx) as f32;
    out.iter_mut().for_each(|v| *v /= n);
    Ok(HostTensor {
        shape: vec![1, lh, lw],
        data: out,
    })
}
