//! [`Checkpoint`]: one interface over a single `.safetensors` file, a diffusers sharded
//! checkpoint (`*.safetensors.index.json` whose `weight_map` names the shard of every tensor) or
//! a folder holding either.
//!
//! Every shard is memory-mapped and validated on open; tensors are then read one at a time, so
//! a loader converting a 24 GB model never holds more than the tensor it is working on.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{IoError, Result};
use crate::safetensors::{Dtype, SafeTensorsFile};
use crate::tensor::HostTensor;

/// A single-file or sharded safetensors checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    source: PathBuf,
    shards: Vec<SafeTensorsFile>,
    /// Tensor name → index into `shards`.
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a folder containing exactly
    /// one index file, or else exactly one `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| IoError::io(path, "open checkpoint", e))?;
        if meta.is_dir() {
            return Self::open_dir(path);
        }
        if path.to_string_lossy().ends_with(".index.json") {
            return Self::open_index(path);
        }
        let file = SafeTensorsFile::open(path)?;
        let index = file.names().map(|n| (n.to_string(), 0)).collect();
        Ok(Self {
            source: path.into(),
            shards: vec![file],
            index,
        })
    }

    fn open_dir(dir: &Path) -> Result<Self> {
        let mut indexes = Vec::new();
        let mut singles = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| IoError::io(dir, "list folder", e))? {
            let entry = entry.map_err(|e| IoError::io(dir, "list folder", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if name.ends_with(".safetensors.index.json") {
                indexes.push(entry.path());
            } else if name.ends_with(".safetensors") {
                singles.push(entry.path());
            }
        }
        indexes.sort();
        singles.sort();
        match (indexes.as_slice(), singles.as_slice()) {
            ([one], _) => Self::open_index(one),
            ([], [one]) => Self::open(one),
            ([], []) => Err(IoError::ShardIndex {
                path: dir.into(),
                problem: "folder holds no .safetensors file or *.safetensors.index.json; point at \
                          the model's weights (for diffusers repos, the `transformer/` subfolder)"
                    .into(),
            }),
            (many, _) if many.len() > 1 => Err(IoError::ShardIndex {
                path: dir.into(),
                problem: format!(
                    "folder holds several index files ({}); pass the one to use",
                    list(many)
                ),
            }),
            (_, many) => Err(IoError::ShardIndex {
                path: dir.into(),
                problem: format!(
                    "folder holds several .safetensors files ({}) and no *.safetensors.index.json; \
                     pass one file",
                    list(many)
                ),
            }),
        }
    }

    fn open_index(index_path: &Path) -> Result<Self> {
        let bad = |problem: String| IoError::ShardIndex {
            path: index_path.into(),
            problem,
        };
        let text =
            fs::read_to_string(index_path).map_err(|e| IoError::io(index_path, "read index", e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("invalid JSON: {e}; re-download the index")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                bad("has no `weight_map` object; it is not a sharded-checkpoint index".into())
            })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        // Shards in file-name order (so `metadata()` comes from the `-00001-of-` shard).
        // shard file → a key in it
        let mut shard_example: BTreeMap<String, String> = BTreeMap::new();
        for (key, v) in map {
            let shard = v
                .as_str()
                .ok_or_else(|| bad(format!("weight_map entry `{key}` is not a file name")))?;
            let rel = Path::new(shard);
            if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(bad(format!(
                    "weight_map entry `{key}` names `{shard}`, which is not a plain relative file \
                     name"
                )));
            }
            shard_example
                .entry(shard.to_string())
                .or_insert_with(|| key.clone());
        }
        let shard_names: Vec<(String, String)> = shard_example.into_iter().collect();
        let mut index = BTreeMap::new();
        for (key, v) in map {
            let shard = v.as_str().unwrap_or_default();
            let id = shard_names
                .iter()
                .position(|(s, _)| s == shard)
                .expect("collected above");
            index.insert(key.clone(), id);
        }
        if index.is_empty() {
            return Err(bad("`weight_map` is empty".into()));
        }
        let mut shards = Vec::with_capacity(shard_names.len());
        for (shard, example_key) in &shard_names {
            let p = dir.join(shard);
            if !p.is_file() {
                return Err(IoError::MissingShard {
                    index: index_path.into(),
                    shard: shard.clone(),
                    example_key: example_key.clone(),
                    expected: p,
                });
            }
            shards.push(SafeTensorsFile::open(&p)?);
        }
        for (key, &id) in &index {
            if !shards[id].contains(key) {
                return Err(bad(format!(
                    "weight_map puts `{key}` in `{}`, but that shard has no such tensor; the index \
                     and shards come from different downloads",
                    shard_names[id].0
                )));
            }
        }
        Ok(Self {
            source: index_path.into(),
            shards,
            index,
        })
    }

    /// The path this checkpoint was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The opened shard files (one for a single-file checkpoint).
    pub fn shards(&self) -> &[SafeTensorsFile] {
        &self.shards
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a tensor named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn shard(&self, name: &str) -> Result<&SafeTensorsFile> {
        self.index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| IoError::TensorNotFound {
                path: self.source.clone(),
                key: name.into(),
                count: self.index.len(),
            })
    }

    /// Dtype and shape of tensor `name`.
    pub fn info(&self, name: &str) -> Result<(Dtype, &[usize])> {
        self.shard(name)?.info(name)
    }

    /// The tensor's bytes, borrowed from its shard's map.
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        self.shard(name)?.raw(name)
    }

    /// Decodes tensor `name` to `f32` (its mapped pages released, see
    /// [`SafeTensorsFile::release`]).
    pub fn read_f32(&self, name: &str) -> Result<HostTensor> {
        self.shard(name)?.read_f32(name)
    }

    /// Takes tensor `name`'s mapped pages out of the resident set ([`SafeTensorsFile::release`]);
    /// call it once the bytes from [`raw`](Self::raw) are copied.
    pub fn release(&self, name: &str) -> Result<()> {
        self.shard(name)?.release(name)
    }

    /// The `__metadata__` of the first shard (diffusers shards carry `format: pt` only).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        self.shards[0].metadata()
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(", ")
}
