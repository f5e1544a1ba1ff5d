//! Helpers for tests that run the real binaries on 127.0.0.1. Every process is killed
//! (SIGKILL) when its handle drops, and by the kernel if the test itself dies, so a
//! failing test leaves nothing running.

#![allow(dead_code)]

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

pub use test_cluster::wait_until;
use test_cluster::Watchdog;

pub use test_cluster::free_port;

/// A child process that is killed when dropped.
pub struct Proc {
    child: Option<Child>,
    name: String,
    log: PathBuf,
    _watchdog: Watchdog,
}

impl Proc {
    /// Starts `bin` with `args`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, bin: &str, args: &[String], cwd: &Path, log_dir: &Path) -> Proc {
        Self::spawn_in(name, bin, args, cwd, log_dir, None)
    }

    /// Like [`Proc::spawn`], in the network namespace at `netns` (a file under
    /// /var/run/netns) if given. Unlike `ip netns exec` this leaves the mount namespace
    /// alone, so filesystems the test mounts and unmounts stay its own.
    pub fn spawn_in(
        name: &str,
        bin: &str,
        args: &[String],
        cwd: &Path,
        log_dir: &Path,
        netns: Option<&Path>,
    ) -> Proc {
        Self::spawn_full(name, bin, args, cwd, log_dir, netns, &[])
    }

    /// Like [`Proc::spawn_in`], with extra environment variables.
    pub fn spawn_full(
        name: &str,
        bin: &str,
        args: &[String],
        cwd: &Path,
        log_dir: &Path,
        netns: Option<&Path>,
        env: &[(String, String)],
    ) -> Proc {
        use std::os::fd::AsRawFd;
        let ns = netns.map(|p| {
            std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        });
        let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open process log");
        let mut cmd = Command::new(bin);
        // SAFETY: prctl and setns are async-signal-safe and touch no memory of the parent.
        unsafe {
            // Killed with the test thread that started it, even if the test aborts.
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.to_string(),
            log,
            _watchdog: Watchdog::arm(Watchdog::TEST_LIMIT),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it runs on.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit; its status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.pid()?;
        // SAFETY: kill(2) on a child this handle started and has not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let status = self.wait_exit(timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How the process ended, if it has (an exit code, or the signal that killed it: a
    /// crash by signal leaves nothing in the log).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything the process has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        // Lossy: a read may end inside a character the process is still writing.
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The tail of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ---\n{}", self.name, self.log_tail());
        }
        self.kill();
    }
}

/// The cluster secret of each PD a test started, by PD address, so that kvctl and
/// clients act as the cluster's operator. A later cluster on the same address (the
/// nemesis reuses subnets) replaces the entry.
static SECRETS: std::sync::Mutex<std::collections::BTreeMap<String, std::path::PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The cluster secret file of the cluster whose PD listens on `pd`, if a test started it.
pub fn secret_of(pd: &str) -> Option<std::path::PathBuf> {
    SECRETS.lock().unwrap().get(pd).cloned()
}

/// Makes kvctl and clients of the cluster whose PD is at `pd` use `secret`.
pub fn register_secret(pd: &str, secret: &Path) {
    SECRETS
        .lock()
        .unwrap()
        .insert(pd.to_string(), secret.to_path_buf());
}

/// The certificate directory (`kvctl cert init`) of each TLS cluster a test started, by
/// PD address: kvctl and clients dial it with the client certificate there.
static TLS_DIRS: std::sync::Mutex<std::collections::BTreeMap<String, std::path::PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The certificate directory of the TLS cluster whose PD listens on `pd`, if any.
pub fn tls_of(pd: &str) -> Option<std::path::PathBuf> {
    TLS_DIRS.lock().unwrap().get(pd).cloned()
}

/// `kvctl cert issue DIR NAME`: another client certificate signed by DIR's CA.
pub fn cert_issue(dir: &Path, name: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["cert", "issue"])
        .arg(dir)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl cert issue");
    assert!(out.status.success(), "{out:?}");
}

/// Makes `kvctl cert init DIR` write a CA and certificates; panics if it fails.
pub fn cert_init(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["cert", "init"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl cert init");
    assert!(out.status.success(), "kvctl cert init: {out:?}");
}

/// TLS settings of a client with the CA of `dir` and its certificate `stem`.pem (none
/// if `stem` is empty).
pub fn tls_config(dir: &Path, stem: &str) -> util::security::SecurityConfig {
    let (cert, key) = match stem {
        "" => (PathBuf::new(), PathBuf::new()),
        s => (
            dir.join(format!("{s}.pem")),
            dir.join(format!("{s}-key.pem")),
        ),
    };
    util::security::SecurityConfig {
        ca_path: dir.join("ca.pem"),
        cert_path: cert,
        key_path: key,
        ..Default::default()
    }
}

/// The credentials a test's client of the cluster at `pd` dials with: its client
/// certificate for a TLS cluster, and the cluster secret a test registered.
pub fn credentials(pd: &str) -> util::security::Credentials {
    let secret = secret_of(pd).map(|f| util::secret::ClusterSecret::load(&f).expect("secret"));
    let security = match tls_of(pd) {
        Some(dir) => util::security::Security::new(&tls_config(&dir, "client")).expect("TLS"),
        None => util::security::Security::plaintext(),
    };
    util::security::Credentials {
        security,
        secret,
        token: None,
    }
}

/// Runs kvctl to completion, as the cluster's operator (with its secret, or for a TLS
/// cluster its client certificate).
pub fn kvctl(pd: &str, args: &[&str]) -> Output {
    kvctl_command(pd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}

/// kvctl against `pd` as the cluster's operator, to add arguments to.
pub fn kvctl_command(pd: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    if let Some(secret) = secret_of(pd) {
        cmd.env("FLOTILLA_CLUSTER_SECRET_FILE", secret);
    }
    if let Some(dir) = tls_of(pd) {
        cmd.env("FLOTILLA_CA_PATH", dir.join("ca.pem"))
            .env("FLOTILLA_CERT_PATH", dir.join("client.pem"))
            .env("FLOTILLA_KEY_PATH", dir.join("client-key.pem"));
    }
    cmd.arg("--pd").arg(pd);
    cmd
}

/// PD members and stores started as processes in one temporary directory.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    /// Every PD member's client address, comma-separated (what `--pd` takes).
    pub pd_addr: String,
    /// The PD members, by index (`None` while stopped).
    pub pds: Vec<Option<Proc>>,
    pd_args: Vec<Vec<String>>,
    pub stores: Vec<Option<Proc>>,
    pub store_addrs: Vec<(u16, u16)>,
    /// Each store's `--labels` (empty: none).
    store_labels: Vec<String>,
    /// Extra `[raftstore]` settings every store starts with.
    raftstore_extra: String,
    /// Environment variables every store starts with (e.g. `FAILPOINTS`).
    pub store_env: Vec<(String, String)>,
    /// TLS: the certificate directory every process reads its files from (the stores
    /// then get no cluster secret: their certificates prove them).
    pub tls: Option<PathBuf>,
    /// Flags every process of a TLS cluster gets besides its files.
    tls_flags: Vec<String>,
    /// Last, so that it is dropped after the processes.
    _gate: test_cluster::gate::Shared,
}

impl ProcCluster {
    /// Starts pd-server and `n` kv-servers.
    pub fn start(n: usize) -> ProcCluster {
        Self::start_with(n, "")
    }

    /// Starts pd-server and `n` kv-servers with extra `[raftstore]` settings (TOML lines).
    pub fn start_with(n: usize, raftstore_extra: &str) -> ProcCluster {
        Self::start_configured(n, raftstore_extra, "")
    }

    /// Like [`ProcCluster::start_with`], with extra `[pd]` settings for pd-server too.
    pub fn start_configured(n: usize, raftstore_extra: &str, pd_extra: &str) -> ProcCluster {
        Self::start_full(1, n, raftstore_extra, pd_extra)
    }

    /// Starts a PD group of `pds` members (`pd1`...) and `n` kv-servers.
    pub fn start_with_pds(pds: usize, n: usize, raftstore_extra: &str) -> ProcCluster {
        Self::start_full(pds, n, raftstore_extra, "")
    }

    /// Starts a PD group of `pds` members with extra pd-server config (TOML after `[pd]`) and
    /// `n` kv-servers with extra `[raftstore]` settings.
    pub fn start_full(pds: usize, n: usize, raftstore_extra: &str, pd_extra: &str) -> ProcCluster {
        Self::start_inner(pds, n, raftstore_extra, pd_extra, None)
    }

    /// Starts a TLS cluster of `pds` PD members and `n` stores: `kvctl cert init`
    /// makes its certificates in `<dir>/certs`, and every process gets `tls_flags`
    /// besides (e.g. `--cert-allowed-cn`). Stores get no cluster secret.
    pub fn start_tls(pds: usize, n: usize, tls_flags: &[&str]) -> ProcCluster {
        let flags: Vec<String> = tls_flags.iter().map(|s| s.to_string()).collect();
        Self::start_inner(pds, n, "", "", Some(flags))
    }

    fn start_inner(
        pds: usize,
        n: usize,
        raftstore_extra: &str,
        pd_extra: &str,
        tls_flags: Option<Vec<String>>,
    ) -> ProcCluster {
        let gate = test_cluster::gate::shared();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = tls_flags.as_ref().map(|_| dir.path().join("certs"));
        if let Some(certs) = &tls {
            cert_init(certs);
        }
        let addrs: Vec<String> = (0..pds)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let pd_addr = addrs.join(",");
        let pd_cfg = dir.path().join("pd.toml");
        // Fast PD elections, as in the in-process group.
        std::fs::write(
            &pd_cfg,
            format!("[pd]\nraft-tick-interval = \"50ms\"\n{pd_extra}\n"),
        )
        .expect("write pd config");
        let secret = dir.path().join("cluster-secret");
        match &tls {
            // PD keeps a secret of its own in its data directory; nobody needs a copy.
            Some(certs) => {
                TLS_DIRS
                    .lock()
                    .unwrap()
                    .insert(pd_addr.clone(), certs.clone());
                SECRETS.lock().unwrap().remove(&pd_addr);
            }
            None => {
                util::secret::ClusterSecret::load_or_create(&secret, true)
                    .expect("create the cluster secret");
                register_secret(&pd_addr, &secret);
                TLS_DIRS.lock().unwrap().remove(&pd_addr);
            }
        }
        let initial: Vec<String> = (0..pds)
            .map(|i| format!("pd{}={}", i + 1, addrs[i]))
            .collect();
        let pd_args: Vec<Vec<String>> = (0..pds)
            .map(|i| {
                let mut args = match &tls {
                    Some(certs) => [process_tls("pd", certs), tls_flags.clone().unwrap()].concat(),
                    None => vec!["--cluster-secret-file".into(), secret.display().to_string()],
                };
                args.extend([
                    "--config".into(),
                    pd_cfg.display().to_string(),
                    "--addr".into(),
                    addrs[i].clone(),
                    "--data-dir".into(),
                    dir.path()
                        .join(format!("pd{}", i + 1))
                        .display()
                        .to_string(),
                    "--max-store-down-time".into(),
                    "60s".into(),
                    "--status-addr".into(),
                    format!("127.0.0.1:{}", free_port()),
                ]);
                if pds > 1 {
                    args.extend([
                        "--name".into(),
                        format!("pd{}", i + 1),
                        "--initial-cluster".into(),
                        initial.join(","),
                    ]);
                }
                args
            })
            .collect();
        let mut c = ProcCluster {
            dir,
            pd_addr,
            pds: (0..pds).map(|_| None).collect(),
            pd_args,
            stores: vec![],
            store_addrs: vec![],
            store_labels: vec![],
            raftstore_extra: raftstore_extra.to_string(),
            store_env: vec![],
            tls,
            tls_flags: tls_flags.unwrap_or_default(),
            _gate: gate,
        };
        for i in 0..pds {
            c.start_pd(i);
        }
        for _ in 0..n {
            c.add_store();
        }
        c
    }

    /// Starts (or restarts) PD member `i` on its data and address.
    pub fn start_pd(&mut self, i: usize) {
        self.pds[i] = Some(Proc::spawn(
            &format!("pd{}", i + 1),
            env!("CARGO_BIN_EXE_pd-server"),
            &self.pd_args[i],
            self.dir.path(),
            self.dir.path(),
        ));
    }

    /// SIGKILLs PD member `i`.
    pub fn kill_pd(&mut self, i: usize) {
        if let Some(mut p) = self.pds[i].take() {
            p.kill();
        }
    }

    /// PD member `i`'s client address.
    pub fn pd_member_addr(&self, i: usize) -> String {
        self.arg_of(i, "--addr")
    }

    /// The PD member that says it leads (its `/status`), if one does.
    pub fn pd_leader(&self) -> Option<usize> {
        (0..self.pds.len()).find(|&i| {
            self.pds[i].is_some()
                && self
                    .status_get(&self.pd_status_addr_of(i), "/status")
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .is_some_and(|v| v["is_leader"] == true)
        })
    }

    fn arg_of(&self, i: usize, flag: &str) -> String {
        let args = &self.pd_args[i];
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("PD is started with {flag}"));
        args[at + 1].clone()
    }

    /// A PD and one store started with fail points `spec` (the `FAILPOINTS` syntax).
    pub fn one_store_with_failpoints(spec: &str) -> ProcCluster {
        let mut cluster = ProcCluster::start(0);
        cluster.store_env = vec![("FAILPOINTS".into(), spec.into())];
        cluster.add_store();
        cluster
    }

    /// Adds a store with the next index and starts it; returns its index.
    pub fn add_store(&mut self) -> usize {
        self.add_labelled_store("")
    }

    /// Adds and starts a store with `--labels labels` (`zone=z1,host=h1`); its index.
    pub fn add_labelled_store(&mut self, labels: &str) -> usize {
        self.store_addrs.push((free_port(), free_port()));
        self.store_labels.push(labels.to_string());
        self.stores.push(None);
        let i = self.stores.len() - 1;
        self.start_store(i);
        i
    }

    /// Store `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("store-{i}"))
    }

    /// Starts (or restarts) store `i` on its data directory and ports.
    pub fn start_store(&mut self, i: usize) {
        let (port, status) = self.store_addrs[i];
        let cfg = self.dir.path().join(format!("store-{i}.toml"));
        // Faster heartbeats than production so that tests converge quickly.
        std::fs::write(
            &cfg,
            format!(
                "[raftstore]\npd-heartbeat-tick-interval = \"1s\"\npd-store-heartbeat-tick-interval = \"1s\"\n{}\n",
                self.raftstore_extra
            ),
        )
        .expect("write store config");
        let mut args: Vec<String> = match &self.tls {
            Some(certs) => [process_tls("store", certs), self.tls_flags.clone()].concat(),
            None => vec![
                "--cluster-secret-file".into(),
                self.secret_file().display().to_string(),
            ],
        };
        if !self.store_labels[i].is_empty() {
            args.extend(["--labels".into(), self.store_labels[i].clone()]);
        }
        let p = Proc::spawn_full(
            &format!("store-{i}"),
            env!("CARGO_BIN_EXE_kv-server"),
            &[
                args,
                vec![
                    "--config".into(),
                    cfg.display().to_string(),
                    "--pd".into(),
                    self.pd_addr.clone(),
                    "--addr".into(),
                    format!("127.0.0.1:{port}"),
                    "--status-addr".into(),
                    format!("127.0.0.1:{status}"),
                    "--data-dir".into(),
                    self.data_dir(i).display().to_string(),
                ],
            ]
            .concat(),
            self.dir.path(),
            self.dir.path(),
            None,
            &self.store_env,
        );
        self.stores[i] = Some(p);
    }

    /// The cluster secret every process of this cluster is given.
    pub fn secret_file(&self) -> std::path::PathBuf {
        self.dir.path().join("cluster-secret")
    }

    /// SIGKILLs the first PD member and starts it again on the same data and address.
    pub fn restart_pd(&mut self) {
        self.kill_pd(0);
        self.start_pd(0);
    }

    /// Gives store `i` new ports (it must be stopped); the next start uses them.
    pub fn readdress_store(&mut self, i: usize) {
        assert!(self.stores[i].is_none(), "store {i} is still running");
        self.store_addrs[i] = (free_port(), free_port());
    }

    /// Stops store `i` with SIGTERM (a graceful shutdown); its exit status, or `None`
    /// if it did not exit within `timeout` (it is then killed).
    pub fn terminate_store(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut p = self.stores[i].take()?;
        p.terminate(timeout)
    }

    /// SIGKILLs store `i`.
    pub fn kill_store(&mut self, i: usize) {
        if let Some(mut p) = self.stores[i].take() {
            p.kill();
        }
    }

    /// The first PD member's status address (`/metrics`).
    pub fn pd_status_addr(&self) -> String {
        self.pd_status_addr_of(0)
    }

    /// PD member `i`'s status address.
    pub fn pd_status_addr_of(&self, i: usize) -> String {
        self.arg_of(i, "--status-addr")
    }

    /// Store `i`'s status address.
    pub fn status_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.store_addrs[i].1)
    }

    /// GETs `path` from one of this cluster's status ports (HTTPS with the client
    /// certificate for a TLS cluster).
    pub fn status_get(&self, addr: &str, path: &str) -> Option<String> {
        match &self.tls {
            Some(certs) => https_get(&tls_config(certs, "client"), addr, path),
            None => http_get(addr, path),
        }
    }
}

/// The TLS flags of a process of kind `stem` (`pd`, `store`) with the files in `certs`.
fn process_tls(stem: &str, certs: &Path) -> Vec<String> {
    vec![
        "--ca-path".into(),
        certs.join("ca.pem").display().to_string(),
        "--cert-path".into(),
        certs.join(format!("{stem}.pem")).display().to_string(),
        "--key-path".into(),
        certs.join(format!("{stem}-key.pem")).display().to_string(),
    ]
}

/// GETs `path` over HTTPS with the TLS settings `cfg` (kvctl's client); `None` if the
/// handshake fails or nothing answers.
pub fn https_get(cfg: &util::security::SecurityConfig, addr: &str, path: &str) -> Option<String> {
    let security = util::security::Security::new(cfg).ok()?;
    on_own_thread(cli::scrape::https_get(&security, addr, path))
}

/// Runs one request to its end on a thread and runtime of its own, so that callers
/// inside a tokio runtime may make it too.
fn on_own_thread<F: std::future::Future + Send>(request: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for one request")
                .block_on(request)
        })
        .join()
        .expect("the request thread does not panic")
    })
}

/// GETs `path` from an HTTP server (a status server, Prometheus) with kvctl's client
/// (`cli::scrape::http_get`); the body whatever the status code, `None` if it does not
/// answer. On a thread of its own, so that callers inside a tokio runtime may use it too.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    on_own_thread(cli::scrape::http_get(addr, path))
}

/// Prometheus text, parsed by the project's one parser (`cli::scrape`).
fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    cli::scrape::parse(text).expect("Prometheus text")
}

/// The value of a counter or gauge in Prometheus text, summed over label sets.
pub fn metric(text: &str, name: &str) -> f64 {
    cli::scrape::sum(&parse_metrics(text), name)
}

/// Like [`metric`], over the label sets that hold every one of `labels`.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut scrape = parse_metrics(text);
    scrape
        .samples
        .retain(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    cli::scrape::sum(&scrape, name)
}

/// The series names in Prometheus text, as PromQL names them.
pub fn series(text: &str) -> std::collections::BTreeSet<String> {
    cli::scrape::series(&parse_metrics(text))
}

/// A client of the cluster whose PD is at `pd`, as its operator (with its secret).
pub fn client(rt: &tokio::runtime::Runtime, pd: &str) -> client::Client {
    rt.block_on(client::Client::connect_with(
        &[pd.to_string()],
        Duration::from_secs(20),
        credentials(pd),
    ))
    .expect("connect client")
}

/// Three stores with `extra` settings (TOML after `[raftstore]`), a runtime, and a client
/// of theirs, once the first region has three voters.
pub fn three_voters(extra: &str) -> (ProcCluster, tokio::runtime::Runtime, client::Client) {
    const T: Duration = Duration::from_secs(60);
    let cluster = ProcCluster::start_with(3, extra);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let ours = rt
        .block_on(client::Client::connect(
            std::slice::from_ref(&cluster.pd_addr),
            T,
        ))
        .expect("connect a client");
    wait_until("three voters", T, || {
        rt.block_on(ours.regions())
            .is_ok_and(|rs| rs.first().is_some_and(|r| r.region.get_peers().len() == 3))
    });
    (cluster, rt, ours)
}

/// Voters of the first region as PD sees it (0 if PD cannot say).
pub fn voters(rt: &tokio::runtime::Runtime, c: &client::Client) -> usize {
    rt.block_on(c.regions())
        .ok()
        .and_then(|rs| rs.into_iter().next())
        .map(|r| {
            r.region
                .get_peers()
                .iter()
                .filter(|p| p.get_role() == proto::metapb::PeerRole::Voter)
                .count()
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_sec)
}

/// Resident memory of a process, in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

/// Share of one core a process uses over `window`.
pub fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_time(pid);
    std::thread::sleep(window);
    (cpu_time(pid) - before).as_secs_f64() / window.as_secs_f64()
}

/// Sets the flag when dropped: a failing step must still stop the threads that loop
/// until it is set, or the thread scope waiting for them would never return.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Raw Kv* requests sent straight to the leader of each key's region, as a buggy or dead
/// transactional client would send them.
pub struct RawKv {
    rt: tokio::runtime::Runtime,
    ours: client::Client,
    env: std::sync::Arc<grpcio::Environment>,
    timeout: Duration,
}

impl RawKv {
    /// Routes with `ours` (PD's view), retrying routing errors for up to `timeout`.
    pub fn new(ours: client::Client, timeout: Duration) -> RawKv {
        RawKv {
            rt: tokio::runtime::Runtime::new().expect("a runtime"),
            ours,
            env: std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build()),
            timeout,
        }
    }

    /// A connection to the leader of the region holding the transactional `key`, and
    /// the context a request there carries.
    pub fn leader(
        &self,
        key: &[u8],
    ) -> (proto_grpc::tikvpb_grpc::TikvClient, proto::kvrpcpb::Context) {
        let enc = keys::txn::encode_bytes(key);
        let routes = self.rt.block_on(self.ours.regions()).expect("regions");
        let r = routes
            .into_iter()
            .find(|r| {
                enc.as_slice() >= r.region.get_start_key()
                    && (r.region.get_end_key().is_empty()
                        || enc.as_slice() < r.region.get_end_key())
            })
            .expect("a region holds the key");
        let leader = r.leader.expect("a leader");
        let stores = self.rt.block_on(self.ours.stores()).expect("stores");
        let addr = stores
            .iter()
            .find(|(s, _)| s.get_id() == leader.get_store_id())
            .map(|(s, _)| s.get_address().to_string())
            .expect("the leader's store");
        let mut ctx = proto::kvrpcpb::Context::default();
        ctx.set_region_id(r.region.get_id());
        ctx.set_region_epoch(r.region.get_region_epoch().clone());
        ctx.set_peer(leader);
        let channel = grpcio::ChannelBuilder::new(self.env.clone()).connect(&addr);
        (proto_grpc::tikvpb_grpc::TikvClient::new(channel), ctx)
    }

    /// Sends a request built by `call` to the leader of `key`'s region, again while
    /// `region_error` says the answer is a routing error (PD learns of new leaders a
    /// heartbeat late).
    pub fn send<R>(
        &self,
        key: &[u8],
        call: impl Fn(&proto_grpc::tikvpb_grpc::TikvClient, proto::kvrpcpb::Context) -> R,
        region_error: impl Fn(&R) -> Option<&proto::errorpb::Error>,
    ) -> R {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let (c, ctx) = self.leader(key);
            let resp = call(&c, ctx);
            let retry = region_error(&resp).is_some_and(routing);
            if !retry || std::time::Instant::now() > deadline {
                return resp;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether a region error only says "ask again" (elsewhere, or later): the one a client
/// sends again for.
pub fn routing(e: &proto::errorpb::Error) -> bool {
    e.has_not_leader()
        || e.has_epoch_not_match()
        || e.has_region_not_found()
        || e.has_stale_command()
}
