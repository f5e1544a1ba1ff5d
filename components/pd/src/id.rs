//! Unique ids for stores, regions and peers, handed out from windows reserved on disk, so
//! that a restart never reuses an id and most allocations touch no disk.

use keys::pd::ALLOC_ID_KEY;
use parking_lot::Mutex;

use crate::{storage::Storage, Result};

/// Allocates ids.
pub struct IdAllocator {
    storage: Storage,
    batch: u64,
    /// (next id to hand out, end of the reserved window).
    window: Mutex<(u64, u64)>,
}

impl IdAllocator {
    /// Resumes after the last window reserved on disk.
    pub fn new(storage: Storage, batch: u64) -> Result<IdAllocator> {
        let end = storage.get_u64(ALLOC_ID_KEY)?.unwrap_or(0);
        Ok(IdAllocator {
            storage,
            batch,
            window: Mutex::new((end + 1, end)),
        })
    }

    /// A fresh id.
    pub fn alloc(&self) -> Result<u64> {
        let mut w = self.window.lock();
        if w.0 > w.1 {
            let end = w.1 + self.batch;
            self.storage.put_u64(ALLOC_ID_KEY, end)?;
            w.1 = end;
        }
        let id = w.0;
        w.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let storage = crate::storage::local::open(dir.path());
            let ids = IdAllocator::new(storage, 10).unwrap();
            for _ in 0..15 {
                assert!(seen.insert(ids.alloc().unwrap()), "id handed out twice");
            }
        }
        assert!(!seen.contains(&0));
    }
}
