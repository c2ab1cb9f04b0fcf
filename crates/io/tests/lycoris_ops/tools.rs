//! inspect, resize (LoKr / LoHa → LoRA, DoRA refused) and convert on LyCORIS files.

use super::*;

#[test]
fn inspect_counts_kinds_and_lists_lycoris_modules() {
    let dir = tempfile::tempdir().unwrap();
    let mut lora = LoraWeights::default();
    lora.modules.insert(
        "double_blocks.0.img_attn.proj".into(),
        lora_module(4, 4, 2, 1.0, 1),
    );
    lora.modules.insert(
        "single_blocks.0.linear2".into(),
        lora_module(5, 3, 1, 1.0, 2),
    );
    lora.dora.insert(
        "single_blocks.0.linear2".into(),
        DoraScale {
            values: mags(5, 3),
            axis: DoraAxis::Output,
        },
    );
    let full = LycorisModule::Lokr {
        w1: KronFactor::Full(t(&[2, 3], 4)),
        w2: KronFactor::Full(t(&[3, 2], 5)),
        alpha: Some(4.0),
    };
    lora.lycoris
        .insert("double_blocks.0.txt_attn.proj".into(), full.clone());
    lora.lycoris
        .insert("double_blocks.1.img_mlp.0".into(), loha(6, 8, 3, 2, 1.0));
    let p = save(dir.path(), "mixed.safetensors", &lora, LoraFormat::ComfyUi);
    let i = inspect_lora(&p, true).unwrap();
    assert_eq!(i.modules, 4);
    assert_eq!(
        (i.kinds.lora, i.kinds.lokr, i.kinds.loha, i.kinds.dora),
        (2, 1, 1, 1)
    );
    assert_eq!(i.components.double_blocks, 3);
    assert_eq!(i.ranks, [(1, 1), (2, 1)].into());
    assert_eq!(
        i.dora,
        vec![("single_blocks.0.linear2".to_string(), DoraAxis::Output)]
    );
    let lokr = &i.lycoris[0];
    assert_eq!(
        (lokr.key.as_str(), lokr.kind, lokr.shape, lokr.rank),
        ("double_blocks.0.txt_attn.proj", "lokr", [6, 6], None)
    );
    // Both factors full: scale 1 whatever the alpha.
    assert_eq!((lokr.alpha, lokr.scale, lokr.params), (Some(4.0), 1.0, 12));
    let loha_s = &i.lycoris[1];
    assert_eq!(
        (
            loha_s.kind,
            loha_s.shape,
            loha_s.rank,
            loha_s.scale,
            loha_s.params
        ),
        ("loha", [8, 3], Some(2), 0.5, 2 * (16 + 6))
    );
    // Params: LoRA 2·8 + 1·8, DoRA 5, LoKr 12, LoHa 44.
    assert_eq!(i.params, 16 + 8 + 5 + 12 + 44);
    let norms: BTreeMap<String, f64> = i.norms.clone().unwrap().into_iter().collect();
    assert_eq!(norms.len(), 4);
    for (key, m) in &lora.lycoris {
        let want = ref_delta(m).iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norms[key] - want).abs() <= 1e-5 * want, "{key}");
    }
    let text = i.to_string();
    assert!(
        text.contains("kinds      lora 2, lokr 1, loha 1, dora 1"),
        "{text}"
    );
    assert!(text.contains("rank full"), "{text}");
    assert!(
        text.contains("1 LoRA modules carry a DoRA magnitude"),
        "{text}"
    );
    assert!(text.contains("(lokr)") && text.contains("(dora"), "{text}");
}

/// `‖a − b‖_F`.
fn fro_diff(a: &HostTensor, b: &[f64]) -> f64 {
    a.data
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Singular values of `kron(W1, W2)·scale`: the products σᵢ(W1)·σⱼ(W2)·scale, descending.
fn kron_singular_values(m: &LycorisModule) -> Vec<f64> {
    let LycorisModule::Lokr { w1, w2, .. } = m else {
        panic!("not a LoKr")
    };
    let sv = |f: &KronFactor| {
        let (v, r, c) = factor(f);
        svd(&Mat {
            rows: r,
            cols: c,
            data: v,
        })
        .s
    };
    let scale = f64::from(m.scale()).abs();
    let (s1, s2) = (sv(w1), sv(w2));
    let mut s: Vec<f64> = s1
        .iter()
        .flat_map(|a| s2.iter().map(move |b| a * b * scale))
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

#[test]
fn resize_turns_lokr_and_loha_into_the_best_lora_of_the_rank() {
    let dir = tempfile::tempdir().unwrap();
    let key = "double_blocks.0.img_attn.proj";
    // [4, 4] ⊗ ([6, 2]·[2, 4]) = [24, 16], ΔW of rank 4·2 = 8.
    let lokr = LycorisModule::Lokr {
        w1: KronFactor::Full(t(&[4, 4], 1)),
        w2: KronFactor::LowRank {
            a: t(&[6, 2], 2),
            b: t(&[2, 4], 3),
        },
        alpha: Some(3.0),
    };
    let mut lora = LoraWeights::default();
    lora.lycoris.insert(key.into(), lokr.clone());
    lora.metadata
        .insert("ss_network_module".into(), "lycoris.kohya".into());
    lora.metadata
        .insert("ss_network_args".into(), r#"{"algo": "lokr"}"#.into());
    let input = save(dir.path(), "lokr.safetensors", &lora, LoraFormat::Kohya);
    let want = ref_delta(&lokr);
    let sigma = kron_singular_values(&lokr);
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let ref_fro = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((total.sqrt() - ref_fro).abs() <= 1e-9 * ref_fro);

    // Full rank: the same ΔW, as a LoRA in a kohya file every tool reads.
    let out = dir.path().join("full.safetensors");
    let rep = resize_lora_file(&input, &out, ResizeTarget::Rank(8), None, None).unwrap();
    let m = &rep.modules[0];
    assert_eq!(
        (m.key.as_str(), m.kind, m.old_rank, m.new_rank),
        (key, "lokr", 8, 8)
    );
    assert!((m.fro_retained - 1.0).abs() < 1e-6);
    assert!((m.sigma_max - sigma[0]).abs() <= 1e-6 * sigma[0]);
    let (back, format) = read_lora(&out).unwrap();
    assert_eq!(format, LoraFormat::Kohya);
    assert!(back.lycoris.is_empty() && back.dora.is_empty());
    assert_eq!(back.modules[key].rank(), 8);
    let got = back.modules[key].delta().unwrap();
    assert!(
        fro_diff(&got, &want) <= 1e-5 * ref_fro,
        "{}",
        fro_diff(&got, &want)
    );
    assert_eq!(back.metadata["ss_network_module"], "networks.lora");
    assert!(!back.metadata.contains_key("ss_network_args"));

    // Lower rank: the error is the dropped singular values' (Eckart–Young).
    for k in [1, 3, 5] {
        let out = dir.path().join(format!("r{k}.safetensors"));
        let rep = resize_lora_file(&input, &out, ResizeTarget::Rank(k), None, None).unwrap();
        let (back, _) = read_lora(&out).unwrap();
        let got = back.modules[key].delta().unwrap();
        let best: f64 = sigma[k..].iter().map(|s| s * s).sum::<f64>().sqrt();
        let err = fro_diff(&got, &want);
        assert!(
            (err - best).abs() <= 1e-5 * ref_fro,
            "rank {k}: {err} vs {best}"
        );
        let kept: f64 = sigma[..k].iter().map(|s| s * s).sum();
        assert!((rep.modules[0].fro_retained - (kept / total).sqrt()).abs() < 1e-6);
        assert_eq!(back.metadata["ss_network_dim"], k.to_string());
    }
    // More than ΔW's rank is refused, as for a LoRA.
    let e = resize_lora_file(
        &input,
        dir.path().join("x.safetensors"),
        ResizeTarget::Rank(9),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lokr.safetensors") && e.contains("rank 9 > the LoRA's rank 8"),
        "{e}"
    );

    // A LoHa (ComfyUI) at its rank bound 2·2 = 4 is reproduced; a Frobenius fraction of 1
    // keeps exactly that many.
    let mut h = LoraWeights::default();
    let lh = loha(10, 7, 5, 2, 1.0);
    h.lycoris
        .insert("single_blocks.0.linear2".into(), lh.clone());
    let input = save(dir.path(), "loha.safetensors", &h, LoraFormat::ComfyUi);
    let out = dir.path().join("loha_lora.safetensors");
    let target = ResizeTarget::FroFraction {
        fraction: 1.0,
        max_rank: None,
    };
    let rep = resize_lora_file(&input, &out, target, None, None).unwrap();
    assert_eq!((rep.modules[0].kind, rep.modules[0].old_rank), ("loha", 4));
    let (back, format) = read_lora(&out).unwrap();
    assert_eq!(format, LoraFormat::ComfyUi);
    let m = &back.modules["single_blocks.0.linear2"];
    assert!(m.rank() <= 4);
    let want = ref_delta(&lh);
    let scale = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(fro_diff(&m.delta().unwrap(), &want) <= 1e-5 * scale);
}

#[test]
fn resize_refuses_dora_and_convert_refuses_lokr_to_peft() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = LoraWeights::default();
    d.modules
        .insert("img_in".into(), lora_module(4, 3, 2, 2.0, 1));
    d.dora.insert(
        "img_in".into(),
        DoraScale {
            values: mags(4, 2),
            axis: DoraAxis::Output,
        },
    );
    let input = save(dir.path(), "dora.safetensors", &d, LoraFormat::Kohya);
    let out = dir.path().join("resized.safetensors");
    let e = resize_lora_file(&input, &out, ResizeTarget::Rank(1), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dora.safetensors") && e.contains("DoRA magnitude") && e.contains("img_in"),
        "{e}"
    );
    assert!(!out.exists());

    let mut k = LoraWeights::default();
    k.lycoris.insert("img_in".into(), lokr_low(3));
    let input = save(dir.path(), "lokr_in.safetensors", &k, LoraFormat::Kohya);
    let out = dir.path().join("peft.safetensors");
    let e = convert_lora_file(&input, &out, LoraFormat::Peft, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lokr_in.safetensors") && e.contains("write kohya or ComfyUI"),
        "{e}"
    );
    assert!(e.contains("lokr"), "{e}");
    assert!(!out.exists());
}

/// LoKr, LoHa and DoRA (both axes) survive kohya → ComfyUI → kohya unchanged.
#[test]
fn convert_keeps_lycoris_between_kohya_and_comfyui() {
    let dir = tempfile::tempdir().unwrap();
    let mut lora = LoraWeights::default();
    lora.lycoris
        .insert("double_blocks.0.img_attn.proj".into(), lokr_low(1));
    lora.lycoris
        .insert("single_blocks.2.linear2".into(), loha(5, 6, 4, 2, 2.0));
    lora.modules.insert(
        "double_blocks.1.txt_attn.qkv".into(),
        lora_module(6, 4, 2, 1.0, 9),
    );
    lora.dora.insert(
        "double_blocks.1.txt_attn.qkv".into(),
        DoraScale {
            values: mags(6, 10),
            axis: DoraAxis::Output,
        },
    );
    lora.modules
        .insert("img_in".into(), lora_module(4, 3, 1, 1.0, 11));
    lora.dora.insert(
        "img_in".into(),
        DoraScale {
            values: mags(3, 12),
            axis: DoraAxis::Input,
        },
    );
    let kohya = save(dir.path(), "k.safetensors", &lora, LoraFormat::Kohya);
    let comfy = dir.path().join("c.safetensors");
    let rep = convert_lora_file(&kohya, &comfy, LoraFormat::ComfyUi, None).unwrap();
    assert_eq!(
        (rep.modules, rep.lycoris_modules, rep.dora_modules),
        (4, 2, 2)
    );
    let again = dir.path().join("k2.safetensors");
    convert_lora_file(&comfy, &again, LoraFormat::Kohya, None).unwrap();
    for (p, f) in [(&comfy, LoraFormat::ComfyUi), (&again, LoraFormat::Kohya)] {
        let (back, format) = read_lora(p).unwrap();
        assert_eq!(format, f);
        assert_eq!(back.lycoris, lora.lycoris);
        assert_eq!(back.modules, lora.modules);
        assert_eq!(back.dora, lora.dora);
    }
}
