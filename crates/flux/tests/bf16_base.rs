//! A bf16-stored frozen base on a backend that supports it (Flex): the forward stays close to
//! the f32 reference and LoRA training still reaches only the adapters.

use crate::common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Distribution, Tensor};
use fluxlora_flux::{
    forward_backward, Checkpointing, Flux, FluxCheckpoint, FluxInputs, LoadOptions,
};
use fluxlora_io::SafeTensorsFile;
use fluxlora_lora::{Preset, TargetSelector};

fn case() -> std::path::PathBuf {
    common::fixtures_dir().join("transformer_dev_comfyui_bf16")
}

fn options() -> LoadOptions {
    LoadOptions {
        axes_dim: Some(vec![4, 2, 2]),
        base_dtype: fluxlora_lora::BaseDtype::Bf16,
        ..Default::default()
    }
}

fn inputs<B: burn::tensor::backend::Backend>(
    dev: &B::Device,
) -> (FluxInputs<B>, fluxlora_io::HostTensor) {
    let io = common::Io(SafeTensorsFile::open(case().join("io.safetensors")).unwrap());
    let x = FluxInputs {
        txt_mask: None,
        img_cond_seq: None,
        img: io.tensor("img", dev).unwrap(),
        img_ids: io.tensor("img_ids", dev).unwrap(),
        txt: io.tensor("txt", dev).unwrap(),
        txt_ids: io.tensor("txt_ids", dev).unwrap(),
        timesteps: io.tensor("timesteps", dev).unwrap(),
        y: io.tensor("y", dev).unwrap(),
        guidance: Some(io.tensor("guidance", dev).unwrap()),
    };
    (x, io.get("out").unwrap())
}

#[test]
fn bf16_base_forward_is_close_to_the_f32_reference() {
    let dev = Default::default();
    let ckpt = FluxCheckpoint::open(case().join("model.safetensors")).unwrap();
    let cfg = ckpt.infer_config(Some(vec![4, 2, 2])).unwrap();
    let m = Flux::<Flex>::from_checkpoint(&ckpt, &cfg, &options(), &dev).unwrap();
    let qkv = m.double_blocks[0].img_attn.qkv.frozen.as_ref().unwrap();
    assert_eq!(qkv.meta().compute, DType::BF16);
    assert_eq!(qkv.meta().format, fluxlora_lora::FrozenFormat::Float);
    assert_eq!(
        m.double_blocks[0]
            .img_attn
            .norm
            .query_norm
            .scale
            .val()
            .dtype(),
        DType::F32
    );
    let (x, expected) = inputs::<Flex>(&dev);
    let out = m.forward(&x).unwrap();
    assert_eq!(out.dtype(), DType::F32);
    // The weights are exactly bf16 already; only activations are rounded to bf16 for the base
    // matmuls (8 significant bits), so the bound is bf16-sized, not f32-sized.
    let o = common::compare(out, &expected, 3e-2).unwrap();
    println!(
        "bf16 base on Flex: max_err {:.3e} (bound {:.1e})",
        o.max_err, o.bound
    );
    assert!(o.max_err <= o.bound, "{:?}", o);
    assert!(
        o.max_err > 0.0,
        "bf16 activations should differ from the f32 reference at all"
    );
}

#[test]
fn lora_trains_on_a_bf16_base() {
    type AB = Autodiff<Flex>;
    let dev = Default::default();
    let mut m = Flux::<AB>::load(case().join("model.safetensors"), &options(), &dev).unwrap();
    let chosen = m
        .apply_lora(&TargetSelector::new(Preset::Kohya, 2, 2.0), &dev)
        .unwrap();
    let lora_params = 2 * chosen.len();
    let (x, _) = inputs::<AB>(&dev);
    let target = Tensor::<AB, 3>::random(x.img.dims(), Distribution::Normal(0.0, 1.0), &dev);
    let step = forward_backward(&m, &x, Checkpointing::Blocks, |out| {
        (out - target.clone()).powi_scalar(2).mean()
    })
    .unwrap();
    assert_eq!(step.grads.len(), lora_params);
    let loss: f32 = step.loss.into_scalar();
    assert!(loss.is_finite());
}
