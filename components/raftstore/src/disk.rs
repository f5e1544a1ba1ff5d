//! Free space on the store's disk. The store loop measures it; leaders read the verdict
//! before proposing a client write. Below `raftstore.reserve-space` writes are refused
//! with an error that says so, while reads, Raft traffic from other stores and admin
//! commands go on: the reserve is what lets in-flight replication, splits and
//! compactions finish instead of the engine hitting ENOSPC. Writes resume by themselves
//! once space is freed.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytesize::ByteSize;

/// Free bytes at the last measurement; written by the store loop only.
#[derive(Clone, Debug)]
pub struct DiskSpace {
    available: Arc<AtomicU64>,
    reserve: u64,
}

impl DiskSpace {
    /// Space is taken as plentiful until the first measurement.
    pub fn new(reserve: ByteSize) -> DiskSpace {
        DiskSpace {
            available: Arc::new(AtomicU64::new(u64::MAX)),
            reserve: reserve.as_u64(),
        }
    }

    /// Measures the filesystem holding `dir`; returns whether the disk is now full.
    pub fn measure(&self, dir: &Path) -> bool {
        // A failed measurement keeps the last one: a transient error must not stop writes.
        if let Ok(free) = fs2::available_space(dir) {
            self.available.store(free, Ordering::Relaxed);
        }
        self.full()
    }

    /// Whether free space is below the reserve.
    pub fn full(&self) -> bool {
        self.available.load(Ordering::Relaxed) < self.reserve
    }

    /// Why a write is refused, if it is.
    pub fn check_write(&self) -> crate::Result<()> {
        if !self.full() {
            return Ok(());
        }
        Err(crate::Error::DiskFull(format!(
            "{} free, below raftstore.reserve-space ({})",
            ByteSize::b(self.available.load(Ordering::Relaxed)),
            ByteSize::b(self.reserve)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_refused_below_the_reserve_and_resume_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let free = fs2::available_space(dir.path()).unwrap();
        let plenty = DiskSpace::new(ByteSize::b(0));
        assert!(!plenty.measure(dir.path()));
        plenty.check_write().unwrap();

        let tight = DiskSpace::new(ByteSize::b(free.saturating_mul(2).max(1 << 40)));
        tight
            .check_write()
            .expect("no measurement yet: writes go on");
        assert!(tight.measure(dir.path()));
        let e = tight.check_write().unwrap_err().to_string();
        assert!(e.contains("raftstore.reserve-space"), "{e}");
    }
}
