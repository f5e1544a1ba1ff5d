//! An idle cluster whose only region hibernates loses the store leading it to a network
//! partition rather than a kill: nothing resets the connections, so the other stores
//! learn of it only when a keepalive ping on their Raft stream to it goes unanswered.
//! They then report the store down to the region (`StoreMsg::StoresDown`), which wakes
//! and elects a new leader; a client's write succeeds within the keepalive bound.
//! (`tests/process/idle_failover.rs` is the same with the store killed on loopback.)
//! Two more partitions once showed product bugs: a client that already held a connection
//! to the cut-off store waited out its whole deadline on it (now one try waits
//! `client::TRY_TIMEOUT` at most), and PD named a leader cut off from its followers again
//! after the new leader (now PD refuses a region heartbeat from an older Raft term).

use std::time::{Duration, Instant};

use proto::{kvrpcpb, metapb};

use crate::{
    cluster::{NetCluster, PdSetup},
    common,
    net::Node,
};

const T: Duration = Duration::from_secs(60);
/// `server.grpc-keepalive-time` of every store (10 s by default).
const KEEPALIVE_TIME: Duration = Duration::from_secs(2);
/// `server.grpc-keepalive-timeout` of every store (3 s by default).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// What the election and the client's retries may add to the keepalive's detection.
const SLACK: Duration = Duration::from_secs(3);
/// The bound: keepalive time + keepalive timeout + slack.
const BOUND: Duration = KEEPALIVE_TIME
    .saturating_add(KEEPALIVE_TIMEOUT)
    .saturating_add(SLACK);

/// Three stores with this test's keepalive, a client made by `connect`, and one write
/// acknowledged (`before` = `v0`).
fn written_once(
    connect: impl Fn(&tokio::runtime::Runtime, &NetCluster) -> client::Client,
) -> (NetCluster, tokio::runtime::Runtime, client::Client) {
    let c = NetCluster::start_full(3, PdSetup::Gateway, &keepalive_config());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cl = connect(&rt, &c);
    common::wait_until("three voters", T, || common::voters(&rt, &cl) == 3);
    common::wait_until("a first write", T, || {
        rt.block_on(cl.put(b"before", b"v0")).is_ok()
    });
    (c, rt, cl)
}

/// The stores' extra config: the keepalive of this test.
fn keepalive_config() -> String {
    format!(
        "[server]\ngrpc-keepalive-time = \"{}s\"\ngrpc-keepalive-timeout = \"{}s\"\n",
        KEEPALIVE_TIME.as_secs(),
        KEEPALIVE_TIMEOUT.as_secs()
    )
}

fn status_metric(c: &NetCluster, h: usize, name: &str) -> Option<f64> {
    common::http_get(&c.status_addr(h), "/metrics").map(|m| common::metric(&m, name))
}

fn hibernating_everywhere(c: &NetCluster) -> bool {
    (0..3).all(|h| status_metric(c, h, "flotilla_raftstore_hibernating_peers") == Some(1.0))
}

/// Whether PD heard from every store within the last 2 s (the stores report one PD has
/// not heard from for 3 s as silent to each other, which wakes their regions).
fn pd_hears_every_store(rt: &tokio::runtime::Runtime, cl: &client::Client) -> bool {
    let Ok(stores) = rt.block_on(cl.pd().get_all_stores(true)) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64;
    stores.len() == 3
        && stores
            .iter()
            .all(|s| now - s.last_heartbeat < 2_000_000_000)
}

/// The region's leader, once the region hibernates on every store, PD hears from every
/// store, and the stores and PD (whom kvctl asks) agree on the leader, all at once: its
/// host, its store id, and the region.
fn hibernating_leader(
    c: &NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
) -> (usize, u64, metapb::Region) {
    let mut found = None;
    common::wait_until(
        "a hibernating region and every store heard by PD",
        T,
        || {
            if !pd_hears_every_store(rt, cl) || !hibernating_everywhere(c) {
                return false;
            }
            let leaders: Vec<Option<f64>> = (0..3)
                .map(|h| status_metric(c, h, "flotilla_raftstore_leaders"))
                .collect();
            let Some(h) = (0..3).find(|h| leaders[*h] == Some(1.0)) else {
                return false;
            };
            let Ok(route) = rt.block_on(cl.pd().get_region(b"")) else {
                return false;
            };
            let Some(l) = route.leader else { return false };
            let Ok((store, _)) = rt.block_on(cl.pd().get_store(l.get_store_id())) else {
                return false;
            };
            found = Some((h, store.get_id(), route.region));
            c.host_of(store.get_address()) == Some(h) && hibernating_everywhere(c)
        },
    );
    found.expect("found above")
}

/// Cuts host `victim` off from the other stores' hosts and, if `everything`, from the
/// gateway too (PD and the clients). Returns the nodes cut from it.
fn cut_off(c: &mut NetCluster, victim: usize, everything: bool) -> Vec<Node> {
    let mut to: Vec<Node> = (0..3).filter(|h| *h != victim).map(Node::Host).collect();
    if everything {
        to.push(Node::Gateway);
    }
    for n in &to {
        c.net.cut(Node::Host(victim), *n);
    }
    to
}

/// The cut holds both ways; the cut store's status port answers the gateway only if the
/// gateway was not cut off.
fn assert_cut(c: &NetCluster, victim: usize, to: &[Node]) {
    for n in to {
        assert!(
            !c.net.reaches(victim, *n),
            "host {victim} still reaches {n:?}"
        );
        assert!(
            !c.net.reaches_from(*n, Node::Host(victim)),
            "{n:?} still reaches host {victim}"
        );
    }
    let gateway_cut = to.contains(&Node::Gateway);
    assert_eq!(
        common::http_get(&c.status_addr(victim), "/metrics").is_none(),
        gateway_cut,
        "the cut store's status port (gateway cut off: {gateway_cut})"
    );
    if !gateway_cut {
        assert!(
            c.net.reaches(victim, Node::Gateway),
            "host {victim} does not reach the gateway"
        );
    }
}

/// kvctl puts `key` from the gateway; returns when it was acknowledged, relative to `cut`.
fn put(c: &NetCluster, cut: Instant, key: &str, value: &str) -> Duration {
    let out = common::kvctl(&c.pd_addr(), &["--timeout", "20s", "put", key, value]);
    let took = cut.elapsed();
    assert!(
        out.status.success(),
        "the write of {key} failed {took:?} after the cut: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Fails the test, keeping the cluster's logs and data for a look.
fn fail(c: NetCluster, why: String) -> ! {
    let kept = c.keep();
    panic!("{why} (logs and data kept in {})", kept.display())
}

/// A read of `key` served by store `addr`'s replica `peer` of `region`, which must lead
/// it: `Err` with the region error otherwise.
fn read_at(
    env: &std::sync::Arc<grpcio::Environment>,
    addr: &str,
    region: &metapb::Region,
    peer: &metapb::Peer,
    key: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    let ch = grpcio::ChannelBuilder::new(env.clone()).connect(addr);
    let kv = proto_grpc::tikvpb_grpc::TikvClient::new(ch);
    let mut req = kvrpcpb::RawGetRequest::default();
    req.mut_context().set_region_id(region.get_id());
    req.mut_context()
        .set_region_epoch(region.get_region_epoch().clone());
    req.mut_context().set_peer(peer.clone());
    req.set_key(key.to_vec());
    let opt = grpcio::CallOption::default().timeout(Duration::from_secs(2));
    let mut resp = kv.raw_get_opt(&req, opt).map_err(|e| e.to_string())?;
    if resp.has_region_error() {
        return Err(format!("{:?}", resp.get_region_error()));
    }
    if !resp.get_error().is_empty() {
        return Err(resp.take_error());
    }
    Ok((!resp.not_found).then(|| resp.take_value()))
}

/// Heals the network; then the cut-off store rejoins: every replica, its own included,
/// leads in turn and serves each of `kvs` from its own state, and the replicas hash the
/// same.
fn heal_and_read_everywhere(
    c: &mut NetCluster,
    rt: &tokio::runtime::Runtime,
    cl: &client::Client,
    victim: usize,
    to: &[Node],
    region: &metapb::Region,
    kvs: &[(&str, &str)],
) {
    assert!(c.running(victim), "the cut-off store exited");
    c.net.heal();
    assert!(
        to.iter().all(|n| c.net.reaches(victim, *n)),
        "the heal did not take effect"
    );
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    for peer in region.get_peers() {
        let (store, _) = rt
            .block_on(cl.pd().get_store(peer.get_store_id()))
            .expect("a store");
        let addr = store.get_address().to_string();
        let host = c.host_of(&addr).expect("one of ours");
        let mut last = String::new();
        let read = test_cluster::poll_until(T, || {
            let _ = rt.block_on(
                cl.pd()
                    .transfer_leader(region.get_id(), peer.get_store_id()),
            );
            let got: Result<Vec<Option<Vec<u8>>>, String> = kvs
                .iter()
                .map(|(k, _)| read_at(&env, &addr, region, peer, k.as_bytes()))
                .collect();
            match got {
                Ok(values) => Some(values),
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(200));
                    None
                }
            }
        });
        let read = read.unwrap_or_else(|| {
            panic!("the store on host {host} did not lead and serve reads within {T:?}: {last}")
        });
        for ((k, v), got) in kvs.iter().zip(read) {
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k} on host {host}");
        }
        eprintln!("host {host} led and served every value");
    }
    let check = rt
        .block_on(cl.check_region(region.get_id()))
        .expect("a consistency check");
    assert!(check.consistent(), "replicas differ: {:?}", check.replicas);
}

/// Three stores (keepalive pinged every 2 s, a connection dropped after 1 s without an
/// answer) and PD on the gateway; the bound is keepalive time + keepalive timeout + 3 s
/// = 6 s from the cut. Twice the region hibernates and the store leading it is cut off
/// by blackhole routes:
///
/// 1. from everything (the other stores, PD and the clients): a write through kvctl
///    from the gateway, started at the cut, is acknowledged within the bound. (The
///    request itself, sent to a follower once the leader cannot be dialled, wakes the
///    region, which elects after an election timeout; and PD reports the store silent
///    after 3 s here: this part passes with the default keepalive too.)
/// 2. from the other stores only, with no client request: the other stores elect a new
///    leader by themselves within the bound. Only the keepalive can tell them (PD
///    still hears from the store, so it reports no silent store): with the default
///    keepalive this takes 13 s.
///
/// After each heal the old leader rejoins: every replica leads in turn and serves every
/// value written.
#[test]
fn idle_leader_partitioned_off_a_write_succeeds_within_the_keepalive_bound() {
    let _turn = crate::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut c, rt, cl) = written_once(crate::connect);

    // 1. Cut off from everything; the write starts at the cut.
    let (victim, _, region) = hibernating_leader(&c, &rt, &cl);
    let to = cut_off(&mut c, victim, true);
    let cut = Instant::now();
    let took = std::thread::scope(|s| {
        let write = s.spawn(|| put(&c, cut, "at-the-cut", "v1"));
        assert_cut(&c, victim, &to);
        write.join().expect("the write does not panic")
    });
    println!(
        "write at the cut: the idle leader's store (host {victim}) cut off from everything, \
         kvctl put acknowledged {took:?} after the cut (bound {BOUND:?})"
    );
    if took > BOUND {
        fail(c, format!("the write took {took:?}, past {BOUND:?}"));
    }
    assert!(
        to.iter().all(|n| !c.net.reaches(victim, *n)),
        "the cut healed before the write was acknowledged"
    );
    let written = [("before", "v0"), ("at-the-cut", "v1")];
    heal_and_read_everywhere(&mut c, &rt, &cl, victim, &to, &region, &written);

    // 2. Cut off from the other stores only; no client asks anything.
    let (victim, _, region) = hibernating_leader(&c, &rt, &cl);
    let to = cut_off(&mut c, victim, false);
    let cut = Instant::now();
    assert_cut(&c, victim, &to);
    let others: Vec<usize> = (0..3).filter(|h| *h != victim).collect();
    let elected = test_cluster::poll_until(T, || {
        let leads = others
            .iter()
            .any(|h| status_metric(&c, *h, "flotilla_raftstore_leaders") == Some(1.0));
        leads.then(|| cut.elapsed())
    });
    let shown = elected.map_or_else(|| format!("no store within {T:?}"), |e| format!("{e:?}"));
    println!(
        "no client: the idle leader's store (host {victim}) cut off from the other stores, \
         another store led {shown} after the cut (bound {BOUND:?})"
    );
    match elected {
        Some(e) if e <= BOUND => {}
        _ => fail(
            c,
            format!("the stores took {elected:?} to replace the cut-off leader, past {BOUND:?}"),
        ),
    }
    heal_and_read_everywhere(&mut c, &rt, &cl, victim, &to, &region, &written);
}

/// The same partition with the write from a client that already holds a connection to
/// the leader's store (it made the first write there): its request goes down that
/// connection, whose packets now vanish. The try gives up after `client::TRY_TIMEOUT`,
/// the client passes the silent store over and asks a follower, which names the new
/// leader once the others elect one. The write is a compare-and-swap, so a resend that
/// applied a second time would report failure; the session answers it once. (Before the
/// try timeout, the client waited its whole deadline and the write ended undetermined.)
#[test]
fn a_long_lived_clients_write_succeeds_within_the_keepalive_bound_after_its_leader_is_cut_off() {
    let _turn = crate::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut c, rt, cl) = written_once(|rt, c| common::client(rt, &c.pd_addr()));
    let (victim, _, region) = hibernating_leader(&c, &rt, &cl);
    let to = cut_off(&mut c, victim, true);
    let cut = Instant::now();
    assert_cut(&c, victim, &to);
    let res = rt.block_on(cl.compare_and_swap(b"before", Some(b"v0"), b"v1"));
    let took = cut.elapsed();
    println!(
        "long-lived client: the idle leader's store (host {victim}) cut off, compare-and-swap \
         ended {took:?} after the cut with {res:?} (bound {BOUND:?})"
    );
    let swapped = client::CasOutcome {
        succeed: true,
        previous: Some(b"v0".to_vec()),
    };
    assert_eq!(
        res.as_ref().ok(),
        Some(&swapped),
        "the write failed {took:?} after the cut: {res:?}"
    );
    assert!(took <= BOUND, "the write took {took:?}, past {BOUND:?}");
    let written = [("before", "v1")];
    heal_and_read_everywhere(&mut c, &rt, &cl, victim, &to, &region, &written);
}

/// A leader cut off from the other stores but not from PD: once the others elect a new
/// leader, PD must not name the old one again. The old leader, woken when its
/// connections to the others break, stays leader in its old term until check-quorum
/// makes it step down and reports the region to PD meanwhile; PD refuses those reports
/// for their older term. (Before it compared terms, PD named the deposed leader again in
/// about half the runs, and a client routed there had its write held until the store's
/// request timeout.)
#[test]
fn pd_never_names_a_leader_cut_off_from_its_followers_again_once_another_leads() {
    let _turn = crate::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut c, rt, cl) = written_once(crate::connect);
    let (victim, old, _) = hibernating_leader(&c, &rt, &cl);
    let to = cut_off(&mut c, victim, false);
    let cut = Instant::now();
    assert_cut(&c, victim, &to);
    // PD's leader for the region each time it changes, from the cut on.
    let mut named: Vec<(Duration, u64)> = vec![];
    while cut.elapsed() < BOUND + Duration::from_secs(4) {
        let leader = rt
            .block_on(cl.pd().get_region(b""))
            .ok()
            .and_then(|r| r.leader)
            .map(|l| l.get_store_id());
        if let Some(l) = leader.filter(|l| named.last().map(|n| n.1) != Some(*l)) {
            named.push((cut.elapsed(), l));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("store {old} cut off from the other stores; PD named as leader: {named:?}");
    let Some(first_new) = named.iter().position(|(_, l)| *l != old) else {
        fail(c, format!("PD named no other leader: {named:?}"));
    };
    if named[first_new..].iter().any(|(_, l)| *l == old) {
        fail(
            c,
            format!("PD named the cut-off store {old} again after another: {named:?}"),
        );
    }
}
