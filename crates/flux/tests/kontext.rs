//! Kontext conditioning in the transformer: the control tokens are appended after the target's,
//! with ids `(1, row, col)`, and only the target tokens come out (BFL `denoise`: `img_input =
//! cat(img, img_cond_seq)`, `pred[:, :img.shape[1]]`). The reference values are the parity cases
//! `transformer_kontext_bfl` and `sampler_kontext_bfl`; these tests check the composition.

use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};
use fluxlora_flux::{latents, Flux, FluxInputs, ImageCondSeq};

use crate::lora::{inputs, tiny};

type B = NdArray;

fn control(batch: usize, h: usize, w: usize, channels: usize) -> ImageCondSeq<B> {
    let dev = Default::default();
    ImageCondSeq {
        img: Tensor::random(
            [batch, h * w, channels],
            Distribution::Normal(0.0, 1.0),
            &dev,
        ),
        ids: latents::control_ids(batch, h, w, &dev),
    }
}

#[test]
fn control_tokens_condition_the_target_and_are_left_out_of_the_output() {
    let c = tiny();
    let dev = Default::default();
    let model = Flux::<B>::init(&c, &dev).unwrap();
    let plain = inputs::<B>(&c, 2, &dev);
    let l_img = plain.img.dims()[1];
    let mut x = plain.clone();
    x.img_cond_seq = Some(control(2, 1, 5, c.in_channels));
    let out = model.forward(&x).unwrap();
    assert_eq!(out.dims(), [2, l_img, c.out_channels]);

    // The same tokens concatenated by hand, the output cut to the target's tokens.
    let cond = x.img_cond_seq.clone().unwrap();
    let by_hand = FluxInputs {
        img: Tensor::cat(vec![plain.img.clone(), cond.img], 1),
        img_ids: Tensor::cat(vec![plain.img_ids.clone(), cond.ids], 1),
        ..plain.clone()
    };
    let full = model.forward(&by_hand).unwrap();
    assert_eq!(full.dims()[1], l_img + 5);
    let d: f32 = (full.narrow(1, 0, l_img) - out.clone())
        .abs()
        .max()
        .into_scalar();
    assert!(d < 1e-6, "{d}");

    // The control changes the prediction; so does its first id axis (1 vs 0).
    let without: f32 = (model.forward(&plain).unwrap() - out.clone())
        .abs()
        .max()
        .into_scalar();
    assert!(without > 1e-4, "{without}");
    let mut as_target = x.clone();
    if let Some(cs) = &mut as_target.img_cond_seq {
        cs.ids = latents::img_ids(2, 1, 5, &dev);
    }
    let moved: f32 = (model.forward(&as_target).unwrap() - out)
        .abs()
        .max()
        .into_scalar();
    assert!(moved > 1e-6, "{moved}");
}

#[test]
fn control_ids_are_the_target_ids_with_index_one() {
    let dev = Default::default();
    let ids: Vec<f32> = latents::control_ids::<B>(1, 2, 3, &dev)
        .into_data()
        .into_vec()
        .unwrap();
    let want: Vec<f32> = (0..2)
        .flat_map(|r| (0..3).flat_map(move |col| [1.0, r as f32, col as f32]))
        .collect();
    assert_eq!(ids, want);
}

#[test]
fn mismatched_control_shapes_are_named() {
    let c = tiny();
    let dev = Default::default();
    let model = Flux::<B>::init(&c, &dev).unwrap();
    let mut x = inputs::<B>(&c, 2, &dev);
    x.img_cond_seq = Some(control(2, 2, 2, c.in_channels + 1));
    let e = model.forward(&x).unwrap_err().to_string();
    assert!(e.contains("img_cond_seq") && e.contains("expected"), "{e}");
    let mut cs = control(2, 2, 2, c.in_channels);
    cs.ids = latents::control_ids(2, 1, 3, &dev);
    x.img_cond_seq = Some(cs);
    let e = model.forward(&x).unwrap_err().to_string();
    assert!(e.contains("img_cond_seq_ids"), "{e}");
}

/// `fixtures/parity/kontext_resolutions.json`, written by BFL's `prepare_kontext` formula and
/// `PREFERED_KONTEXT_RESOLUTIONS` (`fixtures/parity/make_kontext_cases.py`), ties included.
#[test]
fn control_sizes_match_bfls_prepare_kontext() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/parity/kontext_resolutions.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    let pair =
        |v: &serde_json::Value| (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32);
    for case in cases {
        let (w, h) = pair(&case["input"]);
        let want = pair(&case["control"]);
        assert_eq!(
            fluxlora_flux::kontext::control_size(w, h, fluxlora_flux::kontext::REFERENCE_AREA),
            want,
            "{w}×{h}"
        );
    }
}
