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

fn straight_vs_resumed(optimizer: OptimizerType, lr: f64) {
    let _guard = backend_rng_lock();
    let base = tiny_flux(3);
    let dev = Default::default();

    // 4 steps straight.
    let d1 = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(config(d1.path(), optimizer, lr), base.clone(), dev).unwrap().with_progress(false);
    let mut src = RandomBatches::new(5);
    let a = straight.run(&mut src).unwrap();
    assert_eq!(a.steps, 4);

    // 2 steps, checkpoint, then a fresh trainer resumes and runs to 4.
    let d2 = tempfile::tempdir().unwrap();
    let cfg = config(d2.path(), optimizer, lr);
    let mut first = Trainer::new(cfg.clone(), base.clone(), dev).unwrap().with_progress(false);
    let mut src2 = RandomBatches::new(5);
    first.step_once(&mut src2).unwrap();
    first.step_once(&mut src2).unwrap();
    let ckpt = first.save_checkpoint(&src2).unwrap();
    drop(first);

    // The fresh trainer starts with B = 0; only a restored LoRA + optimizer state can match.
    let mut second = Trainer::new(cfg, base, dev).unwrap().with_progress(false);
    let mut src3 = RandomBatches::new(5);
    let state = second.resume(&ckpt, &mut src3).unwrap();
    assert_eq!((state.step, src3.next), (2, 4), "2 steps × 2 micro-batches consumed");
    let b = second.run(&mut src3).unwrap();
    assert_eq!(b.steps, 4);

    let (va, vb) = (adapter_values(&mut straight.into_model()), adapter_values(&mut second.into_model()));
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
        std::fs::read_to_string(p).unwrap().lines().skip(1).map(|l| l.split(',').take(3).collect::<Vec<_>>().join(",")).collect()
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
    let mut t = Trainer::new(cfg.clone(), tiny_flux(1), dev).unwrap().with_progress(false);
    let mut src = RandomBatches::new(1);
    t.step_once(&mut src).unwrap();
    let ckpt = t.save_checkpoint(&src).unwrap();

    let changed = TrainConfig { learning_rate: 5e-3, ..cfg.clone() };
    let mut t2 = Trainer::new(changed, tiny_flux(1), dev).unwrap();
    let err = t2.resume(&ckpt, &mut RandomBatches::new(1)).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("learning_rate"), "{err}");

    // Bookkeeping keys (here max_train_steps and output_dir) may change.
    let d2 = tempfile::tempdir().unwrap();
    let longer = TrainConfig { max_train_steps: Some(3), output_dir: d2.path().to_path_buf(), ..cfg };
    let mut t3 = Trainer::new(longer, tiny_flux(1), dev).unwrap();
    assert_eq!(t3.resume(&ckpt, &mut RandomBatches::new(1)).unwrap().step, 1);
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_usable() {
    let _guard = backend_rng_lock();
    let dev = Default::default();
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(d.path(), 4);
    let mut t = Trainer::new(cfg.clone(), tiny_flux(2), dev).unwrap().with_progress(false);
    let mut src = RandomBatches::new(2);
    t.step_once(&mut src).unwrap();
    let good = t.save_checkpoint(&src).unwrap();
    // A save of step 2 that died halfway: only its temporary folder exists, with a torn file.
    let partial = d.path().join(".tiny-step00000002.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("tiny.safetensors"), b"torn").unwrap();

    let listed = fluxlora_train::save::list_checkpoints(d.path(), "tiny").unwrap();
    assert_eq!(listed, vec![(1, good.clone())]);
    let mut t2 = Trainer::new(cfg, tiny_flux(2), dev).unwrap().with_progress(false);
    let mut src2 = RandomBatches::new(2);
    assert_eq!(t2.resume(&good, &mut src2).unwrap().step, 1);
    // The next save of step 2 replaces the leftover.
    t2.step_once(&mut src2).unwrap();
    let next = t2.save_checkpoint(&src2).unwrap();
    assert!(next.join("state.json").exists() && !partial.exists());
}
