//! The epoch plan and the batch loader.
//!
//! An epoch is: every training item once per repeat (`num_repeats`); regularisation items
//! (`is_reg`) cycled until they match the number of training draws of their dataset (kohya's
//! balancing); draws grouped by (dataset, bucket), each group shuffled, cut into batches of the
//! dataset's `batch_size` (the last one may be short), and the batch list shuffled. Every shuffle
//! uses a stream derived from (seed, epoch, group), so the plan of any epoch can be rebuilt from
//! scratch: a [`LoaderState`] (seed, epoch, batch index, dataset fingerprint) is all the trainer
//! needs to save to resume exactly where it stopped. [`Prefetcher`] runs the loading of upcoming
//! batches on a background thread.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::bucket::Bucket;
use crate::dataset::{Dataset, Sample};
use crate::error::{DataError, Result};
use crate::rng::{purpose, SplitMix64};

/// One batch: samples of the same dataset and bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Index of the dataset (in the config) the samples come from.
    pub dataset: usize,
    /// The bucket every sample is trained at.
    pub bucket: Bucket,
    /// The draws, at most the dataset's `batch_size` (the last batch of a group may be short).
    pub samples: Vec<Sample>,
}

/// Where the loader is: the next batch to hand out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The seed every epoch plan is derived from.
    pub seed: u64,
    /// The current epoch, 0-based.
    pub epoch: u64,
    /// Index of the next batch within the epoch.
    pub batch: usize,
    /// [`Dataset::fingerprint`] of the dataset this state belongs to.
    pub fingerprint: String,
}

/// All batches of one epoch, in order.
pub fn epoch_plan(dataset: &Dataset, seed: u64, epoch: u64) -> Vec<Batch> {
    let mut groups: BTreeMap<(usize, Bucket), Vec<Sample>> = BTreeMap::new();
    for (di, d) in dataset.config.datasets.iter().enumerate() {
        let members: Vec<usize> = (0..dataset.items.len())
            .filter(|&i| dataset.items[i].dataset == di)
            .collect();
        let mut train_draws = 0usize;
        let mut reg_pool: Vec<(usize, u32)> = Vec::new();
        for &i in &members {
            let it = &dataset.items[i];
            let sub = &d.subsets[it.subset];
            for r in 0..sub.num_repeats {
                if sub.is_reg {
                    reg_pool.push((i, r));
                } else {
                    train_draws += 1;
                    let s = dataset.sample(i, r, epoch, seed);
                    groups.entry((di, s.bucket)).or_default().push(s);
                }
            }
        }
        if !reg_pool.is_empty() && train_draws > 0 {
            SplitMix64::derive(seed, &[purpose::REG_ORDER, epoch, di as u64])
                .shuffle(&mut reg_pool);
            for k in 0..train_draws {
                let (i, r) = reg_pool[k % reg_pool.len()];
                let cycle = (k / reg_pool.len()) as u32;
                let repeat = r + cycle * d.subsets[dataset.items[i].subset].num_repeats;
                let s = dataset.sample(i, repeat, epoch, seed);
                groups.entry((di, s.bucket)).or_default().push(s);
            }
        }
    }
    let mut batches = Vec::new();
    for ((di, bucket), mut samples) in groups {
        let mut rng = SplitMix64::derive(
            seed,
            &[
                purpose::EPOCH_ORDER,
                epoch,
                di as u64,
                bucket.width as u64,
                bucket.height as u64,
            ],
        );
        rng.shuffle(&mut samples);
        let bs = dataset.config.datasets[di].batch_size.max(1);
        for chunk in samples.chunks(bs) {
            batches.push(Batch {
                dataset: di,
                bucket,
                samples: chunk.to_vec(),
            });
        }
    }
    SplitMix64::derive(seed, &[purpose::EPOCH_ORDER, epoch]).shuffle(&mut batches);
    batches
}

/// Hands out batches epoch after epoch, reproducibly from the seed.
#[derive(Debug)]
pub struct Loader {
    dataset: Arc<Dataset>,
    state: LoaderState,
    plan: Vec<Batch>,
}

impl Loader {
    /// A loader at the start of epoch 0.
    pub fn new(dataset: Arc<Dataset>, seed: u64) -> Loader {
        let fingerprint = dataset.fingerprint();
        let plan = epoch_plan(&dataset, seed, 0);
        Loader {
            dataset,
            state: LoaderState {
                seed,
                epoch: 0,
                batch: 0,
                fingerprint,
            },
            plan,
        }
    }

    /// A loader continuing from a saved state; fails if the dataset changed since.
    pub fn resume(dataset: Arc<Dataset>, state: LoaderState) -> Result<Loader> {
        let fp = dataset.fingerprint();
        if fp != state.fingerprint {
            return Err(DataError::Loader(format!(
                "the saved position belongs to dataset {} but this dataset is {fp} (images, \
                 buckets or settings changed); restore the dataset or start a new run",
                state.fingerprint
            )));
        }
        let plan = epoch_plan(&dataset, state.seed, state.epoch);
        if state.batch > plan.len() {
            return Err(DataError::Loader(format!(
                "saved batch {} is past the {} batches of epoch {}",
                state.batch,
                plan.len(),
                state.epoch
            )));
        }
        Ok(Loader {
            dataset,
            state,
            plan,
        })
    }

    /// The position of the next batch (save this to resume).
    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    /// Batches in the current epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.len()
    }

    /// Whole epochs handed out so far: the current epoch counts once its last batch has gone
    /// (the loader moves to the next epoch only when asked for another batch).
    pub fn epochs_completed(&self) -> u64 {
        self.state.epoch + u64::from(self.state.batch >= self.plan.len())
    }

    /// The next batch, moving on to the next epoch when one ends.
    pub fn next_batch(&mut self) -> Batch {
        while self.state.batch >= self.plan.len() {
            self.state.epoch += 1;
            self.state.batch = 0;
            self.plan = epoch_plan(&self.dataset, self.state.seed, self.state.epoch);
        }
        let b = self.plan[self.state.batch].clone();
        self.state.batch += 1;
        b
    }

    /// Every distinct caption the loader will produce in `epochs` (to pre-build text caches).
    pub fn captions_for_epochs(&self, epochs: std::ops::Range<u64>) -> Vec<String> {
        let mut set = std::collections::BTreeSet::new();
        for e in epochs {
            for b in epoch_plan(&self.dataset, self.state.seed, e) {
                for s in b.samples {
                    set.insert(s.caption);
                }
            }
        }
        set.into_iter().collect()
    }

    /// Moves loading to a background thread that keeps up to `depth` batches ready.
    /// `load` turns a batch into whatever the trainer consumes (pixels, cached latents...).
    pub fn prefetch<T, F>(self, depth: usize, load: F) -> Prefetcher<T>
    where
        T: Send + 'static,
        F: Fn(&Dataset, &Batch) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = sync_channel(depth.max(1));
        let mut loader = self;
        let handle = std::thread::Builder::new()
            .name("fluxlora-prefetch".into())
            .spawn(move || loop {
                let batch = loader.next_batch();
                let loaded = load(&loader.dataset, &batch);
                let item = Prefetched {
                    batch,
                    state_after: loader.state.clone(),
                    loaded,
                };
                if tx.send(item).is_err() {
                    return;
                }
            })
            .expect("spawning the prefetch thread");
        Prefetcher {
            rx: Some(rx),
            handle: Some(handle),
        }
    }
}

/// A batch loaded ahead of time.
#[derive(Debug)]
pub struct Prefetched<T> {
    /// The batch that was loaded.
    pub batch: Batch,
    /// The loader position after this batch: save it together with the step that used it.
    pub state_after: LoaderState,
    /// What the `load` function made of the batch, or its error.
    pub loaded: Result<T>,
}

/// Receives prefetched batches; stops the background thread when dropped.
#[derive(Debug)]
pub struct Prefetcher<T> {
    rx: Option<Receiver<Prefetched<T>>>,
    handle: Option<JoinHandle<()>>,
}

/// Endless (epoch after epoch); `None` only if the background thread died (a panic in `load`).
impl<T> Iterator for Prefetcher<T> {
    type Item = Prefetched<T>;

    fn next(&mut self) -> Option<Prefetched<T>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail, ending it.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
