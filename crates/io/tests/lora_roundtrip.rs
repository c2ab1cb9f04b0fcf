//! Property tests of the LoRA conversions.
//!
//! Tolerance: every ΔW (and Δb) entry must match the f64 reference `scale·up·down` within
//! `1e-5 · max_ij Σ_k |scale·up_ik·down_kj|` — a few hundred f32 roundings of the largest
//! term sum; conversions only add power-of-two scalings, one scale fold and re-associated sums.

use crate::common;

use std::collections::BTreeMap;

use common::{assert_close, ref_delta, values};
use fluxlora_io::lora::fuse::{fuse_rows, split_rows, swap_halves};
use fluxlora_io::{read_lora, write_lora, HostTensor, LoraFormat, LoraModule, LoraWeights};
use proptest::prelude::*;

const TOL: f64 = 1e-5;
const WRITABLE: [LoraFormat; 3] = [LoraFormat::Kohya, LoraFormat::Peft, LoraFormat::ComfyUi];

fn t(shape: &[usize], v: Vec<f32>) -> HostTensor {
    HostTensor::new(shape.to_vec(), v).unwrap()
}

/// A module with a dense random `up`.
fn dense(seed: u64, out: usize, inp: usize, r: usize, alpha: f32) -> LoraModule {
    LoraModule::new(
        t(&[r, inp], values(seed, r * inp)),
        t(&[out, r], values(seed + 1, out * r)),
        alpha,
    )
    .unwrap()
}

/// A module whose `up` is block-diagonal over row blocks `dims` with ranks `ranks` (what
/// kohya's split_qkv saves), built directly.
fn block_diag(seed: u64, dims: &[usize], ranks: &[usize], inp: usize, alpha: f32) -> LoraModule {
    let (out, r): (usize, usize) = (dims.iter().sum(), ranks.iter().sum());
    let down = values(seed, r * inp);
    let mut up = vec![0.0; out * r];
    let (mut row, mut col) = (0, 0);
    for (j, (&d, &k)) in dims.iter().zip(ranks).enumerate() {
        let block = values(seed + 10 + j as u64, d * k);
        for i in 0..d {
            for c in 0..k {
                // Keep every block's edge columns non-zero.
                let v = block[i * k + c];
                up[(row + i) * r + col + c] = if v == 0.0 { 0.5 } else { v };
            }
        }
        row += d;
        col += k;
    }
    LoraModule::new(t(&[r, inp], down), t(&[out, r], up), alpha).unwrap()
}

/// Reference ΔW of a module from its own tensors.
fn reference(m: &LoraModule) -> (Vec<f64>, Vec<f64>) {
    ref_delta(
        &m.up.data,
        &m.down.data,
        m.out_features(),
        m.rank(),
        m.in_features(),
        m.alpha as f64 / m.rank() as f64,
    )
}

fn check_same_delta(what: &str, got: &LoraModule, want: &LoraModule) {
    assert_eq!(
        (got.out_features(), got.in_features()),
        (want.out_features(), want.in_features()),
        "{what}"
    );
    let (d, mag) = reference(want);
    assert_close(what, &got.delta().unwrap().data, &d, &mag, TOL);
    match (got.delta_bias(), want.delta_bias()) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            let wb: Vec<f64> = w.data.iter().map(|v| *v as f64).collect();
            let mb: Vec<f64> = wb.iter().map(|v| v.abs()).collect();
            assert_close(&format!("{what} bias"), &g.data, &wb, &mb, TOL);
        }
        (g, w) => panic!(
            "{what}: bias presence differs: {:?} vs {:?}",
            g.is_some(),
            w.is_some()
        ),
    }
}

#[derive(Debug, Clone)]
struct Case {
    h: usize,
    mlp: usize,
    rank: usize,
    alpha: f32,
    seed: u64,
    block_qkv: bool,
    block_linear1: bool,
    part_ranks: Vec<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        8usize..=32,
        2usize..=4,
        1usize..=8,
        0.25f32..32.0,
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(1usize..=4, 4),
    )
        .prop_map(
            |(h, k, rank, alpha, seed, block_qkv, block_linear1, part_ranks)| Case {
                h,
                mlp: k * h,
                rank,
                alpha,
                seed: seed % 1_000_000,
                block_qkv,
                block_linear1,
                part_ranks,
            },
        )
}

/// A LoRA touching every kind of module: fused qkv/linear1 (dense or block-diagonal), plain
/// block linears, the swapped adaLN, non-block modules, both text encoders, and a bias.
fn build(c: &Case) -> LoraWeights {
    let (h, mlp, r, a, s) = (c.h, c.mlp, c.rank, c.alpha, c.seed * 100);
    let mut m = BTreeMap::new();
    let qkv = if c.block_qkv {
        block_diag(s + 1, &[h, h, h], &c.part_ranks[..3], h, a)
    } else {
        dense(s + 1, 3 * h, h, r, a)
    };
    m.insert("double_blocks.0.img_attn.qkv".to_string(), qkv);
    m.insert(
        "double_blocks.0.txt_attn.qkv".to_string(),
        dense(s + 3, 3 * h, h, r, a * 0.5),
    );
    let mut proj = dense(s + 5, h, h, r, a);
    proj.up_bias = Some(t(&[h], values(s + 7, h)));
    m.insert("double_blocks.0.img_attn.proj".to_string(), proj);
    m.insert(
        "double_blocks.0.img_mlp.0".to_string(),
        dense(s + 9, mlp, h, r, a),
    );
    m.insert(
        "double_blocks.0.img_mlp.2".to_string(),
        dense(s + 11, h, mlp, r, a),
    );
    m.insert(
        "double_blocks.1.txt_mod.lin".to_string(),
        dense(s + 13, 6 * h, h, r, r as f32),
    );
    let linear1 = if c.block_linear1 {
        block_diag(s + 15, &[h, h, h, mlp], &c.part_ranks, h, a)
    } else {
        dense(s + 15, 3 * h + mlp, h, r, a)
    };
    m.insert("single_blocks.0.linear1".to_string(), linear1);
    m.insert(
        "single_blocks.0.linear2".to_string(),
        dense(s + 17, h, h + mlp, r, a),
    );
    m.insert(
        "single_blocks.0.modulation.lin".to_string(),
        dense(s + 19, 3 * h, h, r, a),
    );
    m.insert(
        "final_layer.adaLN_modulation.1".to_string(),
        dense(s + 21, 2 * h, h, r, a),
    );
    m.insert("final_layer.linear".to_string(), dense(s + 23, 4, h, r, a));
    m.insert("img_in".to_string(), dense(s + 25, h, 4, r, a));
    m.insert("time_in.out_layer".to_string(), dense(s + 27, h, h, r, a));
    m.insert(
        "te1:text_model.encoder.layers.0.self_attn.q_proj".to_string(),
        dense(s + 29, h, h, r, a),
    );
    m.insert(
        "te3:encoder.block.1.layer.1.DenseReluDense.wi_0".to_string(),
        dense(s + 31, mlp, h, r, a),
    );
    LoraWeights {
        modules: m,
        metadata: [("ss_network_dim".to_string(), r.to_string())].into(),
        ..Default::default()
    }
}

fn check_lora(what: &str, got: &LoraWeights, want: &LoraWeights) {
    assert_eq!(
        got.modules.keys().collect::<Vec<_>>(),
        want.modules.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, w) in &want.modules {
        check_same_delta(&format!("{what} {k}"), &got.modules[k], w);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// write X → read → write Y → read preserves every ΔW and Δb, for all X, Y.
    #[test]
    fn every_format_pair_preserves_delta(c in case()) {
        let lora = build(&c);
        let dir = tempfile::tempdir().unwrap();
        for x in WRITABLE {
            let px = dir.path().join(format!("x_{x:?}.safetensors"));
            write_lora(&px, &lora, x, &BTreeMap::new()).unwrap();
            let (rx, fx) = read_lora(&px).unwrap();
            prop_assert_eq!(fx, x);
            check_lora(&format!("{x:?}"), &rx, &lora);
            prop_assert_eq!(rx.metadata.get("ss_network_dim"), lora.metadata.get("ss_network_dim"));
            for y in WRITABLE {
                let py = dir.path().join(format!("y_{x:?}_{y:?}.safetensors"));
                write_lora(&py, &rx, y, &BTreeMap::new()).unwrap();
                let (ry, fy) = read_lora(&py).unwrap();
                prop_assert_eq!(fy, y);
                check_lora(&format!("{x:?}->{y:?}"), &ry, &lora);
            }
        }
    }

    /// Splitting a fused qkv / linear1 and fusing the pieces back is the identity on ΔW (and,
    /// for a dense up, on the tensors themselves).
    #[test]
    fn split_then_fuse_is_identity(c in case()) {
        let (h, mlp) = (c.h, c.mlp);
        let cases = [
            (
                "qkv",
                vec![h, h, h],
                if c.block_qkv {
                    block_diag(c.seed, &[h, h, h], &c.part_ranks[..3], h, c.alpha)
                } else {
                    dense(c.seed, 3 * h, h, c.rank, c.alpha)
                },
            ),
            (
                "linear1",
                vec![h, h, h, mlp],
                if c.block_linear1 {
                    block_diag(c.seed, &[h, h, h, mlp], &c.part_ranks, h, c.alpha)
                } else {
                    dense(c.seed, 3 * h + mlp, h, c.rank, c.alpha)
                },
            ),
        ];
        for (name, dims, m) in cases {
            let parts = split_rows(&m, &dims).unwrap();
            prop_assert_eq!(parts.len(), dims.len());
            let mut row = 0;
            let mut placed = Vec::new();
            for (p, d) in parts.iter().zip(&dims) {
                // Each part alone carries exactly its rows of ΔW.
                let mut want = m.clone();
                want.up = m.up.rows(row, row + d).unwrap();
                check_same_delta(&format!("{name} part at {row}"), p, &want);
                placed.push((row, p));
                row += d;
            }
            let fused = fuse_rows(&placed, row).unwrap();
            check_same_delta(&format!("{name} fused"), &fused, &m);
            prop_assert_eq!(fused.rank(), m.rank());
            let block_diagonal =
                (c.block_qkv && name == "qkv") || (c.block_linear1 && name == "linear1");
            if !block_diagonal {
                prop_assert_eq!(&fused, &m);
            }
        }
    }

    /// Fusing pieces with different ranks and alphas gives the exact stacked ΔW.
    #[test]
    fn fusing_unequal_pieces_is_exact(
        c in case(),
        alphas in prop::collection::vec(0.1f32..20.0, 3),
        skip in 0usize..4,
    ) {
        let h = c.h;
        let pieces: Vec<(usize, LoraModule)> = (0..3)
            .filter(|&j| j != skip) // sometimes one piece is absent: its rows must be zero
            .map(|j| (j * h, dense(c.seed + j as u64 * 7, h, h, c.part_ranks[j], alphas[j])))
            .collect();
        let refs: Vec<(usize, &LoraModule)> = pieces.iter().map(|(r, m)| (*r, m)).collect();
        let fused = fuse_rows(&refs, 3 * h).unwrap();
        let mut want = vec![0.0; 3 * h * h];
        let mut mag = vec![0.0; 3 * h * h];
        for (row, m) in &pieces {
            let (d, g) = reference(m);
            want[row * h..(row + h) * h].copy_from_slice(&d);
            mag[row * h..(row + h) * h].copy_from_slice(&g);
        }
        assert_close("fused", &fused.delta().unwrap().data, &want, &mag, TOL);
    }

    /// The adaLN half swap is an involution and swaps ΔW's row halves.
    #[test]
    fn adaln_swap_is_an_involution(c in case()) {
        let h = c.h;
        let mut m = dense(c.seed, 2 * h, h, c.rank, c.alpha);
        m.up_bias = Some(t(&[2 * h], values(c.seed + 99, 2 * h)));
        let s = swap_halves(&m).unwrap();
        prop_assert_eq!(&swap_halves(&s).unwrap(), &m);
        let (d, mag) = reference(&m);
        let swapped: Vec<f64> = d[h * h..].iter().chain(&d[..h * h]).copied().collect();
        let smag: Vec<f64> = mag[h * h..].iter().chain(&mag[..h * h]).copied().collect();
        assert_close("swapped", &s.delta().unwrap().data, &swapped, &smag, TOL);
        let b = m.up_bias.as_ref().unwrap();
        prop_assert_eq!(&s.up_bias.as_ref().unwrap().data[..h], &b.data[h..]);
    }
}

#[test]
fn peft_files_carry_no_alpha_and_kohya_files_do() {
    let c = Case {
        h: 8,
        mlp: 16,
        rank: 4,
        alpha: 1.0,
        seed: 5,
        block_qkv: false,
        block_linear1: true,
        part_ranks: vec![1, 2, 1, 3],
    };
    let lora = build(&c);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("peft.safetensors");
    write_lora(&p, &lora, LoraFormat::Peft, &BTreeMap::new()).unwrap();
    let f = fluxlora_io::SafeTensorsFile::open(&p).unwrap();
    assert!(f.names().all(|n| !n.ends_with(".alpha")));
    // ai-toolkit-style split names, adaLN as norm_out.linear, TEs under text_encoder(_2).
    for n in [
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
        "transformer.transformer_blocks.0.attn.add_v_proj.lora_B.weight",
        "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight",
        "transformer.norm_out.linear.lora_A.weight",
        "transformer.time_text_embed.timestep_embedder.linear_2.lora_A.weight",
        "transformer.transformer_blocks.0.attn.to_out.0.lora_B.bias",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
        "text_encoder_2.encoder.block.1.layer.1.DenseReluDense.wi_0.lora_B.weight",
    ] {
        assert!(f.contains(n), "missing {n}");
    }
    // The block-diagonal linear1 splits into its own ranks (1, 2, 1, 3).
    assert_eq!(
        f.info("transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight")
            .unwrap()
            .1,
        &[3, 8]
    );
    let p = dir.path().join("kohya.safetensors");
    write_lora(&p, &lora, LoraFormat::Kohya, &BTreeMap::new()).unwrap();
    let f = fluxlora_io::SafeTensorsFile::open(&p).unwrap();
    assert_eq!(
        f.read_scalar("lora_unet_double_blocks_0_img_attn_qkv.alpha")
            .unwrap(),
        1.0
    );
    assert!(f.contains("lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"));
    assert!(f.contains("lora_unet_double_blocks_0_img_attn_proj.diff_b"));
    assert!(f.contains("lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0.lora_down.weight"));
    assert_eq!(
        f.info("lora_unet_double_blocks_0_img_attn_qkv.alpha")
            .unwrap()
            .0,
        fluxlora_io::Dtype::F32
    );
    let p = dir.path().join("comfy.safetensors");
    write_lora(&p, &lora, LoraFormat::ComfyUi, &BTreeMap::new()).unwrap();
    let f = fluxlora_io::SafeTensorsFile::open(&p).unwrap();
    assert!(f.contains("diffusion_model.single_blocks.0.linear1.lora_B.weight"));
    assert!(f.contains(
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.alpha"
    ));
}

#[test]
fn bf16_export_is_close() {
    let c = Case {
        h: 16,
        mlp: 32,
        rank: 4,
        alpha: 2.0,
        seed: 9,
        block_qkv: true,
        block_linear1: false,
        part_ranks: vec![2, 2, 2, 2],
    };
    let lora = build(&c);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bf16.safetensors");
    fluxlora_io::write_lora_as(
        &p,
        &lora,
        LoraFormat::Peft,
        &BTreeMap::new(),
        fluxlora_io::Dtype::BF16,
    )
    .unwrap();
    let (back, _) = read_lora(&p).unwrap();
    for (k, m) in &lora.modules {
        let (d, mag) = reference(m);
        // BF16 keeps 8 bits of mantissa: relative error ≤ 2^-8 per factor.
        assert_close(k, &back.modules[k].delta().unwrap().data, &d, &mag, 1e-2);
    }
}
