//! The transactional API over the raftstore (Percolator; the rules are in the `txn`
//! crate). A command takes its keys' latches, waits for a ReadIndex, reads one snapshot,
//! and carries its writes through Raft as one command tagged with the leader term of
//! that snapshot, so that a leader that lost and regained leadership meanwhile (and so
//! may have missed another leader's writes) cannot apply it.
//!
//! Transactional keys are compared with region boundaries in their memcomparable
//! encoding (see `keys::txn`).

mod gc;
mod read;
mod replica;
mod resolve;
mod safe_ts;

pub use replica::read_index_check;
pub use txn::concurrency::ConcurrencyManager;
mod write;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use proto::{
    kvrpcpb::Context,
    metapb,
    raft_cmdpb::{CmdType, Request},
};
use txn::{latch::Latches, Limits, Modify, MvccReader, MvccTxn};

use crate::{
    config::TxnConfig,
    pd_clock::PdClock,
    storage::{cf_name, RawStorage},
    Error, Result,
};

/// Latch slots per store (TiKV: 2048000 by default; this is plenty for a small store).
const LATCH_SLOTS: usize = 1 << 16;
/// Regions whose `max_ts` sync is remembered before the map is pruned to the regions
/// this store still hosts.
const SYNCED_PRUNE_AT: usize = 256;

/// Transactional operations on this store's regions.
#[derive(Clone)]
pub struct TxnStorage {
    kv: RawStorage,
    latches: Arc<Latches>,
    cm: ConcurrencyManager,
    pd: Arc<pd_client::PdClient>,
    /// PD's clock, to bound requests' timestamps by.
    clock: Arc<PdClock>,
    /// The `[txn]` bounds of keys, counts and TTLs.
    limits: Limits,
    /// The leader term in which each region last raised `max_ts` from PD.
    synced: Arc<Mutex<HashMap<u64, u64>>>,
    /// The GC safe point this store knows of: reads below it are refused at once (each
    /// key's own GC fence refuses the rest, see `txn::reader`).
    gc_safe_point: Arc<AtomicU64>,
}

/// What one command leaves for the caller: its answer, its writes (one Raft command per
/// batch), and in-memory locks to keep until the writes are applied.
type Outcome<T> = (T, Vec<MvccTxn>, Option<txn::concurrency::MemLockGuard>);

impl TxnStorage {
    /// Transactions over `kv`'s Raft and engine, with timestamps from `pd`, held to
    /// `cfg`'s bounds. `cm` is the one the raftstore's read checks answer from
    /// ([`read_index_check`]).
    pub fn new(
        kv: RawStorage,
        pd: Arc<pd_client::PdClient>,
        cfg: &TxnConfig,
        cm: ConcurrencyManager,
    ) -> Self {
        TxnStorage {
            kv,
            latches: Arc::new(Latches::new(LATCH_SLOTS)),
            cm,
            clock: Arc::new(PdClock::new(pd.clone(), cfg.max_ts_drift)),
            pd,
            limits: cfg.limits(),
            synced: Arc::default(),
            gc_safe_point: Arc::default(),
        }
    }

    /// Learns the GC safe point (before any version below it is dropped).
    pub fn set_gc_safe_point(&self, safe_point: u64) {
        self.gc_safe_point.fetch_max(safe_point, Ordering::Relaxed);
    }

    /// Refuses a read at `ts` below the GC safe point, or a transaction starting at or
    /// below it (`txn`): the versions a read there needs, and the records a transaction
    /// that old must meet (deletes, a rollback at its own start), may be gone.
    fn above_safe_point(&self, ts: u64, txn: bool) -> Result<()> {
        let safe_point = self.gc_safe_point.load(Ordering::Relaxed);
        let (below, what) = if txn {
            (safe_point > 0 && ts <= safe_point, "a transaction")
        } else {
            (ts < safe_point, "a read")
        };
        if below {
            return Err(Error::InvalidRequest(format!(
                "{what} at {ts} is below the GC safe point {safe_point}: versions it must see may be gone"
            )));
        }
        Ok(())
    }

    /// Refuses a key that is empty or outside the region. (Sizes are checked where locks
    /// are taken: a key stored under an earlier, larger limit stays readable.)
    fn check_in(&self, region: &metapb::Region, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidRequest("key must not be empty".into()));
        }
        let enc = keys::txn::encode_bytes(key);
        if raftstore::util::key_in_region(&enc, region) {
            return Ok(());
        }
        Err(raftstore::Error::KeyNotInRegion {
            key: key.to_vec(),
            region: Box::new(region.clone()),
        }
        .into())
    }

    /// Half the largest Raft command: a batch of lock resolution or GC stops past it,
    /// which leaves room for the one key that passed it.
    fn batch_budget(&self) -> usize {
        (self.kv.limits().max_value_size / 2) as usize
    }

    /// Runs `f` over a snapshot with `keys` latched, then applies its writes, one Raft
    /// command per batch; the latches (and any in-memory locks) are held until Raft
    /// answers the last, even if the client stopped waiting. `sync`: raise `max_ts` from
    /// PD first if this leader term has not (async commit and 1PC).
    async fn run<T>(
        &self,
        ctx: &Context,
        keys: &[Vec<u8>],
        sync: bool,
        f: impl FnOnce(&MvccReader, &metapb::Region, u64) -> Result<Outcome<T>>,
    ) -> Result<T> {
        let bytes: usize = keys.iter().map(Vec::len).sum();
        let limit = self.kv.limits().max_value_size;
        if bytes as u64 > limit {
            return Err(Error::InvalidRequest(format!(
                "the keys come to {bytes} bytes, more than raftstore.raft-entry-max-size ({limit})"
            )));
        }
        // Bounded: a command stuck in Raft holds its latches until Raft answers it.
        let timeout = self.kv.limits().timeout;
        let waited = std::time::Instant::now();
        let latched =
            tokio::time::timeout(timeout, self.latches.acquire(keys.iter().map(|k| &k[..])))
                .await
                .map_err(|_| Error::Timeout(timeout))?;
        crate::metrics::TXN_LATCH_WAIT_SECONDS.observe(waited.elapsed().as_secs_f64());
        let ready = self.kv.read_ready(ctx).await?;
        for k in keys {
            self.check_in(&ready.region, k)?;
        }
        if sync {
            self.sync_max_ts(ready.region.get_id(), ready.term).await?;
        }
        let (out, batches, mem_locks) = {
            let snap = self.kv.engine().snapshot();
            let reader = MvccReader::new(&snap);
            f(&reader, &ready.region, ready.term)?
        };
        if let Some(size) = batches
            .iter()
            .map(MvccTxn::size)
            .find(|s| *s as u64 > limit)
        {
            return Err(Error::InvalidRequest(format!(
                "the command writes {size} bytes, more than raftstore.raft-entry-max-size ({limit})"
            )));
        }
        let keep = Arc::new((latched, mem_locks));
        // A command that changes nothing proposes nothing.
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            self.kv
                .propose_keeping(
                    ctx,
                    ready.term,
                    to_requests(batch.into_modifies()),
                    keep.clone(),
                )
                .await?;
        }
        Ok(out)
    }

    /// Raises `max_ts` from PD once per region and leader term: a new leader knows
    /// nothing of the reads its predecessor served, and async commit must land above
    /// them.
    async fn sync_max_ts(&self, region_id: u64, term: u64) -> Result<()> {
        if self.synced.lock().get(&region_id) == Some(&term) {
            return Ok(());
        }
        let asked = std::time::Instant::now();
        let ts = self.pd.get_ts().await?;
        self.clock.observe(ts, asked);
        self.cm.update_max_ts(ts);
        let mut synced = self.synced.lock();
        if synced.len() >= SYNCED_PRUNE_AT {
            synced.retain(|id, _| self.kv.hosts_region(*id));
        }
        synced.insert(region_id, term);
        Ok(())
    }
}

/// One command's writes as a single batch (commands that are not cut).
fn one<T>(out: T, txn: MvccTxn) -> Outcome<T> {
    (out, vec![txn], None)
}

/// The lock-CF key range of the user keys `[start, end)` (empty end: unbounded) within
/// the region.
fn clip(region: &metapb::Region, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (region_lo, region_hi) = region_bounds(region);
    let lower = keys::txn::lock_key(start).max(region_lo);
    let upper = if end.is_empty() {
        region_hi
    } else {
        keys::txn::lock_key(end).min(region_hi)
    };
    (lower, upper)
}

/// The lock-CF key range of a region (its boundaries are encoded keys).
fn region_bounds(region: &metapb::Region) -> (Vec<u8>, Vec<u8>) {
    (
        keys::data_key(region.get_start_key()),
        keys::data_end_key(region.get_end_key()),
    )
}

/// A command's writes as Raft requests (keys without the data prefix, as the apply
/// side adds it).
fn to_requests(modifies: Vec<Modify>) -> Vec<Request> {
    let origin = |k: &[u8]| {
        keys::origin_key(k)
            .expect("transaction keys carry the data prefix")
            .to_vec()
    };
    modifies
        .into_iter()
        .map(|m| {
            let mut r = Request::default();
            match m {
                Modify::Put { cf, key, value } => {
                    r.set_cmd_type(CmdType::Put);
                    let p = r.mut_put();
                    p.set_cf(cf_name(cf));
                    p.set_key(origin(&key));
                    p.set_value(value);
                }
                Modify::Delete { cf, key } => {
                    r.set_cmd_type(CmdType::Delete);
                    let d = r.mut_delete();
                    d.set_cf(cf_name(cf));
                    d.set_key(origin(&key));
                }
            }
            r
        })
        .collect()
}
