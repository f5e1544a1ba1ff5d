//! FUSE inode numbers for the backing directory's files. The kernel names files by the
//! numbers this table hands out; the table keeps each one's current path (relative to
//! the backing root) and the backing file's own inode number.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// The FUSE root inode.
pub const ROOT: u64 = 1;

#[derive(Debug)]
pub struct Inodes {
    /// FUSE inode -> (relative path, backing inode).
    paths: HashMap<u64, (PathBuf, u64)>,
    by_backing: HashMap<u64, u64>,
    next: u64,
}

impl Inodes {
    pub fn new(root_backing_ino: u64) -> Inodes {
        Inodes {
            paths: HashMap::from([(ROOT, (PathBuf::new(), root_backing_ino))]),
            by_backing: HashMap::from([(root_backing_ino, ROOT)]),
            next: ROOT + 1,
        }
    }

    /// The relative path of FUSE inode `ino`.
    pub fn path(&self, ino: u64) -> Option<&Path> {
        self.paths.get(&ino).map(|(p, _)| p.as_path())
    }

    /// The relative path of the file whose backing inode is `backing`.
    pub fn path_of_backing(&self, backing: u64) -> Option<PathBuf> {
        let ino = self.by_backing.get(&backing)?;
        self.path(*ino).map(Path::to_path_buf)
    }

    /// The FUSE inode for the file now at `path` with backing inode `backing`.
    pub fn remember(&mut self, path: PathBuf, backing: u64) -> u64 {
        let ino = match self.by_backing.get(&backing) {
            Some(ino) => *ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_backing.insert(backing, ino);
                ino
            }
        };
        self.paths.insert(ino, (path, backing));
        ino
    }

    /// `from` is now at `to`, and so is everything under it.
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        for (path, _) in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// The file with backing inode `backing` has no name left.
    pub fn forget_backing(&mut self, backing: u64) {
        if let Some(ino) = self.by_backing.remove(&backing) {
            self.paths.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_directory_takes_its_children_along() {
        let mut t = Inodes::new(100);
        let d = t.remember("d".into(), 101);
        let f = t.remember("d/f".into(), 102);
        let other = t.remember("dx".into(), 103);
        t.renamed(Path::new("d"), Path::new("e"));
        assert_eq!(t.path(d), Some(Path::new("e")));
        assert_eq!(t.path(f), Some(Path::new("e/f")));
        assert_eq!(t.path(other), Some(Path::new("dx")));
        assert_eq!(t.remember("e/f".into(), 102), f);
        t.forget_backing(102);
        assert_eq!(t.path_of_backing(102), None);
    }
}
