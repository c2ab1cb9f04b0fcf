//! Writing safetensors files: deterministic, aligned and atomic.
//!
//! Tensors are laid out by descending element size, then by name, so every tensor starts at an
//! offset aligned to its element size; the JSON header lists `__metadata__` first and then the
//! tensors in name order, and is padded with spaces to a multiple of 8 bytes. The same inputs
//! always give the same bytes. Files go through [`crate::atomic_write`].

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use super::dtype::{encode_from_f32, Dtype};
use crate::atomic::atomic_write;
use crate::error::{IoError, Result};
use crate::tensor::{numel_of, HostTensor};

/// One tensor to write: f32 data (optionally narrowed to F16/BF16) or raw bytes of any dtype.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    source: Source<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    F32(&'a [f32]),
    Bytes(&'a [u8]),
}

impl<'a> TensorRef<'a> {
    /// Writes `t` as F32.
    pub fn f32(t: &'a HostTensor) -> Self {
        Self {
            dtype: Dtype::F32,
            shape: &t.shape,
            source: Source::F32(&t.data),
        }
    }

    /// Writes `t` converted to `dtype` (F32, F16 or BF16; round-to-nearest-even).
    pub fn cast(t: &'a HostTensor, dtype: Dtype) -> Self {
        Self {
            dtype,
            shape: &t.shape,
            source: Source::F32(&t.data),
        }
    }

    /// Writes little-endian `bytes` as they are, declared as `dtype` with `shape`.
    pub fn raw(dtype: Dtype, shape: &'a [usize], bytes: &'a [u8]) -> Self {
        Self {
            dtype,
            shape,
            source: Source::Bytes(bytes),
        }
    }

    /// The dtype this tensor will have in the file.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn byte_len(&self) -> usize {
        numel_of(self.shape) * self.dtype.size()
    }
}

impl<'a> From<&'a HostTensor> for TensorRef<'a> {
    fn from(t: &'a HostTensor) -> Self {
        TensorRef::f32(t)
    }
}

struct Planned<'a> {
    name: &'a str,
    t: TensorRef<'a>,
    start: usize,
    end: usize,
}

fn plan<'a, N: AsRef<str>>(
    path: &Path,
    tensors: &'a [(N, TensorRef<'a>)],
) -> Result<Vec<Planned<'a>>> {
    let mut seen = HashSet::new();
    let mut items: Vec<(&str, TensorRef)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let name = name.as_ref();
        let bad = |problem: String| IoError::WriteInvalid {
            path: path.into(),
            key: name.into(),
            problem,
        };
        if name == "__metadata__" {
            return Err(bad("`__metadata__` is reserved for the metadata map".into()));
        }
        if !seen.insert(name) {
            return Err(bad("the name is given twice".into()));
        }
        let numel = numel_of(t.shape);
        match t.source {
            Source::F32(d) => {
                if d.len() != numel {
                    return Err(bad(format!(
                        "shape {:?} holds {numel} values but {} were given",
                        t.shape,
                        d.len()
                    )));
                }
                if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                    return Err(bad(format!(
                        "f32 data can be written as F32, F16 or BF16, not {}",
                        t.dtype
                    )));
                }
            }
            Source::Bytes(b) => {
                if b.len() != t.byte_len() {
                    return Err(bad(format!(
                        "{} {:?} needs {} bytes but {} were given",
                        t.dtype,
                        t.shape,
                        t.byte_len(),
                        b.len()
                    )));
                }
            }
        }
        items.push((name, *t));
    }
    // Layout: larger elements first (keeps every tensor aligned), then by name.
    items.sort_by(|a, b| b.1.dtype.size().cmp(&a.1.dtype.size()).then(a.0.cmp(b.0)));
    let mut offset = 0;
    let mut planned = Vec::with_capacity(items.len());
    for (name, t) in items {
        let end = offset + t.byte_len();
        planned.push(Planned {
            name,
            t,
            start: offset,
            end,
        });
        offset = end;
    }
    Ok(planned)
}

fn header_json(planned: &[Planned], metadata: &BTreeMap<String, String>) -> String {
    let mut by_name: Vec<&Planned> = planned.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(b.name));
    let mut s = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        s.push_str("\"__metadata__\":");
        s.push_str(&serde_json::to_string(metadata).expect("string map serialises"));
        first = false;
    }
    for p in by_name {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&serde_json::to_string(p.name).expect("string serialises"));
        s.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            p.t.dtype,
            serde_json::to_string(p.t.shape).expect("usize list serialises"),
            p.start,
            p.end
        ));
    }
    s.push('}');
    while s.len() % 8 != 0 {
        s.push(' ');
    }
    s
}

fn write_all(w: &mut dyn Write, header: &str, planned: &[Planned]) -> std::io::Result<()> {
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut buf = Vec::new();
    for p in planned {
        match p.t.source {
            Source::Bytes(b) => w.write_all(b)?,
            Source::F32(d) => {
                for chunk in d.chunks(1 << 16) {
                    buf.clear();
                    encode_from_f32(p.t.dtype, chunk, &mut buf).expect("dtype checked in plan");
                    w.write_all(&buf)?;
                }
            }
        }
    }
    Ok(())
}

/// Atomically writes `tensors` and `metadata` to `path` as a safetensors file.
pub fn write_safetensors<N: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(N, TensorRef<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let planned = plan(path, tensors)?;
    let header = header_json(&planned, metadata);
    atomic_write(path, |w| write_all(w, &header, &planned))
}

/// The bytes [`write_safetensors`] would write (for in-memory use and tests).
pub fn serialize_safetensors<N: AsRef<str>>(
    tensors: &[(N, TensorRef<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let planned = plan(Path::new("<memory>"), tensors)?;
    let header = header_json(&planned, metadata);
    let mut out = Vec::new();
    write_all(&mut out, &header, &planned).map_err(|e| IoError::io("<memory>", "serialize", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_and_layout_aligned() {
        let a = HostTensor::new(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        let b = HostTensor::new(vec![1], vec![0.5]).unwrap();
        let tensors = [
            ("b_f16", TensorRef::cast(&b, Dtype::F16)),
            ("a", TensorRef::f32(&a)),
        ];
        let bytes = serialize_safetensors(&tensors, &BTreeMap::new()).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let json = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(
            json.contains("\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}"),
            "{json}"
        );
        assert!(
            json.contains("\"b_f16\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[12,14]}"),
            "{json}"
        );
        assert_eq!(bytes.len(), 8 + n + 14);
        // 0.5 in f16 is 0x3800.
        assert_eq!(&bytes[8 + n + 12..], &[0x00, 0x38]);
    }

    #[test]
    fn rejects_bad_inputs() {
        let mut t = HostTensor::zeros(vec![2]);
        t.data.push(1.0);
        let err =
            serialize_safetensors(&[("x", TensorRef::f32(&t))], &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, IoError::WriteInvalid { .. }), "{err}");
        let ok = HostTensor::zeros(vec![2]);
        let dup = [("x", TensorRef::f32(&ok)), ("x", TensorRef::f32(&ok))];
        assert!(serialize_safetensors(&dup, &BTreeMap::new()).is_err());
        let bad_cast = [("x", TensorRef::cast(&ok, Dtype::I32))];
        assert!(serialize_safetensors(&bad_cast, &BTreeMap::new()).is_err());
    }
}
