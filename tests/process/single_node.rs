//! `kv-server` with no flags is a working single node (embedded PD on 127.0.0.1:2379,
//! store on :20160, status on :20180, data in ./flotilla-data), and kvctl with no flags
//! talks to it. A put survives SIGKILL.
//!
//! Uses the default ports, so it runs alone (`test_cluster::gate::alone`) and fails clearly if
//! something else holds them.

use crate::common;

use std::time::Duration;

use common::{http_get, metric, wait_until, Proc};

fn kvctl_default(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kvctl")
}

fn start(dir: &std::path::Path) -> Proc {
    for port in [2379u16, 20160, 20180] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use; stop whatever holds it to run this test"
        );
    }
    let p = Proc::spawn("kv-server", env!("CARGO_BIN_EXE_kv-server"), &[], dir, dir);
    wait_until("the single node to serve", Duration::from_secs(60), || {
        kvctl_default(&["put", "probe", "1"]).status.success()
    });
    p
}

#[test]
fn single_node_with_no_flags_keeps_acknowledged_writes_across_sigkill() {
    let _alone = test_cluster::gate::alone();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let out = kvctl_default(&["put", "hello", "world"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert!(
        dir.path().join("flotilla-data").is_dir(),
        "data goes to ./flotilla-data"
    );

    // One node holds one replica: a new user's first health check is HEALTHY.
    let health = kvctl_default(&["cluster", "health"]);
    assert_eq!(
        health.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
    assert!(String::from_utf8_lossy(&health.stdout).contains("HEALTHY"));
    let members = kvctl_default(&["pd", "members"]);
    assert!(
        members.status.success(),
        "{}",
        String::from_utf8_lossy(&members.stderr)
    );

    let status = http_get("127.0.0.1:20180", "/status").expect("status page");
    assert!(status.contains("\"store_id\""), "{status}");
    let metrics = http_get("127.0.0.1:20180", "/metrics").expect("metrics page");
    assert!(
        metric(&metrics, "flotilla_raftstore_log_fsyncs_total") >= 1.0,
        "{metrics}"
    );

    server.kill();
    let _server = start(dir.path());
    let out = kvctl_default(&["get", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "world\n");

    let missing = kvctl_default(&["get", "no-such-key"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&missing.stderr).trim(), "not found");
}
