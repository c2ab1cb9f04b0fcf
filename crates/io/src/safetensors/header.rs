//! Parsing and validating the safetensors header.
//!
//! Layout: `u64 LE n` · `n bytes of UTF-8 JSON` · data section. The JSON maps tensor names to
//! `{dtype, shape, data_offsets: [start, end)}` (offsets relative to the data section) plus an
//! optional `__metadata__` string→string map. A valid file has every tensor's bytes inside the
//! data section, sized exactly `numel × dtype size`, and the tensors tile the data section with
//! no overlap, gap or trailing bytes (the same rules the reference `safetensors` crate enforces,
//! reported here with the offending key).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::dtype::Dtype;
use crate::error::{IoError, Result};

/// Largest JSON header accepted (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The element type.
    pub dtype: Dtype,
    /// The shape, outermost dimension first (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    /// This is its first byte; [`end`](Self::end) is one past the last.
    pub start: usize,
    /// One past the tensor's last byte inside the data section.
    pub end: usize,
}

/// A validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Byte offset of the data section in the file (`8 + n`).
    pub data_start: usize,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
}

/// Reads the 8-byte length prefix and checks it against the file length.
/// Returns the JSON header length `n`.
pub fn header_len(path: &Path, prefix: &[u8], file_len: u64) -> Result<u64> {
    if file_len == 0 {
        return Err(IoError::EmptyFile { path: path.into() });
    }
    if file_len < 8 || prefix.len() < 8 {
        return Err(IoError::Truncated {
            path: path.into(),
            len: file_len,
        });
    }
    let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes checked above"));
    if n < 2 {
        return Err(IoError::HeaderTooSmall {
            path: path.into(),
            header_len: n,
        });
    }
    if n > MAX_HEADER_LEN {
        return Err(IoError::HeaderTooLarge {
            path: path.into(),
            header_len: n,
            limit: MAX_HEADER_LEN,
        });
    }
    if n > file_len - 8 {
        return Err(IoError::HeaderBeyondFile {
            path: path.into(),
            header_len: n,
            file_len,
        });
    }
    Ok(n)
}

/// Parses and validates the header of a whole file held in `bytes`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
    let n = header_len(path, bytes, bytes.len() as u64)? as usize;
    let json = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| IoError::HeaderNotUtf8 {
        path: path.into(),
        valid_up_to: e.valid_up_to(),
    })?;
    let data_len = (bytes.len() - 8 - n) as u64;
    let mut header = parse_json(path, json, data_len)?;
    header.data_start = 8 + n;
    Ok(header)
}

/// Parses the JSON text and validates it against a data section of `data_len` bytes.
pub fn parse_json(path: &Path, json: &str, data_len: u64) -> Result<Header> {
    let raw = parse_raw(path, json)?;
    let mut seen = HashSet::new();
    let mut metadata = BTreeMap::new();
    let mut entries: Vec<(String, TensorInfo)> = Vec::with_capacity(raw.entries.len());
    for (key, value) in raw.entries {
        if !seen.insert(key.clone()) {
            return Err(IoError::DuplicateKey {
                path: path.into(),
                key,
            });
        }
        match value {
            Entry::Metadata(m) => {
                metadata = m.map_err(|problem| IoError::BadMetadata {
                    path: path.into(),
                    problem,
                })?
            }
            Entry::Tensor(v) => {
                let info = tensor_info(path, &key, &v, data_len)?;
                entries.push((key, info));
            }
        }
    }
    check_tiling(path, &entries, data_len)?;
    Ok(Header {
        data_start: 0,
        tensors: entries.into_iter().collect(),
        metadata,
    })
}

fn tensor_info(path: &Path, key: &str, v: &Value, data_len: u64) -> Result<TensorInfo> {
    let invalid = |problem: String| IoError::InvalidEntry {
        path: path.into(),
        key: key.into(),
        problem,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(format!("entry is {} instead of an object", json_kind(v))))?;
    let dtype_s = obj
        .get("dtype")
        .ok_or_else(|| invalid("missing `dtype`".into()))?
        .as_str()
        .ok_or_else(|| invalid("`dtype` is not a string".into()))?;
    let dtype = Dtype::parse(dtype_s).ok_or_else(|| IoError::UnknownDtype {
        path: path.into(),
        key: key.into(),
        dtype: dtype_s.into(),
    })?;
    let shape_v = obj
        .get("shape")
        .ok_or_else(|| invalid("missing `shape`".into()))?
        .as_array()
        .ok_or_else(|| invalid("`shape` is not an array".into()))?;
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        let d = d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| invalid(format!("shape entry {d} is not a non-negative integer")))?;
        shape.push(d);
    }
    let offs = obj
        .get("data_offsets")
        .ok_or_else(|| invalid("missing `data_offsets`".into()))?
        .as_array()
        .ok_or_else(|| invalid("`data_offsets` is not an array".into()))?;
    let (start, end) = match offs.as_slice() {
        [a, b] => match (a.as_u64(), b.as_u64()) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(invalid(
                    "`data_offsets` are not non-negative integers".into(),
                ))
            }
        },
        _ => {
            return Err(invalid(format!(
                "`data_offsets` has {} entries instead of 2",
                offs.len()
            )))
        }
    };
    if start > end {
        return Err(invalid(format!(
            "data_offsets [{start}, {end}) end before they start"
        )));
    }
    if end > data_len {
        return Err(IoError::OffsetsOutOfRange {
            path: path.into(),
            key: key.into(),
            start,
            end,
            data_len,
        });
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| IoError::ShapeOverflow {
            path: path.into(),
            key: key.into(),
            shape: shape.clone(),
        })?;
    let expected =
        numel
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| IoError::ShapeOverflow {
                path: path.into(),
                key: key.into(),
                shape: shape.clone(),
            })?;
    if expected != end - start {
        return Err(IoError::SizeMismatch {
            path: path.into(),
            key: key.into(),
            dtype: dtype.as_str().into(),
            shape,
            expected,
            actual: end - start,
        });
    }
    Ok(TensorInfo {
        dtype,
        shape,
        start: start as usize,
        end: end as usize,
    })
}

/// Checks that the tensors tile `[0, data_len)` exactly.
fn check_tiling(path: &Path, entries: &[(String, TensorInfo)], data_len: u64) -> Result<()> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].1.start, entries[i].1.end));
    let mut cursor = 0usize;
    let mut last: Option<usize> = None;
    for &i in &order {
        let (name, info) = &entries[i];
        if info.start < cursor {
            let first = last.map(|j| entries[j].0.clone()).unwrap_or_default();
            return Err(IoError::OverlappingTensors {
                path: path.into(),
                first,
                second: name.clone(),
            });
        }
        if info.start > cursor {
            return Err(IoError::GapBetweenTensors {
                path: path.into(),
                next: name.clone(),
                gap_start: cursor as u64,
                gap_end: info.start as u64,
            });
        }
        cursor = info.end;
        last = Some(i);
    }
    if (cursor as u64) < data_len {
        return Err(IoError::TrailingBytes {
            path: path.into(),
            data_len,
            used: cursor as u64,
            extra: data_len - cursor as u64,
        });
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---- JSON parsing that keeps duplicate keys visible -------------------------------------------

enum Entry {
    Metadata(std::result::Result<BTreeMap<String, String>, String>),
    Tensor(Value),
}

struct RawHeader {
    entries: Vec<(String, Entry)>,
}

fn parse_raw(path: &Path, json: &str) -> Result<RawHeader> {
    let mut de = serde_json::Deserializer::from_str(json);
    let raw = de
        .deserialize_map(RawVisitor)
        .and_then(|r| de.end().map(|_| r))
        .map_err(|e| IoError::HeaderJson {
            path: path.into(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
    Ok(raw)
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "__metadata__" {
                let m: MetadataMap = map.next_value()?;
                entries.push((key, Entry::Metadata(m.0)));
            } else {
                let v: Value = map.next_value()?;
                entries.push((key, Entry::Tensor(v)));
            }
        }
        Ok(RawHeader { entries })
    }
}

/// `__metadata__` parsed leniently: type problems and duplicate keys become a message, not a JSON
/// error, so the caller can report [`IoError::BadMetadata`].
struct MetadataMap(std::result::Result<BTreeMap<String, String>, String>);

impl<'de> serde::Deserialize<'de> for MetadataMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(MetaVisitor)
    }
}

struct MetaVisitor;

fn not_object(kind: &str) -> MetadataMap {
    MetadataMap(Err(format!("is {kind} instead of an object")))
}

impl<'de> Visitor<'de> for MetaVisitor {
    type Value = MetadataMap;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map from strings to strings")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<MetadataMap, A::Error> {
        let mut out = BTreeMap::new();
        let mut problem = None;
        while let Some(k) = map.next_key::<String>()? {
            let v: Value = map.next_value()?;
            if problem.is_some() {
                continue;
            }
            match v {
                Value::String(s) => {
                    if out.insert(k.clone(), s).is_some() {
                        problem = Some(format!("has duplicate key `{k}`"));
                    }
                }
                other => {
                    problem = Some(format!(
                        "value of `{k}` is {} instead of a string",
                        json_kind(&other)
                    ))
                }
            }
        }
        Ok(MetadataMap(match problem {
            Some(p) => Err(p),
            None => Ok(out),
        }))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<MetadataMap, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(not_object("an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<MetadataMap, E> {
        Ok(not_object("a bool"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<MetadataMap, E> {
        Ok(not_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<MetadataMap, E> {
        Ok(not_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<MetadataMap, E> {
        Ok(not_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<MetadataMap, E> {
        Ok(not_object("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<MetadataMap, E> {
        Ok(not_object("null"))
    }
}
