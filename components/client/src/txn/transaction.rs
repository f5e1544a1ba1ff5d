//! One transaction: its buffered writes and its snapshot reads.

use std::collections::{BTreeMap, BTreeSet};

use proto::kvrpcpb::{self, Op};

use super::{boundary_key, key_error, lock_ttl, TxnClient};
use crate::{Backoff, KvPair, ReadMode, Result};

/// When a transaction finds its conflicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// At commit: the second committer of a key fails.
    Optimistic,
    /// When a key is written or locked: each such key is locked at once (waiting for
    /// another transaction's lock), and fails then if it was written since the
    /// transaction started.
    Pessimistic,
}

/// How a transaction commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// Prewrite, then commit the primary (the commit point), then the secondaries.
    #[default]
    TwoPhase,
    /// Committed as soon as every prewrite succeeds, at the highest min_commit_ts the
    /// stores chose (one round trip fewer before the answer).
    AsyncCommit,
    /// When every key is in one region: prewrite and commit in one request. Otherwise
    /// two-phase.
    OnePc,
}

/// A buffered write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Buffered {
    Put(Vec<u8>),
    Delete,
    /// Only checked for conflicts at commit (`lock_keys` in optimistic mode).
    Lock,
}

/// A transaction. Dropping it without commit or rollback leaves any locks it took to
/// expire.
pub struct Transaction<'a> {
    pub(super) client: &'a TxnClient,
    pub(super) start_ts: u64,
    pub(super) mode: Mode,
    pub(super) buffer: BTreeMap<Vec<u8>, Buffered>,
    /// Keys locked pessimistically.
    pub(super) locked: BTreeSet<Vec<u8>>,
    /// The primary key, once one is chosen (the first key locked or written).
    pub(super) primary: Option<Vec<u8>>,
    pub(super) commit_mode: CommitMode,
    /// Where its snapshot reads are served.
    pub(super) read_mode: ReadMode,
}

impl<'a> Transaction<'a> {
    pub(super) fn new(client: &'a TxnClient, start_ts: u64, mode: Mode) -> Self {
        Transaction {
            client,
            start_ts,
            mode,
            buffer: BTreeMap::new(),
            locked: BTreeSet::new(),
            primary: None,
            commit_mode: CommitMode::default(),
            read_mode: ReadMode::Leader,
        }
    }

    /// Chooses how this transaction commits (two-phase by default).
    pub fn set_commit_mode(&mut self, mode: CommitMode) {
        self.commit_mode = mode;
    }

    /// Serves this transaction's reads as `mode` says (`follower`, `closest`; a stale
    /// mode is for read-only snapshots: see `TxnClient::stale_snapshot`).
    pub fn set_read_mode(&mut self, mode: ReadMode) {
        self.read_mode = mode;
    }

    /// The snapshot this transaction reads.
    pub fn start_ts(&self) -> u64 {
        self.start_ts
    }

    /// The value of `key`: this transaction's own write, or the snapshot's.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.buffer.get(key) {
            Some(Buffered::Put(v)) => Ok(Some(v.clone())),
            Some(Buffered::Delete) => Ok(None),
            _ => self.snapshot_get(key).await,
        }
    }

    /// The pairs of the keys that exist, in key order.
    pub async fn batch_get(&self, keys_: &[Vec<u8>]) -> Result<Vec<KvPair>> {
        let mut out = vec![];
        for k in keys_.iter().collect::<BTreeSet<_>>() {
            if let Some(v) = self.get(k).await? {
                out.push((k.clone(), v));
            }
        }
        Ok(out)
    }

    /// Sets `key` to `value` at commit.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(key, Buffered::Put(value.to_vec())).await
    }

    /// Removes `key` at commit.
    pub async fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.write(key, Buffered::Delete).await
    }

    /// Makes the commit fail if another transaction writes any of `keys` after this one
    /// started, as if this one wrote them (pessimistic: locks them now).
    pub async fn lock_keys(&mut self, keys_: &[Vec<u8>]) -> Result<()> {
        self.writable()?;
        for k in keys_ {
            super::check_txn_key(k)?;
        }
        if self.mode == Mode::Pessimistic {
            return self.lock_pessimistic(keys_).await;
        }
        for k in keys_ {
            self.buffer.entry(k.clone()).or_insert(Buffered::Lock);
        }
        Ok(())
    }

    /// A stale snapshot reads data up to its bound old: writes decided on it could
    /// lose updates to keys it read, so it takes none.
    fn writable(&self) -> Result<()> {
        match self.read_mode {
            ReadMode::Stale(_) => Err(crate::Error::InvalidArgument(
                "a stale snapshot is read-only: begin a transaction to write".into(),
            )),
            _ => Ok(()),
        }
    }

    async fn write(&mut self, key: &[u8], w: Buffered) -> Result<()> {
        self.writable()?;
        super::check_txn_key(key)?;
        if self.mode == Mode::Pessimistic && !self.locked.contains(key) {
            self.lock_pessimistic(&[key.to_vec()]).await?;
        }
        self.buffer.insert(key.to_vec(), w);
        Ok(())
    }

    /// Pairs in `[start, end)` (an empty end: to the end of the key space), at most
    /// `limit`, with this transaction's own writes in place.
    pub async fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        let in_range =
            |k: &Vec<u8>| k.as_slice() >= start && (end.is_empty() || k.as_slice() < end);
        // Own deletes may hide as many stored pairs as there are.
        let hidden = self.buffer.keys().filter(|k| in_range(k)).count();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .snapshot_scan(start, end, limit.saturating_add(hidden))
            .await?
            .into_iter()
            .collect();
        for (k, w) in self.buffer.iter().filter(|(k, _)| in_range(k)) {
            match w {
                Buffered::Put(v) => {
                    merged.insert(k.clone(), v.clone());
                }
                Buffered::Delete => {
                    merged.remove(k);
                }
                Buffered::Lock => {}
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// KvGet at the start timestamp, resolving the locks it meets.
    async fn snapshot_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut backoff = Backoff::new(self.client.inner.timeout);
        let mut skip: Vec<u64> = vec![];
        loop {
            let (mut resp, _) = self
                .client
                .on_key(key, self.read_mode, |c, mut ctx| {
                    ctx.set_resolved_locks(skip.clone());
                    let mut req = kvrpcpb::GetRequest::default();
                    req.set_context(ctx);
                    req.set_key(key.to_vec());
                    req.version = self.start_ts;
                    async move {
                        let mut r = c.call(req).await?;
                        Ok((r.region_error.take(), r))
                    }
                })
                .await?;
            if !resp.has_error() {
                return Ok((!resp.not_found).then(|| resp.take_value()));
            }
            let mut e = resp.take_error();
            if !e.has_locked() {
                return Err(key_error(e));
            }
            self.client
                .resolve_for_read(&e.take_locked(), self.start_ts, &mut skip, &mut backoff)
                .await?;
        }
    }

    /// KvScan at the start timestamp across regions, resolving the locks it meets.
    async fn snapshot_scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        let mut out: Vec<KvPair> = vec![];
        let mut cur = start.to_vec();
        let mut backoff = Backoff::new(self.client.inner.timeout);
        let mut skip: Vec<u64> = vec![];
        while out.len() < limit {
            let page = (limit - out.len()).min(crate::SCAN_PAGE);
            let (mut resp, region_end) = self
                .client
                .on_encoded(
                    &keys::txn::encode_bytes(&cur),
                    self.read_mode,
                    |c, mut ctx| {
                        ctx.set_resolved_locks(skip.clone());
                        let mut req = kvrpcpb::ScanRequest::default();
                        req.set_context(ctx);
                        req.set_start_key(cur.clone());
                        req.set_end_key(end.to_vec());
                        req.limit = page as u32;
                        req.version = self.start_ts;
                        async move {
                            let mut r = c.call(req).await?;
                            Ok((r.region_error.take(), r))
                        }
                    },
                )
                .await?;
            if let Some(mut lock) = locked_in(&mut resp) {
                self.client
                    .resolve_for_read(&lock.take_locked(), self.start_ts, &mut skip, &mut backoff)
                    .await?;
                continue;
            }
            if resp.has_error() {
                return Err(key_error(resp.take_error()));
            }
            let pairs: Vec<KvPair> = resp
                .take_pairs()
                .into_iter()
                .map(|mut p| (p.take_key(), p.take_value()))
                .collect();
            let full = pairs.len() == page;
            if let (true, Some((last, _))) = (full, pairs.last()) {
                cur = last.clone();
                cur.push(0);
                out.extend(pairs);
                continue;
            }
            out.extend(pairs);
            let next = boundary_key(&region_end);
            if region_end.is_empty() || (!end.is_empty() && next.as_slice() >= end) {
                break;
            }
            cur = next;
        }
        Ok(out)
    }

    /// Locks `keys` pessimistically at the start timestamp: fails on a write since then,
    /// waits out (or resolves) another transaction's lock. The primary is locked first,
    /// alone: every other lock names it, and a resolver meeting one must find it.
    async fn lock_pessimistic(&mut self, keys_: &[Vec<u8>]) -> Result<()> {
        let Some(first) = keys_.first() else {
            return Ok(());
        };
        if self.primary.is_none() {
            self.lock_naming(std::slice::from_ref(first), first).await?;
            self.primary = Some(first.clone());
        }
        let primary = self.primary.clone().expect("set above");
        self.lock_naming(keys_, &primary).await
    }

    /// Locks `keys` under `primary`. Every region's grant is recorded before an error
    /// is returned, so that a rollback releases it.
    async fn lock_naming(&mut self, keys_: &[Vec<u8>], primary: &[u8]) -> Result<()> {
        let mut backoff = Backoff::new(self.client.inner.timeout);
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = keys_
            .iter()
            .filter(|k| !self.locked.contains(*k))
            .map(|k| (k.clone(), k.clone()))
            .collect();
        while !pending.is_empty() {
            let start_ts = self.start_ts;
            let results = self
                .client
                .per_region(pending.clone(), |c, ctx, group: Vec<Vec<u8>>| {
                    let mut req = kvrpcpb::PessimisticLockRequest::default();
                    req.set_context(ctx);
                    for k in &group {
                        let mut m = kvrpcpb::Mutation::default();
                        m.set_op(Op::PessimisticLock);
                        m.set_key(k.clone());
                        req.mut_mutations().push(m);
                    }
                    req.set_primary_lock(primary.to_vec());
                    req.start_version = start_ts;
                    req.for_update_ts = start_ts;
                    req.lock_ttl = lock_ttl(start_ts);
                    async move {
                        let mut r = c.call(req).await?;
                        Ok((r.region_error.take(), (group, r.take_errors().into_vec())))
                    }
                })
                .await?;
            pending.clear();
            let (mut locks, mut refused) = (vec![], None);
            for (group, errors) in results {
                if errors.is_empty() {
                    self.locked.extend(group);
                    continue;
                }
                for mut e in errors {
                    if e.has_locked() {
                        locks.push(e.take_locked());
                    } else {
                        refused = refused.or(Some(e));
                    }
                }
                pending.extend(group.into_iter().map(|k| (k.clone(), k)));
            }
            if let Some(e) = refused {
                return Err(key_error(e));
            }
            self.client.settle(&locks, &mut backoff).await?;
        }
        Ok(())
    }
}

/// The first pair of a scan that met a lock (TiKV sets it on the pair and at the top).
fn locked_in(resp: &mut kvrpcpb::ScanResponse) -> Option<kvrpcpb::KeyError> {
    if resp.get_error().has_locked() {
        return Some(resp.take_error());
    }
    resp.mut_pairs()
        .iter_mut()
        .find(|p| p.get_error().has_locked())
        .map(|p| p.take_error())
}

impl TxnClient {
    /// Resolves the locks a writer met; waits if one's transaction is alive.
    pub(super) async fn settle(
        &self,
        locks: &[kvrpcpb::LockInfo],
        backoff: &mut Backoff,
    ) -> Result<()> {
        for lock in locks {
            if let super::resolve::Resolved::Alive = self.resolve(lock, 0).await? {
                return backoff.wait(super::resolve::locked_by(lock)).await;
            }
        }
        Ok(())
    }
}

impl From<Buffered> for Op {
    fn from(w: Buffered) -> Op {
        match w {
            Buffered::Put(_) => Op::Put,
            Buffered::Delete => Op::Del,
            Buffered::Lock => Op::Lock,
        }
    }
}
