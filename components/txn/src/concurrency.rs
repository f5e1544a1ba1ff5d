//! The store's largest read timestamp, which async commit and 1PC must commit above.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// Shared by every command on a store: each read raises `max_ts`, and an async-commit or
/// 1PC prewrite takes a commit timestamp above it, so that no read that already
/// happened can miss the transaction.
#[derive(Clone, Default, Debug)]
pub struct ConcurrencyManager {
    max_ts: Arc<AtomicU64>,
}

impl ConcurrencyManager {
    /// A manager whose `max_ts` starts at `ts` (a fresh timestamp from PD).
    pub fn new(ts: u64) -> Self {
        ConcurrencyManager {
            max_ts: Arc::new(AtomicU64::new(ts)),
        }
    }

    /// Raises `max_ts` to at least `ts` (a read at `ts`, or a timestamp from PD). A read
    /// at the greatest timestamp (read-latest) does not count: nothing could commit above it.
    pub fn update_max_ts(&self, ts: u64) {
        if ts != u64::MAX {
            self.max_ts.fetch_max(ts, Ordering::SeqCst);
        }
    }

    /// The largest timestamp read so far.
    pub fn max_ts(&self) -> u64 {
        self.max_ts.load(Ordering::SeqCst)
    }
}
