//! The resolved timestamp of a region this store leads: the timestamp below which no
//! transaction can commit in the region in entries the leader has not committed yet, so
//! that a replica which has applied them may serve stale reads at or below it.
//!
//! The order is what makes it safe:
//! 1. `now` comes from PD, and `max_ts` is raised to it: an async-commit or 1PC prewrite
//!    that takes its locks from here on commits above `now`.
//! 2. The in-memory locks are read: a prewrite that took its commit timestamp before step
//!    1 either still holds them (they bound the result) or has been applied.
//! 3. The engine's locks are read: every transaction whose prewrite was applied and that
//!    has not committed or rolled back holds one; a two-phase commit timestamp is taken
//!    from PD after the prewrites, so a transaction that has no lock yet commits above
//!    `now`.
//! 4. A read index confirms that this store still leads: no leader of a later term
//!    existed when the locks were read (it would have its own `max_ts` from PD). The
//!    read index covers every entry applied when the locks were read, so a replica that
//!    has applied it has everything committed at or below the result.

use proto::kvrpcpb::Context;
use raftstore::PeerMsg;
use txn::MvccReader;

use super::{region_bounds, TxnStorage};
use crate::{Error, Result};

impl TxnStorage {
    /// The regions this store leads and that are awake, with contexts for their leaders.
    pub fn led_regions(&self) -> Vec<Context> {
        self.kv.led_regions()
    }

    /// Computes and confirms the region's resolved timestamp at `now` (a timestamp just
    /// taken from PD), and hands it to the region's leader peer; returns it.
    pub async fn advance_safe_ts(&self, ctx: &Context, now: u64) -> Result<u64> {
        let region = self
            .kv
            .local_region(ctx.get_region_id())
            .ok_or(raftstore::Error::RegionNotFound(ctx.get_region_id()))?;
        self.cm.update_max_ts(now);
        let (lower, upper) = region_bounds(&region);
        let in_region = |k: &[u8]| {
            let enc = keys::txn::lock_key(k);
            enc >= lower && enc < upper
        };
        let in_memory = self.cm.min_lock_ts(&in_region);
        let snap = self.kv.engine().snapshot();
        let in_engine = MvccReader::new(&snap).min_lock_ts(&lower, &upper)?;
        // A read at a lock's start timestamp would meet the lock: stop just below it.
        let resolved = [
            Some(now),
            in_memory.map(|t| t - 1),
            in_engine.map(|t| t - 1),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("now is always there");
        let ready = self.kv.confirm_leadership(ctx).await?;
        // A membership change leaves the keys where they were; a split does not.
        if ready.region.get_region_epoch().version != region.get_region_epoch().version {
            return Err(Error::Raft(raftstore::Error::StaleCommand(
                "the region changed while its resolved timestamp was computed",
            )));
        }
        self.kv.send(
            region.get_id(),
            PeerMsg::SafeTs {
                term: ready.term,
                safe_ts: resolved,
                index: ready.index,
            },
        )?;
        Ok(resolved)
    }
}
