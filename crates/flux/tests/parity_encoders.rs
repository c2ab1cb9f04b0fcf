//! Parity of the autoencoder, CLIP, T5 and tokenizer cases in `fixtures/parity/` (components
//! listed in `common/encoders.rs`) on NdArray (the wgpu case is in the
//! root package's `tests/wgpu_backend.rs`).

#[path = "common/encoders.rs"]
mod encoders;

use std::path::{Path, PathBuf};

use burn::backend::NdArray;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

#[test]
fn every_encoder_case_matches_its_reference() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").is_file())
        .collect();
    dirs.sort();
    let dev = Default::default();
    let (mut ran, mut failures) = (0, Vec::new());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(result) = encoders::run_case::<NdArray>(dir, &dev) else { continue };
        ran += 1;
        match result {
            Ok(o) => {
                println!("{name:32} max_err {:.3e} (bound {:.1e}) [{}]", o.max_err, o.bound, o.detail);
                if !(o.max_err <= o.bound) {
                    failures.push(format!("{name}: max error {:.3e} > {:.3e} ({})", o.max_err, o.bound, o.detail));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(ran >= 12, "expected the 12 committed encoder cases, ran {ran}");
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}
