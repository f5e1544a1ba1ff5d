//! Replica moves on real processes: pd-server and four kv-servers, 100,000 keys
//! (about 100 MiB). A whole-range move is timed; after `kvctl split`, a second move is
//! interrupted by SIGKILLing the target store, which then restarts: the move finishes
//! (or is abandoned) cleanly, every region ends with three voters, and every key reads
//! back. Bad `kvctl region move` and `transfer-leader` requests change nothing, and
//! `kvctl store delete --wait` empties a store into tombstone, after which it exits.

use crate::common;

use std::time::{Duration, Instant};

use common::{client, kvctl, wait_until, Proc, ProcCluster};
use proto::metapb;
use rand::{rngs::StdRng, Rng, SeedableRng};

const N: usize = 100_000;
const T: Duration = Duration::from_secs(120);

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// 1,000 bytes that name their key and do not compress (so that the region really
/// holds ~100 MiB on disk and in its snapshot).
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:06}").into_bytes();
    let mut rng = StdRng::seed_from_u64(i as u64);
    v.extend((0..994).map(|_| rng.gen::<u8>()));
    v
}

fn peers(r: &metapb::Region) -> Vec<(u64, metapb::PeerRole)> {
    r.get_peers()
        .iter()
        .map(|p| (p.get_store_id(), p.get_role()))
        .collect()
}

fn store_ids(rt: &tokio::runtime::Runtime, cl: &client::Client) -> Vec<u64> {
    let mut ids: Vec<u64> = rt
        .block_on(cl.pd().get_all_stores(true))
        .expect("stores")
        .iter()
        .map(|s| s.get_id())
        .collect();
    ids.sort();
    ids
}

fn moved(pd: &str, region: u64, from: u64, to: u64, timeout: &str) -> std::process::Output {
    let (id, from, to) = (region.to_string(), from.to_string(), to.to_string());
    kvctl(
        pd,
        &[
            "--timeout",
            timeout,
            "region",
            "move",
            &id,
            "--from",
            &from,
            "--to",
            &to,
        ],
    )
}

#[test]
fn moves_finish_through_a_killed_target_and_keep_every_key() {
    let _alone = test_cluster::gate::alone();
    let mut cluster = ProcCluster::start_configured(
        4,
        "region-split-size = \"1GiB\"\nregion-split-keys = 10000000",
        "enable-balance = false",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = client(&rt, &cluster.pd_addr);
    let pd = cluster.pd_addr.clone();
    wait_until("three voters and four stores", T, || {
        common::voters(&rt, &c) == 3 && store_ids(&rt, &c).len() == 4
    });
    let all: Vec<usize> = (0..N).collect();
    for chunk in all.chunks(1000) {
        let pairs: Vec<_> = chunk.iter().map(|i| (key(*i), value(*i))).collect();
        rt.block_on(c.batch_put(&pairs)).expect("batch put");
    }

    // Time a move of the whole ~100 MiB region from a follower's store to the fourth.
    let route = rt.block_on(c.pd().get_region(b"")).expect("region");
    let region = route.region.get_id();
    let leader = route.leader.expect("a leader").get_store_id();
    let holders: Vec<u64> = peers(&route.region).iter().map(|p| p.0).collect();
    let spare = *store_ids(&rt, &c)
        .iter()
        .find(|s| !holders.contains(s))
        .expect("a store without the region");
    let from = *holders.iter().find(|s| **s != leader).expect("a follower");
    let started = Instant::now();
    let out = moved(&pd, region, from, spare, "120s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "moved a {N}-key (~100 MiB) region in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Bad requests: each refused with a reason, nothing scheduled.
    let (r, f, s, l) = (
        region.to_string(),
        from.to_string(),
        spare.to_string(),
        leader.to_string(),
    );
    for (args, why) in [
        (
            vec!["region", "move", &r, "--from", &s, "--to", &l],
            "already has peer",
        ),
        (
            vec!["region", "move", &r, "--from", &s, "--to", "99"],
            "does not exist",
        ),
        (
            vec!["region", "move", &r, "--from", "99", "--to", &f],
            "no peer on store 99",
        ),
        (
            vec!["region", "transfer-leader", &r, "--to", "99"],
            "no peer on store 99",
        ),
        (
            vec!["region", "move", "123456", "--from", &s, "--to", &f],
            "no region",
        ),
    ] {
        let out = kvctl(&pd, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?} should say {why:?}: {err}");
    }
    assert!(rt
        .block_on(c.pd().get_operators())
        .expect("operators")
        .is_empty());

    // Split by hand, then move the left half to the store it just left, killing that
    // store once it holds the learner; restart it and let the move finish.
    let out = kvctl(&pd, &["split", "key-050000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = rt
        .block_on(c.pd().get_region(b""))
        .expect("left region")
        .region;
    let target = from;
    let source = *peers(&left)
        .iter()
        .map(|p| &p.0)
        .find(|s| **s != target)
        .expect("a source");
    let target_index = store_index(&cluster, &rt, &c, target);
    let (id, src, dst) = (
        left.get_id().to_string(),
        source.to_string(),
        target.to_string(),
    );
    let mut mover = Proc::spawn(
        "kvctl-move",
        env!("CARGO_BIN_EXE_kvctl"),
        &[
            "--pd".into(),
            pd.clone(),
            "--cluster-secret-file".into(),
            cluster.secret_file().display().to_string(),
            "--timeout".into(),
            "120s".into(),
            "region".into(),
            "move".into(),
            id,
            "--from".into(),
            src,
            "--to".into(),
            dst,
        ],
        cluster.dir.path(),
        cluster.dir.path(),
    );
    wait_until("the learner on the target", T, || {
        rt.block_on(c.pd().get_region_by_id(left.get_id()))
            .is_ok_and(|r| peers(&r.region).iter().any(|p| p.0 == target))
    });
    cluster.kill_store(target_index);
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_store(target_index);
    let status = mover.wait_exit(T).expect("kvctl region move finishes");
    assert!(status.success(), "the move completes after the restart");
    wait_until("every region with three voters and no operator", T, || {
        let regions = rt.block_on(c.regions()).unwrap_or_default();
        let ops = rt.block_on(c.pd().get_operators()).unwrap_or_default();
        ops.is_empty()
            && regions.len() == 2
            && regions.iter().all(|r| {
                let p = peers(&r.region);
                p.len() == 3 && p.iter().all(|x| x.1 == metapb::PeerRole::Voter)
            })
    });

    // Decommission the target: kvctl follows it to tombstone, showing progress; with
    // three stores left, deleting another is refused.
    let victim = target.to_string();
    let out = kvctl(
        &pd,
        &["--timeout", "120s", "store", "delete", &victim, "--wait"],
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{progress}");
    let last = progress.lines().last().unwrap_or_default();
    let done = last
        .strip_prefix(&format!("replicas moved off store {target}: "))
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(count, _)| count.split_once('/'));
    assert!(
        matches!(done, Some((a, b)) if a == b && a != "0"),
        "progress ends with every replica moved: {progress}"
    );
    let (store, _) = rt.block_on(c.pd().get_store(target)).expect("store");
    assert_eq!(store.get_state(), metapb::StoreState::Tombstone);
    let exit = cluster.stores[target_index]
        .as_mut()
        .expect("the target was restarted")
        .wait_exit(T);
    assert!(
        exit.is_some_and(|s| s.success()),
        "a decommissioned store stops by itself: {exit:?}"
    );
    let regions = rt.block_on(c.regions()).expect("regions");
    assert!(regions
        .iter()
        .all(|r| peers(&r.region).len() == 3 && !peers(&r.region).iter().any(|p| p.0 == target)));
    let other = source.to_string();
    let out = kvctl(&pd, &["store", "delete", &other]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fewer than max-replicas"));

    let got = rt
        .block_on(c.scan(b"", b"", N + 10))
        .expect("scan everything");
    assert_eq!(got.len(), N, "every key once");
    for (i, (k, v)) in got.iter().enumerate() {
        assert_eq!(k, &key(i));
        assert!(v == &value(i), "value of {}", String::from_utf8_lossy(k));
    }
}

/// The index in `cluster.stores` of the store with id `store_id` (matched by address).
fn store_index(
    cluster: &ProcCluster,
    rt: &tokio::runtime::Runtime,
    c: &client::Client,
    store_id: u64,
) -> usize {
    let (store, _) = rt.block_on(c.pd().get_store(store_id)).expect("store");
    cluster
        .store_addrs
        .iter()
        .position(|(port, _)| store.get_address().ends_with(&format!(":{port}")))
        .expect("a store of this cluster")
}
