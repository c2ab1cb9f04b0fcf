//! The workspace's structural invariants, read off the sources (docs/ARCHITECTURE.md names each
//! test here): backends turned on only by the root package, generic code instantiated in one
//! place, thin examples, atomic writes, key maps in the I/O crate, documented crates.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The library crates (`crates/*`).
fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    v.sort();
    assert!(v.len() >= 9, "{v:?}");
    v
}

/// A file's code without its unit tests (they sit at the end, after `#[cfg(test)]`) and
/// without comment lines.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let body = text.split("\n#[cfg(test)]").next().unwrap_or_default();
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `[dependencies]` table of a manifest (not dev-dependencies).
fn dependencies(manifest: &Path) -> toml::Table {
    let t: toml::Table = toml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    t.get("dependencies")
        .and_then(|d| d.as_table())
        .cloned()
        .unwrap_or_default()
}

#[test]
fn library_crates_turn_on_no_burn_backend() {
    // `burn` itself only with `std` and `autodiff` (no backend); a backend crate (for the
    // `FluxBackend` impls) only as an optional dependency, which the root package's backend
    // features turn on.
    for c in crates() {
        let deps = dependencies(&c.join("Cargo.toml"));
        for (name, spec) in &deps {
            if name == "burn" {
                let features = spec.get("features").and_then(|f| f.as_array());
                let backend = features
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str())
                    .find(|f| !["std", "autodiff"].contains(f));
                assert!(
                    backend.is_none(),
                    "{}: burn turns on {backend:?}",
                    c.display()
                );
            } else if name.starts_with("burn-") {
                let optional = spec.get("optional").and_then(|o| o.as_bool());
                assert_eq!(
                    optional,
                    Some(true),
                    "{}: the backend crate {name} is not optional",
                    c.display()
                );
            }
        }
    }
}

#[test]
fn io_and_data_know_no_burn() {
    for c in ["io", "data", "render"] {
        let deps = dependencies(&root().join("crates").join(c).join("Cargo.toml"));
        assert!(
            !deps.keys().any(|k| k.starts_with("burn")),
            "crates/{c} depends on burn"
        );
    }
}

#[test]
fn backends_are_instantiated_in_one_place() {
    // `with_backend!` (one monomorphisation of the generic stack per backend) is expanded only
    // by the root library's jobs; examples and crates never name a concrete backend.
    let mut expansions = Vec::new();
    for f in rust_files(&root().join("src")) {
        if code_of(&f).contains("with_backend!(") {
            expansions.push(f.strip_prefix(root()).unwrap().display().to_string());
        }
    }
    assert!(
        expansions.iter().all(|f| f.starts_with("src/jobs/")),
        "{expansions:?}"
    );
    for f in rust_files(&root().join("examples")) {
        let code = code_of(&f);
        for concrete in ["with_backend", "NdArray", "Wgpu", "Cuda", "Autodiff<"] {
            assert!(
                !code.contains(concrete),
                "{}: names {concrete}",
                f.display()
            );
        }
    }
    for c in crates() {
        for f in rust_files(&c.join("src"))
            .into_iter()
            .filter(|f| !f.ends_with("tests.rs"))
        {
            let code = code_of(&f);
            for concrete in [
                "burn::backend::NdArray",
                "burn::backend::Wgpu",
                "burn::backend::Cuda",
            ] {
                assert!(
                    !code.contains(concrete),
                    "{}: names {concrete}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn examples_are_thin_clap_shells() {
    let examples = rust_files(&root().join("examples"));
    assert_eq!(examples.len(), 7, "{examples:?}");
    for f in examples {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.lines().count() < 80,
            "{}: {} lines",
            f.display(),
            text.lines().count()
        );
        assert!(
            text.contains("::parse()"),
            "{}: not parsed with clap",
            f.display()
        );
        assert!(
            text.contains("fluxlora::jobs::"),
            "{}: calls no job",
            f.display()
        );
    }
}

#[test]
fn every_file_is_written_through_the_atomic_writer() {
    // Streaming logs (the CSV and TensorBoard event files) are appended row by row and are the
    // one documented exception; everything else goes through `fluxlora_io::atomic_write`.
    let streaming = [
        "crates/train/src/log.rs",
        "crates/train/src/tensorboard.rs",
        "crates/io/src/atomic.rs",
    ];
    let mut offenders = Vec::new();
    for dir in crates()
        .into_iter()
        .map(|c| c.join("src"))
        .chain([root().join("src")])
    {
        for f in rust_files(&dir) {
            let rel = f.strip_prefix(root()).unwrap().display().to_string();
            if streaming.contains(&rel.as_str()) || rel.ends_with("/tests.rs") {
                continue;
            }
            let code = code_of(&f);
            for call in [
                "fs::write(",
                "File::create(",
                "OpenOptions::new(",
                "fs::rename(",
            ] {
                // Checkpoint folders are written under a temporary name and renamed into place
                // (and renamed aside before deletion): the folder-level half of the protocol.
                let folder_protocol =
                    rel.ends_with("train/src/resume.rs") || rel.ends_with("train/src/save.rs");
                if code.contains(call) && !(call == "fs::rename(" && folder_protocol) {
                    offenders.push(format!("{rel}: {call}"));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn the_io_crate_owns_every_key_map() {
    // Key spellings of the file formats appear only in fluxlora-io.
    let needles = [
        "\"lora_unet_",
        "\"transformer_blocks.",
        "\"diffusion_model.",
        "\"lora_te1_",
        "\"encoder.down_blocks",
    ];
    for c in crates().into_iter().filter(|c| !c.ends_with("io")) {
        for f in rust_files(&c.join("src")) {
            let code = code_of(&f);
            for n in needles {
                assert!(!code.contains(n), "{}: spells the key {n}", f.display());
            }
        }
    }
}

#[test]
fn every_crate_documents_itself_with_a_runnable_example() {
    for lib in crates()
        .into_iter()
        .map(|c| c.join("src/lib.rs"))
        .chain([root().join("src/lib.rs")])
    {
        let text = std::fs::read_to_string(&lib).unwrap();
        assert!(text.starts_with("//!"), "{}: no crate doc", lib.display());
        assert!(
            text.contains("//! ```\n") || text.contains("//! ```rust"),
            "{}: no doc example",
            lib.display()
        );
        assert!(
            text.contains("#![deny(missing_docs)]"),
            "{}: missing_docs not denied",
            lib.display()
        );
        assert!(
            text.contains("#![warn(clippy::all)]"),
            "{}: clippy::all not warned",
            lib.display()
        );
    }
}
