//! Exported weights read back through the ordinary loaders give the same model, and a randomly
//! initialised autoencoder trains (every parameter gets a gradient) while a loaded one is frozen.

use std::collections::BTreeMap;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Distribution, ElementConversion, Tensor};
use fluxlora_flux::export::{autoencoder_tensors, transformer_tensors};
use fluxlora_flux::{Autoencoder, AutoencoderConfig, AutoencoderLoadOptions, Flux, LoadOptions};
use fluxlora_io::{write_safetensors, TensorRef};

use crate::lora::{inputs, tiny};

type B = NdArray;

fn tiny_base_vae() -> std::path::PathBuf {
    crate::common::fixtures_dir()
        .parent()
        .unwrap()
        .join("tiny-base")
        .join("vae")
}

fn options() -> AutoencoderLoadOptions {
    // fixtures/tiny-base/vae/config.json
    AutoencoderLoadOptions {
        norm_groups: 4,
        scale_factor: 0.3611,
        shift_factor: 0.1159,
        ..Default::default()
    }
}

fn write(path: &std::path::Path, tensors: &[(String, fluxlora_io::HostTensor)]) {
    let refs: Vec<(&str, TensorRef<'_>)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(path, &refs, &BTreeMap::new()).unwrap();
}

fn max_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem::<f32>()
}

#[test]
fn an_exported_autoencoder_loads_back_as_the_same_model_under_bfl_keys() {
    let dev = Default::default();
    let ae = Autoencoder::<B>::load(tiny_base_vae(), &options(), &dev).unwrap();
    let tensors = autoencoder_tensors(&ae).unwrap();
    // BFL names (the diffusers file had `down_blocks` / `mid_block.attentions`).
    let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "encoder.down.0.block.0.norm1.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.up.3.upsample.conv.bias",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ae.safetensors");
    write(&path, &tensors);
    let back = Autoencoder::<B>::load(&path, &options(), &dev).unwrap();
    assert_eq!(back.config(), ae.config());
    let x = Tensor::<B, 4>::random([1, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &dev);
    let (z0, z1) = (ae.encode(x.clone()).unwrap(), back.encode(x).unwrap());
    assert_eq!(max_diff(z0.clone(), z1), 0.0);
    assert_eq!(
        max_diff(ae.decode(z0.clone()).unwrap(), back.decode(z0).unwrap()),
        0.0
    );
}

#[test]
fn an_exported_transformer_loads_back_as_the_same_model_under_bfl_keys() {
    let dev = Default::default();
    let config = tiny();
    let model = Flux::<B>::init(&config, &dev).unwrap();
    let tensors = transformer_tensors(&model).unwrap();
    let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "double_blocks.0.img_mlp.0.weight",
        "final_layer.adaLN_modulation.1.bias",
        "single_blocks.1.norm.key_norm.scale",
    ] {
        assert!(keys.contains(&want), "{want} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux.safetensors");
    write(&path, &tensors);
    let options = LoadOptions {
        axes_dim: Some(config.axes_dim.clone()),
        ..Default::default()
    };
    let back = Flux::<B>::load(&path, &options, &dev).unwrap();
    let x = inputs::<B>(&config, 2, &dev);
    assert_eq!(
        max_diff(model.forward(&x).unwrap(), back.forward(&x).unwrap()),
        0.0
    );
}

#[test]
fn a_transformer_with_adapters_is_not_exported_as_a_base() {
    let dev = Default::default();
    let mut model = Flux::<B>::init(&tiny(), &dev).unwrap();
    model
        .apply_lora(
            &fluxlora_lora::TargetSelector::new(fluxlora_lora::Preset::Kohya, 2, 2.0),
            &dev,
        )
        .unwrap();
    let err = transformer_tensors(&model).unwrap_err().to_string();
    assert!(err.contains("LoRA adapter"), "{err}");
}

/// Counts parameters with and without gradients.
struct GradCount<'a> {
    grads: &'a <Autodiff<B> as burn::tensor::backend::AutodiffBackend>::Gradients,
    with: usize,
    without: usize,
}

impl ModuleVisitor<Autodiff<B>> for GradCount<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Autodiff<B>, D>>) {
        if p.val().grad(self.grads).is_some() {
            self.with += 1;
        } else {
            self.without += 1;
        }
    }
}

fn grad_count(ae: &Autoencoder<Autodiff<B>>) -> (usize, usize) {
    let x = Tensor::<Autodiff<B>, 4>::random(
        [1, 3, 8, 8],
        Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    );
    let z = ae.encode(x.clone()).unwrap();
    let loss = (ae.decode(z).unwrap() - x).powi_scalar(2).mean();
    let grads = loss.backward();
    let mut c = GradCount {
        grads: &grads,
        with: 0,
        without: 0,
    };
    ae.visit(&mut c);
    (c.with, c.without)
}

#[test]
fn a_random_autoencoder_trains_every_parameter_and_a_loaded_one_none() {
    let dev = Default::default();
    let config = AutoencoderConfig {
        ch: 4,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        z_channels: 2,
        norm_groups: 2,
        ..AutoencoderConfig::flux()
    };
    let ae = Autoencoder::<Autodiff<B>>::init(config, &dev).unwrap();
    let total = ae.num_params();
    assert!(total > 0);
    let (with, without) = grad_count(&ae);
    assert_eq!(without, 0, "every parameter of a random autoencoder trains");
    assert!(with > 20, "{with}");
    let loaded = Autoencoder::<Autodiff<B>>::load(tiny_base_vae(), &options(), &dev).unwrap();
    let (with, without) = grad_count(&loaded);
    assert_eq!(with, 0, "a loaded autoencoder is frozen");
    assert!(without > 20);
}
