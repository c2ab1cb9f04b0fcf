//! On-disk caches of encoder outputs, one safetensors file per entry.
//!
//! An entry's file name is a SHA-256 over a version tag, the encoder's identity and every input
//! that changes the result (file content hash, bucket, crop, flip, mask use — or the caption
//! text). The same digest is stored in the file's metadata and checked on load, so a renamed or
//! damaged file is never trusted: an entry is reused only if it opens as valid safetensors, has
//! the expected tensors and carries its own key. Files are written atomically (temporary file,
//! fsync, rename), so an interrupted build leaves complete entries and at most stray temporary
//! files, which the next build deletes; then it builds exactly the entries still missing.

pub mod latent;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fluxlora_io::{HostTensor, SafeTensorsFile};
use serde::{Deserialize, Serialize};

use crate::decode::sha256_hex;
use crate::error::{DataError, Result};

/// Metadata key holding an entry's own digest.
pub const KEY_METADATA: &str = "fluxlora_cache_key";

/// What a cache build did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildStats {
    /// Entries encoded and written in this build.
    pub built: usize,
    /// Valid entries found on disk and kept.
    pub reused: usize,
    /// Entries whose input could not be prepared (path or caption, reason); nothing written.
    pub failed: Vec<(String, String)>,
    /// Stray temporary files from an interrupted build that were removed.
    pub removed_temporaries: usize,
    /// Wall-clock time of the build.
    pub elapsed: Duration,
}

impl BuildStats {
    /// Entries built per second.
    pub fn built_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.built as f64 / s
        } else {
            0.0
        }
    }
}

/// Options for a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Whether to show a progress bar (hidden by default).
    pub progress: crate::progress::Progress,
    /// Inputs prepared in parallel per round (defaults to twice the rayon threads).
    pub chunk: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            progress: crate::progress::Progress::hidden(),
            chunk: 2 * rayon::current_num_threads().max(1),
        }
    }
}

/// A cache folder.
#[derive(Debug, Clone)]
pub(crate) struct CacheDir {
    pub dir: PathBuf,
}

impl CacheDir {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DataError::io(dir, "creating the cache folder", e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.safetensors"))
    }

    /// Opens an entry if it exists and is valid: parses, carries `digest`, has `tensors`.
    pub fn load(&self, digest: &str, tensors: &[&str]) -> Option<BTreeMap<String, HostTensor>> {
        let path = self.path_for(digest);
        if !path.is_file() {
            return None;
        }
        let file = SafeTensorsFile::open(&path).ok()?;
        if file.metadata().get(KEY_METADATA).map(String::as_str) != Some(digest) {
            return None;
        }
        let mut out = BTreeMap::new();
        for name in tensors {
            out.insert(name.to_string(), file.read_f32(name).ok()?);
        }
        for name in file.names() {
            if !out.contains_key(name) {
                out.insert(name.to_string(), file.read_f32(name).ok()?);
            }
        }
        Some(out)
    }

    /// Writes an entry atomically.
    pub fn store(
        &self,
        digest: &str,
        tensors: &[(&str, &HostTensor)],
        mut metadata: BTreeMap<String, String>,
    ) -> Result<()> {
        metadata.insert(KEY_METADATA.into(), digest.into());
        let refs: Vec<(&str, fluxlora_io::TensorRef<'_>)> = tensors
            .iter()
            .map(|(n, t)| (*n, fluxlora_io::TensorRef::f32(t)))
            .collect();
        fluxlora_io::write_safetensors(self.path_for(digest), &refs, &metadata)?;
        Ok(())
    }

    /// Deletes temporary files left by an interrupted atomic write.
    /// Starts a build: checks the cache was opened for the `given` encoder identity, and clears
    /// temporaries an interrupted build left (counted in the returned stats).
    pub fn begin_build(&self, opened: &str, given: &str) -> Result<BuildStats> {
        if given != opened {
            return Err(DataError::Cache {
                path: self.dir.clone(),
                message: format!(
                    "opened for encoder `{opened}` but given `{given}`; open the cache with the \
                     encoder's identity"
                ),
            });
        }
        Ok(BuildStats {
            removed_temporaries: self.remove_temporaries(),
            ..Default::default()
        })
    }

    pub fn remove_temporaries(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                && name.contains(".safetensors.tmp-")
                && std::fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Deletes `*.safetensors` entries whose digest is not in `keep`; returns how many.
    pub fn prune(&self, keep: &BTreeSet<String>) -> Result<usize> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| DataError::io(&self.dir, "listing the cache folder", e))?;
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(digest) = name.strip_suffix(".safetensors") {
                if !keep.contains(digest) {
                    std::fs::remove_file(e.path()).map_err(|err| {
                        DataError::io(e.path(), "removing a stale cache entry", err)
                    })?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Digest of a list of labelled fields (length-prefixed, so fields cannot run together).
pub(crate) fn digest(fields: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (k, v) in fields {
        s.push_str(&format!("{}:{k}={}:{v};", k.len(), v.len()));
    }
    sha256_hex(s.as_bytes())
}
