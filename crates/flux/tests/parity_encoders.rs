//! Parity of the autoencoder, CLIP, T5 and tokenizer cases in `fixtures/parity/` (and in
//! `$FLUXLORA_PARITY_DIR` when set; components listed in `common/encoders.rs`) on NdArray (the
//! wgpu case is in the root package's `tests/integration/wgpu_backend.rs`).

#[path = "common/encoders.rs"]
mod encoders;

use burn::backend::NdArray;

use crate::common::{case_dirs, fixtures_dir};

#[test]
fn every_encoder_case_matches_its_reference() {
    let mut dirs = case_dirs(&fixtures_dir());
    let committed = dirs.len();
    if let Ok(extra) = std::env::var("FLUXLORA_PARITY_DIR") {
        let more = case_dirs(std::path::Path::new(&extra));
        assert!(
            !more.is_empty(),
            "FLUXLORA_PARITY_DIR={extra} holds no case folders"
        );
        dirs.extend(more);
    }
    let dev = Default::default();
    let (mut ran, mut failures) = (0, Vec::new());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(result) = encoders::run_case::<NdArray>(dir, &dev) else {
            continue;
        };
        ran += 1;
        match result {
            Ok(o) => {
                println!(
                    "{name:32} max_err {:.3e} (bound {:.1e}) [{}]",
                    o.max_err, o.bound, o.detail
                );
                if !(o.max_err <= o.bound) {
                    failures.push(format!(
                        "{name}: max error {:.3e} > {:.3e} ({})",
                        o.max_err, o.bound, o.detail
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        ran >= 12,
        "expected the 12 committed encoder cases (of {committed} case folders), ran {ran}"
    );
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
