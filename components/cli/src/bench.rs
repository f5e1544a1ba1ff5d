//! `kv-bench`: a bounded load generator. N workers run a workload for a fixed time (or
//! number of operations) against the cluster through the client; latencies go into an
//! HDR histogram. The stores' own `/metrics` are scraped before and after, so the report
//! includes what the cluster did for the load (fsyncs per acknowledged write).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;

use client::{
    txn::{CommitMode, TxnClient},
    Client, Error, Result,
};

use crate::{kvctl::endpoints, scrape};

/// kv-bench: load a Flotilla cluster and report throughput and latency.
#[derive(Debug, Parser)]
#[command(
    name = "kv-bench",
    version,
    about = "Load generator and benchmark for Flotilla"
)]
pub struct BenchArgs {
    /// PD addresses, comma-separated.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub pd: String,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32)]
    pub threads: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = conf::parse_duration)]
    pub duration: Duration,
    /// Stop after this many operations in all (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub ops: u64,
    /// What the workers do.
    #[arg(long, value_enum, default_value_t = Workload::Write)]
    pub workload: Workload,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// How the `txn` workload commits.
    #[arg(long, value_enum, default_value_t = TxnCommit::TwoPhase)]
    pub txn_commit: TxnCommit,
    /// Send raw writes outside a client session (TiKV's behaviour: a write whose
    /// answer is lost is not resent), to measure what sessions cost.
    #[arg(long)]
    pub no_session: bool,
    /// Where reads are served: leader, follower, closest (a replica in --zone, else the
    /// leader) or stale=DURATION.
    #[arg(long, default_value = "leader")]
    pub read: client::ReadMode,
    /// The zone the bench runs in (the stores' `zone` label), for closest and stale reads.
    #[arg(long)]
    pub zone: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// TLS (as kvctl's flags).
    #[command(flatten)]
    pub tls: crate::kvctl::TlsArgs,
}

/// How transactions commit in the `txn` workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TxnCommit {
    /// Two-phase commit, the two keys in different regions.
    TwoPhase,
    /// Async commit, the two keys in different regions.
    AsyncCommit,
    /// One-phase commit, both keys in one region.
    OnePc,
}

/// Workloads (YCSB-like).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Only puts.
    Write,
    /// Only gets (load the keys first with `write`).
    Read,
    /// Half gets, half puts (YCSB A).
    Mixed,
    /// Transactions that read two keys and write both (`--txn-commit` says how they
    /// commit). The key space is split in two first; a conflict counts as an error.
    Txn,
    /// Transactions that update one key, `hot` (1PC): old versions pile up under it
    /// unless GC drops them. Run it with one thread (others would conflict).
    Hot,
}

/// What a run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Raft log fsyncs on all stores during the run.
    pub fsyncs: Option<f64>,
    /// Writes applied and answered on leaders during the run.
    pub writes_applied: Option<f64>,
    /// fsyncs / writes_applied.
    pub fsyncs_per_write: Option<f64>,
}

/// (fsyncs, writes applied) summed over every store that answers.
async fn cluster_counters(client: &Client) -> Option<(f64, f64)> {
    let stores = client.pd().get_all_stores(true).await.ok()?;
    let mut total = (0.0, 0.0);
    for s in stores {
        let text = scrape::http_get(s.get_status_address(), "/metrics").await?;
        let m = scrape::parse(&text)?;
        total.0 += scrape::sum(&m, "flotilla_raftstore_log_fsyncs_total");
        total.1 += scrape::sum(&m, "flotilla_raftstore_writes_applied_total");
    }
    Some(total)
}

fn key(i: u64) -> Vec<u8> {
    format!("bench-{i:012}").into_bytes()
}

/// Transactional keys lead with their number, so that a split at the middle number
/// separates them (encoded keys sharing their first 8 bytes cannot be separated).
fn txn_key(i: u64) -> Vec<u8> {
    format!("{i:08}-txn").into_bytes()
}

/// Splits the key space at the middle transactional key, unless a region starts there.
async fn split_in_two(client: &Client, keys: u64) -> Result<()> {
    let mid = format!("{:08}", keys / 2).into_bytes();
    let route = client.pd().get_region(&mid).await?;
    if route.region.get_start_key() != mid.as_slice() {
        client.split_region(route.region.get_id(), &[mid]).await?;
    }
    Ok(())
}

/// One transaction of the `hot` workload.
async fn update_hot(c: &TxnClient, value: &[u8]) -> Result<()> {
    let mut t = c.begin().await?;
    t.set_commit_mode(CommitMode::OnePc);
    t.get(b"hot").await?;
    t.put(b"hot", value).await?;
    t.commit().await.map(|_| ())
}

/// One transaction of the `txn` workload: read two keys, write both.
async fn transfer(c: &TxnClient, mode: TxnCommit, keys: u64, value: &[u8]) -> Result<()> {
    let (a, b) = {
        let mut rng = rand::thread_rng();
        let half = (keys / 2).max(1);
        let a = rng.gen_range(0..half);
        let b = match mode {
            TxnCommit::OnePc => (a + 1 + rng.gen_range(0..half.max(2) - 1)) % half,
            _ => half + rng.gen_range(0..(keys - half).max(1)),
        };
        (txn_key(a), txn_key(b))
    };
    let mut t = c.begin().await?;
    t.set_commit_mode(match mode {
        TxnCommit::TwoPhase => CommitMode::TwoPhase,
        TxnCommit::AsyncCommit => CommitMode::AsyncCommit,
        TxnCommit::OnePc => CommitMode::OnePc,
    });
    t.get(&a).await?;
    t.get(&b).await?;
    t.put(&a, value).await?;
    t.put(&b, value).await?;
    t.commit().await.map(|_| ())
}

/// Runs the benchmark.
pub async fn run(args: &BenchArgs) -> Result<Report> {
    if args.threads == 0 {
        return Err(Error::InvalidArgument("--threads must be positive".into()));
    }
    if args.keys == 0 {
        return Err(Error::InvalidArgument("--keys must be positive".into()));
    }
    let security = args.tls.security().map_err(Error::InvalidArgument)?;
    let creds = util::security::Credentials {
        security,
        secret: None,
        // A user's token (`kvctl login` keeps one), for a cluster with auth on.
        token: std::env::var("FLOTILLA_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let mut client = Client::connect_with(&endpoints(&args.pd), Duration::from_secs(10), creds)
        .await?
        .with_read_mode(args.read)
        .with_zone(args.zone.clone());
    if args.no_session {
        client = client.without_session();
    }
    let client = Arc::new(client);
    let txn = Arc::new(TxnClient::new(&client));
    if args.workload == Workload::Txn {
        split_in_two(&client, args.keys).await?;
    }
    let before = cluster_counters(&client).await;
    let started = Instant::now();
    let deadline = started + args.duration;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(if args.ops == 0 {
        u64::MAX
    } else {
        args.ops
    }));
    let mut workers = vec![];
    for _ in 0..args.threads {
        let (client, txn, budget) = (client.clone(), txn.clone(), budget.clone());
        let (workload, keys, size, commit) =
            (args.workload, args.keys, args.value_size, args.txn_commit);
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid histogram precision");
            let mut errors = 0u64;
            let value = vec![b'x'; size];
            while Instant::now() < deadline
                && budget
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |b| b.checked_sub(1),
                    )
                    .is_ok()
            {
                let (k, write) = {
                    let mut rng = rand::thread_rng();
                    let write = match workload {
                        Workload::Write | Workload::Txn | Workload::Hot => true,
                        Workload::Read => false,
                        Workload::Mixed => rng.gen_bool(0.5),
                    };
                    (key(rng.gen_range(0..keys)), write)
                };
                let t = Instant::now();
                let ok = if workload == Workload::Txn {
                    transfer(&txn, commit, keys, &value).await.is_ok()
                } else if workload == Workload::Hot {
                    update_hot(&txn, &value).await.is_ok()
                } else if write {
                    client.put(&k, &value).await.is_ok()
                } else {
                    client.get(&k).await.is_ok()
                };
                if ok {
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram precision");
    let mut errors = 0;
    for w in workers {
        let (h, e) = w
            .await
            .map_err(|e| Error::InvalidArgument(format!("worker failed: {e}")))?;
        hist.add(h).expect("histograms of the same precision add");
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = cluster_counters(&client).await;
    let (fsyncs, writes) = match (before, after) {
        (Some(b), Some(a)) => (Some(a.0 - b.0), Some(a.1 - b.1)),
        _ => (None, None),
    };
    Ok(Report {
        ops: hist.len(),
        errors,
        seconds,
        ops_per_sec: hist.len() as f64 / seconds,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        fsyncs_per_write: match (fsyncs, writes) {
            (Some(f), Some(w)) if w > 0.0 => Some(f / w),
            _ => None,
        },
        fsyncs,
        writes_applied: writes,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ops          {} ({} errors) in {:.1}s",
            self.ops, self.errors, self.seconds
        )?;
        writeln!(f, "throughput   {:.0} ops/s", self.ops_per_sec)?;
        writeln!(
            f,
            "latency      p50 {}us  p99 {}us  p99.9 {}us  max {}us",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        match (self.fsyncs, self.writes_applied, self.fsyncs_per_write) {
            (Some(fs), Some(w), Some(r)) => write!(
                f,
                "raft log     {fs:.0} fsyncs for {w:.0} writes: {r:.3} fsyncs per write"
            ),
            _ => write!(f, "raft log     (store metrics not reachable)"),
        }
    }
}
