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

/// Disk bytes a written byte takes until the Raft log is compacted: it is in the Raft
/// log's WAL and SST and, applied, in the data's WAL and SST.
pub const WRITE_AMPLIFICATION: u64 = 4;

/// Free bytes: measured by the store loop, and lowered by every write admitted since, so
/// that a burst between two measurements cannot run through the reserve.
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

    /// Admits a write of `bytes`, charging it [`WRITE_AMPLIFICATION`] times until the next
    /// measurement; or says why it is refused.
    pub fn admit_write(&self, bytes: u64) -> crate::Result<()> {
        self.check()?;
        let cost = bytes.saturating_mul(WRITE_AMPLIFICATION);
        // `fetch_update` fails only when the closure returns None, which this one never does.
        let _ = self
            .available
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(cost))
            });
        Ok(())
    }

    /// Why writes are refused now, if they are.
    pub fn check(&self) -> crate::Result<()> {
        if !self.full() {
            return Ok(());
        }
        Err(crate::Error::DiskFull(format!(
            "about {} free, below raftstore.reserve-space ({})",
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
        plenty.admit_write(1).unwrap();

        let tight = DiskSpace::new(ByteSize::b(free.saturating_mul(2).max(1 << 40)));
        tight
            .admit_write(1)
            .expect("no measurement yet: writes go on");
        assert!(tight.measure(dir.path()));
        let e = tight.admit_write(1).unwrap_err().to_string();
        assert!(e.contains("raftstore.reserve-space"), "{e}");
    }

    #[test]
    fn admitted_writes_count_against_free_space_until_the_next_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let free = fs2::available_space(dir.path()).unwrap();
        let reserve = free / 2;
        let disk = DiskSpace::new(ByteSize::b(reserve));
        assert!(!disk.measure(dir.path()));
        // The room above the reserve, once amplified, and a margin for whatever else
        // writes to this filesystem meanwhile.
        disk.admit_write((free - reserve) / WRITE_AMPLIFICATION + (4 << 20))
            .unwrap();
        assert!(disk.full(), "writes are charged with their amplification");
        assert!(disk.admit_write(1).is_err());
        assert!(!disk.measure(dir.path()), "a measurement starts afresh");
    }
}
