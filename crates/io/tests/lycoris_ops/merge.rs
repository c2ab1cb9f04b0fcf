//! Merging LoKr / LoHa / DoRA files into BFL and diffusers bases, against f64 references
//! and the LyCORIS / PEFT fixtures.

use super::*;

/// LoKr, LoHa, a LoRA and then DoRA (both axes) on the same weight, three files merged in
/// order into a BFL base.
#[test]
fn merge_folds_lokr_loha_and_dora_into_a_bfl_base() {
    let dir = tempfile::tempdir().unwrap();
    let w = |k: &str| format!("{k}.weight");
    let (proj, lin2, txt, mlp) = (
        "double_blocks.0.img_attn.proj",
        "single_blocks.0.linear2",
        "double_blocks.0.txt_attn.proj",
        "double_blocks.0.img_mlp.0",
    );
    let base_t = vec![
        ("img_in.weight".to_string(), t(&[4, 2], 1)),
        (w(proj), t(&[6, 4], 2)),
        (w(lin2), t(&[5, 7], 3)),
        (w(txt), t(&[4, 4], 4)),
        (w(mlp), t(&[6, 3], 5)),
    ];
    let base = write_base(&dir.path().join("base.safetensors"), &base_t);

    let mut a = LoraWeights::default();
    a.lycoris.insert(proj.into(), lokr_low(10));
    a.modules.insert(txt.into(), lora_module(4, 4, 2, 1.0, 20));
    let mut b = LoraWeights::default();
    b.lycoris.insert(lin2.into(), loha(30, 5, 7, 2, 1.5));
    let mut c = LoraWeights::default();
    c.modules.insert(txt.into(), lora_module(4, 4, 1, 1.0, 40));
    c.dora.insert(
        txt.into(),
        DoraScale {
            values: mags(4, 41),
            axis: DoraAxis::Output,
        },
    );
    c.modules.insert(mlp.into(), lora_module(6, 3, 2, 2.0, 50));
    c.dora.insert(
        mlp.into(),
        DoraScale {
            values: mags(3, 51),
            axis: DoraAxis::Input,
        },
    );
    let loras = [
        WeightedLora::open(
            save(dir.path(), "a.safetensors", &a, LoraFormat::Kohya),
            0.7,
        )
        .unwrap(),
        WeightedLora::open(
            save(dir.path(), "b.safetensors", &b, LoraFormat::ComfyUi),
            -1.2,
        )
        .unwrap(),
        WeightedLora::open(
            save(dir.path(), "c.safetensors", &c, LoraFormat::Kohya),
            0.5,
        )
        .unwrap(),
    ];
    let out_p = dir.path().join("merged.safetensors");
    let rep = merge_loras(&base, &loras, &out_p).unwrap();
    assert_eq!(
        (rep.merged_modules, rep.lycoris_modules, rep.dora_modules),
        (5, 2, 2)
    );
    assert_eq!(rep.modified_tensors.len(), 4);
    assert_eq!(rep.copied_tensors, 1);
    let out = SafeTensorsFile::open(&out_p).unwrap();
    let got = |k: &str| out.read_f32(&w(k)).unwrap();
    let b0 = |i: usize| f64s(&base_t[i].1);

    let want = add(&b0(1), &ref_delta(&a.lycoris[proj]), 0.7);
    assert_close(proj, &got(proj), &want, 1e-6);
    let want = add(&b0(2), &ref_delta(&b.lycoris[lin2]), -1.2);
    assert_close(lin2, &got(lin2), &want, 1e-6);
    // The LoRA of a first, then c's DoRA on the result.
    let w1 = add(&b0(3), &lora_delta(&a.modules[txt]), 0.7);
    let want = dora(
        &w1,
        &lora_delta(&c.modules[txt]),
        4,
        &c.dora[txt].values.data,
        true,
        0.5,
    );
    assert_close(txt, &got(txt), &want, 1e-6);
    let want = dora(
        &b0(4),
        &lora_delta(&c.modules[mlp]),
        3,
        &c.dora[mlp].values.data,
        false,
        0.5,
    );
    assert_close(mlp, &got(mlp), &want, 1e-6);
    assert_eq!(
        out.raw("img_in.weight").unwrap(),
        base.raw("img_in.weight").unwrap()
    );
}

/// A diffusers base: a fused LoKr's rows land on to_q/to_k/to_v, a LoHa's on linear1's four
/// tensors, a per-output DoRA normalises the split rows, a per-input DoRA on the half-swapped
/// norm_out.linear works on the whole tensor; a per-input DoRA on a split module is an error.
#[test]
fn merge_on_a_diffusers_base_splits_fused_lycoris_and_dora_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (d, s) = ("transformer_blocks.0", "single_transformer_blocks.0");
    let qkv = ["to_q", "to_k", "to_v"].map(|n| format!("{d}.attn.{n}.weight"));
    let add_qkv =
        ["add_q_proj", "add_k_proj", "add_v_proj"].map(|n| format!("{d}.attn.{n}.weight"));
    let lin1 = [
        format!("{s}.attn.to_q.weight"),
        format!("{s}.attn.to_k.weight"),
        format!("{s}.attn.to_v.weight"),
        format!("{s}.proj_mlp.weight"),
    ];
    let mut base_t = vec![("x_embedder.weight".to_string(), t(&[4, 2], 1))];
    for (i, n) in qkv.iter().chain(&add_qkv).enumerate() {
        base_t.push((n.clone(), t(&[2, 4], 10 + i as u64)));
    }
    for (i, n) in lin1.iter().enumerate() {
        base_t.push((
            n.clone(),
            t(&[if i == 3 { 3 } else { 2 }, 4], 20 + i as u64),
        ));
    }
    base_t.push(("norm_out.linear.weight".into(), t(&[4, 4], 30)));
    let base = write_base(&dir.path().join("transformer.safetensors"), &base_t);
    let base_of = |name: &str| f64s(&base_t.iter().find(|(n, _)| n == name).unwrap().1);
    let stack = |names: &[String]| names.iter().flat_map(|n| base_of(n)).collect::<Vec<_>>();

    let mut a = LoraWeights::default();
    let lokr = LycorisModule::Lokr {
        w1: KronFactor::Full(t(&[3, 2], 40)),
        w2: KronFactor::Full(t(&[2, 2], 41)),
        alpha: None,
    };
    a.lycoris
        .insert("double_blocks.0.img_attn.qkv".into(), lokr);
    a.lycoris
        .insert("single_blocks.0.linear1".into(), loha(50, 9, 4, 1, 2.0));
    let mut b = LoraWeights::default();
    let (tq, ada) = (
        "double_blocks.0.txt_attn.qkv",
        "final_layer.adaLN_modulation.1",
    );
    b.modules.insert(tq.into(), lora_module(6, 4, 2, 1.0, 60));
    b.dora.insert(
        tq.into(),
        DoraScale {
            values: mags(6, 61),
            axis: DoraAxis::Output,
        },
    );
    b.modules.insert(ada.into(), lora_module(4, 4, 1, 1.0, 70));
    b.dora.insert(
        ada.into(),
        DoraScale {
            values: mags(4, 71),
            axis: DoraAxis::Input,
        },
    );
    let loras = [
        WeightedLora::open(
            save(dir.path(), "a.safetensors", &a, LoraFormat::ComfyUi),
            1.3,
        )
        .unwrap(),
        WeightedLora::open(
            save(dir.path(), "b.safetensors", &b, LoraFormat::Kohya),
            1.0,
        )
        .unwrap(),
    ];
    let out_p = dir.path().join("out.safetensors");
    let rep = merge_loras(&base, &loras, &out_p).unwrap();
    assert_eq!((rep.merged_modules, rep.dora_modules), (4, 2));
    let out = SafeTensorsFile::open(&out_p).unwrap();
    let check_rows = |names: &[String], want: &[f64]| {
        let mut at = 0;
        for n in names {
            let g = out.read_f32(n).unwrap();
            assert_close(n, &g, &want[at..at + g.numel()], 1e-6);
            at += g.numel();
        }
        assert_eq!(at, want.len());
    };
    let want = add(
        &stack(&qkv),
        &ref_delta(&a.lycoris["double_blocks.0.img_attn.qkv"]),
        1.3,
    );
    check_rows(&qkv, &want);
    let want = add(
        &stack(&lin1),
        &ref_delta(&a.lycoris["single_blocks.0.linear1"]),
        1.3,
    );
    check_rows(&lin1, &want);
    let want = dora(
        &stack(&add_qkv),
        &lora_delta(&b.modules[tq]),
        4,
        &b.dora[tq].values.data,
        true,
        1.0,
    );
    check_rows(&add_qkv, &want);
    // BFL (shift, scale) = diffusers (scale, shift) swapped: merge in BFL order, swap back.
    let swap = |v: &[f64]| [&v[8..], &v[..8]].concat();
    let bfl = swap(&base_of("norm_out.linear.weight"));
    let merged = dora(
        &bfl,
        &lora_delta(&b.modules[ada]),
        4,
        &b.dora[ada].values.data,
        false,
        1.0,
    );
    check_rows(&["norm_out.linear.weight".to_string()], &swap(&merged));

    // Per-input DoRA on the split txt_attn.qkv: refused, naming the file, nothing written.
    let mut c = b.clone();
    c.dora.get_mut(tq).unwrap().axis = DoraAxis::Input;
    c.dora.get_mut(tq).unwrap().values = mags(4, 62);
    let c_p = save(dir.path(), "per_input.safetensors", &c, LoraFormat::Kohya);
    let bad = [WeightedLora::open(&c_p, 1.0).unwrap()];
    let out2 = dir.path().join("never.safetensors");
    let e = merge_loras(&base, &bad, &out2).unwrap_err().to_string();
    assert!(
        e.contains("per_input.safetensors") && e.contains("per-input DoRA") && e.contains(tq),
        "{e}"
    );
    assert!(e.contains("BFL-layout base"), "{e}");
    assert!(!out2.exists());
}

/// The LyCORIS / PEFT fixtures merged into a base made of their reference base weights give
/// the fixtures' reference merged weights; the other tensors are copied.
#[test]
fn merge_of_lycoris_fixtures_equals_their_reference() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/lycoris");
    let expected = SafeTensorsFile::open(fixtures.join("expected.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base_t: Vec<(String, HostTensor)> = expected
        .names()
        .filter_map(|n| n.strip_suffix(".base"))
        .map(|k| {
            let t = expected.read_f32(&format!("{k}.base")).unwrap();
            (format!("{k}.weight"), t)
        })
        .collect();
    let base = write_base(&dir.path().join("base.safetensors"), &base_t);
    let mut checked = 0;
    for name in [
        "lokr.safetensors",
        "loha.safetensors",
        "dora_lycoris.safetensors",
        "dora_peft.safetensors",
    ] {
        let wl = WeightedLora::open(fixtures.join(name), 1.0).unwrap();
        let keys: Vec<String> = wl
            .lora
            .modules
            .keys()
            .chain(wl.lora.lycoris.keys())
            .cloned()
            .collect();
        let out_p = dir.path().join(format!("merged_{name}"));
        let rep = merge_loras(&base, std::slice::from_ref(&wl), &out_p).unwrap();
        assert_eq!(rep.merged_modules, keys.len(), "{name}");
        let out = SafeTensorsFile::open(&out_p).unwrap();
        for (wname, b) in &base_t {
            let key = wname.strip_suffix(".weight").unwrap();
            let got = out.read_f32(wname).unwrap();
            if keys.iter().any(|k| k == key) {
                let want = expected.read_f32(&format!("{key}.merged")).unwrap();
                let scale = want.max_abs().max(1.0);
                let diff = got.max_abs_diff(&want).unwrap();
                assert!(diff <= 2e-5 * scale, "{name} {key}: {diff}");
                assert!(want.max_abs_diff(b).unwrap() > 1e-2, "{name} {key}");
                checked += 1;
            } else {
                assert_eq!(&got, b, "{name}: {key} must be copied");
            }
        }
    }
    assert_eq!(checked, 8);
}
