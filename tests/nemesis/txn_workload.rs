//! What the transactional clients do during a run: list-append transactions over a few
//! keys spread over every region (checked for snapshot isolation by
//! `test_cluster::elle`), bank transfers whose every snapshot must hold the same total
//! (snapshots and a share of the appends read from followers; some snapshots are stale
//! reads from the closest replica),
//! and a client that raises the GC safe point by itself, without resolving locks, as
//! TiKV's clients may. A share of commits die half way (fail points in the client: after
//! the prewrite, or after the primary's commit) and leave their locks for readers and GC
//! to settle. Every PD timestamp a client receives (start timestamps, two-phase commit
//! timestamps, the mover's) is kept, per client, for the check that they are unique and
//! increase.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use client::{
    txn::{CommitMode, Mode, Transaction, TxnClient},
    ReadMode,
};
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use test_cluster::elle::{MicroOp, Txn, TxnOutcome};

/// Lists the append clients share.
pub const LISTS: u64 = 8;
pub const APPENDERS: usize = 4;
pub const ACCOUNTS: usize = 5;
const BALANCE: i64 = 100;
/// How far behind now the safe point mover keeps PD's safe point (the stores' own GC
/// life time is longer, so the mover leads).
const MOVER_LAG_MS: u64 = 3_000;

/// The list `k`, its keys spread over the regions the raw workload splits at.
fn list_key(k: u64) -> Vec<u8> {
    format!("key-{:02}-list", k * 2).into_bytes()
}

fn account(i: usize) -> Vec<u8> {
    format!("key-{:02}-account", i * 3).into_bytes()
}

fn parse_list(v: Option<Vec<u8>>) -> Vec<u64> {
    let Some(v) = v else { return vec![] };
    let s = String::from_utf8(v).expect("lists are text");
    s.split(',')
        .map(|n| n.parse().expect("a list of numbers"))
        .collect()
}

fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// The PD timestamps each client received, in the order it received them: (client,
/// timestamps), one entry per client, added when it stops.
pub type Stamps = Mutex<Vec<(String, Vec<u64>)>>;

/// How a commit (or a transaction that failed before it) ended, as its client knows.
fn outcome<T>(res: &client::Result<T>) -> TxnOutcome {
    match res {
        Ok(_) => TxnOutcome::Committed,
        Err(client::Error::Undetermined(_)) => TxnOutcome::Unknown,
        Err(_) => TxnOutcome::Aborted,
    }
}

/// Every transaction the append clients ran.
#[derive(Default)]
pub struct AppendHistory {
    txns: Mutex<Vec<Txn>>,
    epoch: Mutex<Option<Instant>>,
}

impl AppendHistory {
    fn now_ns(&self) -> u64 {
        let start = *self.epoch.lock().get_or_insert_with(Instant::now);
        start.elapsed().as_nanos() as u64
    }

    pub fn txns(&self) -> Vec<Txn> {
        self.txns.lock().clone()
    }

    /// Records a transaction under the next id.
    fn record(&self, process: usize, ops: Vec<MicroOp>, outcome: TxnOutcome, start_ns: u64) {
        let end_ns = self.now_ns();
        let mut txns = self.txns.lock();
        let id = txns.len();
        txns.push(Txn {
            id,
            process,
            ops,
            outcome,
            start_ns,
            end_ns,
        });
    }
}

/// One append client until `stop`: transactions of one to four reads and appends.
pub fn appender(
    id: usize,
    seed: u64,
    rt: &tokio::runtime::Handle,
    c: &TxnClient,
    history: &AppendHistory,
    stamps: &Stamps,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(seed * 1000 + 100 + id as u64);
    let mut process = id;
    let mut n = 0u64;
    let mut mine = vec![];
    while !stop.load(Ordering::Relaxed) {
        let plan: Vec<(u64, bool)> = (0..rng.gen_range(1..=4))
            .map(|_| (rng.gen_range(0..LISTS), rng.gen_bool(0.5)))
            .collect();
        let mode = if rng.gen_bool(0.2) {
            Mode::Pessimistic
        } else {
            Mode::Optimistic
        };
        let commit_mode = match rng.gen_range(0..10) {
            0 => CommitMode::AsyncCommit,
            1 => CommitMode::OnePc,
            _ => CommitMode::TwoPhase,
        };
        let follower_reads = rng.gen_bool(0.3);
        let start_ns = history.now_ns();
        let mut ops = vec![];
        let res = rt.block_on(async {
            let mut t = c.begin_with(mode).await?;
            let start_ts = t.start_ts();
            mine.push(start_ts);
            t.set_commit_mode(commit_mode);
            if follower_reads {
                t.set_read_mode(ReadMode::Follower);
            }
            for (k, append) in &plan {
                let list = parse_list(t.get(&list_key(*k)).await?);
                // An append reads the list it extends: recorded, so that the checker sees
                // what it depended on (a lost update shows as two appends from one read).
                ops.push(MicroOp::Read {
                    key: *k,
                    value: Some(list.clone()),
                });
                if *append {
                    n += 1;
                    let value = n * APPENDERS as u64 + id as u64;
                    let mut next = list;
                    next.push(value);
                    t.put(&list_key(*k), &encode_list(&next)).await?;
                    ops.push(MicroOp::Append { key: *k, value });
                }
            }
            let commit_ts = t.commit().await?;
            // A two-phase commit takes its timestamp from PD (one that wrote nothing
            // answers with its start timestamp).
            if commit_mode == CommitMode::TwoPhase && commit_ts != start_ts {
                mine.push(commit_ts);
            }
            Ok(commit_ts)
        });
        let out = outcome(&res);
        history.record(process, ops, out, start_ns);
        if out == TxnOutcome::Unknown {
            // A process whose transaction ended unknown runs no more: the next is new.
            process += APPENDERS;
        }
    }
    stamps.lock().push((format!("appender-{id}"), mine));
}

/// Reads every list in one snapshot, as the last transaction of the history.
pub fn final_read(rt: &tokio::runtime::Handle, c: &TxnClient, history: &AppendHistory) -> bool {
    let start_ns = history.now_ns();
    let res = rt.block_on(async {
        let t = c.begin().await?;
        let mut ops = vec![];
        for k in 0..LISTS {
            let list = parse_list(t.get(&list_key(k)).await?);
            ops.push(MicroOp::Read {
                key: k,
                value: Some(list),
            });
        }
        t.rollback().await?;
        Ok::<_, client::Error>(ops)
    });
    let Ok(ops) = res else { return false };
    history.record(usize::MAX, ops, TxnOutcome::Committed, start_ns);
    true
}

/// An account's balance, as stored.
fn balance(v: Option<Vec<u8>>) -> i64 {
    String::from_utf8(v.expect("accounts are never deleted"))
        .expect("text")
        .parse()
        .expect("a number")
}

/// Bank snapshots whose total was off.
#[derive(Default)]
pub struct Bank {
    /// The commit timestamp of the accounts' opening: snapshots below it see none.
    opened_at: Mutex<u64>,
    pub transfers: Mutex<u64>,
    pub reads: Mutex<u64>,
    pub bad_totals: Mutex<Vec<String>>,
}

impl Bank {
    pub fn total() -> i64 {
        BALANCE * ACCOUNTS as i64
    }

    /// Opens every account (before the faults start).
    pub fn open(&self, rt: &tokio::runtime::Handle, c: &TxnClient) -> client::Result<u64> {
        rt.block_on(async {
            let mut t = c.begin().await?;
            for i in 0..ACCOUNTS {
                t.put(&account(i), BALANCE.to_string().as_bytes()).await?;
            }
            let ts = t.commit().await?;
            *self.opened_at.lock() = ts;
            Ok(ts)
        })
    }

    /// The balances in one snapshot, read as `read` says.
    fn balances(
        &self,
        rt: &tokio::runtime::Handle,
        c: &TxnClient,
        read: SnapshotRead,
        mine: &mut Vec<u64>,
    ) -> client::Result<Vec<i64>> {
        rt.block_on(async {
            let t = read.begin(c, mine).await?;
            if t.start_ts() < *self.opened_at.lock() {
                // A stale snapshot from before the bank opened.
                return Err(client::Error::InvalidArgument("no accounts yet".into()));
            }
            let mut out = vec![];
            for i in 0..ACCOUNTS {
                out.push(balance(t.get(&account(i)).await?));
            }
            t.rollback().await?;
            Ok(out)
        })
    }

    /// Checks one snapshot's total, read from the leaders; false if it could not be read.
    pub fn check(&self, rt: &tokio::runtime::Handle, c: &TxnClient) -> bool {
        self.check_with(rt, c, SnapshotRead::Leader, &mut vec![])
    }

    /// Like [`Bank::check`], read as `read` says, keeping a PD timestamp in `mine`.
    fn check_with(
        &self,
        rt: &tokio::runtime::Handle,
        c: &TxnClient,
        read: SnapshotRead,
        mine: &mut Vec<u64>,
    ) -> bool {
        let Ok(balances) = self.balances(rt, c, read, mine) else {
            return false;
        };
        *self.reads.lock() += 1;
        let total: i64 = balances.iter().sum();
        if total != Self::total() {
            self.bad_totals
                .lock()
                .push(format!("a snapshot summed to {total}: {balances:?}"));
        }
        true
    }

    /// Moves money between two accounts, and checks a snapshot now and then, until `stop`.
    pub fn run(
        &self,
        id: usize,
        seed: u64,
        rt: &tokio::runtime::Handle,
        c: &TxnClient,
        stamps: &Stamps,
        stop: &AtomicBool,
    ) {
        let mut rng = StdRng::seed_from_u64(seed * 1000 + 200 + id as u64);
        let mut mine = vec![];
        while !stop.load(Ordering::Relaxed) {
            if rng.gen_bool(0.3) {
                let read = match rng.gen_range(0..3) {
                    0 => SnapshotRead::Leader,
                    1 => SnapshotRead::Follower,
                    _ => SnapshotRead::Stale(Duration::from_millis(rng.gen_range(1000..2000))),
                };
                self.check_with(rt, c, read, &mut mine);
                continue;
            }
            let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
            if a == b {
                continue;
            }
            let amount: i64 = rng.gen_range(1..=20);
            let res = rt.block_on(async {
                let mut t = c.begin().await?;
                mine.push(t.start_ts());
                let from = balance(t.get(&account(a)).await?);
                let to = balance(t.get(&account(b)).await?);
                t.put(&account(a), (from - amount).to_string().as_bytes())
                    .await?;
                t.put(&account(b), (to + amount).to_string().as_bytes())
                    .await?;
                let commit_ts = t.commit().await?;
                mine.push(commit_ts);
                Ok::<_, client::Error>(commit_ts)
            });
            if res.is_ok() {
                *self.transfers.lock() += 1;
            }
        }
        stamps.lock().push((format!("bank-{id}"), mine));
    }
}

/// How a bank check reads its snapshot.
#[derive(Clone, Copy)]
enum SnapshotRead {
    Leader,
    Follower,
    /// From the closest replica alone, this long ago (well above the safe point, which
    /// the mover keeps `MOVER_LAG_MS` behind).
    Stale(Duration),
}

impl SnapshotRead {
    /// Begins the read-only transaction; its start timestamp goes into `mine` when it is
    /// PD's (a stale snapshot's is PD's minus the age: not one PD handed out).
    async fn begin<'a>(
        self,
        c: &'a TxnClient,
        mine: &mut Vec<u64>,
    ) -> client::Result<Transaction<'a>> {
        let t = match self {
            SnapshotRead::Stale(age) => return c.stale_snapshot(age).await,
            SnapshotRead::Leader => c.begin().await?,
            SnapshotRead::Follower => {
                let mut t = c.begin().await?;
                t.set_read_mode(ReadMode::Follower);
                t
            }
        };
        mine.push(t.start_ts());
        Ok(t)
    }
}

/// Raises PD's safe point to now minus a few seconds, without resolving any lock, until
/// `stop`: the stores must settle every lock below it before they drop a version.
pub fn move_safe_point(
    rt: &tokio::runtime::Handle,
    c: &client::Client,
    stamps: &Stamps,
    stop: &AtomicBool,
) {
    let mut mine = vec![];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(700));
        let Ok(now) = rt.block_on(c.pd().get_ts()) else {
            continue;
        };
        mine.push(now);
        let target =
            txn::types::from_physical_ms(txn::types::physical_ms(now).saturating_sub(MOVER_LAG_MS));
        let _ = rt.block_on(c.pd().update_gc_safe_point(target));
    }
    stamps.lock().push(("safe-point-mover".into(), mine));
}
