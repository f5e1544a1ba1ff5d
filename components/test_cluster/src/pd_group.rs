//! A PD group of several members in this process, each on its own loopback port and data
//! directory, that tests stop, restart and partition by member.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use pd::{PdServer, PdStatus};

use crate::{free_port, poll_until, test_logger};

/// One member: its settings and, while it runs, its server.
struct Member {
    cfg: pd::Config,
    server: Option<PdServer>,
}

/// PD members started together as one group.
pub struct PdGroup {
    members: Vec<Member>,
    _tmp: tempfile::TempDir,
}

/// Fast Raft ticks, so that failovers take well under a second.
pub fn member_config(name: &str, addr: &str, dir: PathBuf, initial_cluster: &str) -> pd::Config {
    pd::Config {
        name: name.into(),
        addr: addr.into(),
        data_dir: dir,
        initial_cluster: initial_cluster.into(),
        raft_tick_interval: Duration::from_millis(50),
        join_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

impl PdGroup {
    /// Starts members `pd1..=pdN` of a new group (the first creates the cluster secret and
    /// hands it to the others) and waits until one leads.
    pub fn start(n: usize) -> PdGroup {
        let tmp = tempfile::tempdir().expect("temp dir");
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial = (0..n)
            .map(|i| format!("pd{}={}", i + 1, addrs[i]))
            .collect::<Vec<_>>()
            .join(",");
        let cfgs: Vec<pd::Config> = (0..n)
            .map(|i| {
                let name = format!("pd{}", i + 1);
                member_config(&name, &addrs[i], tmp.path().join(&name), &initial)
            })
            .collect();
        // Together: the seed must serve while the others fetch the secret from it.
        let starts: Vec<_> = cfgs
            .iter()
            .cloned()
            .map(|cfg| std::thread::spawn(move || PdServer::start(cfg, test_logger())))
            .collect();
        let members = cfgs
            .into_iter()
            .zip(starts)
            .map(|(cfg, t)| Member {
                server: Some(t.join().expect("start thread").expect("start pd member")),
                cfg,
            })
            .collect();
        let group = PdGroup { members, _tmp: tmp };
        group.wait_leader(Duration::from_secs(20));
        group
    }

    /// Every member's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.cfg.addr.clone()).collect()
    }

    /// The cluster secret file (the seed's).
    pub fn secret_file(&self) -> PathBuf {
        self.members[0].cfg.data_dir.join(util::secret::FILE_NAME)
    }

    /// A running member's state.
    pub fn status(&self, i: usize) -> Option<PdStatus> {
        self.members[i].server.as_ref().map(|s| s.status())
    }

    /// The member that serves now, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.status(i).is_some_and(|s| s.is_leader))
    }

    /// Waits until a member serves; its index.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        poll_until(timeout, || self.leader())
            .unwrap_or_else(|| panic!("no pd member serves after {timeout:?}"))
    }

    /// Stops member `i` at once (its streams are cancelled, as if it were killed).
    pub fn stop(&mut self, i: usize) {
        if let Some(s) = self.members[i].server.take() {
            s.shutdown();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].server.is_none(), "member {i} is running");
        let cfg = self.members[i].cfg.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Its port may take a moment to be free again.
        let server = loop {
            match PdServer::start(cfg.clone(), test_logger()) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restart pd member {i}: {e}"),
            }
        };
        self.members[i].server = Some(server);
    }

    /// Replaces member `i` as if its disk were lost: stops it, empties its directory,
    /// and starts it again with `--join` (the other members) and a copy of the secret.
    pub fn replace(&mut self, i: usize) {
        self.stop(i);
        let secret = std::fs::read_to_string(self.secret_file()).expect("read the secret");
        let dir = &self.members[i].cfg.data_dir;
        // The member's last calls may hold its database a moment after it stopped.
        crate::wait_until(
            "the member's disk to be removed",
            Duration::from_secs(30),
            || std::fs::remove_dir_all(dir).is_ok() || !dir.exists(),
        );
        let copy = dir.with_extension("secret");
        std::fs::write(&copy, secret).expect("copy the secret");
        let others: Vec<String> = (0..self.members.len())
            .filter(|&j| j != i)
            .map(|j| self.members[j].cfg.addr.clone())
            .collect();
        let cfg = &mut self.members[i].cfg;
        cfg.initial_cluster.clear();
        cfg.join = others.join(",");
        cfg.cluster_secret_file = copy;
        self.restart(i);
    }

    /// Member `i`'s settings.
    pub fn config(&self, i: usize) -> &pd::Config {
        &self.members[i].cfg
    }
}

impl Drop for PdGroup {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}
