//! One process per data directory: an exclusive advisory lock on `<dir>/flotilla.lock`,
//! held for the process's life. Two stores on one directory would both write the same
//! RocksDB and Raft state; the second must stop before it touches anything.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

use fs2::FileExt;

use crate::{Error, Result};

/// The lock file's name inside a data directory.
pub const FILE: &str = "flotilla.lock";

/// Held while the process uses the directory; released when dropped (or the process
/// dies, however it dies: the kernel drops flock locks with the last descriptor).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(FILE);
        let err = |why: String| Error::DataDir(format!("{}: {why}", path.display()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err(e.to_string()))?;
        if let Err(e) = file.try_lock_exclusive() {
            if e.raw_os_error() != fs2::lock_contended_error().raw_os_error() {
                return Err(err(format!("cannot lock: {e}")));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::DataDir(format!(
                "data directory {} is in use by another process (pid {}, holding {}); \
                 each server needs its own data directory",
                dir.display(),
                holder.trim(),
                path.display()
            )));
        }
        file.set_len(0).map_err(|e| err(e.to_string()))?;
        file.rewind().map_err(|e| err(e.to_string()))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| err(e.to_string()))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        DirLock::acquire(dir.path()).expect("free again");
    }
}
