//! Writing a safetensors file whose tensors are produced one at a time, so merging into a
//! 24 GB checkpoint holds one tensor in memory, not the model. The layout and header are
//! exactly [`crate::safetensors::write_safetensors`]'s (largest elements first then by name,
//! header in name order with `__metadata__` first, space-padded to 8 bytes), and the file is
//! written through [`crate::atomic_write`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::atomic::atomic_write;
use crate::error::{IoError, Result};
use crate::safetensors::Dtype;

/// One tensor of a streamed file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl StreamEntry {
    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes `entries` to `path`; `fill(i, out)` must write exactly entry `i`'s bytes
/// (little-endian). Entries are requested in file order, each once.
pub(crate) fn write_streamed<F>(
    path: &Path,
    entries: &[StreamEntry],
    metadata: &BTreeMap<String, String>,
    mut fill: F,
) -> Result<()>
where
    F: FnMut(usize, &mut dyn Write) -> std::io::Result<()>,
{
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(IoError::WriteInvalid {
            path: path.into(),
            key: w[0].into(),
            problem: "the name is given twice".into(),
        });
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        b.dtype
            .size()
            .cmp(&a.dtype.size())
            .then(a.name.cmp(&b.name))
    });
    let mut offsets = vec![(0usize, 0usize); entries.len()];
    let mut at = 0;
    for &i in &order {
        offsets[i] = (at, at + entries[i].byte_len());
        at += entries[i].byte_len();
    }
    let mut by_name: Vec<usize> = (0..entries.len()).collect();
    by_name.sort_by(|&a, &b| entries[a].name.cmp(&entries[b].name));
    let mut header = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":");
        header.push_str(&serde_json::to_string(metadata).expect("string map serialises"));
        first = false;
    }
    for i in by_name {
        let e = &entries[i];
        if !first {
            header.push(',');
        }
        first = false;
        header.push_str(&serde_json::to_string(&e.name).expect("string serialises"));
        header.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            e.dtype,
            serde_json::to_string(&e.shape).expect("usize list serialises"),
            offsets[i].0,
            offsets[i].1
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    atomic_write(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for &i in &order {
            let mut counter = Counting {
                inner: &mut *w,
                n: 0,
            };
            fill(i, &mut counter)?;
            if counter.n != entries[i].byte_len() {
                return Err(std::io::Error::other(format!(
                    "tensor `{}` produced {} bytes, expected {}",
                    entries[i].name,
                    counter.n,
                    entries[i].byte_len()
                )));
            }
        }
        Ok(())
    })
}

struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: usize,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::{serialize_safetensors, TensorRef};

    #[test]
    fn same_bytes_as_the_buffered_writer() {
        let a: Vec<u8> = (0..24).collect();
        let b: Vec<u8> = (100..106).collect();
        let c: Vec<u8> = vec![7; 16];
        let tensors = [
            ("b_bf16", TensorRef::raw(Dtype::BF16, &[3], &b)),
            ("a_f32", TensorRef::raw(Dtype::F32, &[2, 3], &a)),
            ("c_i64", TensorRef::raw(Dtype::I64, &[2], &c)),
        ];
        let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let want = serialize_safetensors(&tensors, &meta).unwrap();
        let entries = vec![
            StreamEntry {
                name: "b_bf16".into(),
                dtype: Dtype::BF16,
                shape: vec![3],
            },
            StreamEntry {
                name: "a_f32".into(),
                dtype: Dtype::F32,
                shape: vec![2, 3],
            },
            StreamEntry {
                name: "c_i64".into(),
                dtype: Dtype::I64,
                shape: vec![2],
            },
        ];
        let data = [&b, &a, &c];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        write_streamed(&p, &entries, &meta, |i, w| w.write_all(data[i])).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        // A producer writing the wrong length fails and leaves no file.
        let q = dir.path().join("bad.safetensors");
        assert!(write_streamed(&q, &entries, &meta, |_, w| w.write_all(&[0])).is_err());
        assert!(!q.exists());
    }
}
