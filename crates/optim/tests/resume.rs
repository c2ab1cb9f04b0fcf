//! Save → load → continue equals an uninterrupted run bit for bit (NdArray), for every
//! optimizer; state files are keyed by parameter path, so a fresh process (fresh random
//! `ParamId`s) resumes correctly.

use crate::common;

use burn::module::Param;
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use common::*;
use fluxlora_optim::*;

/// A fresh toy with the same values but new random ParamIds (as after a restart).
fn reloaded(toy: &Toy<AD>) -> Toy<AD> {
    Toy {
        w: Param::from_tensor(toy.w.val().detach()),
        v: Param::from_tensor(toy.v.val().detach()),
        t3: Param::from_tensor(toy.t3.val().detach()),
        z: Param::from_tensor(toy.z.val().detach()),
    }
}

/// Same tensors (names, dtypes, shapes, bytes) and metadata; the header's key order may differ.
fn assert_same_state(a: &[u8], b: &[u8]) {
    use safetensors::SafeTensors;
    let (ta, tb) = (
        SafeTensors::deserialize(a).unwrap(),
        SafeTensors::deserialize(b).unwrap(),
    );
    let mut na = ta.names();
    let mut nb = tb.names();
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    for n in na {
        let (x, y) = (ta.tensor(n).unwrap(), tb.tensor(n).unwrap());
        assert_eq!(
            (x.dtype(), x.shape(), x.data()),
            (y.dtype(), y.shape(), y.data()),
            "state tensor {n}"
        );
    }
    let meta = |bytes: &[u8]| {
        SafeTensors::read_metadata(bytes)
            .unwrap()
            .1
            .metadata()
            .clone()
    };
    assert_eq!(meta(a), meta(b));
}

fn resume_is_exact<R: OptimizerRule<Inner>>(rule: R, lr: f64, clip: bool) {
    let fx = Fixture::load();
    let total = fx.steps();
    let split = 5;
    let make = |rule: R| {
        let opt: LoraOptimizer<R, Toy<AD>, AD> = LoraOptimizer::new(rule).with_groups(
            ParamGroups::new()
                .with_rule("z", r"^z$", 3.0, None)
                .unwrap(),
        );
        if clip {
            opt.with_max_grad_norm(0.7).unwrap()
        } else {
            opt
        }
    };

    // Uninterrupted.
    let mut a = Toy::<AD>::from_fixture(&fx);
    let mut opt_a = make(rule.clone());
    for k in 0..total {
        let g = fixture_grads(&fx, &a, k);
        a = opt_a.step(lr, a, g);
    }

    // Interrupted at `split`, state through a file, new module ids, new optimizer.
    let mut b = Toy::<AD>::from_fixture(&fx);
    let mut opt_b = make(rule.clone());
    for k in 0..split {
        let g = fixture_grads(&fx, &b, k);
        b = opt_b.step(lr, b, g);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("optim.safetensors");
    opt_b.save_state_file(&file).unwrap();
    let mut b = reloaded(&b);
    let mut opt_c = make(rule);
    opt_c.load_state_file(&file, &b).unwrap();
    assert_eq!(opt_c.steps_taken(), split as u64);
    for k in split..total {
        let g = fixture_grads(&fx, &b, k);
        b = opt_c.step(lr, b, g);
    }

    let (va, vb) = (a.values(), b.values());
    for name in NAMES {
        assert_eq!(
            bits(&va[name]),
            bits(&vb[name]),
            "param {name} differs after resume"
        );
    }
    // The states themselves are identical, tensor for tensor.
    assert_same_state(
        &opt_a.state_to_bytes().unwrap(),
        &opt_c.state_to_bytes().unwrap(),
    );
}

#[test]
fn adamw_resumes_exactly() {
    resume_is_exact(AdamWConfig::default().init().unwrap(), 1e-2, true);
}

#[test]
fn adamw8bit_resumes_exactly() {
    resume_is_exact(
        AdamW8bitConfig {
            min_8bit_size: 256,
            ..Default::default()
        }
        .init()
        .unwrap(),
        1e-2,
        true,
    );
}

#[test]
fn prodigy_resumes_exactly() {
    let cfg = ProdigyConfig {
        slice_p: 3,
        use_bias_correction: true,
        weight_decay: 0.01,
        ..Default::default()
    };
    resume_is_exact(cfg.init().unwrap(), 1.0, true);
}

#[test]
fn adafactor_resumes_exactly() {
    let cfg = AdafactorConfig {
        beta1: Some(0.9),
        ..Default::default()
    };
    resume_is_exact(cfg.init().unwrap(), 0.0, false);
}

#[test]
fn burn_record_round_trip_resumes_exactly() {
    // Through Burn's Optimizer::to_record / load_record (state validated lazily at step time).
    let fx = Fixture::load();
    let rule = AdamW8bitConfig {
        min_8bit_size: 256,
        ..Default::default()
    }
    .init()
    .unwrap();
    let mut a = Toy::<AD>::from_fixture(&fx);
    let mut opt: LoraOptimizer<AdamW8bit, Toy<AD>, AD> = LoraOptimizer::new(rule.clone());
    for k in 0..3 {
        let g = fixture_grads(&fx, &a, k);
        a = opt.step(1e-2, a, g);
    }
    let record = opt.to_record();
    let mut b = reloaded(&a);
    let mut opt_b: LoraOptimizer<AdamW8bit, Toy<AD>, AD> =
        LoraOptimizer::new(rule).load_record(record);
    for k in 3..6 {
        let ga = fixture_grads(&fx, &a, k);
        a = opt.step(1e-2, a, ga);
        let gb = fixture_grads(&fx, &b, k);
        b = opt_b.step(1e-2, b, gb);
    }
    let (va, vb) = (a.values(), b.values());
    for name in NAMES {
        assert_eq!(bits(&va[name]), bits(&vb[name]), "{name}");
    }
}

#[test]
fn loading_rejects_mismatched_state() {
    let fx = Fixture::load();
    let mut toy = Toy::<AD>::from_fixture(&fx);
    let mut opt: LoraOptimizer<AdamW, Toy<AD>, AD> =
        LoraOptimizer::new(AdamWConfig::default().init().unwrap());
    let g = fixture_grads(&fx, &toy, 0);
    toy = opt.step(1e-3, toy, g);
    let bytes = opt.state_to_bytes().unwrap();

    // Wrong optimizer.
    let mut other: LoraOptimizer<Prodigy, Toy<AD>, AD> =
        LoraOptimizer::new(ProdigyConfig::default().init().unwrap());
    let err = other
        .load_state_bytes(&bytes, "s.safetensors", &toy)
        .unwrap_err();
    assert!(matches!(err, OptimError::WrongOptimizer { .. }), "{err}");

    // Different shapes (a module whose `w` is transposed).
    let wrong = Toy::<AD> {
        w: Param::from_tensor(Tensor::from_inner(toy.w.val().inner().transpose())),
        v: Param::from_tensor(toy.v.val().detach()),
        t3: Param::from_tensor(toy.t3.val().detach()),
        z: Param::from_tensor(toy.z.val().detach()),
    };
    let mut fresh: LoraOptimizer<AdamW, Toy<AD>, AD> =
        LoraOptimizer::new(AdamWConfig::default().init().unwrap());
    let err = fresh
        .load_state_bytes(&bytes, "s.safetensors", &wrong)
        .unwrap_err();
    assert!(err.to_string().contains("w"), "{err}");
    assert_eq!(
        fresh.state_paths().len(),
        0,
        "a failed load changes nothing"
    );

    // Garbage and a missing file.
    assert!(matches!(
        fresh.load_state_bytes(b"nope", "x", &toy),
        Err(OptimError::BadStateFile { .. })
    ));
    assert!(matches!(
        fresh.load_state_file("/nonexistent/optim.safetensors", &toy),
        Err(OptimError::Io { .. })
    ));

    // A configuration that lays out state differently (8-bit vs f32 moments).
    let mut a8: LoraOptimizer<AdamW8bit, Toy<AD>, AD> = LoraOptimizer::new(
        AdamW8bitConfig {
            min_8bit_size: 256,
            ..Default::default()
        }
        .init()
        .unwrap(),
    );
    let g = fixture_grads(&fx, &toy, 1);
    toy = a8.step(1e-3, toy, g);
    let bytes8 = a8.state_to_bytes().unwrap();
    let mut a8_default: LoraOptimizer<AdamW8bit, Toy<AD>, AD> =
        LoraOptimizer::new(AdamW8bitConfig::default().init().unwrap());
    let err = a8_default
        .load_state_bytes(&bytes8, "s8", &toy)
        .unwrap_err();
    assert!(err.to_string().contains("min_8bit_size"), "{err}");
}
