//! The compose cluster as an operator runs it: build the image (FROM scratch, nothing
//! pulled), bring up docker/docker-compose.yml (three PD members, three stores), write
//! through kvctl, `docker kill` the PD leader and keep writing, `docker kill` one store
//! and keep writing, cut another off the network and reconnect it, restart the killed
//! ones, and find every acknowledged key. Everything the test created (containers,
//! network, volumes, image) is removed at the end, also when it fails. Skipped, saying
//! why, where no Docker engine answers.

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::wait_until;

const T: Duration = Duration::from_secs(180);

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn must(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn docker() -> Command {
    Command::new("docker")
}

/// One compose project: its name, images and published ports; torn down when dropped.
struct Compose {
    project: String,
    image: String,
    prometheus_image: String,
    /// Host ports of the three PD members.
    pd_ports: [u16; 3],
    prometheus_port: u16,
    file: PathBuf,
    down: bool,
}

impl Compose {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(["--profile", "monitoring"])
            .env("FLOTILLA_IMAGE", &self.image)
            .env("FLOTILLA_PROMETHEUS_IMAGE", &self.prometheus_image)
            .env("FLOTILLA_PD_PORT", self.pd_ports[0].to_string())
            .env("FLOTILLA_PD2_PORT", self.pd_ports[1].to_string())
            .env("FLOTILLA_PD3_PORT", self.pd_ports[2].to_string())
            .env("FLOTILLA_PROMETHEUS_PORT", self.prometheus_port.to_string())
            // Containers left by a killed test run must not come back with the daemon.
            .env("FLOTILLA_RESTART", "no");
        c
    }

    /// The container id of a service.
    fn container(&self, service: &str) -> String {
        must(self.cmd().args(["ps", "-q", service]))
    }

    fn network(&self) -> String {
        format!("{}_flotilla", self.project)
    }

    /// kvctl inside store1's container (it has the cluster secret, and every PD
    /// member's name resolves there), giving up after `timeout`.
    fn kvctl(&self, timeout: &str, args: &[&str]) -> Output {
        run(docker()
            .args([
                "exec",
                &self.container("store1"),
                "kvctl",
                "--pd",
                "pd1:2379,pd2:2379,pd3:2379",
            ])
            .args([
                "--cluster-secret-file",
                "/pd/cluster-secret",
                "--timeout",
                timeout,
            ])
            .args(args))
    }

    /// The PD member that leads, as `kvctl pd members` says.
    fn pd_leader(&self) -> Option<String> {
        let out = self.kvctl("5s", &["--output", "json", "pd", "members"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|m| m["leader"] == true)
            .and_then(|m| m["name"].as_str())
            .map(String::from)
    }

    /// Removes containers, network, volumes and the image; returns what is left.
    fn tear_down(&mut self) -> String {
        self.down = true;
        let down = run(self
            .cmd()
            .args(["down", "--volumes", "--remove-orphans", "-t", "5"]));
        if !down.status.success() {
            eprintln!("compose down: {}", text(&down));
        }
        let _ = run(docker().args(["rmi", "-f", &self.image, &self.prometheus_image]));
        self.leftovers()
    }

    /// What the project still owns, by label (should be nothing after `down`). Never
    /// panics: it runs from `Drop`, maybe while a failed test unwinds.
    fn leftovers(&self) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut all = String::new();
        for what in [
            &["ps", "-aq"][..],
            &["network", "ls", "-q"],
            &["volume", "ls", "-q"],
        ] {
            let o = run(docker().args(what).args(["--filter", &label]));
            all += String::from_utf8_lossy(&o.stdout).trim();
        }
        all
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if !self.down {
            let left = self.tear_down();
            if !left.is_empty() {
                eprintln!("compose project {} left: {left}", self.project);
            }
        }
    }
}

fn engine_answers() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let compose = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok && compose
}

/// Writes keys `range`, each until one attempt is acknowledged (30 s at most), and
/// records the acknowledged ones.
fn write(c: &Compose, acked: &mut Vec<String>, range: std::ops::Range<u32>) {
    for i in range {
        let k = format!("key-{i:03}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if c.kvctl("10s", &["put", &k, &format!("v-{k}")])
                .status
                .success()
            {
                acked.push(k);
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn compose_cluster_survives_a_kill_and_a_cut_and_loses_nothing() {
    let _alone = test_cluster::gate::alone();
    if !engine_answers() {
        eprintln!("skipped: no Docker engine or docker-compose answers here");
        return;
    }
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kv-server"))
        .parent()
        .expect("a directory");
    let mut c = Compose {
        project: format!("fltest{}", std::process::id()),
        image: format!("flotilla-test:{}", std::process::id()),
        prometheus_image: format!("flotilla-prometheus-test:{}", std::process::id()),
        pd_ports: [
            common::free_port(),
            common::free_port(),
            common::free_port(),
        ],
        prometheus_port: common::free_port(),
        file: root.join("docker/docker-compose.yml"),
        down: false,
    };
    must(
        Command::new("bash")
            .arg(root.join("docker/build-image.sh"))
            .arg(&c.image)
            .env("BIN_DIR", bin_dir),
    );
    must(
        Command::new("bash")
            .arg(root.join("docker/build-image.sh"))
            .args(["--prometheus", &c.prometheus_image]),
    );
    let up = Instant::now();
    must(c.cmd().args(["up", "-d"]));

    // Healthy as seen from the host: the members' published ports, the host's own kvctl.
    let pd = c
        .pd_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    wait_until("a healthy cluster (kvctl on the host)", T, || {
        common::kvctl(&pd, &["cluster", "health"]).status.success()
    });
    eprintln!("healthy {:.1}s after `up`", up.elapsed().as_secs_f64());

    // The monitoring profile's Prometheus scrapes all six processes by container name.
    let prom = format!("127.0.0.1:{}", c.prometheus_port);
    wait_until(
        "Prometheus to scrape the PD members and the stores",
        T,
        || {
            common::http_get(&prom, "/api/v1/query?query=up%3D%3D1")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
                == Some(6)
        },
    );

    let mut acked = vec![];
    write(&c, &mut acked, 0..10);
    assert_eq!(acked.len(), 10, "a healthy cluster takes every write");

    // The PD leader dies; the other two members elect one and writes go on.
    let pd_leader = c.pd_leader().expect("a PD member leads");
    must(docker().args(["kill", &c.container(&pd_leader)]));
    let killed = Instant::now();
    write(&c, &mut acked, 10..20);
    assert_eq!(
        acked.len(),
        20,
        "writes go on with the PD leader down: {acked:?}"
    );
    let new_leader = c.pd_leader().expect("another PD member leads");
    assert_ne!(new_leader, pd_leader);
    eprintln!(
        "PD leader {pd_leader} killed; {new_leader} leads; ten writes done {:.1}s later",
        killed.elapsed().as_secs_f64()
    );
    must(c.cmd().args(["start", &pd_leader]));

    // A store dies; the two left keep a quorum.
    must(docker().args(["kill", &c.container("store3")]));
    write(&c, &mut acked, 20..30);
    assert!(
        acked.len() >= 29,
        "writes go on with one store down: {acked:?}"
    );

    // Another is cut off: no quorum until it is back.
    let store2 = c.container("store2");
    must(docker().args(["network", "disconnect", &c.network(), &store2]));
    let cut = c.kvctl("3s", &["put", "while-cut", "x"]);
    assert!(
        !cut.status.success(),
        "a write with one store of three reachable was acknowledged"
    );
    // Back under its service name, which the others dial it by.
    must(docker().args([
        "network",
        "connect",
        "--alias",
        "store2",
        &c.network(),
        &store2,
    ]));
    let reconnected = Instant::now();
    write(&c, &mut acked, 30..31);
    assert_eq!(
        acked.last().map(String::as_str),
        Some("key-030"),
        "no write acknowledged within 30 s of the reconnect"
    );
    eprintln!(
        "first write {:.1}s after the reconnect",
        reconnected.elapsed().as_secs_f64()
    );
    write(&c, &mut acked, 31..40);
    assert!(
        acked.len() >= 38,
        "writes resume once the cut store is back: {acked:?}"
    );

    must(c.cmd().args(["start", "store3"]));
    wait_until("every store back (kvctl on the host)", T, || {
        common::kvctl(&pd, &["cluster", "health"]).status.success()
    });
    write(&c, &mut acked, 40..45);
    assert!(acked.len() >= 43, "a whole cluster takes writes: {acked:?}");

    // One scan reads them all back: a `docker exec` per key took a third of the test.
    let scan = c.kvctl("10s", &["scan", "key-", "key.", "--limit", "1000"]);
    assert!(scan.status.success(), "scan: {}", text(&scan));
    let stored: std::collections::HashMap<String, String> = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for k in &acked {
        assert_eq!(
            stored.get(k),
            Some(&format!("v-{k}")),
            "acknowledged {k} lost: {}",
            text(&scan)
        );
    }
    eprintln!(
        "{} acknowledged writes all there; compose test took {:.0}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(c.tear_down(), "", "compose down left things behind");
}
