//! The data-driven parity suite: every case in `fixtures/parity/` (and in
//! `$FLUXLORA_PARITY_DIR` when set) against its reference output, on NdArray (the wgpu case is in
//! the root
//! package's `tests/integration/wgpu_backend.rs`).

use crate::common;

use burn::backend::NdArray;
use common::{case_dirs, fixtures_dir, run_case, Case};

#[test]
fn every_parity_case_matches_its_reference() {
    let mut dirs = case_dirs(&fixtures_dir());
    assert!(
        dirs.len() >= 10,
        "expected the committed cases in {}",
        fixtures_dir().display()
    );
    if let Ok(extra) = std::env::var("FLUXLORA_PARITY_DIR") {
        let more = case_dirs(std::path::Path::new(&extra));
        assert!(
            !more.is_empty(),
            "FLUXLORA_PARITY_DIR={extra} holds no case folders"
        );
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
        if common::components::OTHER_SUITES.contains(&case.component.as_str()) {
            continue;
        }
        match run_case::<NdArray>(&case, &dev) {
            Ok(o) => {
                println!(
                    "{:40} {:12} max_err {:.3e} (bound {:.1e})",
                    case.name(),
                    case.component,
                    o.max_err,
                    o.bound
                );
                if !(o.max_err <= o.bound) {
                    failures.push(format!(
                        "{}: max error {:.3e} > {:.3e}",
                        case.name(),
                        o.max_err,
                        o.bound
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name())),
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
