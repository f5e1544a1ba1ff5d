//! Client sessions through the path a user takes: Flotilla's client against kv-server
//! processes. Every store loses the first compare-and-swap answer it gives (fail point
//! `raw_cas_answer_lost`, set through kv-server's FAILPOINTS): the leader's, held while
//! leadership moves, for the write it applied; then the new leader's, for the resend it
//! answered from the session. The client resends until an answer arrives: the first
//! answer, and the write applied once.

use std::time::{Duration, Instant};

use test_cluster::wait_until;

use crate::common::{http_get, kvctl, ProcCluster};

const T: Duration = Duration::from_secs(60);
/// How long the leader holds the answer before losing it: time to move leadership.
const HOLD_MS: u64 = 10_000;

/// The sum over every store of the session writes with `outcome`.
fn session_writes(cluster: &ProcCluster, outcome: &str) -> f64 {
    (0..cluster.stores.len())
        .filter_map(|i| http_get(&cluster.status_addr(i), "/metrics"))
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("flotilla_raftstore_session_writes_total"))
                .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn a_cas_whose_answer_is_lost_across_a_leader_change_is_applied_once() {
    let mut cluster = ProcCluster::start(0);
    cluster.store_env = vec![(
        "FAILPOINTS".into(),
        format!("raw_cas_answer_lost=1*return({HOLD_MS})"),
    )];
    for _ in 0..3 {
        cluster.add_store();
    }
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let ours = std::sync::Arc::new(
        rt.block_on(client::Client::connect(
            std::slice::from_ref(&cluster.pd_addr),
            T,
        ))
        .expect("connect a client"),
    );
    wait_until("three voters and no operator running", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.first().is_some_and(|r| r.region.get_peers().len() == 3))
            && rt
                .block_on(ours.pd().get_operators())
                .is_ok_and(|o| o.is_empty())
    });
    rt.block_on(ours.put(b"k", b"a")).expect("put");
    // The put is a session write too.
    wait_until("every replica applied the put", T, || {
        session_writes(&cluster, "applied") >= 3.0
    });
    let started = Instant::now();
    let cas = {
        let ours = ours.clone();
        rt.spawn(async move { ours.compare_and_swap(b"k", Some(b"a"), b"b").await })
    };
    // Every replica applies it; the leader then holds its answer at the fail point.
    wait_until("the compare-and-swap applied", T, || {
        session_writes(&cluster, "applied") >= 6.0
    });
    let route = rt.block_on(ours.pd().get_region(b"k")).expect("the region");
    let leader = route.leader.expect("a leader").get_store_id();
    let to = route
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .find(|s| *s != leader)
        .expect("another voter");
    let out = kvctl(
        &cluster.pd_addr,
        &[
            "region",
            "transfer-leader",
            &route.region.get_id().to_string(),
            "--to",
            &to.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "kvctl transfer-leader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_millis(HOLD_MS),
        "leadership moved while the answer was still held ({:?})",
        started.elapsed()
    );
    let outcome = rt
        .block_on(cas)
        .expect("the task")
        .expect("the resend is answered");
    println!(
        "compare-and-swap answered after its answer was lost and leadership moved: {:?}",
        started.elapsed()
    );
    assert!(outcome.succeed, "the first answer: it applied");
    assert_eq!(outcome.previous.as_deref(), Some(&b"a"[..]));
    // Both resends that reached the new leader went through the log and every
    // replica answered them from the session, applying nothing.
    wait_until("every replica deduplicated both resends", T, || {
        session_writes(&cluster, "deduplicated") >= 6.0
    });
    assert_eq!(
        session_writes(&cluster, "applied"),
        6.0,
        "applied once on each replica"
    );
    assert_eq!(
        rt.block_on(ours.get(b"k")).expect("get").as_deref(),
        Some(&b"b"[..])
    );
}
