//! What each file held at its last fsync, kept only for the parts changed since: the
//! length it had then and the old bytes of any synced range that was overwritten or cut
//! off. Dropping un-fsynced data is then: cut the file back to that length and put the
//! old bytes back. Appends (all a write-ahead log does) cost nothing to track.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

#[derive(Debug)]
struct Undo {
    synced_len: u64,
    /// Old contents of synced ranges, oldest first; restored newest first so that the
    /// oldest (the synced) version of a byte wins.
    saved: Vec<(u64, Vec<u8>)>,
}

/// Un-fsynced changes of every file, by the backing file's inode number (stable across
/// renames).
#[derive(Debug, Default)]
pub struct UndoLog {
    files: HashMap<u64, Undo>,
}

/// What a power loss dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Files that lost changes.
    pub files: usize,
    /// Bytes appended since the last fsync and cut off.
    pub appended_bytes: u64,
    /// Bytes of synced ranges written over or truncated since, put back.
    pub restored_bytes: u64,
}

impl UndoLog {
    /// Call before writing `len` bytes at `offset` of `file` (backing inode `ino`).
    pub fn before_write(&mut self, ino: u64, file: &File, offset: u64, len: u64) -> io::Result<()> {
        self.save(ino, file, offset, offset.saturating_add(len))
    }

    /// Call before cutting `file` to `new_len`.
    pub fn before_truncate(&mut self, ino: u64, file: &File, new_len: u64) -> io::Result<()> {
        self.save(ino, file, new_len, u64::MAX)
    }

    /// A new file: none of it is durable until its first fsync.
    pub fn created(&mut self, ino: u64) {
        self.files.insert(
            ino,
            Undo {
                synced_len: 0,
                saved: vec![],
            },
        );
    }

    /// Everything the file holds now is durable.
    pub fn synced(&mut self, ino: u64) {
        self.files.remove(&ino);
    }

    /// The file is gone: there is nothing left to put back.
    pub fn removed(&mut self, ino: u64) {
        self.files.remove(&ino);
    }

    /// Bytes that a power loss now would drop.
    pub fn unsynced_bytes(&self, len_of: impl Fn(u64) -> Option<u64>) -> u64 {
        self.files
            .iter()
            .map(|(ino, u)| {
                let appended = len_of(*ino).map_or(0, |l| l.saturating_sub(u.synced_len));
                appended + u.saved.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            })
            .sum()
    }

    /// Puts every file back to what it held at its last fsync. `path_of` finds a backing
    /// inode's current path; a file no longer there is skipped.
    pub fn drop_unsynced(
        &mut self,
        path_of: impl Fn(u64) -> Option<PathBuf>,
    ) -> io::Result<Dropped> {
        let mut dropped = Dropped::default();
        for (ino, undo) in self.files.drain() {
            let Some(path) = path_of(ino) else { continue };
            let Some(file) = open_if_same(&path, ino)? else {
                continue;
            };
            let len = file.metadata()?.len();
            dropped.files += 1;
            dropped.appended_bytes += len.saturating_sub(undo.synced_len);
            file.set_len(undo.synced_len)?;
            for (offset, bytes) in undo.saved.iter().rev() {
                file.write_all_at(bytes, *offset)?;
                dropped.restored_bytes += bytes.len() as u64;
            }
            file.sync_all()?;
        }
        Ok(dropped)
    }

    /// Saves the synced bytes in `[from, to)` of `file` that are about to change.
    fn save(&mut self, ino: u64, file: &File, from: u64, to: u64) -> io::Result<()> {
        let undo = match self.files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            // The first change since the last fsync: everything the file holds now is
            // durable (it was synced, or was there when the filesystem was mounted).
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Undo {
                synced_len: file.metadata()?.len(),
                saved: vec![],
            }),
        };
        let end = to.min(undo.synced_len);
        if from < end {
            let mut old = vec![0; (end - from) as usize];
            file.read_exact_at(&mut old, from)?;
            undo.saved.push((from, old));
        }
        Ok(())
    }
}

/// Opens `path` for writing if it is still the file with backing inode `ino`.
fn open_if_same(path: &Path, ino: u64) -> io::Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) if f.metadata()?.ino() == ino => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn appends_overwrites_and_truncations_since_the_last_fsync_are_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"durable-").unwrap();
        let f = open(&path);
        let ino = f.metadata().unwrap().ino();
        let mut log = UndoLog::default();

        log.before_write(ino, &f, 8, 5).unwrap();
        f.write_all_at(b"later", 8).unwrap();
        log.synced(ino);
        // Since the fsync: overwrite synced bytes, append, then cut into synced bytes.
        log.before_write(ino, &f, 0, 3).unwrap();
        f.write_all_at(b"XXX", 0).unwrap();
        log.before_write(ino, &f, 13, 4).unwrap();
        f.write_all_at(b"lost", 13).unwrap();
        log.before_truncate(ino, &f, 10).unwrap();
        f.set_len(10).unwrap();
        log.before_write(ino, &f, 2, 2).unwrap();
        f.write_all_at(b"YY", 2).unwrap();

        let path_of = |i: u64| (i == ino).then(|| path.clone());
        let dropped = log.drop_unsynced(path_of).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"durable-later");
        assert_eq!(dropped.files, 1);
        assert!(log.files.is_empty());
    }

    #[test]
    fn a_file_never_synced_comes_back_empty_and_a_gone_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let fa = open(&a);
        let fb = open(&b);
        let (ia, ib) = (fa.metadata().unwrap().ino(), fb.metadata().unwrap().ino());
        let mut log = UndoLog::default();
        log.created(ia);
        log.created(ib);
        fa.write_all_at(b"unsynced", 0).unwrap();
        fb.write_all_at(b"unsynced", 0).unwrap();
        assert_eq!(log.unsynced_bytes(|_| Some(8)), 16);
        std::fs::remove_file(&b).unwrap();

        let paths = [(ia, a.clone()), (ib, b.clone())];
        let dropped = log
            .drop_unsynced(|i| paths.iter().find(|(x, _)| *x == i).map(|(_, p)| p.clone()))
            .unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"");
        assert_eq!(dropped.appended_bytes, 8);
        assert_eq!(dropped.files, 1);
    }
}
