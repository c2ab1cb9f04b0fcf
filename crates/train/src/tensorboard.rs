//! TensorBoard event files: the scalars of each CSV log row (`loss`, `lr`, `sigma_mean` and, on
//! steps that validate, `val_loss`) for `tensorboard --logdir <logging_dir>`.
//!
//! A file is a sequence of records — little-endian u64 length, masked CRC-32C of those 8 bytes,
//! the payload, masked CRC-32C of the payload — whose payloads are `Event` protos: first the
//! `file_version` "brain.Event:2", then one event per scalar (a `Summary` holding one
//! `simple_value`, as torch's `SummaryWriter.add_scalar` writes it). A resumed run opens a new
//! file in the same folder that starts with a `SessionLog` START at its first step; TensorBoard
//! then drops the points a stopped run logged after its checkpoint. The few proto fields needed
//! are encoded here by hand (proto3 rules: zero scalars are left out); the bytes equal those of
//! TensorBoard's own writer (`fixtures/train/tensorboard_events.tfevents`, made by the script
//! beside it).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::TrainError;
use crate::log::StepRecord;

/// The `file_version` TensorBoard expects in the first event of a file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Appends events to one TensorBoard event file.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it, named as TensorBoard's writers name theirs
    /// (`events.out.tfevents.<unix seconds>.fluxlora.<pid>.<n>`), starting with the file-version
    /// event.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let now = unix_seconds();
        for n in 0u32.. {
            let path = dir.join(format!(
                "events.out.tfevents.{:010}.fluxlora.{}.{n}",
                now as u64,
                std::process::id()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut w = Self {
                        path,
                        file: BufWriter::new(file),
                    };
                    w.file_version(now)?;
                    w.flush()?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        }
        unreachable!("u32 file counter exhausted")
    }

    /// Starts an empty event file at `path` (replacing one there) without the file-version
    /// event: for writing a given sequence of events.
    pub fn create_file(path: &Path) -> Result<Self, TrainError> {
        let file = File::create(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file-version event (the first of every file).
    pub fn file_version(&mut self, wall_time: f64) -> Result<(), TrainError> {
        self.write_event(wall_time, 0, Body::FileVersion(FILE_VERSION))
    }

    /// One scalar point of the series `tag`.
    pub fn scalar(
        &mut self,
        tag: &str,
        value: f32,
        step: u64,
        wall_time: f64,
    ) -> Result<(), TrainError> {
        self.write_event(wall_time, step, Body::Scalar { tag, value })
    }

    /// A `SessionLog` START at `step`: TensorBoard forgets the points at `step` and later that
    /// earlier files of the folder hold (what a resumed run recomputes).
    pub fn session_start(&mut self, step: u64, wall_time: f64) -> Result<(), TrainError> {
        self.write_event(wall_time, step, Body::SessionStart)
    }

    /// The scalars of one step's log row, flushed so that TensorBoard sees them at once.
    pub fn step_record(&mut self, rec: &StepRecord) -> Result<(), TrainError> {
        let now = unix_seconds();
        self.scalar("loss", rec.loss, rec.step, now)?;
        self.scalar("lr", rec.lr as f32, rec.step, now)?;
        self.scalar("sigma_mean", rec.sigma_mean, rec.step, now)?;
        if let Some(v) = rec.val_loss {
            self.scalar("val_loss", v, rec.step, now)?;
        }
        self.flush()
    }

    /// Flushes buffered events to the file.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    fn write_event(&mut self, wall_time: f64, step: u64, body: Body<'_>) -> Result<(), TrainError> {
        let rec = record(&event(wall_time, step, body));
        self.file
            .write_all(&rec)
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Seconds since the Unix epoch (TensorBoard's `wall_time`; 0 if the clock is before 1970).
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What an event carries besides its time and step.
enum Body<'a> {
    FileVersion(&'a str),
    Scalar { tag: &'a str, value: f32 },
    SessionStart,
}

// Proto wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn len_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    field_key(out, field, LEN);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// An `Event` proto: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
/// summary = 5 (`Summary { value = 1: Value { tag = 1, simple_value = 2 (float) } }`),
/// session_log = 7 (`SessionLog { status = 1 }`, START = 1).
fn event(wall_time: f64, step: u64, body: Body<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    if wall_time.to_bits() != 0 {
        field_key(&mut e, 1, FIXED64);
        e.extend_from_slice(&wall_time.to_le_bytes());
    }
    if step != 0 {
        field_key(&mut e, 2, VARINT);
        varint(&mut e, step);
    }
    match body {
        Body::FileVersion(v) => len_field(&mut e, 3, v.as_bytes()),
        Body::Scalar { tag, value } => {
            let mut v = Vec::new();
            len_field(&mut v, 1, tag.as_bytes());
            // In the `value` oneof: written even when 0.
            field_key(&mut v, 2, FIXED32);
            v.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            len_field(&mut summary, 1, &v);
            len_field(&mut e, 5, &summary);
        }
        Body::SessionStart => {
            let mut log = Vec::new();
            field_key(&mut log, 1, VARINT);
            varint(&mut log, 1);
            len_field(&mut e, 7, &log);
        }
    }
    e
}

/// One TFRecord: length, masked CRC of the length, payload, masked CRC of the payload.
fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            // Castagnoli polynomial 0x1EDC6F41, bit-reflected.
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC32C[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The masked CRC-32C TFRecord files store: rotated right by 15 bits plus 0xa282ead8.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // The CRC catalogue's check value for CRC-32C, and RFC 3720 (iSCSI) B.4's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn varints_use_seven_bits_a_byte() {
        let enc = |v| {
            let mut out = Vec::new();
            varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }
}
