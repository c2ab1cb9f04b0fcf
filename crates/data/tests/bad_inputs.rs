//! The bad-input corpus: every kind of broken or unusual file in one folder must produce a report
//! (and, for the trainer, a refusal listing them, or a skip) — never a panic.

use crate::common;

use std::path::Path;

use common::*;
use fluxlora_data::*;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma};

struct Corpus {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn corpus() -> Corpus {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    let good = textured(96, 64, 1);
    write(&dir, "good.png", &encode(&good, ImageFormat::Png));
    write(&dir, "good.txt", b"ohwx, a pattern");
    let jpg = encode(&textured(64, 64, 2), ImageFormat::Jpeg);
    write(&dir, "truncated.jpg", &jpg[..jpg.len() / 2]);
    let png = encode(&textured(64, 64, 3), ImageFormat::Png);
    write(&dir, "truncated.png", &png[..png.len() / 2]);
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(40).take(200) {
        *b = 0x5A;
    }
    write(&dir, "corrupt.png", &corrupt);
    write(&dir, "zero.jpg", b"");
    write(&dir, "not_an_image.png", b"this is text, not a PNG");
    std::fs::copy(fixtures().join("cmyk.jpg"), dir.join("cmyk.jpg")).unwrap();
    std::fs::copy(fixtures().join("palette.png"), dir.join("palette.png")).unwrap();
    let g16 = DynamicImage::ImageLuma16(ImageBuffer::from_fn(80, 70, |x, y| {
        Luma([(x * 800 + y * 60) as u16])
    }));
    write(&dir, "gray16.png", &encode(&g16, ImageFormat::Png));
    write(
        &dir,
        "one_pixel.png",
        &encode(&textured(1, 1, 4), ImageFormat::Png),
    );
    write(
        &dir,
        "wide.png",
        &encode(&textured(20000, 20, 5), ImageFormat::Png),
    );
    write(
        &dir,
        "bmp.bmp",
        &encode(&textured(40, 30, 6), ImageFormat::Bmp),
    );
    write(
        &dir,
        "latin1.png",
        &encode(&textured(64, 48, 7), ImageFormat::Png),
    );
    write(&dir, "latin1.txt", b"caf\xe9, cr\xe8me");
    write(&dir, "orphan.txt", b"a caption without its image");
    // Unreadable entries. Tests run as root, where `chmod 000` does not stop reads, so use
    // entries no user can read as an image: a dangling symlink, a directory, a FIFO.
    std::os::unix::fs::symlink(dir.join("does_not_exist.png"), dir.join("dangling.png")).unwrap();
    std::fs::create_dir(dir.join("folder.jpg")).unwrap();
    let fifo_ok = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.png"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        fifo_ok,
        "mkfifo (coreutils) is needed to make the FIFO case"
    );
    Corpus { _tmp: tmp, dir }
}

fn config(dir: &Path, skip: bool) -> DatasetConfig {
    let text = toml_for(
        dir,
        &format!("skip_bad_images = {skip}\ntrigger_word = \"ohwx\""),
        "resolution = 256\nmin_bucket_reso = 64\nmax_bucket_reso = 1024",
    );
    DatasetConfig::from_toml_str(&text, &dir.join("dataset.toml")).unwrap()
}

fn kinds_of(report: &QualityReport, name: &str) -> Vec<(ProblemKind, Severity)> {
    report
        .problems
        .iter()
        .filter(|p| {
            p.path
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n == name)
                .unwrap_or(false)
        })
        .map(|p| (p.kind, p.severity))
        .collect()
}

#[test]
fn corpus_produces_a_report_and_no_panic() {
    let c = corpus();
    let spec = DatasetSpec::scan(&config(&c.dir, false));
    let report = QualityReport::build(&spec, &QualitySettings::default());
    let text = report.to_text();
    println!("{text}");
    assert!(report.has_blocking_problems());

    use ProblemKind::*;
    use Severity::*;
    for (name, kind) in [
        ("truncated.jpg", CorruptImage),
        ("truncated.png", CorruptImage),
        ("corrupt.png", CorruptImage),
        ("not_an_image.png", CorruptImage),
        ("zero.jpg", CorruptImage),
        ("dangling.png", UnreadableImage),
        ("folder.jpg", UnreadableImage),
        ("pipe.png", UnreadableImage),
        ("latin1.txt", CaptionNotUtf8),
    ] {
        assert_eq!(kinds_of(&report, name), vec![(kind, Blocking)], "{name}");
    }
    assert_eq!(
        kinds_of(&report, "orphan.txt"),
        vec![(OrphanCaption, Warning)]
    );
    // The unusual-but-valid files are usable: CMYK, palette, 16-bit, 1×1, 20000×20, BMP.
    assert_eq!(report.images_usable, 7, "{text}");
    assert!(kinds_of(&report, "one_pixel.png").contains(&(Upscaled, Warning)));
    assert!(kinds_of(&report, "wide.png").contains(&(Upscaled, Warning)));
    assert!(kinds_of(&report, "cmyk.jpg").contains(&(MissingCaption, Warning)));
    // Flat and smooth images hash alike under dHash; the brightness check keeps them apart.
    assert!(
        report.near_duplicates.is_empty(),
        "{:?}",
        report.near_duplicates
    );
    for needle in [
        "zero.jpg",
        "empty file",
        "no end-of-image",
        "not UTF-8",
        "symbolic link",
        "a directory",
        "FIFO",
        "orphan.txt",
    ] {
        assert!(text.contains(needle), "report text lacks {needle:?}");
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["images_usable"], 7);

    // The trainer refuses, listing every blocking problem.
    let err =
        Dataset::from_analysis(&spec, &Analysis::run(&spec, &Progress::hidden())).unwrap_err();
    match err {
        DataError::BadInputs { count, listing } => {
            assert_eq!(count, 9, "{listing}");
            assert!(
                listing.contains("pipe.png") && listing.contains("latin1.txt"),
                "{listing}"
            );
        }
        e => panic!("expected BadInputs, got {e}"),
    }
}

#[test]
fn skipping_bad_files_trains_on_the_rest() {
    let c = corpus();
    let dataset = Dataset::open(&config(&c.dir, true), &Progress::hidden()).unwrap();
    assert_eq!(dataset.items.len(), 7);
    assert!(dataset
        .problems
        .iter()
        .all(|p| p.severity == Severity::Warning));
    for (i, item) in dataset.items.iter().enumerate() {
        let sample = dataset.sample(i, 0, 0, 1);
        let px = dataset.load_pixels(&sample).unwrap();
        let b = item.assignment.bucket;
        assert_eq!(
            px.image.shape,
            vec![3, b.height as usize, b.width as usize],
            "{}",
            item.path.display()
        );
        assert!(px
            .image
            .data
            .iter()
            .all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
        assert_eq!(b.width % 64, 0);
        assert_eq!(b.height % 64, 0);
        assert!(b.width as u64 * b.height as u64 <= 256 * 256);
    }
}

#[test]
fn unusual_formats_decode_to_the_right_colours() {
    use fluxlora_data::decode::decode_file;
    // CMYK: left half cyan → RGB ≈ (0, 255, 255); right half white.
    let d = decode_file(&fixtures().join("cmyk.jpg")).unwrap();
    let rgb = d.image.to_rgb8();
    let near = |a: [u8; 3], b: [u8; 3]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (*x as i32 - y as i32).abs() <= 24)
    };
    assert!(
        near(rgb.get_pixel(2, 8).0, [0, 255, 255]),
        "{:?}",
        rgb.get_pixel(2, 8)
    );
    assert!(
        near(rgb.get_pixel(13, 8).0, [255, 255, 255]),
        "{:?}",
        rgb.get_pixel(13, 8)
    );
    // Palette: index = x in the first row.
    let d = decode_file(&fixtures().join("palette.png")).unwrap();
    let rgb = d.image.to_rgb8();
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(rgb.get_pixel(3, 0).0, [10, 20, 30]);
    assert_eq!(rgb.get_pixel(0, 1).0, [10, 20, 30]);
    // EXIF orientation 6: stored 32×16 (red left), displayed 16×32 (red top).
    let d = decode_file(&fixtures().join("exif_orientation6.jpg")).unwrap();
    assert_eq!((d.image.width(), d.image.height()), (16, 32));
    let rgb = d.image.to_rgb8();
    assert!(
        near(rgb.get_pixel(8, 4).0, [255, 0, 0]),
        "{:?}",
        rgb.get_pixel(8, 4)
    );
    assert!(
        near(rgb.get_pixel(8, 27).0, [0, 0, 255]),
        "{:?}",
        rgb.get_pixel(8, 27)
    );
}
