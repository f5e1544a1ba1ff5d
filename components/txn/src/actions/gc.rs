//! Dropping versions no read can see any more.

use crate::{
    types::{Kind, Write},
    MvccReader, MvccTxn, Result,
};

/// Drops `key`'s versions below `safe_point` that no read at or above it can see: the
/// newest committed version at or below the safe point stays if it is a Put, everything
/// older goes, and so do deletes, locks and rollbacks at or below it. Returns how many
/// records go: at most `max`, the oldest first, so that a delete goes only with
/// everything under it (the rest go on another call).
pub fn gc(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    key: &[u8],
    safe_point: u64,
    max: usize,
) -> Result<usize> {
    // Once the visible version is found (a Put kept, or a delete dropped: nothing
    // below a delete can be seen either), everything older goes.
    let mut found = false;
    let mut doomed: Vec<(u64, Write)> = vec![];
    reader.versions(key, safe_point, &mut |commit_ts, w| {
        let keep = !found && w.kind == Kind::PUT;
        found |= matches!(w.kind, Kind::PUT | Kind::DELETE);
        if !keep {
            doomed.push((commit_ts, w));
        }
        Ok(true)
    })?;
    let oldest = &doomed[doomed.len().saturating_sub(max)..];
    for (commit_ts, w) in oldest {
        txn.delete_write(key, *commit_ts);
        if w.kind == Kind::PUT && !w.has_short_value {
            txn.delete_value(key, w.start_ts);
        }
    }
    Ok(oldest.len())
}
