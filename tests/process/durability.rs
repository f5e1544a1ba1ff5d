//! The real binaries on 127.0.0.1: durability of acknowledged writes across SIGKILLs of
//! one store at a time while writing, and of all stores at once.

use crate::common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{client, kvctl, voters, wait_until, ProcCluster};

const KEYS: usize = 1000;

#[test]
fn acknowledged_writes_survive_sigkill_of_each_store_and_of_all() {
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = Arc::new(client(&rt, &cluster.pd_addr));
    wait_until(
        "the first region to have three voters",
        Duration::from_secs(60),
        || voters(&rt, &c) == 3,
    );

    // One writer: each key is written once with its own value and retried until
    // acknowledged, so "the last acknowledged value" is exact.
    let acked: Arc<parking_lot::Mutex<BTreeMap<usize, String>>> = Arc::default();
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, acked, written, stop) = (c.clone(), acked.clone(), written.clone(), stop.clone());
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            for i in 0..KEYS {
                let (k, v) = (format!("k{i:04}"), format!("v{i}"));
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if handle.block_on(c.put(k.as_bytes(), v.as_bytes())).is_ok() {
                        acked.lock().insert(i, v);
                        written.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        })
    };
    for victim in 0..3 {
        let before = written.load(Ordering::SeqCst);
        wait_until("writes to progress", Duration::from_secs(60), || {
            written.load(Ordering::SeqCst) >= before + 50
        });
        cluster.kill_store(victim);
        let at_kill = written.load(Ordering::SeqCst);
        wait_until(
            "writes to go on without the killed store",
            Duration::from_secs(60),
            || written.load(Ordering::SeqCst) >= (at_kill + 50).min(KEYS),
        );
        cluster.start_store(victim);
    }
    writer.join().expect("writer thread");
    assert_eq!(written.load(Ordering::SeqCst), KEYS);
    stop.store(true, Ordering::SeqCst);

    for i in 0..3 {
        cluster.kill_store(i);
    }
    for i in 0..3 {
        cluster.start_store(i);
    }
    let acked = acked.lock().clone();
    for (i, v) in &acked {
        let got = rt
            .block_on(c.get(format!("k{i:04}").as_bytes()))
            .unwrap_or_else(|e| panic!("read k{i:04}: {e}"));
        assert_eq!(got.as_deref(), Some(v.as_bytes()), "k{i:04}");
    }

    // kvctl sees the same data.
    let out = kvctl(&cluster.pd_addr, &["get", "k0999"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v999");
    let out = kvctl(&cluster.pd_addr, &["scan", "k0000", "k0003"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "k0000\tv0\nk0001\tv1\nk0002\tv2\n"
    );
}

fn tikv(addr: &str) -> proto_grpc::tikvpb_grpc::TikvClient {
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    proto_grpc::tikvpb_grpc::TikvClient::new(grpcio::ChannelBuilder::new(env).connect(addr))
}

#[test]
fn dumb_requests_are_forwarded_and_smart_ones_get_a_leader_hint() {
    let cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", Duration::from_secs(60), || {
        voters(&rt, &c) == 3
    });
    let route = rt.block_on(c.regions()).unwrap().remove(0);
    let leader_store = route.leader.clone().unwrap().get_store_id();
    let stores = rt.block_on(c.stores()).unwrap();
    let follower = stores
        .iter()
        .find(|(s, _)| s.get_id() != leader_store)
        .map(|(s, _)| s.get_address().to_string())
        .unwrap();
    let store = tikv(&follower);

    // No routing in the context: the follower forwards to the leader.
    let mut put = proto::kvrpcpb::RawPutRequest::default();
    put.set_key(b"dumb".to_vec());
    put.set_value(b"client".to_vec());
    let resp = store.raw_put(&put).expect("rpc");
    assert!(
        !resp.has_region_error() && resp.get_error().is_empty(),
        "{resp:?}"
    );
    let mut get = proto::kvrpcpb::RawGetRequest::default();
    get.set_key(b"dumb".to_vec());
    assert_eq!(store.raw_get(&get).expect("rpc").get_value(), b"client");

    // With routing, the follower answers not_leader and names the leader.
    let mut ctx = proto::kvrpcpb::Context::default();
    ctx.set_region_id(route.region.get_id());
    ctx.set_region_epoch(route.region.get_region_epoch().clone());
    get.set_context(ctx);
    let resp = store.raw_get(&get).expect("rpc");
    let nl = resp.get_region_error().get_not_leader();
    assert_eq!(nl.get_leader().get_store_id(), leader_store, "{resp:?}");
}

#[test]
fn a_data_directory_of_another_cluster_is_refused() {
    let mut first = ProcCluster::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &first.pd_addr);
    rt.block_on(c.put(b"k", b"v"))
        .expect("first cluster serves");
    first.kill_store(0);
    // A second, unrelated cluster: its PD has another cluster id.
    let second = ProcCluster::start(0);
    let foreign = first.dir.path().join("store-0");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--pd",
            &second.pd_addr,
            "--cluster-secret-file",
            &second.secret_file().display().to_string(),
            "--data-dir",
            &foreign.display().to_string(),
        ])
        .args(["--addr", &format!("127.0.0.1:{}", common::free_port())])
        .args([
            "--status-addr",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kv-server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to cluster"), "{stderr}");
    // Nothing was lost: the first cluster still has its data.
    first.start_store(0);
    assert_eq!(rt.block_on(c.get(b"k")).unwrap(), Some(b"v".to_vec()));
}

#[test]
fn kvctl_commands_and_shell() {
    let cluster = ProcCluster::start(1);
    let pd = cluster.pd_addr.clone();
    wait_until("the cluster to serve", Duration::from_secs(60), || {
        kvctl(&pd, &["put", "a", "1"]).status.success()
    });
    let text = |args: &[&str]| {
        let out = kvctl(&pd, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(text(&["put", "b", "2"]).1, "OK\n");
    assert_eq!(
        text(&["get", "b", "--output", "json"]).1.trim(),
        r#"{"key":"b","value":"2"}"#
    );
    assert_eq!(text(&["scan", "--limit", "1"]).1, "a\t1\n");
    assert_eq!(
        text(&["scan", "a", "c", "--output", "json"]).1.trim(),
        r#"[{"key":"a","value":"1"},{"key":"b","value":"2"}]"#
    );

    // Compare-and-swap: the expected value, then absence.
    assert_eq!(text(&["cas", "b", "2", "3"]).1, "OK\n");
    let (code, out, _) = text(&["cas", "b", "2", "4"]);
    assert_eq!((code, out.as_str()), (Some(1), "FAILED\tprevious=3\n"));
    assert_eq!(text(&["cas", "--absent", "c", "new"]).1, "OK\n");
    assert_eq!(text(&["cas", "--absent", "c", "again"]).0, Some(1));
    let (code, _, err) = text(&["cas", "--absent", "c", "x", "y"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("with --absent give KEY NEW"), "{err}");

    assert_eq!(text(&["delete", "a"]).1, "OK\n");
    assert_eq!(text(&["get", "a"]).0, Some(1));
    let (code, _, err) = text(&["put", "", "v"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("key must not be empty"), "{err}");

    let regions = text(&["region", "list"]).1;
    assert!(regions.starts_with("ID\tSTART\tEND"), "{regions}");
    assert!(regions.contains(":voter"), "{regions}");
    let region: serde_json::Value = serde_json::from_str(
        text(&["region", "show", "--key", "b", "--output", "json"])
            .1
            .trim(),
    )
    .unwrap();
    assert!(
        region["peers"].as_array().is_some_and(|p| p.len() == 1),
        "{region}"
    );
    let stores: serde_json::Value =
        serde_json::from_str(text(&["store", "list", "--output", "json"]).1.trim()).unwrap();
    assert_eq!(stores[0]["state"], "up", "{stores}");
    assert!(text(&["operator", "list"])
        .1
        .starts_with("REGION\tKIND\tSTEP\tAGE"));

    // The shell reads commands from stdin when it is not a terminal.
    use std::io::Write;
    let mut shell = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--pd", &pd, "shell"])
        .env("HOME", cluster.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"put s \"with space\"\nget s\nnot-a-command\nexit\n")
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK\n") && stdout.contains("with space\n"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cluster.dir.path().join(".kvctl_history").exists(),
        "history is saved"
    );
}

#[test]
fn pd_keeps_the_cluster_across_sigkill() {
    let mut cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", Duration::from_secs(60), || {
        voters(&rt, &c) == 3
    });
    rt.block_on(c.put(b"before", b"pd restart")).unwrap();
    let stores_before = kvctl(&cluster.pd_addr, &["store", "list"]).stdout;
    cluster.restart_pd();
    // Same cluster id, stores and routing: the old client and stores carry on.
    rt.block_on(c.put(b"after", b"pd restart"))
        .expect("writes after PD restart");
    assert_eq!(
        rt.block_on(c.get(b"before")).unwrap(),
        Some(b"pd restart".to_vec())
    );
    let id_lines = |out: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .skip(1)
            .map(|l| l.split('\t').take(2).collect::<Vec<_>>().join("\t"))
            .collect()
    };
    let stores_after = kvctl(&cluster.pd_addr, &["store", "list"]).stdout;
    assert_eq!(id_lines(&stores_before), id_lines(&stores_after));
    assert_eq!(voters(&rt, &c), 3);
}

#[test]
fn kvctl_moves_leadership_and_refuses_impossible_transfers() {
    let cluster = ProcCluster::start(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", Duration::from_secs(60), || {
        voters(&rt, &c) == 3
    });
    let route = rt.block_on(c.regions()).unwrap().remove(0);
    let id = route.region.get_id().to_string();
    let leader = route.leader.unwrap().get_store_id();
    let target = route
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .find(|s| *s != leader)
        .unwrap()
        .to_string();
    let out = kvctl(
        &cluster.pd_addr,
        &["region", "transfer-leader", &id, "--to", &target],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = kvctl(
        &cluster.pd_addr,
        &["region", "show", &id, "--output", "json"],
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["leader_store"].to_string(), target);
    rt.block_on(c.put(b"after", b"transfer")).unwrap();

    let refused = |args: &[&str], why: &str| {
        let out = kvctl(&cluster.pd_addr, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    refused(
        &["region", "transfer-leader", &id, "--to", "999"],
        "has no peer on store 999",
    );
    refused(
        &["region", "transfer-leader", "424242", "--to", &target],
        "no region with id 424242",
    );
}

#[test]
fn kvctl_moves_a_replica_to_an_empty_store() {
    let cluster = ProcCluster::start(4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("three voters", Duration::from_secs(60), || {
        voters(&rt, &c) == 3
    });
    for i in 0..200 {
        rt.block_on(c.put(format!("m{i:03}").as_bytes(), b"v"))
            .unwrap();
    }
    let route = rt.block_on(c.regions()).unwrap().remove(0);
    let id = route.region.get_id().to_string();
    let have: Vec<u64> = route
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .collect();
    let stores: Vec<u64> = rt
        .block_on(c.stores())
        .unwrap()
        .iter()
        .map(|(s, _)| s.get_id())
        .collect();
    let empty = stores
        .iter()
        .find(|s| !have.contains(s))
        .unwrap()
        .to_string();
    // Move the leader's own replica: leadership has to move first.
    let from = route.leader.unwrap().get_store_id().to_string();
    let out = kvctl(
        &cluster.pd_addr,
        &[
            "--timeout",
            "60s",
            "region",
            "move",
            &id,
            "--from",
            &from,
            "--to",
            &empty,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("add learner"),
        "progress is shown"
    );
    let route = rt.block_on(c.regions()).unwrap().remove(0);
    let now: Vec<u64> = route
        .region
        .get_peers()
        .iter()
        .map(|p| p.get_store_id())
        .collect();
    assert!(
        now.contains(&empty.parse().unwrap()) && !now.contains(&from.parse().unwrap()),
        "{now:?}"
    );
    assert_eq!(voters(&rt, &c), 3);
    assert_eq!(rt.block_on(c.scan(b"m", b"n", 1000)).unwrap().len(), 200);

    let refused = |args: &[&str], why: &str| {
        let out = kvctl(&cluster.pd_addr, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    let holder = now[0].to_string();
    refused(
        &[
            "region",
            "move",
            &id,
            "--from",
            &holder,
            "--to",
            &now[1].to_string(),
        ],
        "already has peer",
    );
    refused(
        &["region", "move", &id, "--from", &from, "--to", &empty],
        "has no peer on store",
    );
    refused(
        &["region", "move", &id, "--from", &holder, "--to", "999"],
        "store 999 does not exist",
    );
}
