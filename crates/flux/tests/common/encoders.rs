//! Parity-case dispatch for the autoencoder, text-encoder and tokenizer components
//! (`ae_encode`, `ae_decode`, `clip`, `t5`, `t5_buckets`, `tokenize_clip`, `tokenize_t5`).
//! Self-contained (reads `case.json` and `io.safetensors` itself) so that it can be used as
//! `common::encoders` by the parity runner or included on its own.

#![allow(dead_code)]

use std::path::Path;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use fluxlora_flux::autoencoder::keys::{detect_layout, AeKeyFormat};
use fluxlora_flux::clip::{ClipActivation, ClipPooling};
use fluxlora_flux::t5::buckets::relative_position_bucket;
use fluxlora_flux::tokenizer::{TextTokenizer, Tokens};
use fluxlora_flux::{
    Autoencoder, AutoencoderLoadOptions, ClipLoadOptions, ClipTextModel, T5Encoder, T5LoadOptions,
    TileOptions,
};
use fluxlora_io::{Checkpoint, HostTensor, SafeTensorsFile};
use serde_json::Value;

/// The components this module runs.
pub const COMPONENTS: &[&str] = &[
    "ae_encode",
    "ae_decode",
    "clip",
    "t5",
    "t5_buckets",
    "tokenize_clip",
    "tokenize_t5",
];

/// One finished comparison: the worst `max |ours − ref|` and the bound it must not exceed
/// (`tolerance · max(1, max |ref|)` for floats, 0 for ids), plus a per-output breakdown.
#[derive(Debug, Clone)]
pub struct EncoderOutcome {
    pub max_err: f64,
    pub bound: f64,
    pub detail: String,
}

/// Runs the case in `dir` if its component is one of [`COMPONENTS`]; `None` otherwise.
pub fn run_case<B: Backend>(dir: &Path, dev: &B::Device) -> Option<Result<EncoderOutcome, String>> {
    let spec = read_json(dir).ok()?;
    let component = spec.get("component")?.as_str()?.to_string();
    if !COMPONENTS.contains(&component.as_str()) {
        return None;
    }
    Some(run::<B>(dir, &component, &spec, dev))
}

fn read_json(dir: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(dir.join("case.json"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: case.json: {e}", dir.display()))
}

struct Io(SafeTensorsFile);

impl Io {
    fn get(&self, name: &str) -> Result<HostTensor, String> {
        self.0.read_f32(name).map_err(|e| e.to_string())
    }
    fn float<B: Backend, const D: usize>(
        &self,
        name: &str,
        dev: &B::Device,
    ) -> Result<Tensor<B, D>, String> {
        let h = self.get(name)?;
        if h.shape.len() != D {
            return Err(format!(
                "io.safetensors: `{name}` has shape {:?}, expected rank {D}",
                h.shape
            ));
        }
        Ok(Tensor::from_data(TensorData::new(h.data, h.shape), dev))
    }
    fn ints<B: Backend>(&self, name: &str, dev: &B::Device) -> Result<Tensor<B, 2, Int>, String> {
        let h = self.get(name)?;
        if h.shape.len() != 2 {
            return Err(format!(
                "io.safetensors: `{name}` has shape {:?}, expected rank 2",
                h.shape
            ));
        }
        let v: Vec<i64> = h.data.iter().map(|&x| x as i64).collect();
        Ok(Tensor::from_data(TensorData::new(v, h.shape), dev))
    }
}

fn f(spec: &Value, key: &str) -> Option<f64> {
    spec.get(key).and_then(Value::as_f64)
}

fn u(spec: &Value, key: &str) -> Option<usize> {
    spec.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

fn compare<B: Backend, const D: usize>(
    name: &str,
    ours: Tensor<B, D>,
    reference: &HostTensor,
    tol: f64,
) -> Result<EncoderOutcome, String> {
    let dims = ours.dims().to_vec();
    if dims != reference.shape {
        return Err(format!(
            "`{name}`: output shape {dims:?}, reference {:?}",
            reference.shape
        ));
    }
    let ours = ours
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let max_err = ours
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max);
    let max_ref = reference
        .data
        .iter()
        .map(|v| (*v as f64).abs())
        .fold(0.0, f64::max);
    let max_err = if ours.iter().any(|v| !v.is_finite()) {
        f64::INFINITY
    } else {
        max_err
    };
    let bound = tol * max_ref.max(1.0);
    Ok(EncoderOutcome {
        max_err,
        bound,
        detail: format!("{name} {max_err:.3e}"),
    })
}

/// The outcome of several outputs: the one closest to (or furthest past) its bound.
fn worst(parts: Vec<EncoderOutcome>) -> EncoderOutcome {
    let detail = parts
        .iter()
        .map(|p| p.detail.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let ratio = |p: &EncoderOutcome| {
        if p.bound > 0.0 {
            p.max_err / p.bound
        } else if p.max_err > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    };
    let w = parts
        .into_iter()
        .fold(None::<EncoderOutcome>, |acc, p| match acc {
            Some(a) if ratio(&a) >= ratio(&p) => Some(a),
            _ => Some(p),
        });
    let w = w.expect("at least one output");
    EncoderOutcome { detail, ..w }
}

fn run<B: Backend>(
    dir: &Path,
    component: &str,
    spec: &Value,
    dev: &B::Device,
) -> Result<EncoderOutcome, String> {
    let io = Io(SafeTensorsFile::open(dir.join("io.safetensors")).map_err(|e| e.to_string())?);
    let tol = f(spec, "tolerance").unwrap_or(1e-4);
    let model = dir.join("model.safetensors");
    let e = |e: fluxlora_flux::FluxError| e.to_string();
    match component {
        "ae_encode" | "ae_decode" => {
            check_ae_format(&model, spec)?;
            let options = AutoencoderLoadOptions {
                norm_groups: u(spec, "norm_groups").unwrap_or(32),
                scale_factor: f(spec, "scale_factor").unwrap_or(0.3611),
                shift_factor: f(spec, "shift_factor").unwrap_or(0.1159),
                ..Default::default()
            };
            let ae = Autoencoder::<B>::load(&model, &options, dev).map_err(e)?;
            let tiles = spec.get("tile").map(|t| TileOptions {
                sample_size: u(t, "sample_size").unwrap_or(1024),
                overlap_factor: f(t, "overlap_factor").unwrap_or(0.25),
            });
            let out = match (component, &tiles) {
                ("ae_encode", None) => ae.encode(io.float("x", dev)?),
                ("ae_encode", Some(t)) => ae.encode_tiled(io.float("x", dev)?, t),
                (_, None) => ae.decode(io.float("z", dev)?),
                (_, Some(t)) => ae.decode_tiled(io.float("z", dev)?, t),
            }
            .map_err(e)?;
            compare("out", out, &io.get("out")?, tol)
        }
        "clip" => {
            let activation = match spec
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("quick_gelu")
            {
                "quick_gelu" => ClipActivation::QuickGelu,
                "gelu" => ClipActivation::Gelu,
                other => return Err(format!("case.json: unknown hidden_act `{other}`")),
            };
            let pooling = match spec
                .get("pooling")
                .and_then(Value::as_str)
                .unwrap_or("argmax")
            {
                "argmax" => ClipPooling::ArgmaxId,
                other => return Err(format!("case.json: unknown pooling `{other}`")),
            };
            let options = ClipLoadOptions {
                num_heads: u(spec, "num_heads"),
                activation,
                layer_norm_eps: f(spec, "layer_norm_eps").unwrap_or(1e-5),
                pooling,
                ..Default::default()
            };
            let clip = ClipTextModel::<B>::load(&model, &options, dev).map_err(e)?;
            let out = clip.forward(io.ints("input_ids", dev)?).map_err(e)?;
            Ok(worst(vec![
                compare("pooled", out.pooled, &io.get("out")?, tol)?,
                compare("hidden", out.hidden, &io.get("hidden")?, tol)?,
            ]))
        }
        "t5" => {
            let options = T5LoadOptions {
                max_distance: u(spec, "max_distance").unwrap_or(128),
                ..Default::default()
            };
            let t5 = T5Encoder::<B>::load(&model, &options, dev).map_err(e)?;
            let masked = spec
                .get("attention_mask")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mask = if masked {
                Some(io.ints("attention_mask", dev)?)
            } else {
                None
            };
            let out = t5.forward(io.ints("input_ids", dev)?, mask).map_err(e)?;
            compare("out", out, &io.get("out")?, tol)
        }
        "t5_buckets" => {
            let (nb, md) = (
                u(spec, "num_buckets").unwrap_or(32),
                u(spec, "max_distance").unwrap_or(128),
            );
            let rel = io.get("relative_position")?;
            let ours: Vec<f32> = rel
                .data
                .iter()
                .map(|&r| relative_position_bucket(r as i64, nb, md) as f32)
                .collect();
            let n = ours.len();
            compare(
                "out",
                Tensor::<B, 1>::from_data(TensorData::new(ours, [n]), dev),
                &io.get("out")?,
                0.0,
            )
        }
        "tokenize_clip" | "tokenize_t5" => {
            let max_length = u(spec, "max_length").ok_or("case.json: missing `max_length`")?;
            let path = dir.join("tokenizer.json");
            let tok = if component == "tokenize_clip" {
                TextTokenizer::clip(&path)
            } else {
                TextTokenizer::t5(&path, max_length)
            }
            .map_err(e)?;
            if tok.max_length() != max_length {
                return Err(format!(
                    "tokenizer length {} but case.json says {max_length}",
                    tok.max_length()
                ));
            }
            let texts: Vec<&str> = spec
                .get("texts")
                .and_then(Value::as_array)
                .ok_or("case.json: missing `texts`")?
                .iter()
                .map(|t| t.as_str().ok_or("case.json: `texts` must hold strings"))
                .collect::<Result<_, _>>()?;
            let tokens = tok.encode_batch(&texts).map_err(e)?;
            let as_tensor = |rows: Vec<Vec<u32>>| {
                let (n, l) = (rows.len(), rows.first().map_or(0, Vec::len));
                let v: Vec<f32> = rows.into_iter().flatten().map(|x| x as f32).collect();
                Tensor::<B, 2>::from_data(TensorData::new(v, [n, l]), dev)
            };
            let ids = as_tensor(tokens.iter().map(|t: &Tokens| t.ids.clone()).collect());
            let mask = as_tensor(tokens.iter().map(|t| t.attention_mask.clone()).collect());
            Ok(worst(vec![
                compare("input_ids", ids, &io.get("input_ids")?, 0.0)?,
                compare("attention_mask", mask, &io.get("attention_mask")?, 0.0)?,
            ]))
        }
        other => Err(format!("unknown component `{other}`")),
    }
}

fn check_ae_format(model: &Path, spec: &Value) -> Result<(), String> {
    let ckpt = Checkpoint::open(model).map_err(|e| e.to_string())?;
    let layout = detect_layout(ckpt.names()).ok_or("no autoencoder keys detected")?;
    let want = match spec.get("format").and_then(Value::as_str) {
        Some("bfl") => AeKeyFormat::Bfl,
        Some("diffusers") => AeKeyFormat::Diffusers,
        other => {
            return Err(format!(
                "case.json: format {other:?} is not bfl or diffusers"
            ))
        }
    };
    if layout.format != want {
        return Err(format!(
            "detected layout {layout:?}, case.json says {want:?}"
        ));
    }
    Ok(())
}
