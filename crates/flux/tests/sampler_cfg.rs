//! True classifier-free guidance ([`denoise_cfg`]) checked against the plain Euler sampler
//! ([`denoise`], itself checked against BFL's `denoise` in the parity suite): one Euler step is
//! linear in the velocity, so one CFG step must equal `(1 − s)·step(neg) + s·step(pos)`.

use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Distribution, ElementConversion, Tensor};
use fluxlora_flux::sampler::{denoise, denoise_cfg, Conditioning};
use fluxlora_flux::Flux;

use crate::lora::{inputs, tiny};

type B = NdArray;

fn cond(seed_shift: f32, dev: &burn::tensor::Device<B>) -> Conditioning<B> {
    let x = inputs::<B>(&tiny(), 1, dev);
    Conditioning {
        txt_mask: None,
        img_cond_seq: None,
        txt: x.txt.add_scalar(seed_shift),
        txt_ids: x.txt_ids,
        img_ids: x.img_ids,
        y: x.y.add_scalar(seed_shift),
        guidance: Some(3.5),
    }
}

fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    (a - b).abs().max().into_scalar().elem::<f32>()
}

#[test]
fn one_cfg_step_is_the_guided_mix_of_the_two_plain_steps() {
    let dev = Default::default();
    B::seed(&dev, 4);
    let model = Flux::<B>::init(&tiny(), &dev).unwrap();
    let (pos, neg) = (cond(0.0, &dev), cond(0.7, &dev));
    let noise = Tensor::<B, 3>::random([1, 6, 8], Distribution::Normal(0.0, 1.0), &dev);
    let ts = [1.0, 0.6];
    let step_pos = denoise(&model, noise.clone(), &pos, &ts).unwrap();
    let step_neg = denoise(&model, noise.clone(), &neg, &ts).unwrap();
    // The two conditionings must lead to different steps, or the check would prove little.
    assert!(max_diff(step_pos.clone(), step_neg.clone()) > 1e-3);
    for s in [0.0f32, 1.0, 2.5, 4.0] {
        let want = step_neg.clone().mul_scalar(1.0 - s) + step_pos.clone().mul_scalar(s);
        let got = denoise_cfg(&model, noise.clone(), &pos, &neg, s, &ts).unwrap();
        assert!(max_diff(got, want) < 1e-4, "scale {s}");
    }
}

#[test]
fn cfg_at_scale_one_or_with_the_same_prompt_is_the_plain_sampler() {
    let dev = Default::default();
    B::seed(&dev, 5);
    let model = Flux::<B>::init(&tiny(), &dev).unwrap();
    let (pos, neg) = (cond(0.0, &dev), cond(-0.4, &dev));
    let noise = Tensor::<B, 3>::random([1, 6, 8], Distribution::Normal(0.0, 1.0), &dev);
    let ts = [1.0, 0.75, 0.5, 0.2, 0.0];
    let plain = denoise(&model, noise.clone(), &pos, &ts).unwrap();
    assert!(
        max_diff(
            denoise_cfg(&model, noise.clone(), &pos, &neg, 1.0, &ts).unwrap(),
            plain.clone()
        ) < 1e-4
    );
    assert!(
        max_diff(
            denoise_cfg(&model, noise.clone(), &pos, &pos, 3.0, &ts).unwrap(),
            plain.clone()
        ) < 1e-4
    );
    // A real negative prompt at scale > 1 moves the result.
    assert!(
        max_diff(
            denoise_cfg(&model, noise, &pos, &neg, 3.0, &ts).unwrap(),
            plain
        ) > 1e-3
    );
}
