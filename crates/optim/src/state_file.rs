//! The optimizer-state file: safetensors keyed by stable parameter paths.
//!
//! Layout (format `fluxlora-optim-state`, version 1):
//! - `<param path>.<state name>`: one tensor per state buffer, e.g. `blocks.0.qkv.lora_b.exp_avg`
//!   (F32), `…exp_avg_codes` (U8), `…step` (I64, one element);
//! - `__optimizer__.<name>`: optimizer-wide scalars as one-element F64 tensors (`steps`, and e.g.
//!   Prodigy's `d`, `d_max`, `d_numerator`);
//! - metadata: `format`, `version`, `optimizer` (name), `config` (for humans), and
//!   `shape.<param path>` = `"d0,d1,…"`, the parameter's shape, checked on load.
//!
//! Every value is stored in its device dtype, byte for byte, so save → load → continue is
//! bit-identical to an uninterrupted run.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{DType, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::OptimError;

/// Marker in the `format` metadata entry.
pub const STATE_FORMAT: &str = "fluxlora-optim-state";
const VERSION: &str = "1";
const GLOBAL_PREFIX: &str = "__optimizer__";

/// One parameter's saved state: its shape and named host tensors.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParamImage {
    pub shape: Vec<usize>,
    pub tensors: BTreeMap<String, TensorData>,
}

/// Everything in a state file, on the host.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateImage {
    pub optimizer: String,
    pub config: String,
    pub steps: u64,
    pub globals: BTreeMap<String, f64>,
    pub params: BTreeMap<String, ParamImage>,
}

fn to_st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::U8 => Dtype::U8,
        _ => return None,
    })
}

fn from_st_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

fn bad(origin: &str, problem: impl Into<String>, fix: &str) -> OptimError {
    OptimError::BadStateFile {
        path: origin.to_string(),
        problem: problem.into(),
        fix: fix.to_string(),
    }
}

/// Serializes an image to safetensors bytes.
pub(crate) fn encode(image: &StateImage) -> Result<Vec<u8>, OptimError> {
    let mut owned: Vec<(String, TensorData)> = Vec::new();
    owned.push((
        format!("{GLOBAL_PREFIX}.steps"),
        TensorData::new(vec![image.steps as f64], [1]),
    ));
    for (name, v) in &image.globals {
        owned.push((
            format!("{GLOBAL_PREFIX}.{name}"),
            TensorData::new(vec![*v], [1]),
        ));
    }
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), STATE_FORMAT.to_string());
    metadata.insert("version".to_string(), VERSION.to_string());
    metadata.insert("optimizer".to_string(), image.optimizer.clone());
    metadata.insert("config".to_string(), image.config.clone());
    for (path, p) in &image.params {
        let shape: Vec<String> = p.shape.iter().map(|d| d.to_string()).collect();
        metadata.insert(format!("shape.{path}"), shape.join(","));
        for (name, data) in &p.tensors {
            owned.push((format!("{path}.{name}"), data.clone()));
        }
    }
    let mut views = Vec::with_capacity(owned.len());
    for (key, data) in &owned {
        let dtype = to_st_dtype(data.dtype).ok_or_else(|| {
            bad(
                "<encode>",
                format!(
                    "state tensor `{key}` has unsupported dtype {:?}",
                    data.dtype
                ),
                "this is a bug in fluxlora-optim",
            )
        })?;
        let view = TensorView::new(dtype, data.shape.as_slice().to_vec(), data.as_bytes())
            .map_err(|e| {
                bad(
                    "<encode>",
                    format!("state tensor `{key}`: {e}"),
                    "this is a bug in fluxlora-optim",
                )
            })?;
        views.push((key.clone(), view));
    }
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| bad("<encode>", e.to_string(), "this is a bug in fluxlora-optim"))
}

/// Parses safetensors bytes written by [`encode`]; `origin` names the file in errors.
pub(crate) fn decode(bytes: &[u8], origin: &str) -> Result<StateImage, OptimError> {
    let not_ours = "pass a file written by LoraOptimizer::save_state_file";
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(origin, format!("not a safetensors file ({e})"), not_ours))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
        return Err(bad(
            origin,
            format!(
                "metadata `format` is {:?}, expected `{STATE_FORMAT}`",
                meta.get("format")
            ),
            not_ours,
        ));
    }
    if meta.get("version").map(String::as_str) != Some(VERSION) {
        return Err(bad(
            origin,
            format!("unsupported state version {:?}", meta.get("version")),
            "use the fluxlora version that wrote it",
        ));
    }
    let mut image = StateImage {
        optimizer: meta.get("optimizer").cloned().unwrap_or_default(),
        config: meta.get("config").cloned().unwrap_or_default(),
        ..Default::default()
    };
    for (key, value) in &meta {
        if let Some(path) = key.strip_prefix("shape.") {
            let shape = if value.is_empty() {
                Ok(Vec::new())
            } else {
                value
                    .split(',')
                    .map(|d| d.parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
            }
            .map_err(|_| {
                bad(
                    origin,
                    format!("metadata `{key}` = `{value}` is not a shape"),
                    "the file is corrupt; start fresh",
                )
            })?;
            image.params.entry(path.to_string()).or_default().shape = shape;
        }
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| {
        bad(
            origin,
            format!("corrupt safetensors data ({e})"),
            "the file is corrupt; start fresh",
        )
    })?;
    for (key, view) in tensors.tensors() {
        let dtype = from_st_dtype(view.dtype()).ok_or_else(|| {
            bad(
                origin,
                format!("tensor `{key}` has dtype {:?}", view.dtype()),
                not_ours,
            )
        })?;
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        if let Some(name) = key.strip_prefix(&format!("{GLOBAL_PREFIX}.")) {
            let v = data
                .iter::<f64>()
                .next()
                .filter(|_| data.shape.num_elements() == 1 && dtype == DType::F64);
            let v = v.ok_or_else(|| {
                bad(
                    origin,
                    format!("global `{key}` is not a one-element F64 tensor"),
                    "the file is corrupt; start fresh",
                )
            })?;
            if name == "steps" {
                image.steps = v as u64;
            } else {
                image.globals.insert(name.to_string(), v);
            }
            continue;
        }
        let (path, name) = key.rsplit_once('.').ok_or_else(|| {
            bad(
                origin,
                format!("key `{key}` is not `<param path>.<state name>`"),
                not_ours,
            )
        })?;
        let entry = image.params.get_mut(path).ok_or_else(|| {
            bad(
                origin,
                format!("tensor `{key}` has no `shape.{path}` metadata"),
                "the file is corrupt; start fresh",
            )
        })?;
        entry.tensors.insert(name.to_string(), data);
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bit_exactly() {
        let mut image = StateImage {
            optimizer: "adamw".into(),
            config: "cfg".into(),
            steps: 7,
            ..Default::default()
        };
        image.globals.insert("d".into(), 1.234_567_890_123e-5);
        let mut p = ParamImage {
            shape: vec![2, 3],
            ..Default::default()
        };
        let vals = vec![
            f32::MIN_POSITIVE,
            -0.0,
            1.0 / 3.0,
            f32::EPSILON,
            7.5,
            -1e-30,
        ];
        p.tensors
            .insert("exp_avg".into(), TensorData::new(vals.clone(), [6]));
        p.tensors
            .insert("codes".into(), TensorData::new(vec![0u8, 255, 7], [3]));
        p.tensors
            .insert("step".into(), TensorData::new(vec![7i64], [1]));
        image.params.insert("a.b.lora_b".into(), p);
        let bytes = encode(&image).unwrap();
        let back = decode(&bytes, "mem").unwrap();
        assert_eq!(back.steps, 7);
        assert_eq!(back.optimizer, "adamw");
        assert_eq!(
            back.globals["d"].to_bits(),
            1.234_567_890_123e-5_f64.to_bits()
        );
        let q = &back.params["a.b.lora_b"];
        assert_eq!(q.shape, vec![2, 3]);
        let got: Vec<f32> = q.tensors["exp_avg"].to_vec().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&vals));
        assert_eq!(q.tensors["codes"].to_vec::<u8>().unwrap(), vec![0, 255, 7]);
    }

    #[test]
    fn rejects_foreign_files() {
        let bytes = safetensors::serialize(Vec::<(String, TensorView)>::new(), None).unwrap();
        assert!(matches!(
            decode(&bytes, "x.safetensors"),
            Err(OptimError::BadStateFile { .. })
        ));
        assert!(decode(b"garbage", "g").is_err());
    }
}
