//! What the clients do during a run: random get (from the leader or a follower) / put /
//! delete / compare-and-swap / batch put over a small key set, each recorded for the
//! linearizability check, and one writer that adds a new key per write and keeps the
//! acknowledged ones, so that lost acknowledged writes are counted exactly.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use client::ReadMode;
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use test_cluster::history::{Op, Outcome, Recorder, Value};

/// Keys the checked clients share; the first region is split into `BUCKETS` so that a
/// batch (two keys of one bucket) stays inside one region and is atomic.
pub const KEYS: usize = 16;
pub const BUCKETS: usize = 4;
pub const CLIENTS: usize = 4;

pub fn key(k: usize) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

/// Where the first region is split.
pub fn split_keys() -> Vec<Vec<u8>> {
    (1..BUCKETS).map(|b| key(b * KEYS / BUCKETS)).collect()
}

fn value(n: Value) -> Vec<u8> {
    n.to_string().into_bytes()
}

fn value_of(v: &[u8]) -> Value {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a value this test never writes: {v:?}"))
}

/// How a client's answer is recorded: an undetermined write is unknown, any other error
/// means it was refused before it could apply (the client retries only those).
fn outcome<T>(
    res: &client::Result<T>,
    ok: impl FnOnce(&T) -> Outcome,
) -> (Outcome, Option<String>) {
    let o = match res {
        Ok(t) => ok(t),
        Err(client::Error::Undetermined(_)) => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    };
    (o, res.as_ref().err().map(|e| e.to_string()))
}

/// Runs one random operation as `process`; returns how it ended.
fn one_op(
    rt: &tokio::runtime::Handle,
    c: &client::Client,
    rec: &Recorder,
    rng: &mut StdRng,
    process: usize,
    n: Value,
) -> Outcome {
    let k = rng.gen_range(0..KEYS);
    let kb = key(k);
    let roll = rng.gen_range(0..100);
    let (inv, (out, err)) = if roll < 40 {
        // Half the reads go to a follower (after a read index), which must be as
        // linearizable as the leader's.
        let mode = if rng.gen_bool(0.5) {
            ReadMode::Follower
        } else {
            ReadMode::Leader
        };
        let inv = rec.invoke(process, Op::Get(kb.clone()));
        let res = rt.block_on(c.get_with(&kb, mode));
        (
            inv,
            outcome(&res, |v| Outcome::Read(v.as_deref().map(value_of))),
        )
    } else if roll < 65 {
        let inv = rec.invoke(process, Op::Put(kb.clone(), n));
        (
            inv,
            outcome(&rt.block_on(c.put(&kb, &value(n))), |_| Outcome::Written),
        )
    } else if roll < 75 {
        let inv = rec.invoke(process, Op::Delete(kb.clone()));
        (
            inv,
            outcome(&rt.block_on(c.delete(&kb)), |_| Outcome::Written),
        )
    } else if roll < 90 {
        let expected = (n > 1 && rng.gen_bool(0.8)).then(|| rng.gen_range(n.saturating_sub(60)..n));
        let inv = rec.invoke(process, Op::Cas(kb.clone(), expected, n));
        let prev = expected.map(value);
        let res = rt.block_on(c.compare_and_swap(&kb, prev.as_deref(), &value(n)));
        (inv, outcome(&res, |r| Outcome::Swapped(r.succeed)))
    } else {
        let bucket = k / (KEYS / BUCKETS) * (KEYS / BUCKETS);
        let k2 = bucket + rng.gen_range(0..KEYS / BUCKETS);
        let pairs = vec![(kb.clone(), n), (key(k2), n)];
        let inv = rec.invoke(process, Op::BatchPut(pairs.clone()));
        let bytes: Vec<_> = pairs.iter().map(|(k, v)| (k.clone(), value(*v))).collect();
        (
            inv,
            outcome(&rt.block_on(c.batch_put(&bytes)), |_| Outcome::Written),
        )
    };
    rec.complete_with(inv, out.clone(), err);
    out
}

/// One checked client until `stop`.
pub fn checked_client(
    id: usize,
    seed: u64,
    rt: &tokio::runtime::Handle,
    c: &client::Client,
    rec: &Recorder,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(seed * 1000 + id as u64);
    // A process whose operation ended unknown issues no more: the next one is new.
    let mut process = id;
    let mut op = 0;
    while !stop.load(Ordering::Relaxed) {
        op += 1;
        let n = op * CLIENTS as Value + id as Value;
        match one_op(rt, c, rec, &mut rng, process, n) {
            Outcome::Unknown => process += CLIENTS,
            Outcome::Failed => std::thread::sleep(Duration::from_millis(20)),
            _ => {}
        }
    }
}

/// Keys written once each; the acknowledged ones must all be there at the end.
#[derive(Default)]
pub struct Ledger {
    pub acked: Mutex<Vec<Vec<u8>>>,
}

pub fn ledger_key(i: usize) -> Vec<u8> {
    format!("ledger-{i:06}").into_bytes()
}

impl Ledger {
    /// Writes new keys until `stop`, remembering each acknowledged one.
    pub fn write(&self, rt: &tokio::runtime::Handle, c: &client::Client, stop: &AtomicBool) {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let k = ledger_key(i);
            i += 1;
            match rt.block_on(c.put(&k, b"acknowledged")) {
                Ok(()) => self.acked.lock().push(k),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Acknowledged keys that are not in the database.
    pub fn lost(
        &self,
        rt: &tokio::runtime::Handle,
        c: &client::Client,
    ) -> Result<Vec<Vec<u8>>, client::Error> {
        let acked = self.acked.lock().clone();
        let mut lost = vec![];
        for chunk in acked.chunks(256) {
            let found: std::collections::HashSet<Vec<u8>> = rt
                .block_on(c.batch_get(chunk))?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            lost.extend(chunk.iter().filter(|k| !found.contains(*k)).cloned());
        }
        Ok(lost)
    }
}
