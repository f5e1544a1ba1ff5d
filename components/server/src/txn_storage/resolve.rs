//! Settling other transactions' locks: status checks on a primary or on async-commit
//! secondaries, cleanup, and lock resolution. Each raises `max_ts` to the transactions
//! it decides, so that no async-commit or 1PC commit lands at or below a decision.

use proto::kvrpcpb::Context;
use txn::{
    actions::{self, CheckTxnStatus, SecondaryStatus, TxnStatus},
    commands::{self, check_resolve, check_ts},
    txn::Batches,
    types::Lock,
    MvccReader, MvccTxn,
};

use super::{one, region_bounds, TxnStorage};
use crate::{Error, Result};

/// Locks one resolve round handles before it scans again.
const RESOLVE_BATCH: usize = 256;

impl TxnStorage {
    /// Rolls back the primary `key` of the transaction `start_ts` if its lock expired at
    /// `current_ts` (0: at once); `Committed` says it committed instead.
    pub async fn cleanup(
        &self,
        ctx: &Context,
        key: &[u8],
        start_ts: u64,
        current_ts: u64,
    ) -> Result<()> {
        check_ts("start_version", start_ts)?;
        self.clock
            .admit(&[("start_version", start_ts), ("current_ts", current_ts)])
            .await?;
        self.cm.update_max_ts(start_ts);
        self.run(ctx, &[key.to_vec()], false, |reader, _, _| {
            let mut txn = MvccTxn::new();
            actions::cleanup(&mut txn, reader, key, start_ts, current_ts)?;
            Ok(one((), txn))
        })
        .await
    }

    /// The state of a transaction by its primary key (see `txn::actions::check_txn_status`).
    pub async fn check_txn_status(&self, ctx: &Context, c: CheckTxnStatus) -> Result<TxnStatus> {
        check_ts("lock_ts", c.lock_ts)?;
        self.clock
            .admit(&[
                ("lock_ts", c.lock_ts),
                ("caller_start_ts", c.caller_start_ts),
                ("current_ts", c.current_ts),
            ])
            .await?;
        // No async-commit or 1PC transaction may land at or below what this decides.
        self.cm.update_max_ts(c.lock_ts);
        self.cm.update_max_ts(c.caller_start_ts);
        self.run(
            ctx,
            std::slice::from_ref(&c.primary),
            false,
            |reader, _, _| {
                let mut txn = MvccTxn::new();
                let st = actions::check_txn_status(&mut txn, reader, &c)?;
                Ok(one(st, txn))
            },
        )
        .await
    }

    /// The state of an async-commit transaction on each of `keys`.
    pub async fn check_secondary_locks(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        start_ts: u64,
    ) -> Result<Vec<SecondaryStatus>> {
        check_ts("start_version", start_ts)?;
        self.limits
            .check_keys("keys", keys.iter().map(|k| &k[..]))?;
        self.clock.admit(&[("start_version", start_ts)]).await?;
        self.cm.update_max_ts(start_ts);
        let budget = self.batch_budget();
        self.run(ctx, keys, false, |reader, _, _| {
            // A rollback for every key never prewritten: batched like a commit.
            let mut batches = Batches::new(budget);
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(actions::check_secondary_lock(
                    batches.txn(),
                    reader,
                    k,
                    start_ts,
                )?);
                batches.key_done();
            }
            Ok((out, batches.finish(), None))
        })
        .await
    }

    /// Commits (`commit_ts` > 0) or rolls back each listed transaction's locks: on
    /// `keys`, or, with none given, every one of its locks in the region.
    pub async fn resolve_locks(
        &self,
        ctx: &Context,
        txns: &[(u64, u64)],
        keys: &[Vec<u8>],
    ) -> Result<()> {
        check_resolve(txns, &self.limits)?;
        let stamps: Vec<(&str, u64)> = txns
            .iter()
            .flat_map(|(s, c)| [("start_version", *s), ("commit_version", *c)])
            .collect();
        self.clock.admit(&stamps).await?;
        if !keys.is_empty() {
            self.limits
                .check_keys("keys", keys.iter().map(|k| &k[..]))?;
            return self.resolve_keys(ctx, txns, keys).await;
        }
        // Scan without latches, then resolve what was found under them; a lock taken
        // meanwhile by another transaction is not one of these.
        loop {
            let ready = self.kv.read_ready(ctx).await?;
            let (lower, upper) = region_bounds(&ready.region);
            let found: Vec<Vec<u8>> = {
                let snap = self.kv.engine().snapshot();
                let reader = MvccReader::new(&snap);
                let keep = |l: &Lock| txns.iter().any(|(s, _)| *s == l.start_ts);
                reader
                    .scan_locks(&lower, &upper, &keep, RESOLVE_BATCH, self.batch_budget())
                    .map_err(Error::from)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect()
            };
            if found.is_empty() {
                return Ok(());
            }
            self.resolve_keys(ctx, txns, &found).await?;
        }
    }

    async fn resolve_keys(
        &self,
        ctx: &Context,
        txns: &[(u64, u64)],
        keys: &[Vec<u8>],
    ) -> Result<()> {
        let budget = self.batch_budget();
        self.run(ctx, keys, false, |reader, _, _| {
            let mut locks = vec![];
            for k in keys {
                if let Some(l) = reader.load_lock(k)? {
                    locks.push((k.clone(), l));
                }
            }
            let batches = commands::resolve_locks(reader, &self.cm, txns, &locks, budget)?;
            Ok(((), batches, None))
        })
        .await
    }
}
