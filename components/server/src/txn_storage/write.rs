//! The writes of a running transaction: prewrite, commit, rollback, pessimistic locks
//! and heartbeats.

use proto::kvrpcpb::Context;
use txn::{
    actions::{self, PessimisticLock},
    commands::{self, check_ts, PrewriteOutcome, PrewriteRequest},
    MvccTxn,
};

use super::{one, TxnStorage};
use crate::{Error, Result};

impl TxnStorage {
    /// Prewrites the mutations (see `txn::commands::prewrite`, which checks the request).
    pub async fn prewrite(&self, ctx: &Context, req: PrewriteRequest) -> Result<PrewriteOutcome> {
        let p = &req.props;
        self.above_safe_point(p.start_ts, true)?;
        self.clock
            .admit(&[
                ("start_version", p.start_ts),
                ("for_update_ts", p.for_update_ts),
                ("min_commit_ts", p.min_commit_ts),
            ])
            .await?;
        let keys: Vec<Vec<u8>> = req.mutations.iter().map(|m| m.key.clone()).collect();
        let size: usize = req
            .mutations
            .iter()
            .map(|m| m.key.len() + m.value().map_or(0, <[u8]>::len))
            .sum();
        let limit = self.kv.limits().max_value_size;
        if size as u64 > limit {
            return Err(Error::InvalidRequest(format!(
                "the mutations come to {size} bytes, more than raftstore.raft-entry-max-size ({limit})"
            )));
        }
        let sync = p.async_commit || p.one_pc;
        self.run(ctx, &keys, sync, |reader, _, _| {
            let (out, txn, guard) = commands::prewrite(reader, &self.cm, &req, &self.limits)?;
            Ok((out, vec![txn], guard))
        })
        .await
    }

    /// Commits the keys of the transaction `start_ts` at `commit_ts`: every key is
    /// checked first, and the writes go in batches within the Raft command limit.
    pub async fn commit(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<()> {
        self.limits
            .check_keys("keys", keys.iter().map(|k| &k[..]))?;
        self.clock
            .admit(&[("start_version", start_ts), ("commit_version", commit_ts)])
            .await?;
        let budget = self.batch_budget();
        self.run(ctx, keys, false, |reader, _, _| {
            let batches =
                commands::commit(reader, keys, start_ts, commit_ts, &self.limits, budget)?;
            Ok(((), batches, None))
        })
        .await
    }

    /// Rolls back the keys of the transaction `start_ts`.
    pub async fn rollback(&self, ctx: &Context, keys: &[Vec<u8>], start_ts: u64) -> Result<()> {
        self.limits
            .check_keys("keys", keys.iter().map(|k| &k[..]))?;
        self.clock.admit(&[("start_version", start_ts)]).await?;
        let budget = self.batch_budget();
        self.run(ctx, keys, false, |reader, _, _| {
            let batches =
                commands::rollback(reader, &self.cm, keys, start_ts, &self.limits, budget)?;
            Ok(((), batches, None))
        })
        .await
    }

    /// Raises the TTL of the transaction's primary lock; returns the TTL in force.
    pub async fn heartbeat(
        &self,
        ctx: &Context,
        primary: &[u8],
        start_ts: u64,
        advise_ttl: u64,
    ) -> Result<u64> {
        check_ts("start_version", start_ts)?;
        self.limits.check_key("primary_lock", primary)?;
        self.limits.check_ttl("advise_lock_ttl", advise_ttl)?;
        self.clock.admit(&[("start_version", start_ts)]).await?;
        self.run(ctx, &[primary.to_vec()], false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            let ttl = actions::heartbeat(&mut txn, reader, primary, start_ts, advise_ttl)?;
            Ok(one(ttl, txn))
        })
        .await
    }

    /// Takes pessimistic locks on every key (or none: a lock met or a conflict fails
    /// the request); returns each key's value when asked.
    pub async fn pessimistic_lock(
        &self,
        ctx: &Context,
        locks: &[PessimisticLock],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = locks.iter().map(|l| l.key.clone()).collect();
        self.limits
            .check_new_keys("mutations", keys.iter().map(|k| &k[..]))?;
        let mut stamps = vec![];
        for l in locks {
            check_ts("start_version", l.start_ts)?;
            check_ts("for_update_ts", l.for_update_ts)?;
            // A lock whose primary cannot be looked up could never be resolved.
            self.limits.check_key("primary_lock", &l.primary)?;
            self.limits.check_ttl("lock_ttl", l.ttl)?;
            self.above_safe_point(l.start_ts, true)?;
            if l.for_update_ts < l.start_ts {
                return Err(Error::InvalidRequest(
                    "for_update_ts is below start_version".into(),
                ));
            }
            stamps.push(("for_update_ts", l.for_update_ts));
        }
        self.clock.admit(&stamps).await?;
        self.run(ctx, &keys, false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            let mut values = Vec::with_capacity(locks.len());
            for l in locks {
                self.cm.update_max_ts(l.for_update_ts);
                values.push(actions::acquire_pessimistic_lock(&mut txn, reader, l)?);
            }
            Ok(one(values, txn))
        })
        .await
    }

    /// Removes the transaction's pessimistic locks on `keys` taken at or before
    /// `for_update_ts`.
    pub async fn pessimistic_rollback(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        start_ts: u64,
        for_update_ts: u64,
    ) -> Result<()> {
        check_ts("start_version", start_ts)?;
        check_ts("for_update_ts", for_update_ts)?;
        self.limits
            .check_keys("keys", keys.iter().map(|k| &k[..]))?;
        self.clock
            .admit(&[
                ("start_version", start_ts),
                ("for_update_ts", for_update_ts),
            ])
            .await?;
        self.run(ctx, keys, false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            for k in keys {
                actions::pessimistic_rollback(&mut txn, reader, k, start_ts, for_update_ts)?;
            }
            Ok(one((), txn))
        })
        .await
    }
}
