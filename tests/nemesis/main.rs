//! The seeded nemesis against real processes: three stores and three PD members, each on
//! its own host (network namespace) with its data on a filesystem that forgets
//! un-fsynced writes, while clients run a checked workload: raw operations (odd seeds) or
//! transactions (even seeds: list appends checked for snapshot isolation, a bank,
//! clients that die mid-commit, GC collecting every second below a safe point a client
//! raises by itself). Store faults: SIGKILL and restart, SIGSTOP/SIGCONT of a leader,
//! every store killed at once, cut routes between hosts (one store off the others, a
//! bridge, one store off everything), and power loss of one store or of all. PD faults:
//! the PD leader killed (and restarted), cut off from the other PD members (not from
//! the stores and clients), or paused.
//!
//! The seed fixes a run's fault plan: which faults, their targets and hold times, and the
//! clients' operations (what the processes then do is not deterministic, so a seed
//! reproduces the plan, not the exact interleaving). After the run the network heals, every store
//! runs, and the checks follow. Raw runs: the history is linearizable per key (library
//! checker) and every acknowledged write of the ledger is there. Transactional runs: the
//! list-append history has no snapshot-isolation anomaly (`test_cluster::elle`), every
//! committed append is in the final read, every bank snapshot held the total, and GC
//! dropped versions, and every PD timestamp the transactional clients received is unique
//! and increases per client. Both: every region's replicas hash the same. `make test`
//! runs a short campaign; `make jepsen` a long one (see the README), both printing a
//! table. `pd.rs` holds the PD group's own fault tests.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod idle;
mod net;
mod pd;
mod stale;
mod txn_workload;
mod workload;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use test_cluster::history::{Op, Outcome, Recorder};

use crate::{
    cluster::{NetCluster, PdSetup},
    net::Node,
    txn_workload::{AppendHistory, Bank},
    workload::{checked_client, key, split_keys, Ledger, CLIENTS, KEYS},
};

const STORES: usize = 3;
const PD_MEMBERS: usize = 3;
const T: Duration = Duration::from_secs(60);
/// The process that reads every key at the end (clients' ids stay far below).
const FINAL_READER: usize = 1 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    PauseLeader,
    CutFromStores,
    Bridge,
    Isolate,
    PowerLoss,
    KillAll,
    PowerLossAll,
    KillPdLeader,
    PartitionPdLeader,
    PausePdLeader,
}

/// Faults of the stores: a run's main focus is one of them.
const STORE_FAULTS: [Fault; 8] = [
    Fault::Kill,
    Fault::PauseLeader,
    Fault::CutFromStores,
    Fault::Bridge,
    Fault::Isolate,
    Fault::PowerLoss,
    Fault::KillAll,
    Fault::PowerLossAll,
];

/// Faults of the PD group's leader: a run's second focus is one of them.
const PD_FAULTS: [Fault; 3] = [
    Fault::KillPdLeader,
    Fault::PartitionPdLeader,
    Fault::PausePdLeader,
];

const FAULTS: [Fault; 11] = [
    Fault::Kill,
    Fault::PauseLeader,
    Fault::CutFromStores,
    Fault::Bridge,
    Fault::Isolate,
    Fault::PowerLoss,
    Fault::KillAll,
    Fault::PowerLossAll,
    Fault::KillPdLeader,
    Fault::PartitionPdLeader,
    Fault::PausePdLeader,
];

/// What the clients of a run do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Raw,
    Txn,
}

/// Stores of transactional runs collect often, a little behind the safe point mover.
const TXN_STORE_CONFIG: &str = "[gc]\nlife-time = \"5s\"\nrun-interval = \"1s\"\n";

impl Workload {
    fn of(seed: u64) -> Workload {
        if seed.is_multiple_of(2) {
            Workload::Txn
        } else {
            Workload::Raw
        }
    }
}

/// What one run did and found.
#[derive(Default, Debug)]
struct Report {
    kind: &'static str,
    ok: usize,
    failed: usize,
    unknown: usize,
    faults: BTreeMap<String, usize>,
    dropped_bytes: u64,
    violations: usize,
    lost: usize,
    bank_changes: usize,
    mismatches: usize,
    gc_dropped: u64,
    /// Reads followers served (follower and stale reads).
    local_reads: u64,
    /// PD timestamps the transactional clients received (all checked).
    timestamps: usize,
    problems: Vec<String>,
}

/// The host of the store leading `k`'s region, as PD sees it.
fn leader_host(
    c: &NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
    k: &[u8],
) -> Option<usize> {
    let routes = rt.block_on(cl.regions()).ok()?;
    let r = routes.into_iter().find(|r| {
        r.region.get_start_key() <= k
            && (r.region.get_end_key().is_empty() || k < r.region.get_end_key())
    })?;
    let store = r.leader?.get_store_id();
    let stores = rt.block_on(cl.stores()).ok()?;
    let (s, _) = stores.into_iter().find(|(s, _)| s.get_id() == store)?;
    c.host_of(s.get_address())
}

/// Injects one fault, holds it for a while, and undoes it; records it if it took effect.
fn inject(
    fault: Fault,
    rng: &mut StdRng,
    c: &mut NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
    report: &mut Report,
) {
    let hold = Duration::from_millis(rng.gen_range(1000..3500));
    let victim = rng.gen_range(0..STORES);
    let leader_of = key(rng.gen_range(0..KEYS));
    eprintln!("nemesis: {fault:?} (store on host {victim} unless led elsewhere) for {hold:?}");
    restart_exited(c, report);
    let effective = match fault {
        Fault::Kill => {
            c.kill(victim);
            let dead = !c.running(victim);
            std::thread::sleep(hold);
            c.start_store(victim);
            dead
        }
        Fault::PauseLeader => {
            let leader = test_cluster::poll_until(Duration::from_secs(5), || {
                leader_host(c, rt, cl, &leader_of)
            });
            let Some(h) = leader else {
                report.problems.push(format!(
                    "PauseLeader: PD named no leader for {:?} within 5s",
                    String::from_utf8_lossy(&leader_of)
                ));
                return;
            };
            c.signal(h, libc::SIGSTOP);
            std::thread::sleep(hold);
            let stopped = c.pid(h).and_then(process_state) == Some('T');
            c.signal(h, libc::SIGCONT);
            stopped
        }
        Fault::CutFromStores | Fault::Bridge | Fault::Isolate => {
            let others: Vec<usize> = (0..STORES).filter(|h| *h != victim).collect();
            let cuts: Vec<(Node, Node)> = match fault {
                Fault::CutFromStores => others
                    .iter()
                    .map(|o| (Node::Host(victim), Node::Host(*o)))
                    .collect(),
                // Only the victim's neighbours both reach it: the victim bridges them.
                Fault::Bridge => vec![(Node::Host(others[0]), Node::Host(others[1]))],
                // Off everything: the other stores, the clients and every PD member.
                _ => {
                    let mut to: Vec<Node> = others.iter().map(|o| Node::Host(*o)).collect();
                    to.push(Node::Gateway);
                    // A lone PD is on the gateway already.
                    to.extend((0..c.pd_members()).map(|i| c.pd_node(i)));
                    to.dedup();
                    to.into_iter().map(|n| (Node::Host(victim), n)).collect()
                }
            };
            for (a, b) in &cuts {
                c.net.cut(*a, *b);
            }
            let reachable = |c: &NetCluster| -> Vec<bool> {
                cuts.iter()
                    .map(|(a, b)| {
                        let Node::Host(a) = *a else {
                            unreachable!("cuts start at a host")
                        };
                        c.net.reaches(a, *b)
                    })
                    .collect()
            };
            let cut = reachable(c).iter().all(|r| !r);
            std::thread::sleep(hold);
            c.net.heal();
            let healed = reachable(c).iter().all(|r| *r);
            cut && healed
        }
        Fault::PowerLoss => {
            report.dropped_bytes += c.power_loss(victim);
            let dead = !c.running(victim);
            std::thread::sleep(hold / 2);
            c.start_store(victim);
            dead
        }
        Fault::KillPdLeader | Fault::PartitionPdLeader | Fault::PausePdLeader => {
            let leader = test_cluster::poll_until(Duration::from_secs(5), || c.pd_leader());
            let Some((l, _)) = leader else {
                report
                    .problems
                    .push(format!("{fault:?}: no PD member led within 5s"));
                return;
            };
            eprintln!("nemesis: the PD leader is pd{}", l + 1);
            match fault {
                Fault::KillPdLeader => {
                    c.kill_pd(l);
                    let dead = !c.pd_running(l);
                    std::thread::sleep(hold);
                    c.start_pd(l);
                    dead
                }
                Fault::PartitionPdLeader => {
                    let cut = c.cut_pd_from_members(l);
                    std::thread::sleep(hold);
                    c.net.heal();
                    cut && c.pd_reaches_members(l)
                }
                _ => {
                    c.signal_pd(l, libc::SIGSTOP);
                    std::thread::sleep(hold);
                    let stopped = c.pd_pid(l).and_then(process_state) == Some('T');
                    c.signal_pd(l, libc::SIGCONT);
                    stopped
                }
            }
        }
        Fault::KillAll | Fault::PowerLossAll => {
            if fault == Fault::KillAll {
                (0..STORES).for_each(|h| c.kill(h));
            } else {
                report.dropped_bytes += c.power_loss_all();
            }
            let dead = (0..STORES).all(|h| !c.running(h));
            std::thread::sleep(hold / 2);
            for h in 0..STORES {
                c.start_store(h);
            }
            dead
        }
    };
    if effective {
        *report.faults.entry(format!("{fault:?}")).or_default() += 1;
    } else {
        report
            .problems
            .push(format!("{fault:?} did not take effect"));
    }
}

/// A store or PD member that died by itself is a bug: recorded with its log, then
/// restarted so that the run goes on (a later fault must not quietly restart it).
fn restart_exited(c: &mut NetCluster, report: &mut Report) {
    for h in 0..STORES {
        if !c.running(h) {
            let how = c
                .exit_status(h)
                .map_or("exit status unknown".to_string(), |s| s.to_string());
            report.problems.push(format!(
                "store {h} exited by itself ({how}):\n{}",
                c.log_tail(h)
            ));
            c.start_store(h);
        }
    }
    for i in 0..c.pd_members() {
        if !c.pd_running(i) {
            report.problems.push(format!(
                "PD member pd{} exited by itself:\n{}",
                i + 1,
                c.pd_log_tail(i)
            ));
            c.start_pd(i);
        }
    }
}

/// A process's state letter from /proc (`T`: stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// A client of `c` with a short deadline, so that operations end while faults last.
fn connect(rt: &tokio::runtime::Runtime, c: &NetCluster) -> client::Client {
    let pd = c.pd_addr();
    let secret =
        common::secret_of(&pd).map(|f| util::secret::ClusterSecret::load(&f).expect("secret"));
    rt.block_on(client::Client::connect_with(
        &[pd],
        Duration::from_secs(5),
        util::security::Credentials::with_secret(secret),
    ))
    .expect("connect")
}

/// One seeded run of `secs` seconds, with faults unless `calm`.
fn run(seed: u64, secs: u64, calm: bool) -> Report {
    let workload = Workload::of(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let focus = STORE_FAULTS[seed as usize % STORE_FAULTS.len()];
    let pd_focus = PD_FAULTS[seed as usize % PD_FAULTS.len()];
    let extra = match workload {
        Workload::Raw => "",
        Workload::Txn => TXN_STORE_CONFIG,
    };
    let mut c = NetCluster::start_full(STORES, PdSetup::Group(PD_MEMBERS), extra);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cl = connect(&rt, &c);
    common::wait_until("three voters", T, || common::voters(&rt, &cl) == STORES);
    let first = rt
        .block_on(cl.regions())
        .expect("regions")
        .remove(0)
        .region
        .get_id();
    common::wait_until("the key space to split", T, || {
        rt.block_on(cl.split_region(first, &split_keys())).is_ok()
    });
    let mut report = Report::default();
    let mut nemesis = |c: &mut NetCluster, report: &mut Report, counts: &mut StoreCounts| {
        // From when the workload runs: a slow setup (the bank opening) must not eat
        // the window in which a run injects its store and PD foci.
        let deadline = Instant::now() + Duration::from_secs(secs);
        // The first fault is the run's store focus and the second its PD focus; then
        // mostly the store focus, sometimes the PD focus, sometimes any fault.
        for n in 0.. {
            if calm || Instant::now() + Duration::from_secs(4) >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..2000)));
            let fault = match (n, rng.gen_range(0..20)) {
                (0, _) | (2.., 0..9) => focus,
                (1, _) | (2.., 9..13) => pd_focus,
                _ => FAULTS[rng.gen_range(0..FAULTS.len())],
            };
            counts.scrape(c);
            inject(fault, &mut rng, c, &rt, &cl, report);
        }
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    };
    match workload {
        Workload::Raw => raw_run(seed, &mut c, &rt, &cl, &mut report, &mut nemesis),
        Workload::Txn => txn_run(seed, &mut c, &rt, &cl, &mut report, &mut nemesis),
    }
    check_replicas(&rt, &cl, &mut report);
    if !report.problems.is_empty() {
        let kept = c.keep();
        report
            .problems
            .push(format!("logs and data kept in {}", kept.display()));
    }
    report
}

/// The fault loop of a run, given the cluster, its report and the GC counter.
type Nemesis<'a> = dyn FnMut(&mut NetCluster, &mut Report, &mut StoreCounts) + 'a;

/// Raw clients and the ledger writer while the nemesis runs; then the checks.
fn raw_run(
    seed: u64,
    c: &mut NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
    report: &mut Report,
    nemesis: &mut Nemesis,
) {
    report.kind = "raw";
    let rec = Recorder::default();
    let ledger = Ledger::default();
    let mut counts = StoreCounts::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for id in 0..CLIENTS {
            let (rt, rec, stop) = (rt.handle(), &rec, &stop);
            s.spawn(move || checked_client(id, seed, rt, cl, rec, stop));
        }
        let (rth, ledger, stop2) = (rt.handle(), &ledger, &stop);
        s.spawn(move || ledger.write(rth, cl, stop2));
        let _stop = common::StopOnDrop(&stop);
        nemesis(c, report, &mut counts);
    });
    restart_exited(c, report);
    counts.scrape(c);
    report.local_reads = counts.local_reads.total();
    finish(seed, c, rt, cl, &rec, &ledger, report);
}

/// Removes the client fail points a transactional run set, also when it panics.
struct ClientFailPoints(&'static [&'static str]);

impl Drop for ClientFailPoints {
    fn drop(&mut self) {
        for name in self.0 {
            fail::remove(name);
        }
    }
}

/// Append clients, bank clients and the safe point mover while the nemesis runs, with
/// a share of commits dying half way; then the checks.
fn txn_run(
    seed: u64,
    c: &mut NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
    report: &mut Report,
    nemesis: &mut Nemesis,
) {
    report.kind = "txn";
    let txn = client::txn::TxnClient::new(cl);
    let history = AppendHistory::default();
    let bank = Bank::default();
    let stamps = txn_workload::Stamps::default();
    common::wait_until("the bank to open", T, || {
        bank.open(rt.handle(), &txn).is_ok()
    });
    let deaths = ClientFailPoints(&[
        "txn_client_dies_after_prewrite",
        "txn_client_dies_after_primary",
    ]);
    for name in deaths.0 {
        fail::cfg(*name, "2%return").expect("a fail point");
    }
    let stop = AtomicBool::new(false);
    let mut counts = StoreCounts::default();
    std::thread::scope(|s| {
        for id in 0..txn_workload::APPENDERS {
            let (rt, txn, history, stamps, stop) = (rt.handle(), &txn, &history, &stamps, &stop);
            s.spawn(move || txn_workload::appender(id, seed, rt, txn, history, stamps, stop));
        }
        for id in 0..2 {
            let (rt, txn, bank, stamps, stop) = (rt.handle(), &txn, &bank, &stamps, &stop);
            s.spawn(move || bank.run(id, seed, rt, txn, stamps, stop));
        }
        let (rth, stamps2, stop2) = (rt.handle(), &stamps, &stop);
        s.spawn(move || txn_workload::move_safe_point(rth, cl, stamps2, stop2));
        let _stop = common::StopOnDrop(&stop);
        nemesis(c, report, &mut counts);
    });
    drop(deaths);
    restart_exited(c, report);
    common::wait_until("a final read of every list", T, || {
        txn_workload::final_read(rt.handle(), &txn, &history)
    });
    common::wait_until("a final bank snapshot", T, || bank.check(rt.handle(), &txn));
    check_history(seed, &history.txns(), report);
    match pd::check_unique_and_increasing(&stamps.into_inner()) {
        Ok(n) => report.timestamps = n,
        Err(e) => report.problems.push(format!("PD timestamps: {e}")),
    }
    report.bank_changes = bank.bad_totals.lock().len();
    if let Some(first) = bank.bad_totals.lock().first() {
        report.problems.push(format!(
            "{} bank snapshots did not hold the total {} (first: {first})",
            report.bank_changes,
            Bank::total()
        ));
    }
    counts.scrape(c);
    report.gc_dropped = counts.gc.total();
    report.local_reads = counts.local_reads.total();
    if report.gc_dropped == 0 {
        report.problems.push("GC dropped no version".into());
    }
}

/// The SI check of an append history, and the durability of its committed appends.
fn check_history(seed: u64, txns: &[test_cluster::elle::Txn], report: &mut Report) {
    use test_cluster::elle::{MicroOp, TxnOutcome};
    for t in txns {
        match t.outcome {
            TxnOutcome::Committed => report.ok += 1,
            TxnOutcome::Aborted => report.failed += 1,
            TxnOutcome::Unknown => report.unknown += 1,
        }
    }
    let checked = test_cluster::elle::check(txns);
    if !checked.is_valid_si() {
        report.violations += checked
            .anomalies
            .iter()
            .filter(|a| a.kind.violates_si())
            .count()
            .max(1);
        let kept = std::env::temp_dir().join(format!(
            "flotilla-nemesis-seed{seed}-{}-txns.json",
            std::process::id()
        ));
        let _ = std::fs::write(&kept, serde_json::to_vec(txns).unwrap_or_default());
        report
            .problems
            .push(format!("{checked}(history kept in {})", kept.display()));
    }
    // The final read (the last transaction) holds every acknowledged append.
    let Some(last) = txns.last() else { return };
    let seen: std::collections::HashSet<(u64, u64)> = last
        .ops
        .iter()
        .flat_map(|op| match op {
            MicroOp::Read {
                key,
                value: Some(list),
            } => list.iter().map(|v| (*key, *v)).collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect();
    let lost: Vec<(u64, u64)> = txns
        .iter()
        .filter(|t| t.outcome == TxnOutcome::Committed)
        .flat_map(|t| &t.ops)
        .filter_map(|op| match op {
            MicroOp::Append { key, value } if !seen.contains(&(*key, *value)) => {
                Some((*key, *value))
            }
            _ => None,
        })
        .collect();
    report.lost += lost.len();
    if !lost.is_empty() {
        report.problems.push(format!(
            "committed appends missing from the final read (key, value): {:?}",
            &lost[..lost.len().min(5)]
        ));
    }
}

/// Counters of every store over a run: versions GC dropped, and reads a follower served
/// (a follower read or a stale read). A restart resets a store's counters: what one had
/// counted is carried over when the next scrape finds it lower.
#[derive(Default)]
struct StoreCounts {
    gc: Carried,
    local_reads: Carried,
}

#[derive(Default)]
struct Carried {
    last: Vec<u64>,
    carried: u64,
}

impl Carried {
    fn update(&mut self, h: usize, now: u64) {
        self.last.resize(STORES, 0);
        if now < self.last[h] {
            self.carried += self.last[h];
        }
        self.last[h] = now;
    }

    fn total(&self) -> u64 {
        self.carried + self.last.iter().sum::<u64>()
    }
}

impl StoreCounts {
    fn scrape(&mut self, c: &NetCluster) {
        for h in 0..STORES {
            let Some(text) = common::http_get(&c.status_addr(h), "/metrics") else {
                continue;
            };
            let gc = common::metric(&text, "flotilla_gc_versions_dropped_total");
            self.gc.update(h, gc as u64);
            let local: f64 = ["replica", "stale"]
                .iter()
                .map(|mode| {
                    let labels = [("mode", *mode), ("outcome", "served")];
                    common::metric_with(&text, "flotilla_server_reads_total", &labels)
                })
                .sum();
            self.local_reads.update(h, local as u64);
        }
    }
}

/// Closes the history with a read of every key, then checks it and the ledger.
fn finish(
    seed: u64,
    c: &NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
    rec: &Recorder,
    ledger: &Ledger,
    report: &mut Report,
) {
    for k in 0..KEYS {
        let k = key(k);
        common::wait_until("a final read", T, || {
            let inv = rec.invoke(FINAL_READER, Op::Get(k.clone()));
            let res = rt.block_on(cl.get(&k));
            let out = match &res {
                Ok(v) => Outcome::Read(
                    v.as_deref()
                        .map(|v| String::from_utf8_lossy(v).parse().expect("a number")),
                ),
                Err(_) => Outcome::Failed,
            };
            rec.complete(inv, out);
            res.is_ok()
        });
    }
    (report.ok, report.failed, report.unknown) = rec.counts();
    if let Err(v) = rec.check(c.dir()) {
        report.violations += 1;
        let kept = std::env::temp_dir().join(format!(
            "flotilla-nemesis-seed{seed}-{}.json",
            std::process::id()
        ));
        let _ = std::fs::copy(&v.file, &kept);
        report
            .problems
            .push(format!("{v}(history kept in {})", kept.display()));
    }
    let mut lost = None;
    common::wait_until("the ledger to be read", T, || {
        lost = ledger.lost(rt.handle(), cl).ok();
        lost.is_some()
    });
    let lost = lost.expect("read above");
    report.lost = lost.len();
    if !lost.is_empty() {
        report.problems.push(format!(
            "acknowledged writes lost: {:?}",
            lost.iter()
                .take(5)
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>()
        ));
    }
}

/// Every region's replicas hash the same.
fn check_replicas(rt: &tokio::runtime::Runtime, cl: &client::Client, report: &mut Report) {
    for route in rt.block_on(cl.regions()).expect("regions") {
        let id = route.region.get_id();
        let mut last = None;
        let consistent = (0..5).any(|_| {
            let check = rt.block_on(cl.check_region(id));
            let ok = check.as_ref().is_ok_and(|c| c.consistent());
            last = Some(
                check
                    .map(|c| format!("{:?}", c.replicas))
                    .unwrap_or_else(|e| e.to_string()),
            );
            ok
        });
        if !consistent {
            report.mismatches += 1;
            report.problems.push(format!(
                "region {id}: replicas differ or did not answer: {last:?}"
            ));
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// One row of the table.
fn row(seed: &str, r: &Report) -> String {
    let faults = r
        .faults
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{seed:>6} {:>4} {:>7} {:>6} {:>7} {:>10} {:>4} {:>5} {:>4} {:>4} {:>7} {:>7} {:>6}  {faults}",
        r.kind,
        r.ok,
        r.failed,
        r.unknown,
        r.dropped_bytes,
        r.violations,
        r.lost,
        r.bank_changes,
        r.mismatches,
        r.gc_dropped,
        r.timestamps,
        r.local_reads
    )
}

/// Runs `runs` seeds from `first` and prints the table.
fn campaign(first: u64, runs: u64, secs: u64) {
    let mut table = String::new();
    let mut total = Report::default();
    let mut failures = vec![];
    writeln!(
        table,
        "{:>6} {:>4} {:>7} {:>6} {:>7} {:>10} {:>4} {:>5} {:>4} {:>4} {:>7} {:>7} {:>6}  faults",
        "seed",
        "kind",
        "ok",
        "failed",
        "unknown",
        "dropped",
        "viol",
        "lost",
        "bank",
        "mism",
        "gc",
        "ts",
        "local"
    )
    .unwrap();
    let started = Instant::now();
    for seed in first..first + runs {
        // One run's panic is that run's failure; the campaign goes on to its table.
        let r = std::panic::catch_unwind(|| run(seed, secs, false)).unwrap_or_else(|p| Report {
            problems: vec![format!("the run panicked: {}", panic_message(&p))],
            ..Report::default()
        });
        let line = row(&seed.to_string(), &r);
        eprintln!("{line}");
        writeln!(table, "{line}").unwrap();
        if !r.problems.is_empty() {
            failures.push(format!("seed {seed}:\n  {}", r.problems.join("\n  ")));
        }
        total.ok += r.ok;
        total.failed += r.failed;
        total.unknown += r.unknown;
        total.dropped_bytes += r.dropped_bytes;
        total.violations += r.violations;
        total.lost += r.lost;
        total.bank_changes += r.bank_changes;
        total.mismatches += r.mismatches;
        total.gc_dropped += r.gc_dropped;
        total.timestamps += r.timestamps;
        total.local_reads += r.local_reads;
        for (k, v) in r.faults {
            *total.faults.entry(k).or_default() += v;
        }
    }
    total.kind = "all";
    writeln!(table, "{}", row("total", &total)).unwrap();
    writeln!(
        table,
        "runs {runs} (odd seeds raw operations, even seeds transactions) in {:.0}s; ok/failed/unknown \
         count operations (raw) and transactions (txn); viol: linearizability (raw) or \
         snapshot-isolation anomalies (txn); lost: acknowledged writes or committed appends \
         missing; bank: snapshots off the total; mism: regions whose replicas differ; gc: \
         versions GC dropped; ts: PD timestamps the transactional clients received (unique, \
         increasing per client); local: reads followers served (follower reads, and stale \
         bank snapshots); faults of the stores and of the PD group's leader (three PD \
         members)",
        started.elapsed().as_secs_f64(),
    )
    .unwrap();
    eprintln!("\n{table}");
    if let Ok(path) = std::env::var("FLOTILLA_NEMESIS_TABLE") {
        std::fs::write(&path, &table).expect("write the table");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(total.local_reads > 0, "no read was served by a follower");
    // A campaign of at least one run per store fault has each fault as some run's focus
    // (the PD faults as the second focus).
    for f in FAULTS.iter().filter(|_| runs >= STORE_FAULTS.len() as u64) {
        assert!(
            total.faults.contains_key(&format!("{f:?}")),
            "no {f:?} took effect in the campaign"
        );
    }
}

/// The checkers are shown to catch a broken rule: with readers passing the locks of
/// transactions that may still commit below their reads (a client fail point), short
/// transactional runs without faults must report anomalies or a bank total that moved.
/// Whether a run hits the race is chance (a run on a loaded machine once completed too
/// few transactions to), so up to three seeds are tried.
#[test]
fn a_run_whose_readers_pass_live_locks_is_caught() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broken = ClientFailPoints(&["txn_reader_passes_locks"]);
    fail::cfg(broken.0[0], "return").expect("a fail point");
    let mut reports = vec![];
    for seed in [2, 4, 6] {
        let r = run(seed, 15, true);
        eprintln!("{}", row("broken", &r));
        let caught = r.violations + r.bank_changes + r.lost > 0;
        reports.push(r);
        if caught {
            return;
        }
    }
    drop(broken);
    panic!("readers that pass live locks went unnoticed in three runs: {reports:?}");
}

/// The power-loss filesystem has teeth: with `sync-log = false` a store acknowledges
/// log entries before they are fsynced, so writes acknowledged just before every store
/// loses power are gone afterwards. (With the default, the campaign loses none.)
/// The two tests of this file take turns: with the campaign's processes beside it, a
/// starved power-loss cluster held elections, and a new term's fsync made every write
/// before it durable (the test then saw nothing lost).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn power_loss_takes_back_writes_acknowledged_before_their_fsync() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Any fsync of a store's log after the writes makes them durable with it: on a loaded
    // machine one may come (an election, a snapshot to a lagging follower; CI saw 0 of 300
    // lost once, beside the PD tests). A try counts only if no store fsynced its log while
    // the writes went in; up to three tries.
    let mut tries = vec![];
    for _ in 0..3 {
        let (lost, fsyncs) = power_loss_once();
        eprintln!("{lost} of 300 acknowledged writes lost; {fsyncs} log fsyncs during the writes");
        if lost > 0 {
            return;
        }
        tries.push(fsyncs);
        assert!(
            fsyncs > 0.0,
            "writes acknowledged without fsync survived a power loss of every store, with no \
             log fsync during the writes"
        );
    }
    panic!("every try fsynced the log during its writes (fsyncs {tries:?}): no power loss shown");
}

/// Raft log fsyncs of every store so far.
fn log_fsyncs(c: &NetCluster) -> f64 {
    (0..STORES)
        .filter_map(|h| common::http_get(&c.status_addr(h), "/metrics"))
        .map(|m| common::metric(&m, "flotilla_raftstore_log_fsyncs_total"))
        .sum()
}

/// One cluster with `sync-log = false`: 300 writes, every store loses power, and the
/// writes are read back. Returns how many were lost and the log fsyncs during the writes.
fn power_loss_once() -> (usize, f64) {
    // A long election timeout, so that no election (whose term change is fsynced, and
    // with it everything before) falls between the writes and the power loss.
    let mut c =
        NetCluster::start_with(STORES, "sync-log = false\nraft-election-timeout-ticks = 50");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cl = connect(&rt, &c);
    common::wait_until("three voters", T, || common::voters(&rt, &cl) == STORES);
    let ledger = Ledger::default();
    let before = log_fsyncs(&c);
    for i in 0..300 {
        rt.block_on(cl.put(&workload::ledger_key(i), b"acknowledged"))
            .expect("put");
        ledger.acked.lock().push(workload::ledger_key(i));
    }
    let fsyncs = log_fsyncs(&c) - before;
    let dropped = c.power_loss_all();
    assert!(dropped > 0, "the power loss dropped nothing");
    for h in 0..STORES {
        c.start_store(h);
    }
    let mut lost = None;
    common::wait_until("the ledger to be read", T, || {
        lost = ledger.lost(rt.handle(), &cl).ok();
        lost.is_some()
    });
    eprintln!("{dropped} bytes dropped");
    (lost.expect("read above").len(), fsyncs)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The short campaign of `make test`: one seed per store fault (so that each is some
/// run's focus, and each PD fault the second focus of two or three runs), each with
/// 12 s of faults, room for both foci; `make jepsen` sets the variables for the long one.
#[test]
fn seeded_fault_runs_stay_linearizable_durable_and_consistent() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    campaign(
        env_u64("FLOTILLA_NEMESIS_FIRST_SEED", 1),
        env_u64("FLOTILLA_NEMESIS_RUNS", STORE_FAULTS.len() as u64),
        env_u64("FLOTILLA_NEMESIS_SECS", 12),
    );
}
