//! Folder convention, the demo dataset's quality report, and the blur / orientation references.

use crate::common;

use common::*;
use fluxlora_data::*;

#[test]
fn kohya_repeat_folders_become_subsets() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        &root.join("10_ohwx dog"),
        "a.png",
        &encode(&textured(64, 64, 1), image::ImageFormat::Png),
    );
    write(
        &root.join("2_style"),
        "b.png",
        &encode(&textured(64, 64, 2), image::ImageFormat::Png),
    );
    write(
        &root.join("notes"),
        "c.png",
        &encode(&textured(64, 64, 3), image::ImageFormat::Png),
    );
    let cfg = DatasetConfig::from_folder(root).unwrap();
    let subs = &cfg.datasets[0].subsets;
    assert_eq!(subs.len(), 2);
    assert_eq!(
        (subs[0].num_repeats, subs[0].class_tokens.as_deref()),
        (10, Some("ohwx dog"))
    );
    assert_eq!(
        (subs[1].num_repeats, subs[1].class_tokens.as_deref()),
        (2, Some("style"))
    );
    assert!(DatasetConfig::from_folder(&root.join("nothing")).is_err());
}

#[test]
fn demo_dataset_report() {
    let cfg = DatasetConfig::from_toml_file(&fixtures().join("demo/dataset.toml")).unwrap();
    let spec = DatasetSpec::scan(&cfg);
    let report = QualityReport::build(&spec, &QualitySettings::default());
    println!("{}", report.to_text());
    assert!(!report.has_blocking_problems());
    assert_eq!(report.images_usable, 6);
    let names = |v: &[std::path::PathBuf]| {
        v.iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&report.missing_captions), ["cat_nocaption.png"]);
    assert_eq!(names(&report.missing_trigger), ["cat_a_copy.jpg"]);
    let blurry: Vec<_> = report
        .blurry
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blurry, ["cat_blurry.png"]);
    let dups: Vec<_> = report
        .near_duplicates
        .iter()
        .map(|d| {
            (
                d.a.file_name().unwrap().to_owned(),
                d.b.file_name().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(dups, [("cat_a.jpg".into(), "cat_a_copy.jpg".into())]);
    let upscaled: Vec<_> = report
        .upscaled
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // 150×112 needs ×1.07 to fill its 160×96 bucket; 40×40 needs ×3.2 for 128×128.
    assert_eq!(upscaled, ["cat_a_copy.jpg", "cat_small.png"]);
    assert_eq!(report.tag_frequencies[0], ("cat".to_string(), 5));
    // `[trigger]` counts as the trigger word.
    assert_eq!(report.tag_frequencies[1], ("ohwx".to_string(), 5));
    assert_eq!(report.buckets.iter().map(|b| b.images).sum::<usize>(), 6);
    assert!(report
        .buckets
        .iter()
        .all(|b| b.draws_per_epoch == 5 * b.images));
}

#[test]
fn laplacian_variance_matches_numpy() {
    let text = std::fs::read_to_string(fixtures().join("laplacian_reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let luma: Vec<f64> = v["luma"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let got = fluxlora_data::quality::blur::laplacian_variance(&luma, 7, 6).unwrap();
    let want = v["variance"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-9 * want.abs(), "{got} vs {want}");
}
