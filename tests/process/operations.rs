//! What an operator meets: `kvctl cluster health` and `kvctl store show` on a real
//! cluster of processes, JSON logs, and the bad starts that must fail fast with a message
//! naming the problem (a data directory in use, an unknown config key, a PD address that
//! does not resolve).

use crate::common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{client, kvctl, voters, wait_until, Proc, ProcCluster};

const T: Duration = Duration::from_secs(60);

/// kvctl's exit code and output.
fn run(pd: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = kvctl(pd, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Health with a short down threshold: test stores heartbeat every second.
fn health(pd: &str) -> (Option<i32>, String) {
    run(pd, &["cluster", "health", "--down-after", "4s"])
}

#[test]
fn cluster_health_is_healthy_then_degraded_then_unhealthy_as_stores_die() {
    let mut cluster = ProcCluster::start(3);
    let pd = cluster.pd_addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &pd);
    wait_until("three voters", T, || voters(&rt, &c) == 3);
    rt.block_on(c.put(b"k", b"v")).unwrap();
    let mut last = (None, String::new());
    wait_until("a healthy verdict", T, || {
        last = health(&pd);
        last.0 == Some(0)
    });
    assert!(last.1.contains("HEALTHY"), "{}", last.1);
    assert!(last.1.contains("3 up, 0 down"), "{}", last.1);

    let (code, show) = run(&pd, &["store", "show", "1"]);
    assert_eq!(code, Some(0), "{show}");
    for field in [
        "capacity:",
        "used:",
        "available:",
        "regions:",
        "leaders:",
        "last heartbeat:",
    ] {
        assert!(show.contains(field), "{field} missing from:\n{show}");
    }
    // The capacity comes with the store's first statistics, a heartbeat after it joined.
    let mut v = serde_json::Value::Null;
    wait_until("store 1 reports its capacity", T, || {
        let (code, json) = run(&pd, &["store", "show", "1", "--output", "json"]);
        assert_eq!(code, Some(0));
        v = serde_json::from_str(json.trim()).expect("JSON");
        v["capacity_bytes"].as_u64().unwrap() > 0
    });
    assert_eq!(run(&pd, &["store", "show", "99"]).0, Some(2));

    // One store of three: degraded, and still serving.
    cluster.kill_store(2);
    wait_until("a degraded verdict", T, || {
        last = health(&pd);
        last.0 == Some(1)
    });
    assert!(last.1.contains("DEGRADED"), "{}", last.1);
    assert!(last.1.contains("2 up, 1 down"), "{}", last.1);
    wait_until("writes with a store down", T, || {
        rt.block_on(c.put(b"k", b"v2")).is_ok()
    });
    let (code, json) = run(
        &pd,
        &[
            "cluster",
            "health",
            "--down-after",
            "4s",
            "--output",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(1), Some("degraded")),
        "{v}"
    );

    // Two of three: no region has a quorum.
    cluster.kill_store(1);
    wait_until("an unhealthy verdict", T, || {
        last = health(&pd);
        last.0 == Some(2)
    });
    assert!(last.1.contains("UNHEALTHY"), "{}", last.1);
    assert!(!last.1.contains("without a quorum:  0"), "{}", last.1);
}

/// Starts kv-server with `args` and waits for it to exit; its status and output.
fn kv_server_exit(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kv-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("poll").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kv-server {args:?} did not fail fast");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn addrs() -> Vec<String> {
    vec![
        "--addr".into(),
        format!("127.0.0.1:{}", common::free_port()),
        "--status-addr".into(),
        format!("127.0.0.1:{}", common::free_port()),
    ]
}

#[test]
fn bad_starts_fail_fast_and_name_the_problem() {
    let cluster = ProcCluster::start(1);
    let secret = cluster.secret_file().display().to_string();
    let base = |data: &str| {
        let mut a = vec![
            "--pd".to_string(),
            cluster.pd_addr.clone(),
            "--cluster-secret-file".into(),
            secret.clone(),
            "--data-dir".into(),
            data.to_string(),
        ];
        a.extend(addrs());
        a
    };

    // A second store on the running store's data directory.
    let taken = cluster.data_dir(0).display().to_string();
    wait_until("the first store to hold its directory", T, || {
        cluster.data_dir(0).join(util::dir_lock::FILE).exists()
    });
    let (code, out) = kv_server_exit(&base(&taken));
    assert_ne!(code, Some(0));
    assert!(out.contains("is in use by another process"), "{out}");

    // An unknown config key.
    let cfg = cluster.dir.path().join("typo.toml");
    std::fs::write(&cfg, "[raftstore]\nsync-logg = false\n").unwrap();
    let fresh = cluster.dir.path().join("fresh").display().to_string();
    let mut args = base(&fresh);
    args.extend(["--config".into(), cfg.display().to_string()]);
    let (code, out) = kv_server_exit(&args);
    assert_ne!(code, Some(0));
    assert!(out.contains("sync-logg"), "{out}");

    // A PD address that does not resolve.
    let mut args = base(&fresh);
    args[1] = "no-such-pd.invalid:2379".into();
    let (code, out) = kv_server_exit(&args);
    assert_ne!(code, Some(0));
    assert!(
        out.contains("no PD address resolves") && out.contains("no-such-pd.invalid"),
        "{out}"
    );

    // The running store was not disturbed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("writes", T, || rt.block_on(c.put(b"k", b"v")).is_ok());
}

#[test]
fn json_logs_are_one_object_per_line_with_region_fields() {
    // A whole node (store and embedded PD) started without a ProcCluster: counted as one.
    let _shared = test_cluster::gate::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kv.toml");
    // The embedded PD on a free port, so that tests can run side by side.
    std::fs::write(
        &cfg,
        format!("[pd]\naddr = \"127.0.0.1:{}\"\n", common::free_port()),
    )
    .unwrap();
    let mut args = vec![
        "--config".to_string(),
        cfg.display().to_string(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    args.extend(addrs());
    let store = Proc::spawn(
        "json",
        env!("CARGO_BIN_EXE_kv-server"),
        &args,
        dir.path(),
        dir.path(),
    );
    let log = dir.path().join("json.log");
    wait_until("a region-level log line", T, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"region_id\""))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    // The store is still writing: a last line without its newline is not whole yet.
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in whole.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["msg"].is_string() && v["level"].is_string(), "{line}");
        // The embedded PD's lines name regions as PD sees them, with no peer of its own.
        if v.get("region_id").is_some() && v["component"] != "pd" {
            assert!(
                v.get("peer_id").is_some(),
                "region line without peer_id: {line}"
            );
        }
    }
    drop(store);
}
