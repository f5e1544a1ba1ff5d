//! `kv-bench`: a bounded load generator. Client tasks run a workload (YCSB's core mixes,
//! a load, transactions) for a fixed time or number of operations against Flotilla or
//! etcd, so that one workload runs against both; latencies go into HDR histograms per
//! kind of operation. Against Flotilla the stores' own `/metrics` are scraped before and
//! after, so the report includes what the cluster did for the load (fsyncs per write).
//!
//! Every argument is checked, and the target reached, before any load starts.

mod driver;
mod report;
mod workload;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use rand::Rng;

use client::{Error, Result};

pub use driver::{DriverKind, TxnCommit};
pub use report::Report;
pub use workload::{KeyDistribution, Workload};

use crate::{kvctl::endpoints, scrape};
use driver::{Driver, Session};
use report::Stats;
use workload::{KeySpace, Mix, Op};

/// kv-bench: load a Flotilla (or etcd) cluster and report throughput and latency.
#[derive(Debug, Parser)]
#[command(
    name = "kv-bench",
    version,
    about = "Load generator and benchmark for Flotilla (and etcd, to compare)",
    allow_negative_numbers = true
)]
pub struct BenchArgs {
    /// The system to load.
    #[arg(long, value_enum, default_value_t = DriverKind::Flotilla)]
    pub driver: DriverKind,
    /// Its addresses, comma-separated: PD members for Flotilla, client URLs for etcd.
    #[arg(long, alias = "pd", default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = Workload::YcsbA)]
    pub workload: Workload,
    /// The share of reads (0 to 1) in place of the workload's own (ycsb-a, ycsb-b,
    /// ycsb-c and write-only).
    #[arg(long)]
    pub read_ratio: Option<f64>,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    pub distribution: KeyDistribution,
    /// Distinct keys (the load writes each once).
    #[arg(long, default_value = "100000", value_parser = positive::<u64>)]
    pub keys: u64,
    /// Key size in bytes.
    #[arg(long, default_value = "16", value_parser = positive::<usize>)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value = "256", value_parser = positive::<usize>)]
    pub value_size: usize,
    /// The longest scan of ycsb-e, in keys (each scan's length is uniform in 1 to this).
    #[arg(long, default_value = "100", value_parser = positive::<usize>)]
    pub scan_length: usize,
    /// Concurrent client tasks.
    #[arg(long, alias = "threads", default_value = "64", value_parser = positive::<usize>)]
    pub clients: usize,
    /// Connections (clients of the library, each with its own channels) the tasks share
    /// [default: 4, or --clients if fewer].
    #[arg(long, value_parser = positive::<usize>)]
    pub connections: Option<usize>,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub duration: Duration,
    /// Stop after this many measured operations in all.
    #[arg(long, value_parser = positive::<u64>)]
    pub ops: Option<u64>,
    /// Run the workload this long first without measuring it.
    #[arg(long, default_value = "0s", value_parser = conf::parse_duration)]
    pub warmup: Duration,
    /// How long to wait for the target to answer before giving up.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub connect_timeout: Duration,
    /// How the `txn` workload commits.
    #[arg(long, value_enum, default_value_t = TxnCommit::TwoPhase)]
    pub txn_commit: TxnCommit,
    /// Send raw writes outside a client session (TiKV's behaviour: a write whose
    /// answer is lost is not resent), to measure what sessions cost.
    #[arg(long)]
    pub no_session: bool,
    /// Where reads are served: leader, follower, closest (a replica in --zone, else the
    /// leader) or stale=DURATION. For etcd, stale reads are serializable reads.
    #[arg(long, default_value = "leader")]
    pub read: client::ReadMode,
    /// The zone the bench runs in (the stores' `zone` label), for closest and stale reads.
    #[arg(long)]
    pub zone: Option<String>,
    /// The report's format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// No live progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Check the arguments and exit without connecting.
    #[arg(long)]
    pub check_only: bool,
    /// TLS (as kvctl's flags; Flotilla only).
    #[command(flatten)]
    pub tls: crate::kvctl::TlsArgs,
}

/// The report's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table.
    Text,
    /// One JSON object.
    Json,
}

impl BenchArgs {
    /// Connections to open: as asked, else 4 (never more than there are clients).
    pub fn connections(&self) -> usize {
        self.connections.unwrap_or(4.min(self.clients))
    }
}

/// A count or size of at least 1; negative numbers and zero named as such.
fn positive<T: TryFrom<u64>>(s: &str) -> std::result::Result<T, String> {
    let n: i128 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n < 1 {
        return Err(format!("must be at least 1, not {n}"));
    }
    u64::try_from(n)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{n} is too large"))
}

fn positive_duration(s: &str) -> std::result::Result<Duration, String> {
    match conf::parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

/// The longest run, warm-up included: a bench is not a soak test, and a run's deadline
/// must stay a time the clock can hold.
const MAX_RUN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The checks no flag parser can make alone: flags that contradict each other.
fn validate(args: &BenchArgs) -> Result<KeySpace> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if let Some(r) = args.read_ratio {
        if !(0.0..=1.0).contains(&r) {
            return bad(format!("--read-ratio must be between 0 and 1, not {r}"));
        }
        if !args.workload.has_read_ratio() {
            return bad(format!(
                "--read-ratio applies to ycsb-a, ycsb-b, ycsb-c and write-only, not {}",
                args.workload.name()
            ));
        }
    }
    if args.driver == DriverKind::Etcd && args.workload.is_transactional() {
        return bad(format!(
            "workload {} needs Flotilla's transactions; the etcd driver has none",
            args.workload.name()
        ));
    }
    if args.workload == Workload::Load && args.ops.is_some() {
        return bad("--ops does not apply to load, which writes each of --keys once".into());
    }
    if args.workload == Workload::Txn && args.keys < 2 {
        return bad("the txn workload needs at least 2 keys".into());
    }
    if args.connections() > args.clients {
        return bad(format!(
            "--connections {} is more than --clients {}: some would carry nothing",
            args.connections(),
            args.clients
        ));
    }
    if args.workload == Workload::Load && !args.warmup.is_zero() {
        return bad("--warmup does not apply to load: keys loaded then would go unmeasured".into());
    }
    if args
        .warmup
        .checked_add(args.duration)
        .is_none_or(|d| d > MAX_RUN)
    {
        return bad(format!(
            "--warmup and --duration together must be at most {} days",
            MAX_RUN.as_secs() / 86400
        ));
    }
    if args.connect_timeout > MAX_RUN {
        return bad(format!(
            "--connect-timeout must be at most {} days",
            MAX_RUN.as_secs() / 86400
        ));
    }
    if args.workload == Workload::Txn && args.txn_commit == TxnCommit::OnePc && args.keys < 4 {
        return bad(
            "one-pc transactions need at least 4 keys: two distinct ones in each half".into(),
        );
    }
    KeySpace::new(args.keys, args.key_size, args.distribution).map_err(Error::InvalidArgument)
}

/// Checks the arguments alone (`--check-only`), connecting to nothing.
pub fn check(args: &BenchArgs) -> Result<()> {
    validate(args).map(drop)
}

/// Connects to the target, failing with a clear error if it does not answer.
async fn connect(args: &BenchArgs) -> Result<Driver> {
    let eps = endpoints(&args.endpoints);
    let driver = match args.driver {
        DriverKind::Etcd => {
            let serializable = driver::etcd_serializable(args.read);
            Driver::etcd(&eps, args.connections(), args.connect_timeout, serializable).await
        }
        DriverKind::Flotilla => {
            let security = args.tls.security().map_err(Error::InvalidArgument)?;
            let creds = util::security::Credentials {
                security,
                secret: None,
                // A user's token (`kvctl login` keeps one), for a cluster with auth on.
                token: std::env::var("FLOTILLA_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            };
            let make = |c: client::Client| {
                let c = c.with_read_mode(args.read).with_zone(args.zone.clone());
                if args.no_session {
                    c.without_session()
                } else {
                    c
                }
            };
            Driver::flotilla(&eps, args.connections(), args.connect_timeout, make, creds).await
        }
    };
    driver.map_err(Error::InvalidArgument)
}

/// (fsyncs, writes applied) summed over every store that answers.
async fn cluster_counters(driver: &Driver) -> Option<(f64, f64)> {
    let client = driver.flotilla_client()?;
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

/// Splits the key space at its middle key, unless a region starts there, so that the
/// txn workload's two-phase transactions span two regions.
async fn split_in_two(driver: &Driver, keys: &KeySpace) -> Result<()> {
    let Some(client) = driver.flotilla_client() else {
        return Ok(());
    };
    let mid = keys.key(keys.count() / 2);
    let route = client.pd().get_region(&mid).await?;
    if route.region.get_start_key() != mid.as_slice() {
        client.split_region(route.region.get_id(), &[mid]).await?;
    }
    Ok(())
}

/// What every worker shares.
struct Plan {
    mix: Mix,
    keys: KeySpace,
    value: Vec<u8>,
    scan_length: usize,
    txn_commit: TxnCommit,
    /// When measuring starts (the warm-up ends) and stops.
    measure_from: Instant,
    until: Instant,
    /// Measured operations left, when `--ops` bounds them.
    budget: Option<AtomicU64>,
    /// Keys the load has handed out.
    loaded: AtomicU64,
    /// Operations done and failed (warm-up included), for the progress line.
    done: AtomicU64,
    failed: AtomicU64,
}

impl Plan {
    /// Whether the worker may start another operation.
    fn go_on(&self) -> bool {
        let now = Instant::now();
        if now >= self.until {
            return false;
        }
        match &self.budget {
            Some(b) if now >= self.measure_from => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            _ => true,
        }
    }
}

/// One operation of kind `op`; `Ok(false)` when the load has no key left.
async fn one(plan: &Plan, s: &mut Session, op: Op) -> std::result::Result<bool, String> {
    let keys = &plan.keys;
    let pick = || keys.key(keys.pick(&mut rand::thread_rng()));
    match (op, plan.mix) {
        (Op::Insert, Mix::Load) => {
            let i = plan.loaded.fetch_add(1, Ordering::Relaxed);
            if i >= keys.count() {
                return Ok(false);
            }
            s.put(&keys.key(i), &plan.value).await?;
        }
        (Op::Insert, _) => s.put(&keys.key(keys.next_insert()), &plan.value).await?,
        (Op::Read, _) => s.get(&pick()).await?,
        (Op::Update, _) => s.put(&pick(), &plan.value).await?,
        (Op::Scan, _) => {
            // The range ends after `len` keys, so that etcd, which counts every key in a
            // range it reads, counts no more than it returns.
            let (from, len) = {
                let mut rng = rand::thread_rng();
                (keys.pick(&mut rng), rng.gen_range(1..=plan.scan_length))
            };
            let end = keys.key(from + len as u64);
            s.scan(&keys.key(from), &end, len).await?
        }
        (Op::Txn, Mix::Hot) => s.update_hot(&plan.value).await?,
        (Op::Txn, _) => s.transfer(keys, plan.txn_commit, &plan.value).await?,
    }
    Ok(true)
}

/// One client task: operations until the time or the budget runs out.
async fn worker(plan: Arc<Plan>, mut session: Session) -> Stats {
    let mut stats = Stats::default();
    while plan.go_on() {
        let op = plan.mix.pick(&mut rand::thread_rng());
        let started = Instant::now();
        let result = one(&plan, &mut session, op).await;
        let in_window = started >= plan.measure_from && started < plan.until;
        match result {
            Ok(false) => break,
            Ok(true) => {
                plan.done.fetch_add(1, Ordering::Relaxed);
                // One done after the time is up does not count: the throughput is over
                // the measured time, not over the stragglers'.
                if in_window && Instant::now() <= plan.until {
                    stats.of(op).ok(started.elapsed());
                }
            }
            Err(kind) => {
                plan.failed.fetch_add(1, Ordering::Relaxed);
                // A failure counts whenever it ends: one that took its whole deadline
                // would otherwise always end after the time is up, and never show.
                if in_window {
                    stats.of(op).failed(kind);
                }
            }
        }
    }
    stats
}

/// Prints a progress line to stderr every second until dropped.
fn progress(plan: Arc<Plan>, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let done = plan.done.load(Ordering::Relaxed);
            let phase = if Instant::now() < plan.measure_from {
                "warm-up"
            } else {
                "measuring"
            };
            eprintln!(
                "[{:>4.0}s] {phase}: {done} ops, {} ops/s, {} errors",
                started.elapsed().as_secs_f64(),
                done - last,
                plan.failed.load(Ordering::Relaxed)
            );
            last = done;
        }
    })
}

/// What the run did not do of what it was asked, if anything.
fn incomplete(args: &BenchArgs, plan: &Plan, stats: &Stats) -> Option<String> {
    let count = plan.keys.count();
    if args.workload == Workload::Load {
        let loaded = plan.loaded.load(Ordering::Relaxed).min(count);
        let failed = stats.failures();
        if loaded < count {
            return Some(format!(
                "--duration ran out after {loaded} of {count} keys were handed out"
            ));
        }
        if failed > 0 {
            return Some(format!("{failed} of {count} keys failed to load"));
        }
    }
    match (args.ops, &plan.budget) {
        (Some(ops), Some(left)) if left.load(Ordering::Relaxed) > 0 => Some(format!(
            "--duration ran out after {} of --ops {ops}",
            ops - left.load(Ordering::Relaxed)
        )),
        _ => None,
    }
}

/// Runs the benchmark.
pub async fn run(args: &BenchArgs) -> Result<Report> {
    let keys = validate(args)?;
    let driver = connect(args).await?;
    if args.workload == Workload::Txn {
        split_in_two(&driver, &keys).await?;
    }
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let plan = Arc::new(Plan {
        mix: args.workload.mix(args.read_ratio),
        keys,
        value: vec![b'v'; args.value_size],
        scan_length: args.scan_length,
        txn_commit: args.txn_commit,
        measure_from,
        until: measure_from + args.duration,
        budget: args.ops.map(AtomicU64::new),
        loaded: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let ticker = (!args.quiet).then(|| progress(plan.clone(), started));
    let mut workers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        workers.push(tokio::spawn(worker(plan.clone(), driver.session(i))));
    }
    // The counters are read when the warm-up ends, so that they cover the measured time.
    tokio::time::sleep_until(measure_from.into()).await;
    let before = cluster_counters(&driver).await;
    let mut stats = Stats::default();
    for w in workers {
        let s = w
            .await
            .map_err(|e| Error::InvalidArgument(format!("a client task failed: {e}")))?;
        stats.add(s);
    }
    // The measured time: to the end of --duration, or earlier if --ops ran out first.
    let seconds = measure_from.elapsed().min(args.duration).as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
    }
    let after = cluster_counters(&driver).await;
    let (fsyncs, writes) = match (before, after) {
        (Some(b), Some(a)) => (Some(a.0 - b.0), Some(a.1 - b.1)),
        _ => (None, None),
    };
    let incomplete = incomplete(args, &plan, &stats);
    Ok(Report {
        driver: format!("{:?}", args.driver).to_lowercase(),
        workload: args.workload.name(),
        clients: args.clients,
        connections: args.connections(),
        seconds,
        warmup_seconds: args.warmup.as_secs_f64(),
        ops: stats.report(seconds),
        fsyncs_per_write: match (fsyncs, writes) {
            (Some(f), Some(w)) if w > 0.0 => Some(f / w),
            _ => None,
        },
        fsyncs,
        writes_applied: writes,
        incomplete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> std::result::Result<BenchArgs, String> {
        let mut argv = vec!["kv-bench"];
        argv.extend_from_slice(extra);
        BenchArgs::try_parse_from(argv).map_err(|e| e.to_string())
    }

    fn refused(extra: &[&str]) -> String {
        match parse(extra) {
            Err(e) => e,
            Ok(a) => match validate(&a) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{extra:?} was accepted"),
            },
        }
    }

    #[test]
    fn bad_input_is_named_before_any_load() {
        let cases: &[(&[&str], &str)] = &[
            (&["--workload", "ycsb-z"], "invalid value 'ycsb-z'"),
            (&["--keys", "0"], "must be at least 1, not 0"),
            (&["--keys", "-5"], "must be at least 1, not -5"),
            (&["--value-size", "0"], "must be at least 1"),
            (&["--key-size", "-1"], "must be at least 1, not -1"),
            (&["--clients", "0"], "must be at least 1"),
            (&["--connections", "x"], "is not a whole number"),
            (&["--duration", "0s"], "must be longer than zero"),
            (&["--duration", "300000000000y"], "must be at most 7 days"),
            (&["--warmup", "8d"], "must be at most 7 days"),
            (&["--connect-timeout", "1000y"], "must be at most 7 days"),
            (&["--ops", "0"], "must be at least 1"),
            (&["--key-size", "3"], "cannot hold 100000 distinct keys"),
            (&["--read-ratio", "1.5"], "between 0 and 1"),
            (
                &["--workload", "ycsb-e", "--read-ratio", "0.5"],
                "not ycsb-e",
            ),
            (
                &["--driver", "etcd", "--workload", "txn"],
                "the etcd driver has none",
            ),
            (
                &["--clients", "2", "--connections", "4"],
                "more than --clients 2",
            ),
            (
                &["--workload", "load", "--ops", "5"],
                "--ops does not apply to load",
            ),
            (
                &["--workload", "load", "--warmup", "1s"],
                "--warmup does not apply to load",
            ),
            (
                &["--workload", "txn", "--txn-commit", "one-pc", "--keys", "3"],
                "at least 4 keys",
            ),
        ];
        for (argv, want) in cases {
            let e = refused(argv);
            assert!(e.contains(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn defaults_are_the_issue_s_shape() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.clients, a.key_size, a.value_size), (64, 16, 256));
        assert!(validate(&a).is_ok());
        assert_eq!(a.connections(), 4);
        // Fewer clients than the default connections: one each.
        let a = parse(&["--workload", "hot", "--clients", "1"]).unwrap();
        assert_eq!(a.connections(), 1);
        assert!(validate(&a).is_ok());
        // The old names still work.
        let a = parse(&["--workload", "write", "--threads", "8", "--pd", "x:1"]).unwrap();
        assert_eq!(
            (a.workload, a.clients, a.endpoints.as_str()),
            (Workload::WriteOnly, 8, "x:1")
        );
    }

    #[tokio::test]
    async fn an_unreachable_target_is_an_error_before_load() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for driver in ["flotilla", "etcd"] {
            let ep = format!("127.0.0.1:{port}");
            let a = parse(&[
                "--driver",
                driver,
                "--endpoints",
                &ep,
                "--connect-timeout",
                "1s",
            ])
            .unwrap();
            let e = run(&a)
                .await
                .expect_err("nothing answers there")
                .to_string();
            assert!(
                e.contains("cannot reach") && e.contains(&ep),
                "{driver}: {e}"
            );
        }
    }
}
