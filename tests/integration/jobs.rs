//! The jobs on tiny inputs: what they return and the exit codes they document.

use std::path::Path;

use fluxlora::jobs::{prep, PrepArgs};

fn dataset(dir: &Path, corrupt: bool) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-world/dataset");
    for i in 0..3 {
        std::fs::copy(src.join(format!("sks_0{i}.png")), dir.join(format!("img{i}.png"))).unwrap();
        std::fs::write(dir.join(format!("img{i}.txt")), "sks disc").unwrap();
    }
    if corrupt {
        std::fs::write(dir.join("broken.png"), b"\x89PNG\r\n\x1a\n not really a png").unwrap();
        std::fs::write(dir.join("broken.txt"), "sks disc").unwrap();
    }
}

fn run_prep(corrupt: bool) -> (fluxlora::jobs::PrepOutcome, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data, corrupt);
    let args = PrepArgs {
        dataset: Some(data),
        trigger: Some("sks".into()),
        resolution: Some(64),
        json: Some(tmp.path().join("report.json")),
        ..Default::default()
    };
    (prep(&args).unwrap(), tmp)
}

#[test]
fn prep_reports_a_clean_dataset_with_exit_code_0() {
    let (outcome, tmp) = run_prep(false);
    assert!(!outcome.blocking, "{}", outcome.report);
    assert_eq!(outcome.exit_code(), 0);
    let json = std::fs::read_to_string(tmp.path().join("report.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(value.is_object());
    assert!(outcome.to_string().contains("JSON report:"));
}

#[test]
fn prep_names_a_corrupt_image_and_exits_with_2() {
    let (outcome, _tmp) = run_prep(true);
    assert!(outcome.blocking);
    assert_eq!(outcome.exit_code(), 2);
    assert!(outcome.report.contains("broken.png"), "{}", outcome.report);
}
