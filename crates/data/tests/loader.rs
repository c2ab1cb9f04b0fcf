//! The loader: seeded, reproducible epoch plans; batches within one bucket; repeats counted;
//! resuming from a saved state continues exactly; prefetching yields the same sequence.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use fluxlora_data::*;
use image::ImageFormat;

fn build(dir: &Path) -> Arc<Dataset> {
    // Train subset "10_a" (5 images, 3 shapes) + regularisation subset (2 images).
    let sizes = [(128, 128), (256, 128), (128, 256), (130, 128), (260, 126)];
    for (i, (w, h)) in sizes.into_iter().enumerate() {
        write(
            &dir.join("train"),
            &format!("t{i}.png"),
            &encode(&textured(w, h, i as u32), ImageFormat::Png),
        );
        write(
            &dir.join("train"),
            &format!("t{i}.txt"),
            format!("ohwx, tag{i}, red, blue, green").as_bytes(),
        );
    }
    for i in 0..2 {
        write(
            &dir.join("reg"),
            &format!("r{i}.png"),
            &encode(&textured(128, 128, 50 + i), ImageFormat::Png),
        );
    }
    let text = format!(
        r#"
        [general]
        shuffle_caption = true
        keep_tokens = 1
        flip_aug = true
        random_crop = true
        [[datasets]]
        resolution = 128
        min_bucket_reso = 64
        max_bucket_reso = 256
        batch_size = 2
          [[datasets.subsets]]
          image_dir = {train:?}
          num_repeats = 3
          [[datasets.subsets]]
          image_dir = {reg:?}
          is_reg = true
          class_tokens = "cat"
        "#,
        train = dir.join("train").display().to_string(),
        reg = dir.join("reg").display().to_string(),
    );
    let cfg = DatasetConfig::from_toml_str(&text, &dir.join("d.toml")).unwrap();
    Arc::new(Dataset::open(&cfg, &Progress::hidden()).unwrap())
}

#[test]
fn epoch_plans_are_seeded_balanced_and_bucketed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = build(tmp.path());
    let p0 = epoch_plan(&d, 42, 0);
    assert_eq!(p0, epoch_plan(&d, 42, 0), "same seed, same plan");
    assert_ne!(p0, epoch_plan(&d, 43, 0), "another seed, another plan");
    assert_ne!(p0, epoch_plan(&d, 42, 1), "another epoch, another plan");

    let mut per_item: BTreeMap<usize, usize> = BTreeMap::new();
    let (mut train, mut reg) = (0, 0);
    for b in &p0 {
        assert!(!b.samples.is_empty() && b.samples.len() <= 2);
        for s in &b.samples {
            assert_eq!(s.bucket, b.bucket, "a batch mixes buckets");
            assert_eq!(d.items[s.item].assignment.bucket, b.bucket);
            *per_item.entry(s.item).or_default() += 1;
            if s.is_reg {
                reg += 1
            } else {
                train += 1
            }
            if !s.is_reg {
                assert!(
                    s.caption.starts_with("ohwx"),
                    "kept token moved: {}",
                    s.caption
                );
            }
        }
    }
    // Every training image 3 times; regularisation draws balanced to the training draws.
    assert_eq!(train, 15);
    assert_eq!(reg, 15);
    for (i, it) in d.items.iter().enumerate() {
        if !d.subset_of(it).is_reg {
            assert_eq!(per_item[&i], 3, "{}", it.path.display());
        }
    }
    // The seeded augmentations actually vary.
    let flips = p0
        .iter()
        .flat_map(|b| &b.samples)
        .filter(|s| s.flip)
        .count();
    assert!(flips > 0 && flips < 30, "{flips}");
}

#[test]
fn resuming_from_a_saved_state_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = build(tmp.path());
    let mut straight = Loader::new(d.clone(), 7);
    let per_epoch = straight.batches_per_epoch();
    let all: Vec<Batch> = (0..per_epoch * 2 + 3)
        .map(|_| straight.next_batch())
        .collect();

    for stop in [0, 1, per_epoch - 1, per_epoch, per_epoch + 2] {
        let mut first = Loader::new(d.clone(), 7);
        for _ in 0..stop {
            first.next_batch();
        }
        let saved = serde_json::to_string(first.state()).unwrap();
        drop(first);
        let state: LoaderState = serde_json::from_str(&saved).unwrap();
        let mut resumed = Loader::resume(d.clone(), state).unwrap();
        for (k, want) in all[stop..].iter().enumerate() {
            assert_eq!(&resumed.next_batch(), want, "stop {stop}, batch {k}");
        }
    }

    // Whole epochs count once their last batch is out, before the next epoch is asked for,
    // and a resumed loader counts the same.
    let mut counted = Loader::new(d.clone(), 7);
    for k in 1..=per_epoch * 2 + 1 {
        counted.next_batch();
        assert_eq!(
            counted.epochs_completed(),
            (k / per_epoch) as u64,
            "after batch {k}"
        );
        let resumed = Loader::resume(d.clone(), counted.state().clone()).unwrap();
        assert_eq!(
            resumed.epochs_completed(),
            counted.epochs_completed(),
            "resumed after batch {k}"
        );
    }

    // A state from another dataset is refused.
    let other_tmp = tempfile::tempdir().unwrap();
    write(
        &other_tmp.path().join("train"),
        "x.png",
        &encode(&textured(64, 64, 1), ImageFormat::Png),
    );
    let cfg = DatasetConfig::from_folder(&other_tmp.path().join("train")).unwrap();
    let other = Arc::new(Dataset::open(&cfg, &Progress::hidden()).unwrap());
    let err = Loader::resume(other, Loader::new(d, 7).state().clone()).unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
}

#[test]
fn prefetching_yields_the_same_batches_with_loaded_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let d = build(tmp.path());
    let mut straight = Loader::new(d.clone(), 3);
    let want: Vec<Batch> = (0..20).map(|_| straight.next_batch()).collect();
    let mut pf = Loader::new(d.clone(), 3).prefetch(4, |ds, batch| {
        batch
            .samples
            .iter()
            .map(|s| ds.load_pixels(s))
            .collect::<Result<Vec<_>>>()
    });
    let mut last_state = None;
    for w in &want {
        let got = pf.next().expect("prefetch thread alive");
        assert_eq!(&got.batch, w);
        let px = got.loaded.unwrap();
        assert_eq!(px.len(), w.samples.len());
        for p in px {
            assert_eq!(
                p.image.shape,
                vec![3, w.bucket.height as usize, w.bucket.width as usize]
            );
        }
        last_state = Some(got.state_after);
    }
    drop(pf);
    let mut resumed = Loader::resume(d, last_state.unwrap()).unwrap();
    assert_eq!(resumed.next_batch(), straight.next_batch());
}
