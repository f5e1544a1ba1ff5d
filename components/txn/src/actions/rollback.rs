//! Undoing a transaction on a key: its lock goes and a rollback record stays, so that a
//! prewrite of it arriving late fails.

use crate::{
    reader::CommitRecord,
    types::{lock_expired, Kind, Lock, Write},
    Error, MvccReader, MvccTxn, Result,
};

/// Rolls back `key` of the transaction `start_ts` (`protect`: keep the record through
/// GC, for a primary). Fails if the transaction committed the key.
pub fn rollback(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
    protect: bool,
) -> Result<()> {
    match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts => rollback_lock(txn, reader, key, &lock, protect),
        _ => rollback_missing(txn, reader, key, start_ts, protect),
    }
}

/// Rolls back the primary `key` of the transaction `start_ts` if its lock has expired at
/// `current_ts` (0: at once, whatever its TTL); fails with the lock if it lives on.
pub fn cleanup(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
    current_ts: u64,
) -> Result<()> {
    match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts => {
            if current_ts != 0 && !lock_expired(&lock, current_ts) {
                return Err(Error::KeyIsLocked {
                    key: key.to_vec(),
                    lock: Box::new(lock),
                });
            }
            rollback_lock(txn, reader, key, &lock, true)
        }
        _ => rollback_missing(txn, reader, key, start_ts, true),
    }
}

/// Removes the transaction's lock (and its long value) and records the rollback.
pub(crate) fn rollback_lock(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    lock: &Lock,
    protect: bool,
) -> Result<()> {
    if lock.kind == Kind::PUT && !lock.has_short_value {
        txn.delete_value(key, lock.start_ts);
    }
    put_rollback(txn, reader, key, lock.start_ts, protect)?;
    txn.unlock(key);
    Ok(())
}

/// The transaction has no lock here: fine if it already rolled back, wrong if it
/// committed, and otherwise a rollback record keeps its prewrite from ever landing.
pub(crate) fn rollback_missing(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
    protect: bool,
) -> Result<()> {
    match reader.commit_record(key, start_ts)? {
        CommitRecord::Committed(commit_ts) => Err(Error::Committed {
            start_ts,
            commit_ts,
            key: key.to_vec(),
        }),
        CommitRecord::RolledBack => Ok(()),
        CommitRecord::None => put_rollback(txn, reader, key, start_ts, protect),
    }
}

/// A rollback record at `start_ts`; where another transaction committed at that very
/// timestamp, its record carries the rollback instead.
fn put_rollback(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
    protect: bool,
) -> Result<()> {
    if let Some(mut w) = reader.write_at(key, start_ts)? {
        if w.kind != Kind::ROLLBACK {
            w.has_overlapped_rollback = true;
            txn.put_write(key, start_ts, &w);
        }
        return Ok(());
    }
    let w = Write {
        kind: Kind::ROLLBACK,
        start_ts,
        protected: protect,
        ..Default::default()
    };
    txn.put_write(key, start_ts, &w);
    Ok(())
}
