//! Keeping a long transaction's primary lock alive.

use crate::{Error, MvccReader, MvccTxn, Result};

/// Raises the TTL of the transaction's lock on its primary to `advise_ttl` (never lowers
/// it); returns the TTL now in force.
pub fn heartbeat(
    txn: &mut MvccTxn,
    reader: &MvccReader,
    primary: &[u8],
    start_ts: u64,
    advise_ttl: u64,
) -> Result<u64> {
    let Some(mut lock) = reader
        .load_lock(primary)?
        .filter(|l| l.start_ts == start_ts)
    else {
        return Err(Error::TxnNotFound {
            start_ts,
            key: primary.to_vec(),
        });
    };
    if advise_ttl > lock.ttl {
        lock.ttl = advise_ttl;
        txn.put_lock(primary, &lock);
    }
    Ok(lock.ttl)
}
