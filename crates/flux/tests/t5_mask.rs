//! The T5 padding mask (`apply_t5_attn_mask`): with it, padded text tokens are invisible. The
//! image output over `txt ‖ padding` with the padding masked equals the output over the text
//! alone (text ids are zeros, so dropping tokens moves no position), per sample in a batch of
//! different lengths; the LoRA gradients agree too, with and without block checkpointing.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Distribution, Tensor, TensorData};
use fluxlora_flux::{forward_backward, Checkpointing, Flux, FluxInputs};
use fluxlora_lora::{Preset, TargetSelector};

use crate::lora::{inputs, tiny};

type B = NdArray;
type AB = Autodiff<NdArray>;

/// Sample `i` of `x` with only its first `keep` text tokens, no mask.
fn truncated(x: &FluxInputs<AB>, i: usize, keep: usize) -> FluxInputs<AB> {
    let one3 = |t: &Tensor<AB, 3>| t.clone().narrow(0, i, 1);
    FluxInputs {
        img: one3(&x.img),
        img_ids: one3(&x.img_ids),
        txt: one3(&x.txt).narrow(1, 0, keep),
        txt_ids: one3(&x.txt_ids).narrow(1, 0, keep),
        timesteps: x.timesteps.clone().narrow(0, i, 1),
        y: x.y.clone().narrow(0, i, 1),
        guidance: x.guidance.clone().map(|g| g.narrow(0, i, 1)),
        txt_mask: None,
        img_cond_seq: None,
    }
}

fn max_abs_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn masked_padding_is_invisible_to_the_image_tokens() {
    let c = tiny();
    let dev = Default::default();
    let mut m = Flux::<AB>::init(&c, &dev).unwrap();
    m.apply_lora(&TargetSelector::new(Preset::Kohya, 2, 2.0), &dev)
        .unwrap();
    // Random B so the adapters act and A gets gradients.
    for (_, lin) in m.linears_mut() {
        for a in &mut lin.adapters {
            let v = Tensor::random(a.lora_b.dims(), Distribution::Normal(0.0, 0.3), &dev);
            a.lora_b = burn::module::Param::initialized(a.lora_b.id, v.require_grad());
        }
    }
    let mut x = inputs::<AB>(&c, 2, &dev);
    let l_txt = x.txt.dims()[1];
    // Sample 0 keeps 3 text tokens, sample 1 keeps 1; padding gets large values so a leak shows.
    let keep = [3usize, 1];
    let mask: Vec<f32> = keep
        .iter()
        .flat_map(|&k| (0..l_txt).map(move |j| f32::from(u8::from(j < k))))
        .collect();
    let mask_t = Tensor::<AB, 2>::from_data(TensorData::new(mask.clone(), [2, l_txt]), &dev);
    let pad = mask_t.clone().neg().add_scalar(1.0).unsqueeze_dim::<3>(2) * 50.0;
    x.txt = x.txt.clone() + pad;
    x.txt_mask = Some(mask_t);

    let masked = m.forward(&x).unwrap().inner();
    let unmasked = m
        .forward(&FluxInputs {
            txt_mask: None,
            img_cond_seq: None,
            ..x.clone()
        })
        .unwrap()
        .inner();
    let target = Tensor::<AB, 3>::random(masked.dims(), Distribution::Normal(0.0, 1.0), &dev);
    for (i, &k) in keep.iter().enumerate() {
        let alone = m.forward(&truncated(&x, i, k)).unwrap().inner();
        let d = max_abs_diff(masked.clone().narrow(0, i, 1), alone.clone());
        assert!(
            d < 1e-5,
            "sample {i}: masked output differs from the text alone by {d}"
        );
        // Without the mask the padding does change the output (the test can see a leak).
        let leak = max_abs_diff(unmasked.clone().narrow(0, i, 1), alone);
        assert!(
            leak > 1e-3,
            "sample {i}: the padding had no effect unmasked ({leak})"
        );

        // Gradients of the LoRA parameters agree too, with and without checkpointing.
        let t_i = target.clone().narrow(0, i, 1);
        let loss = |out: Tensor<AB, 3>| (out - t_i.clone()).powi_scalar(2).mean();
        let mut xi = truncated(&x, i, l_txt);
        xi.txt_mask = x.txt_mask.clone().map(|mk| mk.narrow(0, i, 1));
        let want = forward_backward(&m, &truncated(&x, i, k), Checkpointing::Off, loss).unwrap();
        for mode in [Checkpointing::Off, Checkpointing::Blocks] {
            let got = forward_backward(&m, &xi, mode, loss).unwrap();
            let (lw, lg): (f32, f32) = (
                want.loss.clone().into_scalar(),
                got.loss.clone().into_scalar(),
            );
            assert!(
                (lw - lg).abs() < 1e-5,
                "sample {i} {mode:?}: loss {lg} vs {lw}"
            );
            let mut compared = 0;
            for (_, lin) in m.linears_mut() {
                for a in &lin.adapters {
                    for id in [a.lora_a.id, a.lora_b.id] {
                        let (gw, gg) = (
                            want.grads.get::<B, 2>(id).expect("a LoRA gradient"),
                            got.grads.get::<B, 2>(id).expect("a LoRA gradient"),
                        );
                        let scale = gw.clone().abs().max().into_scalar().max(1e-3);
                        let d: f32 = (gw - gg).abs().max().into_scalar();
                        assert!(
                            d <= 1e-4 * scale,
                            "sample {i} {mode:?}: gradient differs by {d}"
                        );
                        compared += 1;
                    }
                }
            }
            assert!(compared > 0);
        }
    }
}

#[test]
fn a_mask_of_the_wrong_shape_is_an_input_error() {
    let c = tiny();
    let dev = Default::default();
    let m = Flux::<B>::init(&c, &dev).unwrap();
    let mut x = inputs::<B>(&c, 2, &dev);
    x.txt_mask = Some(Tensor::ones([2, 3], &dev));
    let e = m.forward(&x).unwrap_err().to_string();
    assert!(e.contains("txt_mask"), "{e}");
}
