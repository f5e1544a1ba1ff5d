//! Reading multi-version records: a key's lock, its versions, its value at a timestamp.

use engine::Cf;
use keys::txn::{
    after_versions, gc_fence_key, lock_key, split_versioned, user_key, value_key, write_key,
};

use crate::{
    types::{Kind, Lock, Write},
    Error, Result, Snapshot,
};

/// What a transaction left on a key, found by its start timestamp.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitRecord {
    /// Committed at this timestamp.
    Committed(u64),
    /// Rolled back (a rollback record, or a commit record of another transaction that
    /// carries its rollback).
    RolledBack,
    /// Nothing: never prewritten here, or its records were collected.
    None,
}

/// The transactions whose locks a read passes (TiKV's `resolved_locks` and
/// `committed_locks` of a request's context).
#[derive(Debug, Default, Clone)]
pub struct Bypass {
    /// Transactions known to be rolled back (or committed past the read): their locks
    /// are ignored.
    pub resolved: Vec<u64>,
    /// Transactions known to be committed before the read: their locks' values are read.
    pub committed: Vec<u64>,
}

/// Reads one region's records through a snapshot.
pub struct MvccReader<'a> {
    snap: &'a dyn Snapshot,
}

/// The end (exclusive) of every version of the key whose lock key is `prefix`.
fn decode<M: protobuf::Message>(what: &str, key: &[u8], bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes)
        .map_err(|e| Error::Corrupted(format!("{what} at {key:?} does not decode: {e}")))
}

impl<'a> MvccReader<'a> {
    /// A reader over `snap`.
    pub fn new(snap: &'a dyn Snapshot) -> Self {
        MvccReader { snap }
    }

    /// The lock on `key`, if any.
    pub fn load_lock(&self, key: &[u8]) -> Result<Option<Lock>> {
        let k = lock_key(key);
        self.snap
            .get(Cf::Lock, &k)?
            .map(|v| decode("lock", &k, &v))
            .transpose()
    }

    /// Walks `key`'s versions committed at or below `ts`, newest first, until `f` says
    /// stop.
    pub fn versions(
        &self,
        key: &[u8],
        ts: u64,
        f: &mut dyn FnMut(u64, Write) -> Result<bool>,
    ) -> Result<()> {
        self.walk_versions(key, ts, false, f)
    }

    /// Walks `key`'s versions committed at or below `ts`, oldest first (its GC fence,
    /// if any, comes first), until `f` says stop.
    pub fn versions_oldest_first(
        &self,
        key: &[u8],
        ts: u64,
        f: &mut dyn FnMut(u64, Write) -> Result<bool>,
    ) -> Result<()> {
        self.walk_versions(key, ts, true, f)
    }

    fn walk_versions(
        &self,
        key: &[u8],
        ts: u64,
        oldest_first: bool,
        f: &mut dyn FnMut(u64, Write) -> Result<bool>,
    ) -> Result<()> {
        let start = write_key(key, ts);
        let end = after_versions(key);
        self.snap
            .scan(Cf::Write, &start, &end, oldest_first, &mut |k, v| {
                let (_, commit_ts) = split_versioned(k)?;
                f(commit_ts, decode("commit record", k, v)?)
            })
    }

    /// The safe point `key` was garbage-collected at (0: never).
    pub fn gc_fence(&self, key: &[u8]) -> Result<u64> {
        let k = gc_fence_key(key);
        Ok(self
            .snap
            .get(Cf::Write, &k)?
            .map(|v| decode::<Write>("gc fence", &k, &v))
            .transpose()?
            .map_or(0, |w| w.collected_below))
    }

    /// Refuses a transaction that started at `ts` on `key` if GC dropped records of the
    /// key at or below `ts` (a rollback at its start among them).
    pub fn check_gc_fence(&self, key: &[u8], what: &'static str, ts: u64) -> Result<()> {
        let safe_point = self.gc_fence(key)?;
        if safe_point > 0 && ts <= safe_point {
            return Err(Error::BelowSafePoint {
                key: key.to_vec(),
                what,
                ts,
                safe_point,
            });
        }
        Ok(())
    }

    /// The newest version committed at or below `ts`, of any kind.
    pub fn seek_write(&self, key: &[u8], ts: u64) -> Result<Option<(u64, Write)>> {
        let mut found = None;
        self.versions(key, ts, &mut |commit_ts, w| {
            found = Some((commit_ts, w));
            Ok(false)
        })?;
        Ok(found)
    }

    /// The record committed exactly at `commit_ts`, if any.
    pub fn write_at(&self, key: &[u8], commit_ts: u64) -> Result<Option<Write>> {
        Ok(self
            .seek_write(key, commit_ts)?
            .filter(|(ts, _)| *ts == commit_ts)
            .map(|(_, w)| w))
    }

    /// What the transaction that started at `start_ts` left on `key`.
    pub fn commit_record(&self, key: &[u8], start_ts: u64) -> Result<CommitRecord> {
        let mut found = CommitRecord::None;
        self.versions(key, u64::MAX, &mut |commit_ts, w| {
            if commit_ts < start_ts {
                return Ok(false);
            }
            if w.start_ts == start_ts {
                found = if w.kind == Kind::ROLLBACK {
                    CommitRecord::RolledBack
                } else {
                    CommitRecord::Committed(commit_ts)
                };
                return Ok(false);
            }
            if commit_ts == start_ts && w.has_overlapped_rollback {
                found = CommitRecord::RolledBack;
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// The value a Put record or lock holds: inline, or in the txn value CF.
    pub fn value_of(&self, key: &[u8], start_ts: u64, short: Option<&[u8]>) -> Result<Vec<u8>> {
        if let Some(v) = short {
            return Ok(v.to_vec());
        }
        let k = value_key(key, start_ts);
        self.snap.get(Cf::TxnValue, &k)?.ok_or_else(|| {
            Error::Corrupted(format!(
                "the value of key {key:?} written by transaction {start_ts} is missing"
            ))
        })
    }

    /// The newest committed value of `key` at or below `ts`, ignoring locks. A read that
    /// finds no Put or Delete and meets the key's GC fence above `ts` is refused: the
    /// version it should see may have been dropped.
    pub fn committed_value(&self, key: &[u8], ts: u64) -> Result<Option<Vec<u8>>> {
        let mut put = None;
        let mut deleted = false;
        let mut fence = 0;
        self.versions(key, ts, &mut |_, w| match w.kind {
            Kind::PUT => {
                put = Some(w);
                Ok(false)
            }
            Kind::DELETE => {
                deleted = true;
                Ok(false)
            }
            Kind::GC_FENCE => {
                fence = w.collected_below;
                Ok(false)
            }
            _ => Ok(true),
        })?;
        if ts < fence {
            return Err(Error::BelowSafePoint {
                key: key.to_vec(),
                what: "a read",
                ts,
                safe_point: fence,
            });
        }
        match put {
            Some(w) if !deleted => Ok(Some(self.value_of(
                key,
                w.start_ts,
                w.has_short_value.then_some(&w.short_value[..]),
            )?)),
            _ => Ok(None),
        }
    }

    /// Whether `key` has a live value now (for inserts).
    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        let mut live = false;
        self.versions(key, u64::MAX, &mut |_, w| match w.kind {
            Kind::PUT => {
                live = true;
                Ok(false)
            }
            Kind::DELETE => Ok(false),
            _ => Ok(true),
        })?;
        Ok(live)
    }

    /// `key`'s value as a snapshot read at `ts` sees it: fails on a lock the read must
    /// wait for (Percolator), passes the locks it may.
    pub fn get(&self, key: &[u8], ts: u64, bypass: &Bypass) -> Result<Option<Vec<u8>>> {
        if let Some(lock) = self.load_lock(key)? {
            if let Some(v) = check_lock_for_read(key, lock, ts, bypass, Some(self))? {
                return Ok(v);
            }
        }
        self.committed_value(key, ts)
    }

    /// Calls `f` on every user key that has a lock or a version in `[lower, upper)`
    /// (lock-CF key bounds), in order (descending if `reverse`), until it says stop. Locks
    /// are read a chunk at a time beside the versions, so memory stays bounded however
    /// many the range holds.
    pub fn keys_in(
        &self,
        lower: &[u8],
        upper: &[u8],
        reverse: bool,
        f: &mut dyn FnMut(Vec<u8>) -> Result<bool>,
    ) -> Result<()> {
        let mut locks = LockCursor::new(self, lower, upper, reverse);
        let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
        let mut last: Option<Vec<u8>> = None;
        let mut stopped = false;
        let mut emit = |prefix: &[u8], stopped: &mut bool| -> Result<bool> {
            let go_on = f(user_key(prefix)?)?;
            *stopped = !go_on;
            Ok(go_on)
        };
        self.snap
            .scan(Cf::Write, lower, upper, reverse, &mut |k, _| {
                let (prefix, _) = split_versioned(k)?;
                if last.as_deref() == Some(prefix) {
                    return Ok(true);
                }
                while let Some(l) = locks.next_if(|l| before(l, prefix))? {
                    if !emit(&l, &mut stopped)? {
                        return Ok(false);
                    }
                }
                locks.next_if(|l| l == prefix)?;
                last = Some(prefix.to_vec());
                emit(prefix, &mut stopped)
            })?;
        while !stopped {
            match locks.next_if(|_| true)? {
                Some(l) => {
                    emit(&l, &mut stopped)?;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// The user keys with commit records in `[lower, upper)` (write-CF key bounds), in
    /// order, up to `limit`.
    pub fn written_keys(&self, lower: &[u8], upper: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut out = vec![];
        let mut last: Vec<u8> = vec![];
        self.snap
            .scan(Cf::Write, lower, upper, false, &mut |k, _| {
                let (prefix, _) = split_versioned(k)?;
                if prefix != last.as_slice() {
                    if out.len() == limit {
                        return Ok(false);
                    }
                    last = prefix.to_vec();
                    out.push(user_key(prefix)?);
                }
                Ok(true)
            })?;
        Ok(out)
    }

    /// The least start timestamp of the locks in `[lower, upper)` (lock keys).
    pub fn min_lock_ts(&self, lower: &[u8], upper: &[u8]) -> Result<Option<u64>> {
        let mut min: Option<u64> = None;
        self.snap.scan(Cf::Lock, lower, upper, false, &mut |k, v| {
            let lock: Lock = decode("lock", k, v)?;
            min = Some(min.map_or(lock.start_ts, |m| m.min(lock.start_ts)));
            Ok(true)
        })?;
        Ok(min)
    }

    /// Every lock in `[lower, upper)` (lock-CF key bounds) that `keep` accepts, with its
    /// user key, up to `limit` (0: no limit) and until the locks taken come to `max_bytes`
    /// (at least one is taken: a lock holds its primary and an async-commit primary its
    /// secondaries, so a few can be large).
    pub fn scan_locks(
        &self,
        lower: &[u8],
        upper: &[u8],
        keep: &dyn Fn(&Lock) -> bool,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Lock)>> {
        let mut out = vec![];
        let mut bytes = 0;
        self.snap.scan(Cf::Lock, lower, upper, false, &mut |k, v| {
            let lock: Lock = decode("lock", k, v)?;
            if keep(&lock) {
                bytes += k.len() + v.len();
                if bytes > max_bytes && !out.is_empty() {
                    return Ok(false);
                }
                out.push((user_key(k)?, lock));
            }
            Ok(limit == 0 || out.len() < limit)
        })?;
        Ok(out)
    }
}

/// Lock keys in a range, in order, read a chunk at a time.
struct LockCursor<'r, 'a> {
    reader: &'r MvccReader<'a>,
    /// What is left to read: `[lower, upper)`.
    lower: Vec<u8>,
    upper: Vec<u8>,
    reverse: bool,
    buf: std::collections::VecDeque<Vec<u8>>,
    exhausted: bool,
}

/// Locks read per chunk by [`LockCursor`].
const LOCK_CHUNK: usize = 64;

impl<'r, 'a> LockCursor<'r, 'a> {
    fn new(reader: &'r MvccReader<'a>, lower: &[u8], upper: &[u8], reverse: bool) -> Self {
        LockCursor {
            reader,
            lower: lower.to_vec(),
            upper: upper.to_vec(),
            reverse,
            buf: Default::default(),
            exhausted: false,
        }
    }

    /// Takes the next lock key if `cond` accepts it.
    fn next_if(&mut self, cond: impl Fn(&[u8]) -> bool) -> Result<Option<Vec<u8>>> {
        if self.buf.is_empty() && !self.exhausted {
            self.fill()?;
        }
        match self.buf.front() {
            Some(k) if cond(k) => Ok(self.buf.pop_front()),
            _ => Ok(None),
        }
    }

    fn fill(&mut self) -> Result<()> {
        let buf = &mut self.buf;
        self.reader.snap.scan(
            Cf::Lock,
            &self.lower,
            &self.upper,
            self.reverse,
            &mut |k, _| {
                buf.push_back(k.to_vec());
                Ok(buf.len() < LOCK_CHUNK)
            },
        )?;
        self.exhausted = self.buf.len() < LOCK_CHUNK;
        if let Some(last) = self.buf.back() {
            if self.reverse {
                self.upper = last.clone();
            } else {
                self.lower = last.clone();
                self.lower.push(0);
            }
        }
        Ok(())
    }
}

/// Decides what a read at `ts` does about `lock`: `Ok(None)` to read past it,
/// `Ok(Some(value))` to read the value of a transaction the client says committed (from
/// `reader`; an in-memory lock, which has no reader, is simply passed), or the lock as
/// an error.
pub(crate) fn check_lock_for_read(
    key: &[u8],
    lock: Lock,
    ts: u64,
    bypass: &Bypass,
    reader: Option<&MvccReader>,
) -> Result<Option<Option<Vec<u8>>>> {
    if lock.start_ts > ts
        || matches!(lock.kind, Kind::LOCK | Kind::PESSIMISTIC)
        || bypass.resolved.contains(&lock.start_ts)
        // The transaction cannot commit at or below `ts` (async commit pushed it).
        || lock.min_commit_ts > ts
    {
        return Ok(None);
    }
    if bypass.committed.contains(&lock.start_ts) {
        let Some(reader) = reader else {
            return Ok(None);
        };
        return Ok(Some(match lock.kind {
            Kind::PUT => Some(reader.value_of(
                key,
                lock.start_ts,
                lock.has_short_value.then_some(&lock.short_value[..]),
            )?),
            _ => None,
        }));
    }
    Err(Error::KeyIsLocked {
        key: key.to_vec(),
        lock: Box::new(lock),
    })
}

/// Encodes a record for the write batch.
pub(crate) fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a record into memory cannot fail")
}
