//! Crash-safe file replacement: write a temporary file in the target's directory, flush and
//! fsync it, rename it over the target, then fsync the directory. A reader (or a crash at any
//! point) sees either the old file or the complete new one, never a torn write.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoError, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces `path` with whatever `write` produces.
///
/// `write` gets a buffered writer over a temporary file next to `path`; if it (or any later step)
/// fails, the temporary file is removed and `path` is untouched.
pub fn atomic_write<F>(path: impl AsRef<Path>, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let path = path.as_ref();
    let dir = parent_dir(path);
    let file_name = path.file_name().ok_or_else(|| {
        IoError::io(
            path,
            "choose a file name",
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_tmp(&tmp, write).and_then(|()| {
        fs::rename(&tmp, path)
            .map_err(|e| IoError::io(path, "rename temporary file onto target", e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

fn write_tmp<F>(tmp: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| {
            IoError::io(
                tmp,
                "create temporary file (does the directory exist and is it writable?)",
                e,
            )
        })?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w).map_err(|e| IoError::io(tmp, "write", e))?;
    let file = w
        .into_inner()
        .map_err(|e| IoError::io(tmp, "flush", e.into_error()))?;
    file.sync_all().map_err(|e| IoError::io(tmp, "fsync", e))?;
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Flushes a folder's entries (new names, renames) to disk; a no-op where folders cannot be
/// opened for syncing (non-Unix).
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| IoError::io(dir, "open directory for fsync", e))?;
    d.sync_all()
        .map_err(|e| IoError::io(dir, "fsync directory", e))
}

/// Flushes a folder's entries to disk (a no-op on this platform).
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_and_cleans_up_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        atomic_write(&p, |w| w.write_all(b"first")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let err = atomic_write(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        // Old content intact, no temporary files left behind.
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let missing = dir.path().join("no_such_dir").join("x.bin");
        let err = atomic_write(&missing, |w| w.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("no_such_dir"), "{err}");
    }
}
