//! Autoencoder loading errors, input checks, folder resolution, and the tiled-decode memory
//! measurement (parity itself is in `parity_encoders.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{DType, Distribution, Tensor};
use fluxlora_flux::{
    bf16_if_supported, Autoencoder, AutoencoderLoadOptions, FluxError, TileOptions,
};
use fluxlora_io::{write_safetensors, HostTensor, SafeTensorsFile, TensorRef};

type B = NdArray;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

/// The tiny committed autoencoder (ch 8, ch_mult [1, 2], GroupNorm(4)).
fn tiny_options() -> AutoencoderLoadOptions {
    AutoencoderLoadOptions {
        norm_groups: 4,
        ..Default::default()
    }
}

fn bfl_model() -> PathBuf {
    fixtures().join("ae_decode_bfl/model.safetensors")
}

fn copy_with(src: &Path, dst: &Path, edit: impl Fn(&str, HostTensor) -> Vec<(String, HostTensor)>) {
    let f = SafeTensorsFile::open(src).unwrap();
    let tensors: Vec<(String, HostTensor)> = f
        .names()
        .flat_map(|n| edit(n, f.read_f32(n).unwrap()))
        .collect();
    let refs: Vec<(&str, TensorRef)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(dst, &refs, &BTreeMap::new()).unwrap();
}

fn load(path: &Path) -> Result<Autoencoder<B>, FluxError> {
    Autoencoder::<B>::load(path, &tiny_options(), &Default::default())
}

#[test]
fn missing_tensor_is_named_with_its_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("partial.safetensors");
    copy_with(&bfl_model(), &dst, |n, t| {
        if n == "decoder.mid.attn_1.v.weight" {
            vec![]
        } else {
            vec![(n.into(), t)]
        }
    });
    match load(&dst).unwrap_err() {
        FluxError::MissingKey { key, expected, .. } => {
            assert_eq!(key, "decoder.mid.attn_1.v.weight");
            assert_eq!(expected, vec![16, 16]);
        }
        other => panic!("expected MissingKey, got {other}"),
    }
}

#[test]
fn wrong_shape_names_key_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("bad.safetensors");
    copy_with(&bfl_model(), &dst, |n, t| {
        let t = if n == "encoder.down.1.block.0.conv2.weight" {
            HostTensor::zeros(vec![16, 16, 1, 1])
        } else {
            t
        };
        vec![(n.into(), t)]
    });
    let err = load(&dst).unwrap_err();
    match &err {
        FluxError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "encoder.down.1.block.0.conv2.weight");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[16, 16, 3, 3][..], &[16, 16, 1, 1][..])
            );
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert!(err.to_string().contains("[16, 16, 1, 1]"), "{err}");
}

#[test]
fn tensor_the_architecture_has_no_place_for_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("extra.safetensors");
    copy_with(&bfl_model(), &dst, |n, t| {
        let mut v = vec![(n.to_string(), t)];
        if n == "encoder.conv_in.bias" {
            v.push((
                "encoder.down.0.attn.0.q.weight".into(),
                HostTensor::zeros(vec![8, 8, 1, 1]),
            ));
        }
        v
    });
    let err = load(&dst).unwrap_err().to_string();
    assert!(
        err.contains("encoder.down.0.attn.0.q.weight") && err.contains("different architecture"),
        "{err}"
    );
}

#[test]
fn stable_diffusion_style_vae_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("sd.safetensors");
    copy_with(&bfl_model(), &dst, |n, t| {
        let mut v = vec![(n.to_string(), t)];
        if n == "encoder.conv_in.bias" {
            v.push((
                "quant_conv.weight".into(),
                HostTensor::zeros(vec![8, 8, 1, 1]),
            ));
        }
        v
    });
    let err = load(&dst).unwrap_err().to_string();
    assert!(err.contains("quant_conv"), "{err}");
}

#[test]
fn a_transformer_checkpoint_is_not_an_autoencoder() {
    let path = fixtures().join("transformer_schnell_bfl_batch2/model.safetensors");
    match load(&path).unwrap_err() {
        FluxError::UnknownModelFormat { model, .. } => assert_eq!(model, "Flux autoencoder"),
        other => panic!("expected UnknownModelFormat, got {other}"),
    }
}

#[test]
fn bf16_is_refused_where_the_backend_lacks_it() {
    assert_eq!(bf16_if_supported::<B>(&Default::default()), None);
    let options = AutoencoderLoadOptions {
        dtype: Some(DType::BF16),
        ..tiny_options()
    };
    let err = Autoencoder::<B>::load(bfl_model(), &options, &Default::default()).unwrap_err();
    assert!(
        matches!(err, FluxError::Config(ref m) if m.contains("BF16")),
        "{err}"
    );
}

#[test]
fn model_folder_with_vae_subfolder_loads_the_diffusers_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("vae")).unwrap();
    std::fs::copy(
        fixtures().join("ae_decode_diffusers_tiled/model.safetensors"),
        dir.path().join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let from_folder = load(dir.path()).unwrap();
    let from_bfl = load(&bfl_model()).unwrap();
    let dev = Default::default();
    let z = Tensor::<B, 4>::random([1, 4, 3, 5], Distribution::Normal(0.0, 1.0), &dev);
    let a = from_folder
        .decode(z.clone())
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let b = from_bfl
        .decode(z)
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    // The committed BFL and diffusers cases hold the same weights under the two key layouts.
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-5,
        "diffusers folder and BFL file decode differently: {diff}"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let ae = load(&bfl_model()).unwrap();
    let dev = Default::default();
    let odd = Tensor::<B, 4>::zeros([1, 3, 7, 8], &dev);
    assert!(matches!(ae.encode(odd), Err(FluxError::Input { .. })));
    let gray = Tensor::<B, 4>::zeros([1, 1, 8, 8], &dev);
    assert!(matches!(ae.encode(gray), Err(FluxError::Input { .. })));
    let z16 = Tensor::<B, 4>::zeros([1, 16, 4, 4], &dev);
    assert!(matches!(ae.decode(z16), Err(FluxError::Input { .. })));
    let bad_tiles = TileOptions {
        sample_size: 15,
        overlap_factor: 0.25,
    };
    assert!(matches!(
        ae.decode_tiled(Tensor::zeros([1, 4, 20, 20], &dev), &bad_tiles),
        Err(FluxError::Config(_))
    ));
}

#[test]
fn input_within_one_tile_is_not_tiled() {
    let ae = load(&bfl_model()).unwrap();
    let dev = Default::default();
    let z = Tensor::<B, 4>::random([1, 4, 8, 6], Distribution::Normal(0.0, 1.0), &dev);
    let tiles = TileOptions {
        sample_size: 16,
        overlap_factor: 0.25,
    };
    let a = ae
        .decode_tiled(z.clone(), &tiles)
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let b = ae.decode(z).unwrap().into_data().to_vec::<f32>().unwrap();
    assert_eq!(a, b);
}

// ------------------------------------------------------------------ peak memory, tiled vs not

/// Writes a random BFL-layout autoencoder shaped like Flux's (ch_mult [1, 2, 4, 4], downscale
/// 8) but narrow: ch 8, 1 ResNet block per level, z 16, GroupNorm(4).
fn write_random_flux_shaped_ae(path: &Path) {
    let (ch, mult, nrb, z) = (8usize, [1usize, 2, 4, 4], 1usize, 16usize);
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    let conv = |t: &mut Vec<(String, Vec<usize>)>, n: &str, i: usize, o: usize, k: usize| {
        t.push((format!("{n}.weight"), vec![o, i, k, k]));
        t.push((format!("{n}.bias"), vec![o]));
    };
    let norm = |t: &mut Vec<(String, Vec<usize>)>, n: &str, c: usize| {
        t.push((format!("{n}.weight"), vec![c]));
        t.push((format!("{n}.bias"), vec![c]));
    };
    let resnet = |t: &mut Vec<(String, Vec<usize>)>, n: &str, i: usize, o: usize| {
        norm(t, &format!("{n}.norm1"), i);
        conv(t, &format!("{n}.conv1"), i, o, 3);
        norm(t, &format!("{n}.norm2"), o);
        conv(t, &format!("{n}.conv2"), o, o, 3);
        if i != o {
            conv(t, &format!("{n}.nin_shortcut"), i, o, 1);
        }
    };
    let mid = |t: &mut Vec<(String, Vec<usize>)>, side: &str, c: usize| {
        resnet(t, &format!("{side}.mid.block_1"), c, c);
        norm(t, &format!("{side}.mid.attn_1.norm"), c);
        for p in ["q", "k", "v", "proj_out"] {
            conv(t, &format!("{side}.mid.attn_1.{p}"), c, c, 1);
        }
        resnet(t, &format!("{side}.mid.block_2"), c, c);
    };
    conv(&mut t, "encoder.conv_in", 3, ch, 3);
    let mut c_in = ch;
    for (i, m) in mult.iter().enumerate() {
        for j in 0..nrb {
            resnet(&mut t, &format!("encoder.down.{i}.block.{j}"), c_in, ch * m);
            c_in = ch * m;
        }
        if i + 1 < mult.len() {
            conv(
                &mut t,
                &format!("encoder.down.{i}.downsample.conv"),
                c_in,
                c_in,
                3,
            );
        }
    }
    mid(&mut t, "encoder", c_in);
    norm(&mut t, "encoder.norm_out", c_in);
    conv(&mut t, "encoder.conv_out", c_in, 2 * z, 3);
    conv(&mut t, "decoder.conv_in", z, c_in, 3);
    mid(&mut t, "decoder", c_in);
    for (i, m) in mult.iter().enumerate().rev() {
        for j in 0..=nrb {
            resnet(&mut t, &format!("decoder.up.{i}.block.{j}"), c_in, ch * m);
            c_in = ch * m;
        }
        if i != 0 {
            conv(
                &mut t,
                &format!("decoder.up.{i}.upsample.conv"),
                c_in,
                c_in,
                3,
            );
        }
    }
    norm(&mut t, "decoder.norm_out", c_in);
    conv(&mut t, "decoder.conv_out", c_in, 3, 3);

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let tensors: Vec<(String, HostTensor)> = t
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan_in = if shape.len() > 1 { n / shape[0] } else { 1 };
            let data = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let u = (seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
                    if shape.len() == 1 {
                        if name.ends_with("weight") {
                            1.0 + 0.2 * u
                        } else {
                            0.1 * u
                        }
                    } else {
                        u * (12.0 / fan_in as f32).sqrt()
                    }
                })
                .collect();
            (name, HostTensor { shape, data })
        })
        .collect();
    let refs: Vec<(&str, TensorRef)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(path, &refs, &BTreeMap::new()).unwrap();
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Child half of [`tiled_decode_peak_memory`]: decodes a 128² latent (1024² image) tiled or not,
/// as `FLUXLORA_AE_MEMORY_MODE` says, and prints the peak resident set before and after.
#[test]
#[ignore = "run by tiled_decode_peak_memory in a fresh process"]
fn ae_memory_child() {
    let mode = std::env::var("FLUXLORA_AE_MEMORY_MODE").expect("run via tiled_decode_peak_memory");
    let path = PathBuf::from(std::env::var("FLUXLORA_AE_MEMORY_MODEL").unwrap());
    let options = AutoencoderLoadOptions {
        norm_groups: 4,
        ..Default::default()
    };
    let ae = Autoencoder::<B>::load(&path, &options, &Default::default()).unwrap();
    let z = Tensor::<B, 4>::random(
        [1, 16, 128, 128],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let before = vm_hwm_kib();
    let start = std::time::Instant::now();
    let img = match mode.as_str() {
        "tiled" => ae
            .decode_tiled(
                z,
                &TileOptions {
                    sample_size: 256,
                    overlap_factor: 0.25,
                },
            )
            .unwrap(),
        _ => ae.decode(z).unwrap(),
    };
    assert_eq!(img.dims(), [1, 3, 1024, 1024]);
    let sum: f32 = img.abs().sum().into_scalar();
    assert!(sum.is_finite());
    println!(
        "AE_MEMORY mode={mode} before_kib={before} peak_kib={} secs={:.1}",
        vm_hwm_kib(),
        start.elapsed().as_secs_f64()
    );
}

/// Peak RSS of a 1024² decode with a narrow Flux-shaped autoencoder, untiled vs 256-px tiles,
/// each in its own process. Slow (≈ 2 minutes on 2 cores); run with `--ignored --nocapture`.
#[test]
#[ignore = "slow memory measurement; run with --ignored --nocapture"]
fn tiled_decode_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("ae.safetensors");
    write_random_flux_shaped_ae(&model);
    let mut peaks = BTreeMap::new();
    for mode in ["untiled", "tiled"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "ae_memory_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FLUXLORA_AE_MEMORY_MODE", mode)
            .env("FLUXLORA_AE_MEMORY_MODEL", &model)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.find("AE_MEMORY").map(|i| &l[i..]))
            .unwrap_or_else(|| {
                panic!(
                    "child {mode} printed no result:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        println!("{line}");
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        peaks.insert(mode, (field("before_kib"), field("peak_kib")));
    }
    let (untiled, tiled) = (peaks["untiled"], peaks["tiled"]);
    println!(
        "1024² decode: untiled peak {} MiB (+{} MiB over the loaded model), tiled (256 px) peak \
         {} MiB (+{} MiB)",
        untiled.1 / 1024,
        (untiled.1 - untiled.0) / 1024,
        tiled.1 / 1024,
        (tiled.1 - tiled.0) / 1024
    );
    assert!(
        tiled.1 - tiled.0 < (untiled.1 - untiled.0) / 4,
        "tiling should cut the decode's extra memory by > 4×"
    );
}

#[test]
fn bf16_decode_stays_close_to_the_f32_reference() {
    // Flex supports bf16 (NdArray and wgpu do not); GroupNorm statistics stay in f32.
    use burn::backend::Flex;
    let dev = Default::default();
    let dtype = bf16_if_supported::<Flex>(&dev);
    assert_eq!(dtype, Some(DType::BF16));
    let ae = Autoencoder::<Flex>::load(
        bfl_model(),
        &AutoencoderLoadOptions {
            dtype,
            ..tiny_options()
        },
        &dev,
    )
    .unwrap();
    let io = SafeTensorsFile::open(fixtures().join("ae_decode_bfl/io.safetensors")).unwrap();
    let (z, want) = (io.read_f32("z").unwrap(), io.read_f32("out").unwrap());
    let z = Tensor::<Flex, 4>::from_data(burn::tensor::TensorData::new(z.data, z.shape), &dev);
    let got: Vec<f32> = ae.decode(z).unwrap().into_data().to_vec().unwrap();
    let max_ref = want.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
        / max_ref;
    println!("AE bf16 decode relative error {err:.2e}");
    assert!(err < 3e-2, "bf16 decode error {err}");
}
