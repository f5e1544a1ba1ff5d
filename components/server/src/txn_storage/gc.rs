//! Dropping a region's versions below the GC safe point, a bounded batch per command.

use proto::kvrpcpb::Context;
use txn::{actions, MvccReader, MvccTxn};

use super::{region_bounds, TxnStorage};
use crate::{Error, Result};

/// Keys one GC command looks at.
const GC_BATCH: usize = 256;

impl TxnStorage {
    /// Drops the versions below `safe_point` that no read can see, in the region of
    /// `ctx`, a batch of keys per command of at most half a Raft command's size;
    /// returns how many records went. The caller resolved every lock below the safe
    /// point first, in the whole cluster (a lock's primary may be in another region).
    pub async fn gc(&self, ctx: &Context, safe_point: u64) -> Result<u64> {
        let budget = self.batch_budget();
        let mut from: Vec<u8> = vec![];
        let mut dropped = 0u64;
        loop {
            let ready = self.kv.read_ready(ctx).await?;
            let (lower, upper) = region_bounds(&ready.region);
            let from_key = from.clone().max(lower);
            let found = {
                let snap = self.kv.engine().snapshot();
                MvccReader::new(&snap)
                    .written_keys(&from_key, &upper, GC_BATCH)
                    .map_err(Error::from)?
            };
            if found.is_empty() {
                return Ok(dropped);
            }
            let (n, finished) = self
                .run(ctx, &found, false, |reader, _, _| {
                    let mut txn = MvccTxn::new();
                    let (mut n, mut finished) = (0, None);
                    for k in &found {
                        n += actions::gc(&mut txn, reader, k, safe_point, budget)?;
                        if txn.size() >= budget {
                            break;
                        }
                        finished = Some(k.clone());
                    }
                    Ok(((n, finished), vec![txn], None))
                })
                .await?;
            dropped += n as u64;
            // Past the last key done; a key cut short is looked at again.
            if let Some(k) = finished {
                from = keys::txn::after_versions(&k);
            }
        }
    }
}
