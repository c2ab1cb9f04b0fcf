//! TensorBoard event files: byte-for-byte equal to TensorBoard's own writer on the same events
//! (fixture made by `fixtures/train/make_tensorboard_events.py`), and a run with `logging_dir`
//! logs the CSV's numbers, with a restart marker after `--resume`.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use fluxlora_train::{EventWriter, TrainConfig, Trainer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/train")
        .join(name)
}

#[test]
fn event_file_bytes_equal_tensorboards_writer() {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tensorboard_events.json")).unwrap())
            .unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("events.out.tfevents.test");
    let mut w = EventWriter::create_file(&path).unwrap();
    for e in spec["events"].as_array().unwrap() {
        let (t, step) = (
            e["wall_time"].as_f64().unwrap(),
            e["step"].as_u64().unwrap(),
        );
        match e["kind"].as_str().unwrap() {
            "file_version" => {
                assert_eq!(e["file_version"], fluxlora_train::tensorboard::FILE_VERSION);
                w.file_version(t).unwrap()
            }
            "scalar" => w
                .scalar(
                    e["tag"].as_str().unwrap(),
                    e["value"].as_f64().unwrap() as f32,
                    step,
                    t,
                )
                .unwrap(),
            "session_start" => w.session_start(step, t).unwrap(),
            other => panic!("unknown event kind {other}"),
        }
    }
    w.flush().unwrap();
    drop(w);
    let ours = std::fs::read(&path).unwrap();
    let theirs = std::fs::read(fixture("tensorboard_events.tfevents")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert!(ours == theirs, "event bytes differ from TensorBoard's");
}

/// What a test needs of one event: step, and a scalar (tag, value), the file version or a
/// session-log status.
#[derive(Debug, PartialEq)]
enum Ev {
    Version(String),
    Scalar(u64, String, f32),
    Session(u64, u64),
}

fn read_varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    v
}

/// The fields of a proto message: (field number, wire type, varint value or payload bytes).
fn fields(b: &[u8]) -> Vec<(u64, u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i);
        let (field, wire) = (key >> 3, key & 7);
        let (num, bytes) = match wire {
            0 => (read_varint(b, &mut i), Vec::new()),
            1 => (0, b[i..i + 8].to_vec()),
            2 => {
                let n = read_varint(b, &mut i) as usize;
                (0, b[i..i + n].to_vec())
            }
            5 => (0, b[i..i + 4].to_vec()),
            w => panic!("wire type {w}"),
        };
        i += match wire {
            1 => 8,
            2 => bytes.len(),
            5 => 4,
            _ => 0,
        };
        out.push((field, wire, num, bytes));
    }
    out
}

/// Every event of a file, each record's framing and CRCs checked.
fn read_events(path: &Path) -> Vec<Ev> {
    use fluxlora_train::tensorboard::masked_crc32c;
    let data = std::fs::read(path).unwrap();
    let (mut i, mut out) = (0, Vec::new());
    while i < data.len() {
        let len_bytes = &data[i..i + 8];
        let n = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(
            u32::from_le_bytes(data[i + 8..i + 12].try_into().unwrap()),
            masked_crc32c(len_bytes)
        );
        let payload = &data[i + 12..i + 12 + n];
        assert_eq!(
            u32::from_le_bytes(data[i + 12 + n..i + 16 + n].try_into().unwrap()),
            masked_crc32c(payload)
        );
        i += 16 + n;
        let f = fields(payload);
        let step = f.iter().find(|x| x.0 == 2).map_or(0, |x| x.2);
        for (field, _, _, bytes) in &f {
            match field {
                3 => out.push(Ev::Version(String::from_utf8(bytes.clone()).unwrap())),
                5 => {
                    let value = &fields(bytes)[0].3;
                    let v = fields(value);
                    let tag = String::from_utf8(v[0].3.clone()).unwrap();
                    out.push(Ev::Scalar(
                        step,
                        tag,
                        f32::from_le_bytes(v[1].3.clone().try_into().unwrap()),
                    ));
                }
                7 => out.push(Ev::Session(step, fields(bytes)[0].2)),
                _ => {}
            }
        }
    }
    out
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(
        v.iter().all(|p| p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")),
        "{v:?}"
    );
    v
}

#[test]
fn a_run_logs_its_csv_numbers_and_a_resume_marks_the_restart() {
    let _g = backend_rng_lock();
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs");
    let cfg = |steps| TrainConfig {
        logging_dir: Some(logs.clone()),
        save_every_n_steps: Some(2),
        ..tiny_train_config(d.path(), steps)
    };
    let mut t = Trainer::new(cfg(2), tiny_flux(4), Default::default())
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(4);
    let first = t.run(&mut src).unwrap();
    let files = event_files(&logs.join("tiny"));
    assert_eq!(files, vec![first.events.clone().unwrap()]);

    let csv = std::fs::read_to_string(&first.csv).unwrap();
    let mut want = vec![Ev::Version("brain.Event:2".into())];
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let step: u64 = f[0].parse().unwrap();
        for (tag, col) in [("loss", 1), ("lr", 2), ("sigma_mean", 3)] {
            want.push(Ev::Scalar(
                step,
                tag.into(),
                f[col].parse::<f64>().unwrap() as f32,
            ));
        }
    }
    assert_eq!(want.len(), 1 + 2 * 3);
    assert_eq!(read_events(&files[0]), want);

    // Resumed from step 2 to 3: a second file that starts with a restart at step 3.
    let mut resumed = Trainer::new(cfg(3), tiny_flux(4), Default::default())
        .unwrap()
        .with_progress(false);
    let mut src2 = RandomBatches::new(4);
    resumed
        .resume(first.checkpoint.as_ref().unwrap(), &mut src2)
        .unwrap();
    let second = resumed.run(&mut src2).unwrap();
    let files = event_files(&logs.join("tiny"));
    assert_eq!(files.len(), 2);
    let new = second.events.unwrap();
    assert!(
        files.contains(&new) && Some(&new) != first.events.as_ref(),
        "a new file beside the first: {files:?}"
    );
    let ev = read_events(&new);
    assert_eq!(ev[0], Ev::Version("brain.Event:2".into()));
    assert_eq!(
        ev[1],
        Ev::Session(3, 1),
        "SessionLog START at the first resumed step"
    );
    let steps: Vec<u64> = ev[2..]
        .iter()
        .map(|e| match e {
            Ev::Scalar(s, ..) => *s,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(steps, vec![3, 3, 3]);
}
