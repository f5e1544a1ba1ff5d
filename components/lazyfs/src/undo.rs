//! What each file held at its last fsync, kept only for the parts changed since: the
//! length it had then and the old bytes of any synced range that was overwritten or cut
//! off. Dropping un-fsynced data is then: cut the file back to that length and put the
//! old bytes back. Appends (all a write-ahead log does) cost nothing to track.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

#[derive(Debug)]
struct Undo {
    synced_len: u64,
    /// Synced contents of ranges changed since, by offset; the ranges never overlap, and
    /// a byte is saved once (its first change), so memory stays bounded by the file's
    /// synced length however often the same range is rewritten.
    saved: BTreeMap<u64, Vec<u8>>,
}

impl Undo {
    /// The parts of `[from, to)` not saved yet.
    fn unsaved(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut gaps = vec![];
        let mut at = from;
        // A saved range starting before `from` may still cover it.
        let before = self.saved.range(..from).next_back();
        let covering = before.map(|(o, b)| (*o, *o + b.len() as u64));
        let after = self
            .saved
            .range(from..to)
            .map(|(o, b)| (*o, *o + b.len() as u64));
        for (start, end) in covering.into_iter().chain(after) {
            if start > at {
                gaps.push((at, start.min(to)));
            }
            at = at.max(end);
            if at >= to {
                break;
            }
        }
        if at < to {
            gaps.push((at, to));
        }
        gaps
    }
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
                saved: BTreeMap::new(),
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
            for (offset, bytes) in &undo.saved {
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
                saved: BTreeMap::new(),
            }),
        };
        // Synced bytes past the file's current end were cut off by a truncation, which
        // saved them already.
        let end = to.min(undo.synced_len).min(file.metadata()?.len());
        if from >= end {
            return Ok(());
        }
        for (start, stop) in undo.unsaved(from, end) {
            let mut old = vec![0; (stop - start) as usize];
            file.read_exact_at(&mut old, start)?;
            undo.saved.insert(start, old);
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
        std::fs::remove_file(&b).unwrap();

        let paths = [(ia, a.clone()), (ib, b.clone())];
        let dropped = log
            .drop_unsynced(|i| paths.iter().find(|(x, _)| *x == i).map(|(_, p)| p.clone()))
            .unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"");
        assert_eq!(dropped.appended_bytes, 8);
        assert_eq!(dropped.files, 1);
    }

    #[test]
    fn a_write_after_a_truncation_below_the_synced_length_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = open(&path);
        let ino = f.metadata().unwrap().ino();
        let mut log = UndoLog::default();
        // O_TRUNC, then a write inside what used to be synced.
        log.before_truncate(ino, &f, 0).unwrap();
        f.set_len(0).unwrap();
        log.before_write(ino, &f, 4, 4).unwrap();
        f.write_all_at(b"abcd", 4).unwrap();
        log.before_write(ino, &f, 0, 10).unwrap();
        f.write_all_at(b"ABCDEFGHIJ", 0).unwrap();

        let path_of = |i: u64| (i == ino).then(|| path.clone());
        log.drop_unsynced(path_of).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
    }

    #[test]
    fn rewriting_a_range_saves_its_synced_bytes_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = open(&path);
        let ino = f.metadata().unwrap().ino();
        let mut log = UndoLog::default();
        for round in 0..100u8 {
            let (off, len) = (u64::from(round % 7), 3);
            log.before_write(ino, &f, off, len).unwrap();
            f.write_all_at(&[b'a' + round % 26; 3], off).unwrap();
        }
        let saved: usize = log.files[&ino].saved.values().map(Vec::len).sum();
        assert_eq!(saved, 9, "bytes 0..9 were changed, each saved once");

        let path_of = |i: u64| (i == ino).then(|| path.clone());
        log.drop_unsynced(path_of).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
    }
}
