//! The data-driven parity suite: every case in `fixtures/parity/` (and in
//! `$FLUXLORA_PARITY_DIR` when set) against its reference output, on NdArray; one tiny case on
//! Wgpu.

mod common;

use burn::backend::{NdArray, Wgpu};
use common::{case_dirs, fixtures_dir, run_case, Case};

#[test]
fn every_parity_case_matches_its_reference() {
    let mut dirs = case_dirs(&fixtures_dir());
    assert!(dirs.len() >= 10, "expected the committed cases in {}", fixtures_dir().display());
    if let Ok(extra) = std::env::var("FLUXLORA_PARITY_DIR") {
        let more = case_dirs(std::path::Path::new(&extra));
        assert!(!more.is_empty(), "FLUXLORA_PARITY_DIR={extra} holds no case folders");
        dirs.extend(more);
    }
    let dev = Default::default();
    let mut failures = Vec::new();
    for dir in &dirs {
        let case = match Case::read(dir) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        match run_case::<NdArray>(&case, &dev) {
            Ok(o) => {
                println!("{:40} {:12} max_err {:.3e} (bound {:.1e})", case.name(), case.component, o.max_err, o.bound);
                if !(o.max_err <= o.bound) {
                    failures.push(format!("{}: max error {:.3e} > {:.3e}", case.name(), o.max_err, o.bound));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name())),
        }
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

#[test]
fn smallest_transformer_case_matches_on_wgpu() {
    let case = Case::read(&fixtures_dir().join("transformer_dev_comfyui_bf16")).unwrap();
    let o = run_case::<Wgpu>(&case, &Default::default()).unwrap();
    println!("wgpu {}: max_err {:.3e} (bound {:.1e})", case.name(), o.max_err, o.bound);
    assert!(o.max_err <= o.bound, "max error {:.3e} > {:.3e}", o.max_err, o.bound);
}
