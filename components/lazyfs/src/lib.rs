//! A FUSE filesystem that forgets what was not fsynced, for power-loss tests (after
//! Jepsen's lazyfs).
//!
//! It passes every operation through to a backing directory, so the processes using it
//! see an ordinary filesystem, and records the old contents of whatever a write changes
//! until the file is fsynced. [`LazyFs::power_loss`], called once every process using
//! the mount is dead, unmounts it, puts every file back to what it held at its last
//! fsync, and mounts it again: what a machine would find on its disk after losing power
//! with those writes still in its page cache. Directory operations (create, rename,
//! unlink) are durable at once; only file data waits for fsync.
//!
//! Owns nothing of Flotilla's and depends on none of its crates; tests use it as root
//! (mounting needs CAP_SYS_ADMIN and /dev/fuse).

mod fs;
mod inodes;
#[cfg(test)]
mod power_loss_tests;
mod undo;

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use fuser::{BackgroundSession, Config, MountOption};
use parking_lot::Mutex;

use crate::fs::{LazyFsOps, State};
pub use crate::undo::Dropped;

/// A mounted lazy filesystem; unmounted when dropped.
pub struct LazyFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts `backing` at `mountpoint` (both directories must exist).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyFs> {
        let mut fs = LazyFs {
            backing: backing.canonicalize()?,
            mountpoint: mountpoint.to_path_buf(),
            state: Arc::new(Mutex::new(State::new(backing)?)),
            session: None,
        };
        fs.start()?;
        Ok(fs)
    }

    fn start(&mut self) -> io::Result<()> {
        self.state = Arc::new(Mutex::new(State::new(&self.backing)?));
        let ops = LazyFsOps {
            root: self.backing.clone(),
            state: self.state.clone(),
        };
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        cfg.n_threads = Some(2);
        self.session = Some(fuser::spawn_mount(ops, &self.mountpoint, &cfg)?);
        Ok(())
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Drops every byte not fsynced and mounts the filesystem again. Every process that
    /// had it open must be dead first (or unmounting fails with `EBUSY`).
    pub fn power_loss(&mut self) -> io::Result<Dropped> {
        self.unmount()?;
        let dropped = {
            let mut s = self.state.lock();
            let State { inodes, undo, .. } = &mut *s;
            undo.drop_unsynced(|backing| {
                inodes
                    .path_of_backing(backing)
                    .map(|rel| self.backing.join(rel))
            })?
        };
        self.start()?;
        Ok(dropped)
    }

    fn unmount(&mut self) -> io::Result<()> {
        match self.session.take().map(|s| s.umount_and_join()) {
            // The kernel ends the session's reads with ECONNABORTED instead of ENODEV when
            // it aborted the connection (CI saw it once, unmounting after a kill): the
            // filesystem is gone either way.
            Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
            Some(r) => r,
            None => Ok(()),
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("lazyfs: unmounting {}: {e}", self.mountpoint.display());
        }
    }
}
