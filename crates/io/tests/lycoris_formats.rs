//! LyCORIS modules in files: the weight change of files written by LyCORIS and PEFT
//! (`fixtures/parity/lycoris/`, made by `fixtures/parity/make_lycoris_cases.py`) equals what
//! their own forward computes; ΔW equals plain f64 arithmetic; kohya / ComfyUI / PEFT writes
//! read back unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fluxlora_io::lora::lycoris::{kron, DoraScale};
use fluxlora_io::{
    read_lora, write_lora, DoraAxis, HostTensor, KronFactor, LoraFormat, LoraModule, LoraWeights,
    LycorisModule, SafeTensorsFile,
};
use proptest::prelude::*;

use crate::common::values;
use crate::lycoris_ops::ref_delta as reference_delta;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/parity/lycoris")
        .join(name)
}

fn t(shape: &[usize], seed: u64) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(shape.to_vec(), values(seed, n)).unwrap()
}

/// The merged weight our host code gives for canonical `key` over `base`.
fn merged(lora: &LoraWeights, key: &str, base: &HostTensor) -> HostTensor {
    if let Some(m) = lora.lycoris.get(key) {
        let d = m.delta().unwrap();
        let data = base.data.iter().zip(&d.data).map(|(w, d)| w + d).collect();
        return HostTensor::new(base.shape.clone(), data).unwrap();
    }
    let m = &lora.modules[key];
    fluxlora_io::lora::lycoris::apply_lora(base, m, lora.dora.get(key), 1.0).unwrap()
}

#[test]
fn files_by_lycoris_and_peft_give_their_own_weight_change() {
    let expected = SafeTensorsFile::open(fixture("expected.safetensors")).unwrap();
    let files = [
        ("lokr.safetensors", LoraFormat::Kohya, 3),
        ("loha.safetensors", LoraFormat::Kohya, 1),
        ("dora_lycoris.safetensors", LoraFormat::Kohya, 2),
        ("dora_peft.safetensors", LoraFormat::Peft, 2),
    ];
    let mut checked = 0;
    for (name, want_format, count) in files {
        let (lora, format) = read_lora(fixture(name)).unwrap();
        assert_eq!(format, want_format, "{name}");
        assert_eq!(lora.len(), count, "{name}");
        for key in lora.modules.keys().chain(lora.lycoris.keys()) {
            let base = expected.read_f32(&format!("{key}.base")).unwrap();
            let want = expected.read_f32(&format!("{key}.merged")).unwrap();
            let got = merged(&lora, key, &base);
            let scale = want.max_abs().max(1.0);
            let diff = got.max_abs_diff(&want).unwrap();
            assert!(
                diff <= 2e-5 * scale,
                "{name} {key}: max diff {diff} (scale {scale})"
            );
            // ΔW is not trivially zero: the case tests something.
            assert!(want.max_abs_diff(&base).unwrap() > 1e-2, "{name} {key}");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

#[test]
fn dora_axes_follow_the_magnitude_shape() {
    let (lora, _) = read_lora(fixture("dora_lycoris.safetensors")).unwrap();
    assert_eq!(
        lora.dora["double_blocks.1.img_attn.proj"].axis,
        DoraAxis::Output
    );
    assert_eq!(
        lora.dora["double_blocks.1.txt_attn.proj"].axis,
        DoraAxis::Input
    );
    let (peft, _) = read_lora(fixture("dora_peft.safetensors")).unwrap();
    assert_eq!(peft.dora["img_in"].axis, DoraAxis::Output);
    assert_eq!(peft.dora["img_in"].values.numel(), 12);
}

fn lokr(
    seed: u64,
    l: usize,
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    lowrank: [bool; 2],
) -> LycorisModule {
    let factor = |s: u64, rows: usize, cols: usize, low: bool| {
        if low {
            KronFactor::LowRank {
                a: t(&[rows, r], s),
                b: t(&[r, cols], s + 1),
            }
        } else {
            KronFactor::Full(t(&[rows, cols], s))
        }
    };
    LycorisModule::Lokr {
        w1: factor(seed, l, m, lowrank[0]),
        w2: factor(seed + 10, k, n, lowrank[1]),
        alpha: Some(1.0 + (seed % 7) as f32),
    }
}

fn loha(seed: u64, out: usize, inp: usize, r: usize) -> LycorisModule {
    LycorisModule::Loha {
        w1_a: t(&[out, r], seed),
        w1_b: t(&[r, inp], seed + 1),
        w2_a: t(&[out, r], seed + 2),
        w2_b: t(&[r, inp], seed + 3),
        alpha: Some(0.5 + (seed % 5) as f32),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// LoKr / LoHa ΔW equal the f64 reference (kron and Hadamard written out as loops).
    #[test]
    fn lycoris_delta_matches_f64_arithmetic(
        seed in 0u64..500, l in 1usize..5, m in 1usize..5, k in 1usize..5, n in 1usize..5,
        r in 1usize..4, low1: bool, low2: bool,
    ) {
        for module in [lokr(seed, l, m, k, n, r, [low1, low2]), loha(seed, l * k, m * n, r)] {
            let got = module.delta().unwrap();
            let want = reference_delta(&module);
            prop_assert_eq!(got.shape.clone(), vec![l * k, m * n]);
            let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            for (g, w) in got.data.iter().zip(&want) {
                prop_assert!((f64::from(*g) - w).abs() <= 1e-5 * scale, "{} vs {}", g, w);
            }
        }
    }

    /// kohya and ComfyUI files of LoKr, LoHa and DoRA (both axes) read back unchanged; the
    /// output-axis DoRA also through PEFT (split into to_q / to_k / to_v and fused back).
    #[test]
    fn lycoris_files_round_trip(seed in 0u64..500, r in 1usize..4, low1: bool, low2: bool) {
        let mut lora = LoraWeights::default();
        lora.lycoris.insert("double_blocks.0.img_attn.proj".into(), lokr(seed, 2, 3, 4, 2, r, [low1, low2]));
        lora.lycoris.insert("single_blocks.1.linear2".into(), loha(seed + 50, 6, 9, r));
        let qkv = LoraModule::new(t(&[r, 4], seed + 70), t(&[12, r], seed + 71), 2.0).unwrap();
        lora.modules.insert("double_blocks.1.img_attn.qkv".into(), qkv);
        let mag = HostTensor::new(vec![12], values(seed + 72, 12).iter().map(|v| 1.5 + v).collect()).unwrap();
        lora.dora.insert("double_blocks.1.img_attn.qkv".into(), DoraScale { values: mag, axis: DoraAxis::Output });
        let proj = LoraModule::new(t(&[r, 4], seed + 80), t(&[4, r], seed + 81), 1.0).unwrap();
        lora.modules.insert("double_blocks.1.txt_attn.proj".into(), proj);
        lora.dora.insert("double_blocks.1.txt_attn.proj".into(), DoraScale { values: t(&[4], seed + 82), axis: DoraAxis::Input });
        let dir = tempfile::tempdir().unwrap();
        for format in [LoraFormat::Kohya, LoraFormat::ComfyUi] {
            let path = dir.path().join(format!("{format}.safetensors").replace('/', "_"));
            write_lora(&path, &lora, format, &BTreeMap::new()).unwrap();
            let (back, f) = read_lora(&path).unwrap();
            prop_assert_eq!(f, format);
            prop_assert_eq!(&back.lycoris, &lora.lycoris);
            prop_assert_eq!(&back.modules, &lora.modules);
            prop_assert_eq!(&back.dora, &lora.dora);
        }
        // PEFT: no LoKr/LoHa layout (refused), and DoRA per input has none either.
        let path = dir.path().join("peft.safetensors");
        let e = write_lora(&path, &lora, LoraFormat::Peft, &BTreeMap::new()).unwrap_err().to_string();
        prop_assert!(e.contains("write kohya or ComfyUI"), "{}", e);
        let mut peft = lora.clone();
        peft.lycoris.clear();
        peft.dora.remove("double_blocks.1.txt_attn.proj");
        write_lora(&path, &peft, LoraFormat::Peft, &BTreeMap::new()).unwrap();
        let (back, _) = read_lora(&path).unwrap();
        prop_assert_eq!(&back.dora, &peft.dora);
        for (key, m) in &peft.modules {
            let got = back.modules[key].delta().unwrap();
            prop_assert!(got.max_abs_diff(&m.delta().unwrap()).unwrap() <= 1e-5 * (1.0 + got.max_abs()));
        }
    }
}

#[test]
fn kron_is_the_textbook_product() {
    // [[1, 2], [3, 4]] ⊗ [[0, 1]] = [[0, 1, 0, 2], [0, 3, 0, 4]]
    let a = HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let b = HostTensor::new(vec![1, 2], vec![0.0, 1.0]).unwrap();
    assert_eq!(
        kron(&a, &b).unwrap().data,
        vec![0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0]
    );
}

#[test]
fn tucker_cores_and_pieces_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let mk = |names: &[(&str, Vec<usize>)]| {
        let tensors: Vec<(String, HostTensor)> = names
            .iter()
            .map(|(n, s)| (n.to_string(), HostTensor::zeros(s.clone())))
            .collect();
        let refs: Vec<(&str, fluxlora_io::TensorRef)> = tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.as_str(),
                    fluxlora_io::TensorRef::cast(t, fluxlora_io::Dtype::F32),
                )
            })
            .collect();
        fluxlora_io::write_safetensors(&p, &refs, &BTreeMap::new()).unwrap();
        read_lora(&p).unwrap_err().to_string()
    };
    let e = mk(&[
        ("lora_unet_img_in.lokr_w1", vec![2, 2]),
        ("lora_unet_img_in.lokr_w2_a", vec![2, 1]),
        ("lora_unet_img_in.lokr_w2_b", vec![1, 2]),
        ("lora_unet_img_in.lokr_t2", vec![1, 1, 1, 1]),
    ]);
    assert!(e.contains("lokr_t2") && e.contains("t.safetensors"), "{e}");
    let e = mk(&[
        (
            "lycoris_transformer_blocks_0_attn_to_q.hada_w1_a",
            vec![2, 1],
        ),
        (
            "lycoris_transformer_blocks_0_attn_to_q.hada_w1_b",
            vec![1, 2],
        ),
        (
            "lycoris_transformer_blocks_0_attn_to_q.hada_w2_a",
            vec![2, 1],
        ),
        (
            "lycoris_transformer_blocks_0_attn_to_q.hada_w2_b",
            vec![1, 2],
        ),
    ]);
    assert!(
        e.contains("one piece of BFL's fused `double_blocks.0.img_attn.qkv`"),
        "{e}"
    );
}
