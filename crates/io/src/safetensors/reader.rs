//! [`SafeTensorsFile`]: a memory-mapped, fully validated safetensors file.
//!
//! Opening maps the file and validates the whole header (see [`super::header`]); tensor bytes
//! are then borrowed straight from the map ([`SafeTensorsFile::raw`]) or decoded one tensor at a
//! time into an `f32` [`HostTensor`] ([`SafeTensorsFile::read_f32`]). Nothing is copied until a
//! tensor is asked for, so a 24 GB checkpoint costs address space, not memory.
//!
//! The map assumes the file is not modified while open (as every mmap reader does): replace
//! checkpoints by writing a new file and renaming it, which [`crate::atomic_write`] does.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dtype::{decode_to_f32, Dtype};
use super::header::{self, Header, TensorInfo};
use crate::error::{IoError, Result};
use crate::tensor::HostTensor;

/// A validated, memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafeTensorsFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl SafeTensorsFile {
    /// Maps `path` and validates its header and offsets.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| IoError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| IoError::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Err(IoError::EmptyFile { path: path.into() });
        }
        if len < 8 {
            return Err(IoError::Truncated {
                path: path.into(),
                len,
            });
        }
        // SAFETY: the map is read-only; the file must not be truncated while mapped (documented
        // above). All offsets are validated against the mapped length before use.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IoError::io(path, "mmap", e))?;
        let header = header::parse(path, &map)?;
        Ok(Self {
            path: path.into(),
            map,
            header,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.header.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.header.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.header.tensors.is_empty()
    }

    /// Whether a tensor named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.header.tensors.contains_key(name)
    }

    fn entry(&self, name: &str) -> Result<&TensorInfo> {
        self.header
            .tensors
            .get(name)
            .ok_or_else(|| IoError::TensorNotFound {
                path: self.path.clone(),
                key: name.into(),
                count: self.header.tensors.len(),
            })
    }

    /// Dtype and shape of tensor `name`.
    pub fn info(&self, name: &str) -> Result<(Dtype, &[usize])> {
        let e = self.entry(name)?;
        Ok((e.dtype, e.shape.as_slice()))
    }

    /// The tensor's bytes, borrowed from the map (little-endian, as stored).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let e = self.entry(name)?;
        let base = self.header.data_start;
        Ok(&self.map[base + e.start..base + e.end])
    }

    /// Decodes tensor `name` to `f32` (floats upcast exactly; integers and bools by value), then
    /// [`release`](Self::release)s its bytes: the copy is what the caller keeps.
    pub fn read_f32(&self, name: &str) -> Result<HostTensor> {
        let e = self.entry(name)?;
        let bytes = self.raw(name)?;
        let mut data = Vec::new();
        decode_to_f32(e.dtype, bytes, &mut data);
        self.release(name)?;
        Ok(HostTensor {
            shape: e.shape.clone(),
            data,
        })
    }

    /// Takes tensor `name`'s pages out of this process's resident set (`madvise(MADV_DONTNEED)`
    /// on its byte range; a no-op off Unix). The bytes stay readable: a later read maps them
    /// again from the page cache or the file. Loading a checkpoint tensor by tensor with this
    /// keeps its mapped pages from adding up to the file's size in the peak RSS.
    pub fn release(&self, name: &str) -> Result<()> {
        let e = self.entry(name)?;
        let (start, len) = (self.header.data_start + e.start, e.end - e.start);
        #[cfg(unix)]
        if len > 0 {
            // SAFETY: the map is a read-only mapping of a file that is not modified while open
            // (see the module docs), so dropping its pages loses nothing: the next access faults
            // them in again with the same bytes. No `&mut` to the map exists.
            unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            }
            .map_err(|e| IoError::io(&self.path, "madvise", e))?;
        }
        #[cfg(not(unix))]
        let _ = (start, len);
        Ok(())
    }

    /// Reads a scalar (shape `[]` or `[1]`) as `f32`.
    pub fn read_scalar(&self, name: &str) -> Result<f32> {
        let t = self.read_f32(name)?;
        if t.data.len() != 1 {
            let (dtype, shape) = self.info(name)?;
            return Err(IoError::UnsupportedDtype {
                path: self.path.clone(),
                key: format!("{name} (shape {shape:?})"),
                dtype: dtype.as_str().into(),
                wanted: "a scalar",
            });
        }
        Ok(t.data[0])
    }

    /// Checks that every float tensor is finite; the first NaN or ±inf is an
    /// [`IoError::NonFinite`] naming the file and the tensor. Integer tensors (quantized states)
    /// are skipped: every value they hold is finite.
    pub fn check_finite(&self) -> Result<()> {
        let mut data = Vec::new();
        for (name, e) in &self.header.tensors {
            if !e.dtype.is_float() {
                continue;
            }
            data.clear();
            decode_to_f32(e.dtype, self.raw(name)?, &mut data);
            if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(IoError::NonFinite {
                    path: self.path.clone(),
                    key: name.clone(),
                    value,
                    index,
                    count: data.len(),
                });
            }
        }
        Ok(())
    }

    /// The `__metadata__` map (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.header.metadata
    }

    /// Size of the data section in bytes.
    pub fn data_len(&self) -> usize {
        self.map.len() - self.header.data_start
    }
}
