//! Resume exactness: N steps straight == N/2 steps + checkpoint + resume + N/2 steps, bit for bit
//! on `Autodiff<NdArray>`, and what a resume refuses.

use crate::common;

use common::*;
use fluxlora_train::{LrScheduler, OptimizerType, TrainConfig, TrainError, Trainer};

fn config(out: &std::path::Path, optimizer: OptimizerType, lr: f64) -> TrainConfig {
    TrainConfig {
        optimizer_type: optimizer,
        learning_rate: lr,
        lr_scheduler: LrScheduler::Cosine,
        lr_warmup_steps: 1,
        gradient_accumulation_steps: 2,
        max_grad_norm: 0.5,
        network_dropout: 0.1,
        seed: 11,
        ..tiny_train_config(out, 4)
    }
}

/// A trainer for `cfg` on `tiny_flux(seed)`, and a batch source with the same seed.
fn trainer(cfg: &TrainConfig, seed: u64) -> (Trainer<AB>, RandomBatches) {
    let t = Trainer::new(cfg.clone(), tiny_flux(seed), Default::default()).unwrap();
    (t.with_progress(false), RandomBatches::new(seed))
}

fn straight_vs_resumed(optimizer: OptimizerType, lr: f64) {
    let _guard = backend_rng_lock();
    let base = tiny_flux(3);
    let dev = Default::default();

    // 4 steps straight.
    let d1 = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(config(d1.path(), optimizer, lr), base.clone(), dev)
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(5);
    let a = straight.run(&mut src).unwrap();
    assert_eq!(a.steps, 4);

    // 2 steps, checkpoint, then a fresh trainer resumes and runs to 4.
    let d2 = tempfile::tempdir().unwrap();
    let cfg = config(d2.path(), optimizer, lr);
    let mut first = Trainer::new(cfg.clone(), base.clone(), dev)
        .unwrap()
        .with_progress(false);
    let mut src2 = RandomBatches::new(5);
    first.step_once(&mut src2).unwrap();
    first.step_once(&mut src2).unwrap();
    let ckpt = first.save_checkpoint(&src2).unwrap();
    drop(first);

    // The fresh trainer starts with B = 0; only a restored LoRA + optimizer state can match.
    let mut second = Trainer::new(cfg, base, dev).unwrap().with_progress(false);
    let mut src3 = RandomBatches::new(5);
    let state = second.resume(&ckpt, &mut src3).unwrap();
    assert_eq!(
        (state.step, src3.next),
        (2, 4),
        "2 steps × 2 micro-batches consumed"
    );
    let b = second.run(&mut src3).unwrap();
    assert_eq!(b.steps, 4);

    let (va, vb) = (
        adapter_values(&mut straight.into_model()),
        adapter_values(&mut second.into_model()),
    );
    assert!(!va.is_empty());
    assert_eq!(va.len(), vb.len());
    for ((pa, aa, ba), (pb, ab, bb)) in va.iter().zip(&vb) {
        assert_eq!(pa, pb);
        let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(aa), bits(ab), "{pa}: lora_a differs after resume");
        assert_eq!(bits(ba), bits(bb), "{pa}: lora_b differs after resume");
    }
    // B must have moved from zero, or the comparison would prove little.
    assert!(va.iter().any(|(_, _, b)| b.iter().any(|&x| x != 0.0)));

    // The logged loss and LR of steps 3 and 4 agree too (the resumed log only has those).
    let rows = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
            .collect()
    };
    let (ra, rb) = (rows(&a.csv), rows(&b.csv));
    assert_eq!(ra.len(), 4);
    assert_eq!(&ra[2..], &rb[..]);
}

#[test]
fn resume_is_bit_exact_with_adamw() {
    straight_vs_resumed(OptimizerType::AdamW, 1e-2);
}

#[test]
fn resume_is_bit_exact_with_prodigy() {
    straight_vs_resumed(OptimizerType::Prodigy, 1.0);
}

#[test]
fn resume_refuses_a_changed_config_and_names_the_key() {
    let _guard = backend_rng_lock();
    let dev = Default::default();
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(d.path(), 2);
    let (mut t, mut src) = trainer(&cfg, 1);
    t.step_once(&mut src).unwrap();
    let ckpt = t.save_checkpoint(&src).unwrap();

    let changed = TrainConfig {
        learning_rate: 5e-3,
        ..cfg.clone()
    };
    let mut t2 = Trainer::new(changed, tiny_flux(1), dev).unwrap();
    let err = t2.resume(&ckpt, &mut RandomBatches::new(1)).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("learning_rate"), "{err}");

    // Bookkeeping keys (here max_train_steps and output_dir) may change.
    let d2 = tempfile::tempdir().unwrap();
    let longer = TrainConfig {
        max_train_steps: Some(3),
        output_dir: d2.path().to_path_buf(),
        ..cfg
    };
    let mut t3 = Trainer::new(longer, tiny_flux(1), dev).unwrap();
    assert_eq!(
        t3.resume(&ckpt, &mut RandomBatches::new(1)).unwrap().step,
        1
    );
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_usable() {
    let _guard = backend_rng_lock();
    let dev = Default::default();
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(d.path(), 4);
    let (mut t, mut src) = trainer(&cfg, 2);
    t.step_once(&mut src).unwrap();
    let good = t.save_checkpoint(&src).unwrap();
    // A save of step 2 that died halfway: only its temporary folder exists, with a torn file.
    let partial = d.path().join(".tiny-step00000002.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("tiny.safetensors"), b"torn").unwrap();

    let listed = fluxlora_train::save::list_checkpoints(d.path(), "tiny").unwrap();
    assert_eq!(listed, vec![(1, good.clone())]);
    let mut t2 = Trainer::new(cfg, tiny_flux(2), dev)
        .unwrap()
        .with_progress(false);
    let mut src2 = RandomBatches::new(2);
    assert_eq!(t2.resume(&good, &mut src2).unwrap().step, 1);
    // The next save of step 2 replaces the leftover.
    t2.step_once(&mut src2).unwrap();
    let next = t2.save_checkpoint(&src2).unwrap();
    assert!(next.join("state.json").exists() && !partial.exists());
}

/// Rewrites the safetensors file `path` with the first element of its first float tensor (by
/// name) set to NaN, as a bad download or a diverged run would leave it; returns that tensor.
fn poison(path: &std::path::Path) -> String {
    use fluxlora_io::{Dtype, SafeTensorsFile, TensorRef};
    let f = SafeTensorsFile::open(path).unwrap();
    let names: Vec<String> = f.names().map(String::from).collect();
    let mut parts: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut poisoned = None;
    for n in &names {
        let (dtype, shape) = f.info(n).unwrap();
        let mut bytes = f.raw(n).unwrap().to_vec();
        if poisoned.is_none() && !bytes.is_empty() {
            let nan: &[u8] = match dtype {
                Dtype::F32 => &[0x00, 0x00, 0xc0, 0x7f],
                Dtype::BF16 => &[0xc0, 0x7f],
                Dtype::F16 => &[0x00, 0x7e],
                _ => &[],
            };
            if !nan.is_empty() {
                bytes[..nan.len()].copy_from_slice(nan);
                poisoned = Some(n.clone());
            }
        }
        parts.push((n.clone(), dtype, shape.to_vec(), bytes));
    }
    let meta = f.metadata().clone();
    drop(f);
    let refs: Vec<(&str, TensorRef)> = parts
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), TensorRef::raw(*d, s, b)))
        .collect();
    fluxlora_io::write_safetensors(path, &refs, &meta).unwrap();
    poisoned.expect("a float tensor to poison")
}

#[test]
fn a_poisoned_checkpoint_is_named_before_any_step() {
    let _guard = backend_rng_lock();
    let dev = Default::default();
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(d.path(), 4);
    let (mut t, mut src) = trainer(&cfg, 4);
    t.step_once(&mut src).unwrap();
    let lora_ckpt = t.save_checkpoint(&src).unwrap();
    t.step_once(&mut src).unwrap();
    let optim_ckpt = t.save_checkpoint(&src).unwrap();

    for (dir, file) in [
        (&lora_ckpt, "tiny.safetensors"),
        (&optim_ckpt, "optimizer.safetensors"),
    ] {
        let tensor = poison(&dir.join(file));
        let mut fresh = Trainer::new(cfg.clone(), tiny_flux(4), dev)
            .unwrap()
            .with_progress(false);
        let err = fresh.resume(dir, &mut RandomBatches::new(4)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                TrainError::LoraFile(fluxlora_io::IoError::NonFinite { .. })
            ),
            "{text}"
        );
        assert!(
            text.contains(file) && text.contains(&tensor) && text.contains("NaN"),
            "{text}"
        );
        assert_eq!(fresh.step(), 0, "nothing was restored");
        let verified = fluxlora_train::resume::verify_checkpoint(dir)
            .unwrap_err()
            .to_string();
        assert_eq!(verified, text);
    }
}

#[test]
fn resume_checks_the_folder_before_reading_it() {
    let _guard = backend_rng_lock();
    let dev = Default::default();
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(d.path(), 2);
    let resume = |dir: &std::path::Path| {
        let mut t = Trainer::new(cfg.clone(), tiny_flux(1), dev).unwrap();
        t.resume(dir, &mut RandomBatches::new(1))
            .unwrap_err()
            .to_string()
    };
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(
        resume(&empty).contains("has no state.json"),
        "{}",
        resume(&empty)
    );
    let file = d.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(resume(&file).contains("is a file"), "{}", resume(&file));
    assert!(resume(&d.path().join("missing")).contains("cannot be read"));

    // A state.json that names a LoRA outside the folder is refused before that file is opened.
    let (mut t, mut src) = trainer(&cfg, 1);
    t.step_once(&mut src).unwrap();
    let ckpt = t.save_checkpoint(&src).unwrap();
    let state_path = ckpt.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["lora_file"] = "../../escape.safetensors".into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    let err = resume(&ckpt);
    assert!(
        err.contains("not a file name inside the folder") && err.contains("escape"),
        "{err}"
    );
}

#[test]
fn the_nan_guard_runs_before_a_save() {
    let _guard = backend_rng_lock();
    let dev = Default::default();
    let d = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(tiny_train_config(d.path(), 2), tiny_flux(5), dev)
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(5);
    t.step_once(&mut src).unwrap();
    // Weights that diverged while the loss still looked finite.
    let mut weights = fluxlora_train::export_lora(t.model_mut()).unwrap();
    let (key, module) = weights.modules.iter_mut().next().unwrap();
    let key = key.clone();
    module.up.data[0] = f32::INFINITY;
    fluxlora_train::import_lora(t.model_mut(), &weights, std::path::Path::new("test")).unwrap();
    let err = t.save_checkpoint(&src).unwrap_err();
    assert!(
        matches!(&err, TrainError::NonFiniteWeights { key: k, .. } if k.starts_with(&key)),
        "{err}"
    );
    assert!(err.to_string().contains("inf"), "{err}");
    // No checkpoint folder, complete or partial, was left behind.
    let left: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-step"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
