//! The second phase: turn a transaction's lock on a key into a commit record.

use crate::{
    reader::CommitRecord,
    types::{Kind, Write},
    Error, MvccReader, MvccTxn, Result,
};

/// Commits `key` of the transaction `start_ts` at `commit_ts`. Committing twice is fine;
/// committing a key the transaction holds no lock on (rolled back, or never prewritten)
/// fails and writes nothing.
pub fn commit(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    start_ts: u64,
    commit_ts: u64,
) -> Result<()> {
    let lock = match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts => lock,
        _ => {
            return match reader.commit_record(key, start_ts)? {
                CommitRecord::Committed(_) => Ok(()),
                // Its commit record may have been collected: nobody can tell.
                CommitRecord::None if start_ts <= reader.gc_fence(key)? => {
                    Err(Error::BelowSafePoint {
                        key: key.to_vec(),
                        what: "a commit",
                        ts: start_ts,
                        safe_point: reader.gc_fence(key)?,
                    })
                }
                _ => Err(Error::TxnLockNotFound {
                    start_ts,
                    commit_ts,
                    key: key.to_vec(),
                }),
            };
        }
    };
    if lock.kind == Kind::PESSIMISTIC {
        return Err(Error::LockTypeNotMatch {
            start_ts,
            key: key.to_vec(),
        });
    }
    if commit_ts < lock.min_commit_ts {
        return Err(Error::CommitTsExpired {
            start_ts,
            commit_ts,
            key: key.to_vec(),
            min_commit_ts: lock.min_commit_ts,
        });
    }
    // A rollback of another transaction that started at our commit timestamp lives on
    // in our record, so that its late prewrite still fails.
    let overlapped = reader
        .write_at(key, commit_ts)?
        .is_some_and(|w| w.kind == Kind::ROLLBACK && w.start_ts != start_ts);
    let write = Write {
        kind: lock.kind,
        start_ts,
        has_short_value: lock.has_short_value,
        short_value: lock.short_value,
        has_overlapped_rollback: overlapped,
        ..Default::default()
    };
    txn.put_write(key, commit_ts, &write);
    txn.unlock(key);
    Ok(())
}
