//! Shared by the integration tests: reading parity cases and running them on any backend.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use fluxlora_io::{HostTensor, SafeTensorsFile};

pub mod components;
mod transformer;

/// The committed cases folder.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("fixtures"))
        .find(|dir| dir.is_dir())
        .expect("a fixtures/ folder above the crate")
        .join("parity")
}

/// Every folder under `root` (one level) holding a `case.json`, sorted.
pub fn case_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("case.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A parsed `case.json`.
#[derive(Debug, Clone)]
pub struct Case {
    pub dir: PathBuf,
    pub component: String,
    pub format: String,
    pub tolerance: f64,
    pub axes_dim: Option<Vec<usize>>,
    /// The whole `case.json`, for component-specific fields.
    pub raw: serde_json::Value,
}

impl Case {
    pub fn read(dir: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(dir.join("case.json"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: case.json: {e}", dir.display()))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Ok(Self {
            dir: dir.into(),
            component: s("component").ok_or("case.json: missing `component`")?,
            format: s("format").unwrap_or_else(|| "none".into()),
            tolerance: v.get("tolerance").and_then(|x| x.as_f64()).unwrap_or(1e-4),
            axes_dim: v.get("axes_dim").and_then(|x| x.as_array()).map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            }),
            raw: v.clone(),
        })
    }

    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `model.safetensors`, else the sharded folder `model/`.
    pub fn model_path(&self) -> PathBuf {
        let file = self.dir.join("model.safetensors");
        if file.is_file() {
            file
        } else {
            self.dir.join("model")
        }
    }
}

/// Result of one case: max |ours − ref| and the bound it must stay under.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub max_err: f64,
    pub bound: f64,
}

/// `io.safetensors` of a case.
pub struct Io(pub SafeTensorsFile);

impl Io {
    pub fn open(case: &Case) -> Result<Self, String> {
        SafeTensorsFile::open(case.dir.join("io.safetensors"))
            .map(Io)
            .map_err(|e| e.to_string())
    }
    pub fn get(&self, name: &str) -> Result<HostTensor, String> {
        self.0.read_f32(name).map_err(|e| e.to_string())
    }
    pub fn opt(&self, name: &str) -> Result<Option<HostTensor>, String> {
        if self.0.contains(name) {
            self.get(name).map(Some)
        } else {
            Ok(None)
        }
    }
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        dev: &B::Device,
    ) -> Result<Tensor<B, D>, String> {
        to_tensor(self.get(name)?, name, dev)
    }
}

pub fn to_tensor<B: Backend, const D: usize>(
    h: HostTensor,
    name: &str,
    dev: &B::Device,
) -> Result<Tensor<B, D>, String> {
    if h.shape.len() != D {
        return Err(format!(
            "io.safetensors: `{name}` has shape {:?}, expected rank {D}",
            h.shape
        ));
    }
    Ok(Tensor::from_data(TensorData::new(h.data, h.shape), dev))
}

/// Max |ours − ref| against the case's bound `tolerance · max(1, max |ref|)`.
pub fn compare<B: Backend, const D: usize>(
    ours: Tensor<B, D>,
    reference: &HostTensor,
    tol: f64,
) -> Result<Outcome, String> {
    let dims = ours.dims().to_vec();
    if dims != reference.shape {
        return Err(format!(
            "output shape {dims:?}, reference {:?}",
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
    let nan = ours.iter().any(|v| !v.is_finite());
    Ok(Outcome {
        max_err: if nan { f64::INFINITY } else { max_err },
        bound: tol * max_ref.max(1.0),
    })
}

/// Runs one case on backend `B` (dispatching on its component).
pub fn run_case<B: fluxlora_flux::FluxBackend>(
    case: &Case,
    dev: &B::Device,
) -> Result<Outcome, String> {
    components::run::<B>(case, dev)
}
