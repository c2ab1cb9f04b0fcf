//! Low-precision frozen bases: ComfyUI scaled-fp8 checkpoints read with their scales, each
//! `base_dtype` close to the f32 model, block streaming identical to resident weights, and the
//! bad inputs that belong to them (fp8 without scales, `blocks_to_swap` beyond the model).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use fluxlora_flux::{
    forward_backward, Checkpointing, Flux, FluxCheckpoint, FluxError, FluxInputs, LoadOptions,
};
use fluxlora_io::quant::f32_to_f8_e4m3fn;
use fluxlora_io::{write_safetensors, Dtype, HostTensor, SafeTensorsFile, TensorRef};
use fluxlora_lora::{BaseDtype, Preset, TargetSelector};

type B = NdArray;
type AB = Autodiff<NdArray>;
const AXES: [usize; 3] = [2, 2, 4];

fn bfl_case() -> std::path::PathBuf {
    common::fixtures_dir().join("transformer_schnell_bfl_batch2/model.safetensors")
}

/// Rewrites the f32 fixture as ComfyUI scaled fp8: every 2-D weight as F8_E4M3 codes of
/// `w / s` with `s = max|w| / 448` in `{name}.scale_weight`, plus the `scaled_fp8` marker.
/// `drop_scale` leaves one weight's scale out.
fn scaled_fp8(dst: &Path, drop_scale: Option<&str>) {
    let f = SafeTensorsFile::open(bfl_case()).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut f32s: Vec<(String, HostTensor)> = Vec::new();
    for n in f.names() {
        let t = f.read_f32(n).unwrap();
        if t.shape.len() == 2 && n.ends_with(".weight") {
            let m = t.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = if m > 0.0 { m / 448.0 } else { 1.0 };
            let codes: Vec<u8> = t.data.iter().map(|v| f32_to_f8_e4m3fn(v / s)).collect();
            owned.push((n.to_string(), Dtype::F8_E4M3, t.shape.clone(), codes));
            if drop_scale != Some(n) {
                let key = format!("{}.scale_weight", n.strip_suffix(".weight").unwrap());
                f32s.push((key, HostTensor::scalar(s)));
            }
        } else {
            f32s.push((n.to_string(), t));
        }
    }
    f32s.push((
        "scaled_fp8".into(),
        HostTensor::new(vec![0], vec![]).unwrap(),
    ));
    let mut refs: Vec<(&str, TensorRef)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), TensorRef::raw(*d, s, b)))
        .collect();
    refs.extend(f32s.iter().map(|(n, t)| (n.as_str(), TensorRef::f32(t))));
    write_safetensors(dst, &refs, &BTreeMap::new()).unwrap();
}

fn options(base: BaseDtype, swap: usize) -> LoadOptions {
    LoadOptions {
        axes_dim: Some(AXES.to_vec()),
        base_dtype: base,
        blocks_to_swap: swap,
        ..Default::default()
    }
}

fn inputs<Bk: burn::tensor::backend::Backend>(
    c: &fluxlora_flux::FluxConfig,
    seed: u64,
) -> FluxInputs<Bk> {
    let dev = Default::default();
    let (h, w, l_txt) = (2, 3, 5);
    // Fixed inputs, so a run cannot draw an unlucky batch: over 40 seeds the fp8 forward error
    // spread from 0.036 to 0.12 (median 0.05), bf16 from 0.0024 to 0.009, int8 from 0.0055 to
    // 0.021. Seed 0 sits near the median (fp8 0.051).
    let mut rng = Normal(seed);
    let mut normal = |shape: [usize; 3]| {
        let data: Vec<f32> = (0..shape.iter().product()).map(|_| rng.next()).collect();
        Tensor::<Bk, 1>::from_floats(data.as_slice(), &dev).reshape(shape)
    };
    let img = normal([1, h * w, c.in_channels]);
    let txt = normal([1, l_txt, c.context_in_dim]);
    let y = normal([1, 1, c.vec_in_dim]).reshape([1, c.vec_in_dim]);
    FluxInputs {
        txt_mask: None,
        img_cond_seq: None,
        img,
        img_ids: fluxlora_flux::latents::img_ids::<Bk>(1, h, w, &dev),
        txt,
        txt_ids: fluxlora_flux::latents::txt_ids::<Bk>(1, l_txt, &dev),
        timesteps: Tensor::from_floats([0.3], &dev),
        y,
        guidance: c.guidance_embed.then(|| Tensor::from_floats([3.5], &dev)),
    }
}

/// Standard normal draws from splitmix64 and Box–Muller, reproducible across runs and threads.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Max |a − b| relative to max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |e, (x, y)| e.max((x - y).abs()))
        / m
}

#[test]
fn scaled_fp8_checkpoints_load_with_their_scales() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaled.safetensors");
    scaled_fp8(&path, None);
    let dev = Default::default();
    let f32_model = Flux::<B>::load(bfl_case(), &options(BaseDtype::F32, 0), &dev).unwrap();
    let x = inputs::<B>(&f32_model.config, 0);
    let reference = values(f32_model.forward(&x).unwrap());
    for base in [BaseDtype::F32, BaseDtype::Fp8] {
        let mut m = Flux::<B>::load(&path, &options(base, 0), &dev).unwrap();
        assert!(FluxCheckpoint::open(&path).unwrap().is_scaled_fp8());
        // Each weight equals the file's codes times its scale: within fp8's half step (1/16
        // relative) of the f32 original, not off by the scale factor.
        let mut orig = f32_model.clone();
        for ((p, a), (_, b)) in m.linears_mut().into_iter().zip(orig.linears_mut()) {
            let e = rel(&values(a.base_weight()), &values(b.base_weight()));
            assert!(e < 0.07, "{base:?} {p}: relative error {e}");
        }
        let e = rel(&values(m.forward(&x).unwrap()), &reference);
        println!("scaled fp8 file, base {base:?}: forward relative error {e:.2e}");
        assert!(e < 0.1, "{base:?}: forward relative error {e}");
    }
}

#[test]
fn an_fp8_weight_without_its_scale_in_a_scaled_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noscale.safetensors");
    scaled_fp8(&path, Some("double_blocks.0.img_attn.qkv.weight"));
    match Flux::<B>::load(&path, &options(BaseDtype::Fp8, 0), &Default::default()) {
        Err(FluxError::Config(m)) => {
            assert!(
                m.contains("scale_weight") && m.contains("noscale.safetensors"),
                "{m}"
            )
        }
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn every_base_dtype_stays_close_to_f32() {
    let dev = Default::default();
    let f32_model = Flux::<B>::load(bfl_case(), &options(BaseDtype::F32, 0), &dev).unwrap();
    let x = inputs::<B>(&f32_model.config, 0);
    let reference = values(f32_model.forward(&x).unwrap());
    for (base, bound) in [
        (BaseDtype::Bf16, 2e-2),
        (BaseDtype::Fp8, 1e-1),
        (BaseDtype::Int8, 3e-2),
    ] {
        let m = Flux::<B>::load(bfl_case(), &options(base, 0), &dev).unwrap();
        let e = rel(&values(m.forward(&x).unwrap()), &reference);
        println!("base {base:?} vs f32 on the schnell parity model: relative error {e:.2e}");
        assert!(e < bound, "{base:?}: {e}");
    }
}

#[test]
fn streamed_blocks_give_identical_lora_gradients() {
    let dev = Default::default();
    let mut cfg = FluxCheckpoint::open(bfl_case())
        .unwrap()
        .infer_config(Some(AXES.to_vec()))
        .unwrap();
    // The fixture has one single block, too few for kohya's split to stream any block (N = 1
    // already streams two single blocks); the random model gets four.
    cfg.depth_single_blocks = 4;
    let max = cfg.depth.min(cfg.depth_single_blocks / 2) * 2;
    assert!(max > 0);
    let run = |swap: usize| {
        // Same adapters and inputs in both runs.
        <AB as burn::tensor::backend::Backend>::seed(&dev, 7);
        let mut m = Flux::<AB>::init_frozen(&cfg, BaseDtype::Fp8, swap, &dev).unwrap();
        let bytes = m.device_base_bytes();
        m.apply_lora(&TargetSelector::new(Preset::Kohya, 2, 2.0), &dev)
            .unwrap();
        let x = inputs::<AB>(&m.config, 2);
        let step =
            forward_backward(&m, &x, Checkpointing::Blocks, |o| o.powi_scalar(2).mean()).unwrap();
        let mut grads: Vec<Vec<f32>> = Vec::new();
        for (_, l) in m.linears_mut() {
            for a in &l.adapters {
                if let Some(g) = step.grads.get::<B, 2>(a.lora_b.id) {
                    grads.push(values(g));
                }
            }
        }
        (bytes, values(step.loss), grads)
    };
    let (resident, loss, grads) = run(0);
    let copied = fluxlora_lora::frozen::streamed_bytes();
    let (streamed, loss_s, grads_s) = run(max);
    assert!(
        fluxlora_lora::frozen::streamed_bytes() > copied,
        "the streamed run copied nothing host → device"
    );
    assert_eq!(loss, loss_s, "streaming changed the loss");
    assert_eq!(grads, grads_s, "streaming changed the LoRA gradients");
    assert!(!grads.is_empty());
    assert!(
        streamed < resident / 4,
        "device bytes {resident} → {streamed}"
    );
    println!("base bytes on the device: {resident} resident, {streamed} with {max} blocks swapped");
}

#[test]
fn blocks_to_swap_beyond_the_model_is_an_error_naming_the_limit() {
    match Flux::<B>::load(
        bfl_case(),
        &options(BaseDtype::Fp8, 99),
        &Default::default(),
    ) {
        Err(FluxError::Config(m)) => assert!(m.contains("blocks_to_swap ≤"), "{m}"),
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
}
