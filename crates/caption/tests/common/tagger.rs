//! Tagger parity helpers shared by `parity.rs` and the root package's wgpu test: the committed
//! tagger cases and one case run on any backend.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_caption::{load_classifier, VitOverrides};
use fluxlora_io::SafeTensorsFile;
use serde_json::Value;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("fixtures"))
        .find(|dir| dir.is_dir())
        .expect("a fixtures/ folder above the crate")
        .join("parity")
}

/// Case folders under `root` whose `case.json` says `"component": "tagger"`.
pub fn tagger_cases(root: &Path) -> Vec<(PathBuf, f64)> {
    let mut cases = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return cases;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("case.json")) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}/case.json: {e}", dir.display()));
        if v["component"] == "tagger" {
            assert_eq!(
                v["format"],
                "timm",
                "{}: tagger cases use timm keys",
                dir.display()
            );
            cases.push((dir, v["tolerance"].as_f64().unwrap_or(1e-4)));
        }
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

/// Max |ours − reference| and the pass bound `tolerance · max(1, max |reference|)`.
pub fn run_case<B: Backend>(
    dir: &Path,
    tolerance: f64,
    device: &B::Device,
) -> Result<(f32, f32), String> {
    let config = dir.join("config.json");
    let config = config.is_file().then_some(config);
    let model = load_classifier::<B>(
        &dir.join("model.safetensors"),
        config.as_deref(),
        &VitOverrides::default(),
        device,
    )
    .map_err(|e| e.to_string())?;
    let io = SafeTensorsFile::open(dir.join("io.safetensors")).map_err(|e| e.to_string())?;
    let pixels = io.read_f32("pixels").map_err(|e| e.to_string())?;
    let expected = io.read_f32("out").map_err(|e| e.to_string())?;
    let shape: [usize; 4] = pixels
        .shape
        .clone()
        .try_into()
        .map_err(|_| format!("pixels shape {:?}", pixels.shape))?;
    let input = Tensor::<B, 4>::from_data(TensorData::new(pixels.data, shape), device);
    let out = model.forward(input).map_err(|e| e.to_string())?;
    if out.dims().to_vec() != expected.shape {
        return Err(format!(
            "output shape {:?}, reference {:?}",
            out.dims(),
            expected.shape
        ));
    }
    let ours = out
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let max_err = ours
        .iter()
        .zip(&expected.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let bound = tolerance as f32 * expected.max_abs().max(1.0);
    Ok((max_err, bound))
}
