//! Dropping versions no read can see any more.

use crate::{types::Kind, MvccReader, MvccTxn, Result};

/// Drops `key`'s versions below `safe_point` that no read at or above it can see: the
/// newest committed version at or below the safe point stays if it is a Put; every
/// other record at or below it goes (older versions, deletes, locks and rollbacks).
/// Records go oldest first, so that a delete goes only with everything under it, and
/// only while `txn` holds fewer than `budget` bytes (the rest go on another call).
/// Before anything goes, the key's GC fence is raised to the safe point, in the same
/// writes, so that a read below it is refused wherever the key's data travels. Returns
/// how many records go.
pub fn gc(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    safe_point: u64,
    budget: usize,
) -> Result<usize> {
    let kept = visible_put(reader, key, safe_point)?;
    let fence = reader.gc_fence(key)?;
    let mut n = 0;
    reader.versions_oldest_first(key, safe_point, &mut |commit_ts, w| {
        if w.kind == Kind::GC_FENCE || Some(commit_ts) == kept {
            return Ok(true);
        }
        if n == 0 && fence < safe_point {
            txn.put_gc_fence(key, safe_point);
        }
        txn.delete_write(key, commit_ts);
        if w.kind == Kind::PUT && !w.has_short_value {
            txn.delete_value(key, w.start_ts);
        }
        n += 1;
        Ok(txn.size() < budget)
    })?;
    Ok(n)
}

/// The commit timestamp of the version a read at `safe_point` sees, if it is a Put.
fn visible_put(reader: &MvccReader, key: &[u8], safe_point: u64) -> Result<Option<u64>> {
    let mut kept = None;
    reader.versions(key, safe_point, &mut |commit_ts, w| match w.kind {
        Kind::PUT => {
            kept = Some(commit_ts);
            Ok(false)
        }
        Kind::DELETE => Ok(false),
        _ => Ok(true),
    })?;
    Ok(kept)
}
