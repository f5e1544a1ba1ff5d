//! Three stores as processes, each on its own host (network namespace) with its data
//! directory on a lazy filesystem, and PD: one pd-server on the bridge, or a group of
//! members, each on a host of its own with its data on a lazy filesystem too. Stores and
//! PD members can be killed, paused, cut off and made to lose power; every one of those
//! ends with the process running and reachable again.

use std::path::PathBuf;

use lazyfs::LazyFs;

use crate::{
    common::{register_secret, Proc},
    net::{Net, Node},
};

const PD_PORT: u16 = 2379;
const PD_STATUS_PORT: u16 = 2380;
const STORE_PORT: u16 = 20160;
const STATUS_PORT: u16 = 20180;

/// Where PD runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdSetup {
    /// One pd-server on the bridge side (the gateway), its data on the plain disk.
    Gateway,
    /// A group of this many members (`pd1`, `pd2`, ...), member `i` on host `Node::Pd(i)`
    /// with its data directory on a lazy filesystem of its own.
    Group(usize),
}

/// What a PD member's `/status` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PdState {
    pub is_leader: bool,
    pub leader: Option<String>,
    pub term: u64,
}

pub struct NetCluster {
    // Dropped in this order: processes, then mounts, then the network, then the files.
    stores: Vec<Option<Proc>>,
    pds: Vec<Option<Proc>>,
    disks: Vec<LazyFs>,
    /// The PD members' disks (none for a PD on the gateway).
    pd_disks: Vec<LazyFs>,
    pub net: Net,
    dir: tempfile::TempDir,
    /// Extra `[raftstore]` lines (and further sections) for every store.
    raftstore_extra: String,
    pd_setup: PdSetup,
    /// Each PD member's command line.
    pd_args: Vec<Vec<String>>,
    /// Which PD members are stopped by SIGSTOP (their status is not asked).
    pd_paused: Vec<bool>,
}

impl NetCluster {
    /// Like [`NetCluster::start`], with extra `[raftstore]` settings (TOML lines).
    pub fn start_with(n: usize, raftstore_extra: &str) -> NetCluster {
        Self::start_full(n, PdSetup::Gateway, raftstore_extra)
    }

    /// `n` stores and PD as `pd` says, with extra `[raftstore]` settings for the stores.
    pub fn start_full(n: usize, pd: PdSetup, raftstore_extra: &str) -> NetCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let pd_hosts: Vec<Node> = match pd {
            PdSetup::Gateway => vec![Node::Gateway],
            PdSetup::Group(k) => (0..k).map(Node::Pd).collect(),
        };
        let net = match pd {
            PdSetup::Gateway => Net::create(n),
            PdSetup::Group(k) => Net::create_with(n, k),
        };
        let secret = dir.path().join("cluster-secret");
        util::secret::ClusterSecret::load_or_create(&secret, true).expect("cluster secret");
        let addrs: Vec<String> = pd_hosts
            .iter()
            .map(|h| format!("{}:{PD_PORT}", net.addr(*h)))
            .collect();
        register_secret(&addrs.join(","), &secret);
        std::fs::write(dir.path().join("pd.toml"), "[pd]\n").expect("pd config");
        let initial = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("pd{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut pd_disks = vec![];
        let mut pd_args = vec![];
        for (i, host) in pd_hosts.iter().enumerate() {
            let (data, status) = match pd {
                PdSetup::Gateway => (
                    dir.path().join("pd"),
                    format!("{}:{STATUS_PORT}", net.gateway()),
                ),
                PdSetup::Group(_) => {
                    pd_disks.push(lazy_disk(dir.path(), &format!("pd{}", i + 1)));
                    (
                        pd_disks[i].mountpoint().to_path_buf(),
                        format!("{}:{PD_STATUS_PORT}", net.addr(*host)),
                    )
                }
            };
            let mut args: Vec<String> = vec![
                "--cluster-secret-file".into(),
                secret.display().to_string(),
                "--config".into(),
                dir.path().join("pd.toml").display().to_string(),
                "--addr".into(),
                addrs[i].clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--max-store-down-time".into(),
                "60s".into(),
                "--status-addr".into(),
                status,
            ];
            if let PdSetup::Group(_) = pd {
                args.extend([
                    "--name".into(),
                    format!("pd{}", i + 1),
                    "--initial-cluster".into(),
                    initial.clone(),
                ]);
            }
            pd_args.push(args);
        }
        let disks = (0..n)
            .map(|i| lazy_disk(dir.path(), &format!("store-{i}")))
            .collect();
        let mut c = NetCluster {
            stores: (0..n).map(|_| None).collect(),
            pds: pd_hosts.iter().map(|_| None).collect(),
            disks,
            pd_disks,
            net,
            dir,
            raftstore_extra: raftstore_extra.to_string(),
            pd_setup: pd,
            pd_paused: vec![false; pd_hosts.len()],
            pd_args,
        };
        // Together: a new group's members ask each other who they are at their first start.
        for i in 0..c.pds.len() {
            c.start_pd(i);
        }
        for i in 0..n {
            c.start_store(i);
        }
        c
    }

    /// PD's address, for clients: every member's, comma-separated.
    pub fn pd_addr(&self) -> String {
        (0..self.pds.len())
            .map(|i| self.pd_member_addr(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Store `i`'s status address (metrics).
    pub fn status_addr(&self, i: usize) -> String {
        format!("{}:{STATUS_PORT}", self.net.addr(Node::Host(i)))
    }

    fn store_config(&self) -> PathBuf {
        let cfg = self.dir.path().join("store.toml");
        // Fast heartbeats so that PD learns leaders quickly.
        std::fs::write(
            &cfg,
            format!(
                "[raftstore]\npd-heartbeat-tick-interval = \"1s\"\npd-store-heartbeat-tick-interval = \"1s\"\n{}\n",
                self.raftstore_extra
            ),
        )
        .expect("store config");
        cfg
    }

    /// Starts store `i` (again) on its host.
    pub fn start_store(&mut self, i: usize) {
        let addr = self.net.addr(Node::Host(i));
        let args = [
            "--config".into(),
            self.store_config().display().to_string(),
            "--pd".into(),
            self.pd_addr(),
            "--cluster-secret-file".into(),
            self.dir.path().join("cluster-secret").display().to_string(),
            "--addr".into(),
            format!("{addr}:{STORE_PORT}"),
            "--status-addr".into(),
            format!("{addr}:{STATUS_PORT}"),
            "--data-dir".into(),
            self.disks[i].mountpoint().display().to_string(),
        ];
        let name = format!("store-{i}");
        self.stores[i] = Some(Proc::spawn_in(
            &name,
            env!("CARGO_BIN_EXE_kv-server"),
            &args,
            &self.cwd(&name),
            self.dir.path(),
            Some(&self.net.netns_path(i)),
        ));
    }

    /// SIGKILLs store `i`; its page cache survives, as a crashed process's does.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.stores[i].take() {
            p.kill();
        }
    }

    /// Store `i` loses power: killed, and every byte it wrote without fsync is gone.
    /// Returns the bytes dropped.
    pub fn power_loss(&mut self, i: usize) -> u64 {
        self.kill(i);
        let d = self.disks[i].power_loss().expect("drop unsynced writes");
        d.appended_bytes + d.restored_bytes
    }

    /// Every store loses power at the same instant: all are killed before any disk drops
    /// its unsynced writes, so no survivor can fsync (say, a new term after an election)
    /// what the others are about to lose. Returns the bytes dropped.
    pub fn power_loss_all(&mut self) -> u64 {
        for i in 0..self.stores.len() {
            self.kill(i);
        }
        (0..self.stores.len()).map(|i| self.power_loss(i)).sum()
    }

    /// Sends `sig` to store `i`'s process.
    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.stores[i].as_ref().and_then(|p| p.pid()) {
            // SAFETY: kill(2) with a pid this test started and still holds.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// The host whose store listens on `addr`.
    pub fn host_of(&self, addr: &str) -> Option<usize> {
        (0..self.stores.len())
            .find(|h| addr == format!("{}:{STORE_PORT}", self.net.addr(Node::Host(*h))))
    }

    /// Store `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.stores[i].as_ref().and_then(|p| p.pid())
    }

    /// Whether store `i`'s process is alive (a store that exits on its own is a bug).
    pub fn running(&mut self, i: usize) -> bool {
        self.stores[i].as_mut().is_some_and(|p| p.is_running())
    }

    /// How store `i`'s process ended, if it has.
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.stores[i].as_mut().and_then(|p| p.exit_status())
    }

    /// The last lines of store `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        self.stores[i]
            .as_ref()
            .map(|p| p.log_tail())
            .unwrap_or_default()
    }

    /// The number of PD members (1 for a PD on the gateway).
    pub fn pd_members(&self) -> usize {
        self.pds.len()
    }

    /// PD member `i`'s host.
    pub fn pd_node(&self, i: usize) -> Node {
        match self.pd_setup {
            PdSetup::Gateway => Node::Gateway,
            PdSetup::Group(_) => Node::Pd(i),
        }
    }

    /// PD member `i`'s name in its group.
    pub fn pd_name(&self, i: usize) -> String {
        format!("pd{}", i + 1)
    }

    fn pd_arg(&self, i: usize, flag: &str) -> String {
        let args = &self.pd_args[i];
        let at = args.iter().position(|a| a == flag).expect("a PD flag");
        args[at + 1].clone()
    }

    /// PD member `i`'s client address.
    pub fn pd_member_addr(&self, i: usize) -> String {
        self.pd_arg(i, "--addr")
    }

    /// PD member `i`'s status address (`/status`, `/metrics`).
    pub fn pd_status_addr(&self, i: usize) -> String {
        self.pd_arg(i, "--status-addr")
    }

    /// The working directory of process `name`, its own: a core dump (`make jepsen`
    /// turns them on, and the default core_pattern names them `core`) lands there, and
    /// another process's does not overwrite it (a restart of the same one does).
    fn cwd(&self, name: &str) -> std::path::PathBuf {
        let cwd = self.dir.path().join("cwd").join(name);
        std::fs::create_dir_all(&cwd).expect("a working directory");
        cwd
    }

    /// Starts PD member `i` (again) on its host and data.
    pub fn start_pd(&mut self, i: usize) {
        let netns = match self.pd_node(i) {
            Node::Gateway => None,
            node => Some(self.net.netns_path_of(node)),
        };
        self.pd_paused[i] = false;
        let name = self.pd_name(i);
        self.pds[i] = Some(Proc::spawn_in(
            &name,
            env!("CARGO_BIN_EXE_pd-server"),
            &self.pd_args[i],
            &self.cwd(&name),
            self.dir.path(),
            netns.as_deref(),
        ));
    }

    /// SIGKILLs PD member `i`.
    pub fn kill_pd(&mut self, i: usize) {
        if let Some(mut p) = self.pds[i].take() {
            p.kill();
        }
    }

    /// Whether PD member `i`'s process is alive.
    pub fn pd_running(&mut self, i: usize) -> bool {
        self.pds[i].as_mut().is_some_and(|p| p.is_running())
    }

    /// PD member `i`'s process id, while it runs.
    pub fn pd_pid(&self, i: usize) -> Option<u32> {
        self.pds[i].as_ref().and_then(|p| p.pid())
    }

    /// Sends `sig` to PD member `i`'s process (SIGSTOP: its status is not asked until
    /// SIGCONT).
    pub fn signal_pd(&mut self, i: usize, sig: i32) {
        if let Some(pid) = self.pd_pid(i) {
            // SAFETY: kill(2) with a pid this test started and still holds.
            unsafe { libc::kill(pid as i32, sig) };
        }
        match sig {
            libc::SIGSTOP => self.pd_paused[i] = true,
            libc::SIGCONT => self.pd_paused[i] = false,
            _ => {}
        }
    }

    /// The last lines of PD member `i`'s log.
    pub fn pd_log_tail(&self, i: usize) -> String {
        self.pds[i]
            .as_ref()
            .map(|p| p.log_tail())
            .unwrap_or_default()
    }

    /// What each PD member's `/status` says (`None`: it does not answer, or is stopped
    /// or paused), asked all at once (a member paused by others would hold the status
    /// client for its whole timeout).
    pub fn pd_states(&self) -> Vec<Option<PdState>> {
        let addrs: Vec<(bool, String)> = (0..self.pds.len())
            .map(|i| {
                let up = self.pds[i].is_some() && !self.pd_paused[i];
                (up, self.pd_status_addr(i))
            })
            .collect();
        std::thread::scope(|s| {
            let asks: Vec<_> = addrs
                .iter()
                .map(|(running, addr)| {
                    s.spawn(move || {
                        if !running {
                            return None;
                        }
                        let text = crate::common::http_get(addr, "/status")?;
                        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                        Some(PdState {
                            is_leader: v["is_leader"].as_bool()?,
                            leader: v["leader"].as_str().map(String::from),
                            term: v["term"].as_u64()?,
                        })
                    })
                })
                .collect();
            asks.into_iter()
                .map(|a| a.join().expect("a status request does not panic"))
                .collect()
        })
    }

    /// The PD member that serves, and its term: of the members that say they serve, the
    /// one of the highest term (a deposed leader cut off from the others may not know
    /// yet).
    pub fn pd_leader(&self) -> Option<(usize, u64)> {
        self.pd_states()
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| s.filter(|s| s.is_leader).map(|s| (i, s.term)))
            .max_by_key(|(_, term)| *term)
    }

    /// The PD member every running member names as serving, in one term, if they agree
    /// and it says it serves.
    pub fn pd_agreed_leader(&self) -> Option<(usize, u64)> {
        let states = self.pd_states();
        let (leader, term) = states
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.as_ref().filter(|s| s.is_leader).map(|s| (i, s.term)))?;
        let name = self.pd_name(leader);
        let agreed = states.iter().enumerate().all(|(i, s)| match s {
            Some(s) => s.term == term && s.leader.as_deref() == Some(&name),
            None => self.pds[i].is_none(),
        });
        agreed.then_some((leader, term))
    }

    /// Cuts PD member `i`'s host off from every other member's (not from the stores or
    /// the clients); whether every such route is now dead.
    pub fn cut_pd_from_members(&mut self, i: usize) -> bool {
        let others: Vec<Node> = (0..self.pds.len())
            .filter(|j| *j != i)
            .map(|j| self.pd_node(j))
            .collect();
        let me = self.pd_node(i);
        for o in &others {
            self.net.cut(me, *o);
        }
        others.iter().all(|o| !self.net.reaches_from(me, *o))
    }

    /// Whether PD member `i`'s host reaches every other member's.
    pub fn pd_reaches_members(&self, i: usize) -> bool {
        (0..self.pds.len())
            .filter(|j| *j != i)
            .all(|j| self.net.reaches_from(self.pd_node(i), self.pd_node(j)))
    }

    /// PD member `i` loses power: killed, and every byte it wrote without fsync is gone.
    /// Returns the bytes dropped.
    pub fn pd_power_loss(&mut self, i: usize) -> u64 {
        assert!(
            !self.pd_disks.is_empty(),
            "a PD on the gateway has no lazy disk"
        );
        self.kill_pd(i);
        let d = self.pd_disks[i].power_loss().expect("drop unsynced writes");
        d.appended_bytes + d.restored_bytes
    }

    /// Every PD member loses power at the same instant: all are killed before any disk
    /// drops its unsynced writes. Returns the bytes dropped.
    pub fn pd_power_loss_all(&mut self) -> u64 {
        for i in 0..self.pds.len() {
            self.kill_pd(i);
        }
        (0..self.pds.len()).map(|i| self.pd_power_loss(i)).sum()
    }

    /// The directory kept for a failed run's histories and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops everything and keeps the run's directory (logs, data, history) for a look.
    pub fn keep(self) -> PathBuf {
        let NetCluster {
            stores,
            pds,
            disks,
            pd_disks,
            net,
            dir,
            ..
        } = self;
        drop(stores);
        drop(pds);
        drop(disks);
        drop(pd_disks);
        drop(net);
        dir.keep()
    }
}

/// A lazy filesystem mounted at `<dir>/<name>` over `<dir>/disk-<name>`.
fn lazy_disk(dir: &std::path::Path, name: &str) -> LazyFs {
    let (backing, mnt) = (dir.join(format!("disk-{name}")), dir.join(name));
    std::fs::create_dir_all(&backing).expect("backing dir");
    std::fs::create_dir_all(&mnt).expect("mount point");
    LazyFs::mount(&backing, &mnt).expect("mount the lazy filesystem (root and /dev/fuse needed)")
}
