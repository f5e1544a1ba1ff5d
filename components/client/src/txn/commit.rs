//! Two-phase commit: prewrite every key under the primary's lock, then commit the
//! primary (the transaction's commit point), then the secondaries.

use proto::kvrpcpb::{self, KeyError, Op, PrewriteRequest_PessimisticAction as PessimisticAction};

use super::{
    first_error, key_error, lock_ttl, transaction::Buffered, CommitMode, Mode, Transaction,
};
use crate::{Backoff, Error, Result};

/// A key's mutation and whether it was locked pessimistically.
type Planned = (kvrpcpb::Mutation, bool);

/// What the prewrite phase decided.
struct Prewritten {
    /// Committed by the prewrite itself (1PC), at this timestamp.
    one_pc: Option<u64>,
    /// Async commit: committed at this timestamp once every prewrite succeeded; `None`
    /// for two-phase commit.
    async_min_commit_ts: Option<u64>,
}

impl Transaction<'_> {
    /// Commits; returns the commit timestamp (the start timestamp for a transaction that
    /// wrote nothing). On a conflict nothing is written and the locks taken are removed.
    /// `Undetermined` means the commit point was sent but not answered: the transaction
    /// may or may not have committed.
    pub async fn commit(mut self) -> Result<u64> {
        let planned = self.plan();
        if planned.is_empty() {
            return Ok(self.start_ts);
        }
        // The primary locked first, if it is still part of the transaction.
        let primary = self
            .primary
            .clone()
            .filter(|p| planned.iter().any(|m| m.0.get_key() == p.as_slice()))
            .unwrap_or_else(|| planned[0].0.get_key().to_vec());
        self.primary = Some(primary.clone());
        let prewritten = match self.prewrite(&planned, &primary).await {
            Ok(p) => p,
            Err(e) => return Err(self.abandon(e).await),
        };
        // Tests kill clients here (their locks stay for readers to roll back).
        fail::fail_point!("txn_client_dies_after_prewrite", |_| Err(
            Error::Undetermined("fail point: the client died after its prewrite".into())
        ));
        if let Some(ts) = prewritten.one_pc {
            return Ok(ts);
        }
        if let Some(ts) = prewritten.async_min_commit_ts {
            // Committed once every prewrite succeeded, at the highest min_commit_ts: every
            // key's lock is turned over at once (a reader would roll them forward).
            let _ = self.commit_keys(self.written_keys(), ts).await;
            return Ok(ts);
        }
        let commit_ts = self.commit_primary(&primary).await?;
        // Tests kill clients here (readers roll the secondaries forward).
        fail::fail_point!("txn_client_dies_after_primary", |_| Err(
            Error::Undetermined("fail point: the client died after committing its primary".into())
        ));
        // Committed. A secondary left locked is rolled forward by whoever meets it.
        let secondaries: Vec<Vec<u8>> = self
            .written_keys()
            .into_iter()
            .filter(|k| *k != primary)
            .collect();
        let _ = self.commit_keys(secondaries, commit_ts).await;
        Ok(commit_ts)
    }

    /// After a failed prewrite: a refusal leaves nothing committed, so the locks go. Any
    /// other failure of an async-commit or 1PC prewrite may have committed it.
    async fn abandon(&self, e: Error) -> Error {
        // Only a conflict proves an async-commit or 1PC prewrite took no effect: a
        // refusal of a retry (past the safe point, say) may follow an attempt that did.
        let refused = matches!(e, Error::Conflict { .. } | Error::AlreadyExists(_));
        if !refused && self.commit_mode != CommitMode::TwoPhase {
            return Error::Undetermined(format!("the prewrite went unanswered: {e}"));
        }
        let _ = self.rollback_keys(self.written_keys()).await;
        e
    }

    /// Commits the primary key (the commit point); returns the commit timestamp. A
    /// reader may have pushed the lock's min_commit_ts past the timestamp chosen: then
    /// with a newer one.
    async fn commit_primary(&self, primary: &[u8]) -> Result<u64> {
        for _ in 0..3 {
            let commit_ts = match self.client.current_ts().await {
                Ok(ts) => ts,
                Err(e) => return Err(self.abandon(e).await),
            };
            let errors = self
                .commit_keys(vec![primary.to_vec()], commit_ts)
                .await
                .map_err(|e| match e {
                    Error::Timeout { last, .. } => {
                        Error::Undetermined(format!("the primary's commit went unanswered: {last}"))
                    }
                    e => e,
                })?;
            match errors.into_iter().next() {
                None => return Ok(commit_ts),
                Some(e) if e.has_commit_ts_expired() => continue,
                // Its records were collected: an earlier attempt, unanswered, may have
                // committed it.
                Some(e) if e.get_abort().contains("garbage-collected") => {
                    return Err(Error::Undetermined(e.get_abort().to_string()))
                }
                Some(e) => return Err(key_error(e)),
            }
        }
        let e = Error::Aborted("readers kept pushing the commit timestamp".into());
        Err(self.abandon(e).await)
    }

    /// Rolls back: removes every lock this transaction took. Nothing it buffered is
    /// written.
    pub async fn rollback(self) -> Result<()> {
        let errors = self
            .rollback_keys(self.locked.iter().cloned().collect())
            .await?;
        first_error(errors)
    }

    /// Every key this transaction would write or has locked.
    fn written_keys(&self) -> Vec<Vec<u8>> {
        let mut keys_: Vec<Vec<u8>> = self.buffer.keys().cloned().collect();
        keys_.extend(self.locked.iter().cloned());
        keys_.sort();
        keys_.dedup();
        keys_
    }

    /// The mutations to prewrite, in key order.
    fn plan(&self) -> Vec<Planned> {
        let mut out: Vec<Planned> = self
            .buffer
            .iter()
            .map(|(k, w)| {
                let mut m = kvrpcpb::Mutation::default();
                m.set_op(Op::from(w.clone()));
                m.set_key(k.clone());
                if let Buffered::Put(v) = w {
                    m.set_value(v.clone());
                }
                (m, self.locked.contains(k))
            })
            .collect();
        // A key locked but not written still has its pessimistic lock to turn over.
        for k in self.locked.iter().filter(|k| !self.buffer.contains_key(*k)) {
            let mut m = kvrpcpb::Mutation::default();
            m.set_op(Op::Lock);
            m.set_key(k.clone());
            out.push((m, true));
        }
        out.sort_by(|a, b| a.0.get_key().cmp(b.0.get_key()));
        out
    }

    async fn prewrite(&self, planned: &[Planned], primary: &[u8]) -> Result<Prewritten> {
        let mut out = Prewritten {
            one_pc: None,
            async_min_commit_ts: (self.commit_mode == CommitMode::AsyncCommit).then_some(0),
        };
        let secondaries: Vec<Vec<u8>> = match self.commit_mode {
            CommitMode::AsyncCommit => planned
                .iter()
                .map(|p| p.0.get_key().to_vec())
                .filter(|k| k.as_slice() != primary)
                .collect(),
            _ => vec![],
        };
        let commit_mode = self.commit_mode;
        let mut backoff = Backoff::new(self.client.inner.timeout);
        let mut pending: Vec<(Vec<u8>, Planned)> = planned
            .iter()
            .map(|p| (p.0.get_key().to_vec(), p.clone()))
            .collect();
        let (start_ts, txn_size) = (self.start_ts, planned.len() as u64);
        let pessimistic = self.mode == Mode::Pessimistic;
        while !pending.is_empty() {
            let results = self
                .client
                .per_region(pending.clone(), |c, ctx, group: Vec<Planned>| {
                    let mut req = kvrpcpb::PrewriteRequest::default();
                    req.set_context(ctx);
                    req.set_primary_lock(primary.to_vec());
                    req.start_version = start_ts;
                    req.lock_ttl = lock_ttl(start_ts);
                    req.txn_size = txn_size;
                    match commit_mode {
                        // Only when the whole transaction is in this one request.
                        CommitMode::OnePc => req.try_one_pc = group.len() as u64 == txn_size,
                        CommitMode::AsyncCommit => {
                            req.use_async_commit = true;
                            if group.iter().any(|(m, _)| m.get_key() == primary) {
                                req.set_secondaries(secondaries.clone().into());
                            }
                        }
                        CommitMode::TwoPhase => {}
                    }
                    for (m, locked) in &group {
                        req.mut_mutations().push(m.clone());
                        if pessimistic {
                            req.for_update_ts = start_ts;
                            req.mut_pessimistic_actions().push(if *locked {
                                PessimisticAction::DO_PESSIMISTIC_CHECK
                            } else {
                                PessimisticAction::SKIP_PESSIMISTIC_CHECK
                            });
                        }
                    }
                    async move {
                        let mut r = c.call(req).await?;
                        let answer = (r.min_commit_ts, r.one_pc_commit_ts);
                        Ok((
                            r.region_error.take(),
                            (group, r.take_errors().into_vec(), answer),
                        ))
                    }
                })
                .await?;
            pending.clear();
            let mut locks = vec![];
            for (group, errors, (min_commit_ts, one_pc)) in results {
                if errors.is_empty() {
                    if one_pc > 0 {
                        out.one_pc = Some(one_pc);
                    }
                    // A store that declined async commit (0) makes it two-phase.
                    out.async_min_commit_ts = out
                        .async_min_commit_ts
                        .and_then(|ts| (min_commit_ts > 0).then_some(ts.max(min_commit_ts)));
                    continue;
                }
                for mut e in errors {
                    if !e.has_locked() {
                        return Err(key_error(e));
                    }
                    locks.push(e.take_locked());
                }
                pending.extend(group.into_iter().map(|p| (p.0.get_key().to_vec(), p)));
            }
            self.client.settle(&locks, &mut backoff).await?;
        }
        Ok(out)
    }

    /// Commits `keys` at `commit_ts`; the key errors stores answered.
    async fn commit_keys(&self, keys_: Vec<Vec<u8>>, commit_ts: u64) -> Result<Vec<KeyError>> {
        let start_ts = self.start_ts;
        self.client
            .key_errors(keys_, move |c, ctx, group| {
                let mut req = kvrpcpb::CommitRequest::default();
                req.set_context(ctx);
                req.start_version = start_ts;
                req.commit_version = commit_ts;
                req.set_keys(group.into());
                async move {
                    let mut r = c.call(req).await?;
                    Ok((r.region_error.take(), r.take_error()))
                }
            })
            .await
    }

    /// Rolls back this transaction's locks on `keys`; the key errors stores answered.
    async fn rollback_keys(&self, keys_: Vec<Vec<u8>>) -> Result<Vec<KeyError>> {
        let start_ts = self.start_ts;
        self.client
            .key_errors(keys_, move |c, ctx, group| {
                let mut req = kvrpcpb::BatchRollbackRequest::default();
                req.set_context(ctx);
                req.start_version = start_ts;
                req.set_keys(group.into());
                async move {
                    let mut r = c.call(req).await?;
                    Ok((r.region_error.take(), r.take_error()))
                }
            })
            .await
    }
}
