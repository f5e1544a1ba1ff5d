//! The store's largest read timestamp and the async-commit locks not yet applied: what
//! lets an async-commit or 1PC transaction choose its commit timestamp before its locks
//! are in the engine.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use crate::{reader::check_lock_for_read, reader::Bypass, types::Lock, Result};

/// Shared by every command on a store. Each read raises `max_ts` and then checks the
/// in-memory locks; an async-commit or 1PC prewrite puts its locks in memory first and
/// then takes a commit timestamp above `max_ts`. Either the read came first and the
/// commit lands above it, or the read meets the lock.
#[derive(Clone, Default, Debug)]
pub struct ConcurrencyManager {
    max_ts: Arc<AtomicU64>,
    mem_locks: Arc<Mutex<HashMap<Vec<u8>, Lock>>>,
}

/// The in-memory locks of one prewrite; dropped once its writes are applied (or failed).
pub struct MemLockGuard {
    cm: ConcurrencyManager,
    keys: Vec<Vec<u8>>,
}

impl MemLockGuard {
    /// Replaces the placeholders with the locks as prewritten (their min_commit_ts now
    /// known, so reads below it pass), and drops those of keys that got no lock.
    pub fn set(&mut self, locks: &[(Vec<u8>, Lock)]) {
        let mut mem = self.cm.locks();
        for k in &self.keys {
            mem.remove(k);
        }
        mem.extend(locks.iter().cloned());
        self.keys = locks.iter().map(|(k, _)| k.clone()).collect();
    }
}

impl Drop for MemLockGuard {
    fn drop(&mut self) {
        let mut locks = self.cm.locks();
        for k in &self.keys {
            locks.remove(k);
        }
    }
}

impl ConcurrencyManager {
    /// A manager whose `max_ts` starts at `ts` (a fresh timestamp from PD).
    pub fn new(ts: u64) -> Self {
        let cm = ConcurrencyManager::default();
        cm.update_max_ts(ts);
        cm
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

    /// Puts `locks` in memory until the guard drops. Keys are latched by the caller, so
    /// no two prewrites hold one key.
    pub fn lock_in_memory(&self, locks: Vec<(Vec<u8>, Lock)>) -> MemLockGuard {
        let keys = locks.iter().map(|(k, _)| k.clone()).collect();
        self.locks().extend(locks);
        MemLockGuard {
            cm: self.clone(),
            keys,
        }
    }

    /// A read at `ts` of `key`: raises `max_ts`, then fails on an in-memory lock the read
    /// must not pass (the rules are those of locks in the engine).
    pub fn read_key(&self, key: &[u8], ts: u64, bypass: &Bypass) -> Result<()> {
        self.update_max_ts(ts);
        let lock = self.locks().get(key).cloned();
        match lock {
            Some(lock) => check_lock_for_read(key, lock, ts, bypass, None).map(|_| ()),
            None => Ok(()),
        }
    }

    /// A read at `ts` of a range (`in_range` says which keys): like [`Self::read_key`].
    pub fn read_range(
        &self,
        in_range: &dyn Fn(&[u8]) -> bool,
        ts: u64,
        bypass: &Bypass,
    ) -> Result<()> {
        match self.blocking_locks(in_range, ts, bypass).into_iter().next() {
            Some((key, lock)) => Err(crate::Error::KeyIsLocked {
                key,
                lock: Box::new(lock),
            }),
            None => Ok(()),
        }
    }

    /// Raises `max_ts` to `ts`, then returns every in-memory lock of the keys `in_range`
    /// says that a read at `ts` must not pass, in key order.
    pub fn blocking_locks(
        &self,
        in_range: &dyn Fn(&[u8]) -> bool,
        ts: u64,
        bypass: &Bypass,
    ) -> Vec<(Vec<u8>, Lock)> {
        self.update_max_ts(ts);
        let mut locks: Vec<(Vec<u8>, Lock)> = self
            .locks()
            .iter()
            .filter(|(k, _)| in_range(k))
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        locks.sort_by(|a, b| a.0.cmp(&b.0));
        locks
            .into_iter()
            .filter_map(
                |(k, lock)| match check_lock_for_read(&k, lock, ts, bypass, None) {
                    Err(crate::Error::KeyIsLocked { key, lock }) => Some((key, *lock)),
                    _ => None,
                },
            )
            .collect()
    }

    /// The least start timestamp of the in-memory locks of the keys `in_range` says.
    pub fn min_lock_ts(&self, in_range: &dyn Fn(&[u8]) -> bool) -> Option<u64> {
        self.locks()
            .iter()
            .filter(|(k, _)| in_range(k))
            .map(|(_, l)| l.start_ts)
            .min()
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Lock>> {
        self.mem_locks
            .lock()
            .expect("a thread panicked holding the in-memory locks")
    }
}
