//! Transactions (Percolator over PD's timestamps), as TiKV's clients run them: writes
//! are buffered until commit, then prewritten region by region under a primary lock and
//! committed primary first. Reads see one snapshot (the start timestamp) and resolve the
//! locks they meet.
//!
//! A [`TxnClient`] routes by encoded keys only, with a region cache of its own: PD shows
//! such lookups the transactional view of each region (see `keys::txn`), which must not
//! mix with a raw client's view.

mod commit;
mod resolve;
mod transaction;

use std::{future::Future, time::Duration};

use crate::StoreClient;
use proto::{errorpb, kvrpcpb};

pub use resolve::{GcReport, TxnState};
pub use transaction::{CommitMode, Mode, Transaction};

use crate::{Client, Error, Kind, ReadMode, Result};

/// How long a transaction's locks outlive the moment they are taken, if its client dies.
const LOCK_TTL_MS: u64 = 3_000;

/// The TTL of a lock taken now by the transaction that started at `start_ts`: TTLs
/// count from the start timestamp's physical time, so an older transaction needs more.
fn lock_ttl(start_ts: u64) -> u64 {
    util::clock::unix_ms().saturating_sub(start_ts >> PHYSICAL_SHIFT) + LOCK_TTL_MS
}

/// Bits of a timestamp below its physical milliseconds.
const PHYSICAL_SHIFT: u32 = 18;

/// A connection for transactions.
pub struct TxnClient {
    inner: Client,
}

impl TxnClient {
    /// Connects through PD; every request retries for up to `timeout`.
    pub async fn connect(pd_endpoints: &[String], timeout: Duration) -> Result<TxnClient> {
        Ok(TxnClient {
            inner: Client::connect(pd_endpoints, timeout).await?,
        })
    }

    /// Like [`TxnClient::connect`], dialing with `creds`.
    pub async fn connect_with(
        pd_endpoints: &[String],
        timeout: Duration,
        creds: util::security::Credentials,
    ) -> Result<TxnClient> {
        Ok(TxnClient {
            inner: Client::connect_with(pd_endpoints, timeout, creds).await?,
        })
    }

    /// Transactions on `client`'s PD connection (with a region cache of their own).
    pub fn new(client: &Client) -> TxnClient {
        TxnClient {
            inner: client.with_own_routes(),
        }
    }

    /// A fresh timestamp from PD.
    pub async fn current_ts(&self) -> Result<u64> {
        Ok(self.inner.pd.get_ts().await?)
    }

    /// Begins an optimistic transaction (conflicts are found at commit).
    pub async fn begin(&self) -> Result<Transaction<'_>> {
        self.begin_with(Mode::Optimistic).await
    }

    /// Begins a transaction in `mode`.
    pub async fn begin_with(&self, mode: Mode) -> Result<Transaction<'_>> {
        let ts = self.current_ts().await?;
        Ok(Transaction::new(self, ts, mode))
    }

    /// A read-only view of the data as of `ts`.
    pub fn snapshot(&self, ts: u64) -> Transaction<'_> {
        Transaction::new(self, ts, Mode::Optimistic)
    }

    /// A read-only view of the data as of `max_age` ago, read from the closest replica
    /// without contacting the leader (a stale read); a replica whose safe timestamp is
    /// not there yet sends the read to the leader.
    pub async fn stale_snapshot(&self, max_age: std::time::Duration) -> Result<Transaction<'_>> {
        let now = self.current_ts().await?;
        let ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let ts = now
            .saturating_sub(ms.saturating_mul(1 << PHYSICAL_SHIFT))
            .max(1);
        let mut t = Transaction::new(self, ts, Mode::Optimistic);
        t.set_read_mode(ReadMode::Stale(max_age));
        Ok(t)
    }

    /// Runs `call` against the leader of the region holding transactional `key`,
    /// retrying routing errors; returns its answer and the region's (encoded) end. Every
    /// Percolator command is idempotent, so a request that may have been applied is
    /// retried as a read is.
    async fn on_key<R, F, Fut>(&self, key: &[u8], mode: ReadMode, call: F) -> Result<(R, Vec<u8>)>
    where
        F: Fn(StoreClient, kvrpcpb::Context) -> Fut,
        Fut: Future<Output = grpcio::Result<(Option<errorpb::Error>, R)>>,
    {
        check_txn_key(key)?;
        self.on_encoded(&keys::txn::encode_bytes(key), mode, call)
            .await
    }

    /// Like `on_key`, routed by an encoded key (the empty user key's included). Commands
    /// go to the leader (`ReadMode::Leader`); snapshot reads as their transaction says.
    async fn on_encoded<R, F, Fut>(
        &self,
        encoded: &[u8],
        mode: ReadMode,
        call: F,
    ) -> Result<(R, Vec<u8>)>
    where
        F: Fn(StoreClient, kvrpcpb::Context) -> Fut,
        Fut: Future<Output = grpcio::Result<(Option<errorpb::Error>, R)>>,
    {
        let (r, route) = self
            .inner
            .on_region(Kind::Read(mode), encoded, |c, ctx, _| {
                let f = call(c, ctx);
                async move {
                    let (re, r) = f.await?;
                    Ok((re, String::new(), r))
                }
            })
            .await?;
        Ok((r, route.region.get_end_key().to_vec()))
    }

    /// Sends each region's share of `items` (with their transactional keys) to its
    /// leader, all at once, regrouping and retrying on routing errors.
    async fn per_region<T, R, F, Fut>(&self, items: Vec<(Vec<u8>, T)>, call: F) -> Result<Vec<R>>
    where
        T: Clone,
        F: Fn(StoreClient, kvrpcpb::Context, Vec<T>) -> Fut,
        Fut: Future<Output = grpcio::Result<(Option<errorpb::Error>, R)>>,
    {
        let encoded: Vec<(Vec<u8>, T)> = items
            .into_iter()
            .map(|(k, t)| (keys::txn::encode_bytes(&k), t))
            .collect();
        self.inner
            .per_region(
                Kind::Read(ReadMode::Leader),
                &encoded,
                |(k, _)| k,
                |c, ctx, group| {
                    let f = call(c, ctx, group.iter().map(|(_, t)| t.clone()).collect());
                    async move {
                        let (re, r) = f.await?;
                        Ok((re, String::new(), r))
                    }
                },
            )
            .await
    }
}

impl TxnClient {
    /// Sends `keys` region by region through `call` (a region's keys in, its answer's
    /// key error out); the key errors answered.
    async fn key_errors<F, Fut>(
        &self,
        keys_: Vec<Vec<u8>>,
        call: F,
    ) -> Result<Vec<kvrpcpb::KeyError>>
    where
        F: Fn(StoreClient, kvrpcpb::Context, Vec<Vec<u8>>) -> Fut,
        Fut: Future<Output = grpcio::Result<(Option<errorpb::Error>, kvrpcpb::KeyError)>>,
    {
        if keys_.is_empty() {
            return Ok(vec![]);
        }
        let items = keys_.into_iter().map(|k| (k.clone(), k)).collect();
        let answers = self.per_region(items, call).await?;
        Ok(answers
            .into_iter()
            .filter(|e| *e != kvrpcpb::KeyError::default())
            .collect())
    }
}

/// The first of `errors` as the caller's error, or `Ok` if there is none.
fn first_error(errors: Vec<kvrpcpb::KeyError>) -> Result<()> {
    errors
        .into_iter()
        .next()
        .map_or(Ok(()), |e| Err(key_error(e)))
}

fn check_txn_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".into()));
    }
    Ok(())
}

/// The first user key at or after a region boundary (empty: the end of the key space).
/// PD shows this client boundaries already rounded to encodings, but a store's answer
/// (a split's new regions) carries the plain ones.
fn boundary_key(boundary: &[u8]) -> Vec<u8> {
    if boundary.is_empty() {
        return vec![];
    }
    keys::txn::decode_bytes(&keys::txn::ceil_encoded(boundary))
        .expect("ceil_encoded returns an encoding")
        .0
}

/// A key error a transaction cannot act on, as the caller's error.
fn key_error(mut e: kvrpcpb::KeyError) -> Error {
    if e.has_conflict() {
        let c = e.take_conflict();
        return Error::Conflict {
            key: c.key,
            start_ts: c.start_ts,
            conflict_commit_ts: c.conflict_commit_ts,
        };
    }
    if e.has_already_exist() {
        return Error::AlreadyExists(e.take_already_exist().key);
    }
    if e.has_txn_not_found() {
        let t = e.get_txn_not_found();
        return Error::Aborted(format!(
            "transaction {} left no lock on its primary key",
            t.start_ts
        ));
    }
    if e.has_commit_ts_expired() {
        return Error::Aborted("commit timestamp expired".into());
    }
    let why = [e.get_abort(), e.get_retryable()]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("unknown key error")
        .to_string();
    Error::Aborted(why)
}
