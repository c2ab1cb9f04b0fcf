//! Hostile images: small files whose headers declare huge images (decompression bombs) are
//! refused before any pixel memory is taken, with a reason that names the limit and the config
//! key that raises it; animated files decode to their first frame with a warning. At dataset
//! level the bomb is one blocking (or, with `skip_bad_images`, skipped) file among good ones.

use crate::common;

use std::path::Path;

use common::forge::*;
use common::{textured, toml_for, write};
use fluxlora_data::decode::{decode_bytes, decode_bytes_with, ANIMATED_WARNING, TOO_LARGE};
use fluxlora_data::*;
use image::ImageFormat;

fn refusal(bytes: &[u8]) -> String {
    match decode_bytes(bytes) {
        Ok(d) => panic!("accepted a {}×{} image", d.image.width(), d.image.height()),
        Err(e) => e.reason,
    }
}

#[test]
fn png_bomb_is_refused_before_decoding() {
    let bomb = png_bomb(100_000, 100_000);
    assert!(bomb.len() <= 200, "{} bytes", bomb.len());
    assert_eq!(
        refusal(&bomb),
        "image too large: declares 100000×100000 pixels (10000.0 MP), over the limit of 67.1 MP \
         (max_image_pixels); shrink the image or raise max_image_pixels in the dataset config's \
         [general] table (or in the training config)"
    );
    let e = refusal(&png_bomb(40_000, 10));
    assert!(
        e.starts_with(TOO_LARGE) && e.contains("(max_image_side)"),
        "{e}"
    );
    // With the pixel and side limits raised, the byte limit still stops the 30 GB buffer.
    let raised = ImageLimits {
        max_pixels: 20_000_000_000,
        max_side: 200_000,
        ..ImageLimits::default()
    };
    let e = decode_bytes_with(&bomb, &raised).unwrap_err().reason;
    assert!(
        e.starts_with(TOO_LARGE)
            && e.contains("decode to 28610.2 MiB, over the limit of 1024.0 MiB (max_image_bytes)"),
        "{e}"
    );
}

#[test]
fn webp_jpeg_and_bmp_bombs_are_refused() {
    let small = textured(16, 12, 1);
    let pixels = |e: String| {
        assert!(
            e.starts_with(TOO_LARGE) && e.contains("max_image_pixels"),
            "{e}"
        );
    };
    pixels(refusal(&webp_vp8x_bomb(16384, 16384, &small)));
    pixels(refusal(&animated_webp(
        16384,
        16384,
        std::slice::from_ref(&small),
    )));
    let mut lossless = encode(&small, ImageFormat::WebP);
    set_vp8l_dims(&mut lossless, 16383, 16383);
    pixels(refusal(&lossless));
    let mut jpeg = encode(&small, ImageFormat::Jpeg);
    assert!(set_jpeg_dims(&mut jpeg, 60_000, 60_000));
    pixels(refusal(&jpeg));
    let mut bmp = encode(&small, ImageFormat::Bmp);
    set_bmp_dims(&mut bmp, 60_000, 60_000);
    pixels(refusal(&bmp));
    // Over the BMP decoder's own 65535 limit: a clean decoder error.
    set_bmp_dims(&mut bmp, 100_000, -100_000);
    assert!(refusal(&bmp).starts_with("corrupt BMP"));
}

#[test]
fn gif_bomb_header_is_an_unsupported_format() {
    let gif = gif_header(65535, 65535);
    assert_eq!(
        refusal(&gif),
        "Gif images are not supported; convert it to PNG, JPEG or WebP"
    );
}

#[test]
fn animations_decode_their_first_frame_with_a_warning() {
    let (a, b) = (textured(16, 12, 1), textured(16, 12, 2));
    for (name, bytes) in [
        ("APNG", apng(&[a.clone(), b.clone()])),
        ("WebP", animated_webp(16, 12, &[a.clone(), b.clone()])),
    ] {
        let d = decode_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            d.image.to_rgb8(),
            a.to_rgb8(),
            "{name}: not the first frame"
        );
        assert_eq!(d.warnings, vec![ANIMATED_WARNING.to_string()], "{name}");
    }
    for format in [
        ImageFormat::Png,
        ImageFormat::WebP,
        ImageFormat::Jpeg,
        ImageFormat::Bmp,
    ] {
        let d = decode_bytes(&encode(&a, format)).unwrap();
        assert!(d.warnings.is_empty(), "{format:?}: {:?}", d.warnings);
    }
}

/// good1.png, good2.png, anim.png (APNG) and bomb.png (100000×100000), all captioned.
fn folder(dir: &Path) {
    write(
        dir,
        "good1.png",
        &encode(&textured(96, 64, 1), ImageFormat::Png),
    );
    write(
        dir,
        "good2.png",
        &encode(&textured(64, 96, 2), ImageFormat::Png),
    );
    let frames = [textured(80, 80, 3), textured(80, 80, 4)];
    write(dir, "anim.png", &apng(&frames));
    write(dir, "bomb.png", &png_bomb(100_000, 100_000));
    for name in ["good1", "good2", "anim", "bomb"] {
        write(dir, &format!("{name}.txt"), b"ohwx, a test image");
    }
}

fn config(dir: &Path, general: &str) -> DatasetConfig {
    let text = toml_for(
        dir,
        general,
        "resolution = 256\nmin_bucket_reso = 64\nmax_bucket_reso = 1024",
    );
    DatasetConfig::from_toml_str(&text, &dir.join("dataset.toml")).unwrap()
}

fn problems_of<'a>(report: &'a [Problem], name: &str) -> Vec<&'a Problem> {
    report
        .iter()
        .filter(|p| {
            p.path
                .as_ref()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == name)
        })
        .collect()
}

#[test]
fn report_lists_the_bomb_and_counts_the_good_images() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path());
    let spec = DatasetSpec::scan(&config(tmp.path(), ""));
    let report = QualityReport::build(&spec, &QualitySettings::default());
    let text = report.to_text();
    assert!(report.has_blocking_problems(), "{text}");
    assert_eq!(
        (report.images_listed, report.images_usable),
        (4, 3),
        "{text}"
    );
    let bomb = problems_of(&report.problems, "bomb.png");
    assert_eq!(bomb.len(), 1, "{bomb:?}");
    assert_eq!(
        (bomb[0].kind, bomb[0].severity),
        (ProblemKind::ImageTooLarge, Severity::Blocking)
    );
    for needle in [
        "bomb.png: image too large",
        "100000×100000",
        "67.1 MP",
        "max_image_pixels",
    ] {
        assert!(
            text.contains(needle),
            "report text lacks {needle:?}:\n{text}"
        );
    }
    let anim: Vec<_> = problems_of(&report.problems, "anim.png")
        .into_iter()
        .filter(|p| p.kind == ProblemKind::AnimatedImage)
        .collect();
    assert_eq!(anim.len(), 1, "{anim:?}");
    assert_eq!(anim[0].severity, Severity::Warning);
    assert!(
        text.contains("anim.png: animated image: only the first frame is used"),
        "{text}"
    );
    let json = report.to_json();
    assert!(json.contains("\"image_too_large\"") && json.contains("\"animated_image\""));

    let analysis = Analysis::run(&spec, &Progress::hidden());
    match Dataset::from_analysis(&spec, &analysis).unwrap_err() {
        DataError::BadInputs { count, listing } => {
            assert_eq!(count, 1, "{listing}");
            assert!(listing.contains("bomb.png") && listing.contains("max_image_pixels"));
        }
        e => panic!("expected BadInputs, got {e}"),
    }
}

#[test]
fn skipping_leaves_the_bomb_out_and_trains_on_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path());
    let dataset = Dataset::open(
        &config(tmp.path(), "skip_bad_images = true"),
        &Progress::hidden(),
    )
    .unwrap();
    let mut names: Vec<String> = dataset
        .items
        .iter()
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["anim.png", "good1.png", "good2.png"]);
    let bomb = problems_of(&dataset.problems, "bomb.png");
    assert_eq!(bomb.len(), 1);
    assert_eq!(
        (bomb[0].kind, bomb[0].severity),
        (ProblemKind::ImageTooLarge, Severity::Warning)
    );
    assert!(
        bomb[0].message.contains("skipped: skip_bad_images is on"),
        "{}",
        bomb[0].message
    );
    for i in 0..dataset.items.len() {
        let px = dataset.load_pixels(&dataset.sample(i, 0, 0, 7)).unwrap();
        assert!(px.image.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

#[test]
fn limits_come_from_the_general_table() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path());
    let c = config(tmp.path(), "");
    assert_eq!(c.image_limits, ImageLimits::default());
    // Pixels and side raised: the byte limit names its own key.
    let c = config(
        tmp.path(),
        "max_image_pixels = 20000000000\nmax_image_side = 100000",
    );
    assert_eq!(
        (c.image_limits.max_pixels, c.image_limits.max_side),
        (20_000_000_000, 100_000)
    );
    let report = QualityReport::build(&DatasetSpec::scan(&c), &QualitySettings::default());
    let bomb = problems_of(&report.problems, "bomb.png");
    assert_eq!(bomb[0].kind, ProblemKind::ImageTooLarge);
    assert!(
        bomb[0].message.contains("(max_image_bytes)"),
        "{}",
        bomb[0].message
    );
    // Lowered: the good images are refused too, naming the setting.
    let c = config(
        tmp.path(),
        "max_image_pixels = 1000\nmax_image_bytes = 4096",
    );
    let report = QualityReport::build(&DatasetSpec::scan(&c), &QualitySettings::default());
    assert_eq!(report.images_usable, 0);
    assert!(problems_of(&report.problems, "good1.png")[0]
        .message
        .contains("max_image_pixels"));
}

#[test]
fn bad_limit_values_name_the_key() {
    let dir = Path::new("/cfg/imgs");
    let parse = |general: &str, dataset: &str| {
        let text = toml_for(dir, general, dataset);
        DatasetConfig::from_toml_str(&text, Path::new("/cfg/dataset.toml"))
    };
    for (general, key) in [
        ("max_image_pixels = 0", "max_image_pixels"),
        ("max_image_side = 0", "max_image_side"),
        ("max_image_bytes = 0", "max_image_bytes"),
        ("max_image_side = 5000000000", "max_image_side"),
        ("max_image_pixels = -1", "max_image_pixels"),
        ("max_image_bytes = 'big'", "max_image_bytes"),
    ] {
        let e = parse(general, "").unwrap_err().to_string();
        assert!(e.contains(key), "{general}: {e}");
    }
    let e = parse("", "max_image_pixels = 100").unwrap_err().to_string();
    assert!(e.contains("belongs in [general]"), "{e}");
    let e = parse("max_image_pixel = 100", "").unwrap_err().to_string();
    assert!(e.contains("did you mean `max_image_pixels`"), "{e}");
    // Hand-set values are checked by `validate` too.
    let mut c = parse("", "").unwrap();
    c.image_limits.max_side = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("max_image_side") && e.contains("at least 1"),
        "{e}"
    );
}

#[test]
fn a_caption_linked_to_a_file_outside_the_dataset_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write(
        &data,
        "good1.png",
        &encode(&textured(96, 64, 1), ImageFormat::Png),
    );
    write(
        &data,
        "good2.png",
        &encode(&textured(64, 96, 2), ImageFormat::Png),
    );
    write(&data, "good2.txt", b"ohwx, inside");
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, "ohwx, private notes from elsewhere").unwrap();
    std::os::unix::fs::symlink(&secret, data.join("good1.txt")).unwrap();

    let spec = DatasetSpec::scan(&config(&data, ""));
    let problems = problems_of(&spec.problems, "good1.txt");
    assert_eq!(problems.len(), 1, "{:?}", spec.problems);
    assert_eq!(
        (problems[0].kind, problems[0].severity),
        (ProblemKind::PathOutsideDataset, Severity::Blocking)
    );
    assert!(
        problems[0].message.contains("secret.txt"),
        "{}",
        problems[0].message
    );
    // The outside file was never read into the dataset.
    let rec = spec
        .images
        .iter()
        .find(|r| r.path.ends_with("good1.png"))
        .unwrap();
    assert!(rec.caption.is_err());
    assert!(!format!("{:?}", spec.images).contains("private notes"));
    // A link that stays inside the folder is fine.
    std::fs::remove_file(data.join("good1.txt")).unwrap();
    std::os::unix::fs::symlink(data.join("good2.txt"), data.join("good1.txt")).unwrap();
    let spec = DatasetSpec::scan(&config(&data, ""));
    assert!(
        problems_of(&spec.problems, "good1.txt").is_empty(),
        "{:?}",
        spec.problems
    );
}

#[test]
fn a_caption_extension_that_is_a_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), "");
    c.datasets[0].subsets[0].caption_extension = ".txt/../../../etc/x".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("caption_extension") && err.contains("path separator"),
        "{err}"
    );
}
