//! Caption tools over a real folder: trigger insertion, dedupe/sort, dry-run diffs, the
//! no-overwrite rule, tag statistics, and bad inputs (non-UTF-8 caption, unreadable folder).

use crate::common;

use std::path::Path;

use common::{read, write_image};
use fluxlora_caption::{
    caption_folder, CaptionError, CaptionJob, Captioner, FolderScan, TagStats, Trigger,
};

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_image(&p.join("a.png"), 8, 8);
    write_image(&p.join("b.jpg"), 8, 8);
    write_image(&p.join("c.webp"), 8, 8);
    write_image(&p.join("d.png"), 8, 8);
    std::fs::write(p.join("a.txt"), "1girl, smile, 1girl\n").unwrap();
    std::fs::write(p.join("b.txt"), "a photo of [trigger] on a beach").unwrap();
    std::fs::write(p.join("c.txt"), "sks, smile\n").unwrap();
    // d.png has no caption; orphan.txt has no image.
    std::fs::write(p.join("orphan.txt"), "lonely").unwrap();
    dir
}

fn trigger_job(root: &Path) -> CaptionJob {
    let mut job = CaptionJob::new(FolderScan::new(root));
    job.edits.trigger = Some(Trigger::new("sks").unwrap());
    job
}

#[test]
fn dry_run_reports_the_diff_and_writes_nothing() {
    let dir = folder();
    let mut job = trigger_job(dir.path());
    job.dry_run = true;
    job.edits.dedupe = true;
    let summary = caption_folder(&job, None).unwrap();
    assert_eq!(summary.images, 4);
    assert_eq!(summary.changes.len(), 2, "{summary}");
    assert_eq!(summary.unchanged, 1);
    assert_eq!(summary.missing.len(), 1);
    let diff = summary.diff();
    assert!(
        diff.contains("a.txt\n- 1girl, smile, 1girl\n+ sks, 1girl, smile\n"),
        "{diff}"
    );
    assert!(
        diff.contains("- a photo of [trigger] on a beach\n+ a photo of sks on a beach\n"),
        "{diff}"
    );
    assert!(summary.to_string().contains("would change"), "{summary}");
    // Nothing on disk moved.
    assert_eq!(read(&dir.path().join("a.txt")), "1girl, smile, 1girl\n");
    assert!(!dir.path().join("d.txt").exists());
}

#[test]
fn edits_are_written_and_idempotent() {
    let dir = folder();
    let mut job = trigger_job(dir.path());
    job.edits.sort = true;
    job.edits.keep_tokens = 0;
    let summary = caption_folder(&job, None).unwrap();
    assert_eq!(summary.changes.len(), 2, "{summary}");
    assert_eq!(
        read(&dir.path().join("a.txt")),
        "sks, 1girl, 1girl, smile\n"
    );
    assert_eq!(
        read(&dir.path().join("b.txt")),
        "a photo of sks on a beach\n"
    );
    assert_eq!(read(&dir.path().join("c.txt")), "sks, smile\n");
    // A second run changes nothing.
    let again = caption_folder(&job, None).unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.unchanged, 3);
}

/// A captioner that returns a fixed text, fails on one file, and counts calls.
struct Fake(std::sync::atomic::AtomicUsize);

impl Captioner for Fake {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn caption(&self, image: &Path) -> fluxlora_caption::Result<String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if image.ends_with("c.webp") {
            return Err(CaptionError::Image {
                path: image.into(),
                reason: "simulated".into(),
            });
        }
        Ok("long_hair, outdoors".into())
    }
}

#[test]
fn captioner_never_overwrites_unless_asked() {
    let dir = folder();
    let fake = Fake(Default::default());
    let mut job = trigger_job(dir.path());
    job.threads = 3;
    let summary = caption_folder(&job, Some(&fake)).unwrap();
    // Only d.png had no caption: one call, one new caption (with the trigger).
    assert_eq!(fake.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        read(&dir.path().join("d.txt")),
        "sks, long_hair, outdoors\n"
    );
    assert_eq!(summary.generated, 1);
    // a, b, c keep their text (edits still apply)
    assert_eq!(summary.kept_existing, 3, "{summary}");
    assert_eq!(
        read(&dir.path().join("a.txt")),
        "sks, 1girl, smile, 1girl\n"
    );

    // With overwrite every image is captioned again; the failing one is reported, the run goes on.
    job.overwrite = true;
    job.edits.underscores_to_spaces = true;
    let summary = caption_folder(&job, Some(&fake)).unwrap();
    assert_eq!(summary.failed.len(), 1, "{summary}");
    assert!(summary.failed[0].to_string().contains("c.webp"));
    assert_eq!(
        read(&dir.path().join("a.txt")),
        "sks, long hair, outdoors\n"
    );
    assert_eq!(read(&dir.path().join("c.txt")), "sks, smile\n");
    assert!(summary.to_string().contains("1 failed"), "{summary}");
}

#[test]
fn non_utf8_caption_is_reported_and_the_run_continues() {
    let dir = folder();
    std::fs::write(dir.path().join("a.txt"), [0x66, 0xff, 0xfe, 0x00]).unwrap();
    let summary = caption_folder(&trigger_job(dir.path()), None).unwrap();
    assert_eq!(summary.failed.len(), 1);
    let msg = summary.failed[0].to_string();
    assert!(msg.contains("a.txt") && msg.contains("UTF-8"), "{msg}");
    assert_eq!(read(&dir.path().join("c.txt")), "sks, smile\n");
    assert_eq!(summary.changes.len(), 1); // b.txt
}

#[test]
fn stats_over_a_folder() {
    let dir = folder();
    std::fs::write(dir.path().join("e.png"), b"").unwrap(); // corrupt image: still an image entry
    std::fs::write(dir.path().join("e.txt"), "").unwrap(); // empty caption counts as missing
    let stats = TagStats::of_folder(&FolderScan::new(dir.path())).unwrap();
    assert_eq!(stats.images, 5);
    assert_eq!(stats.captioned, 3);
    assert_eq!(stats.missing.len(), 2);
    let smile = stats.get("smile").unwrap();
    assert_eq!((smile.files, smile.occurrences), (2, 2));
    let girl = stats.get("1girl").unwrap();
    assert_eq!((girl.files, girl.occurrences), (1, 2));
    assert!(
        stats.get("lonely").is_none(),
        "orphan captions are not counted"
    );
    assert_eq!(stats.tags[0].tag, "smile");
}

#[test]
fn missing_folder_is_an_error_naming_it() {
    let err =
        caption_folder(&CaptionJob::new(FolderScan::new("/no/such/dataset")), None).unwrap_err();
    assert!(err.to_string().contains("/no/such/dataset"), "{err}");
}
