//! PD settings.

use std::{path::PathBuf, time::Duration};

use conf::{ensure, Validate};
use serde::{Deserialize, Serialize};

/// PD settings; every key has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC service listens on.
    pub addr: String,
    /// Address given to clients (GetMembers); defaults to `addr`.
    pub advertise_addr: String,
    /// Where PD keeps its metadata.
    pub data_dir: PathBuf,
    /// Voters every region should have.
    pub max_replicas: usize,
    /// A store silent this long is down and its peers are replaced.
    #[serde(with = "humantime_serde")]
    pub max_store_down_time: Duration,
    /// Ids reserved on disk at a time.
    pub id_batch: u64,
    /// An operator not finished after this long is abandoned.
    #[serde(with = "humantime_serde")]
    pub operator_timeout: Duration,
    /// Move replicas and leaders between stores to even out their counts.
    pub enable_balance: bool,
    /// The balancers leave a region alone this long after an operator moved it by hand
    /// (`kvctl region move` / `transfer-leader`), so they do not undo the placement asked
    /// for; repairs of lost replicas still run.
    #[serde(with = "humantime_serde")]
    pub manual_placement_hold: Duration,
    /// Balance operators start on a store only while fewer than this many touch it.
    pub store_limit: usize,
    /// After a restart, balancing waits until every known region has reported its
    /// leader, or this long at most: until then leader counts are guesses.
    #[serde(with = "humantime_serde")]
    pub balance_warmup: Duration,
    /// Most new regions one split may ask ids for (AskBatchSplit's split count).
    pub max_batch_split: u32,
    /// The cluster secret stores must present (see `util::secret`); empty: created at
    /// first start as `<data-dir>/cluster-secret`, the file to give every store.
    pub cluster_secret_file: PathBuf,
    /// This member's name in its PD group.
    pub name: String,
    /// The members a new group starts with, `name=host:port,...` (their client
    /// addresses, which members also talk Raft on); empty: this member alone. Read only
    /// at the first start.
    pub initial_cluster: String,
    /// Addresses of members of a running group to join, comma-separated (a new member,
    /// or one replacing a member of the same name that lost its disk). Needs the
    /// cluster secret file, copied from a member.
    pub join: String,
    /// The Raft tick of the PD group.
    #[serde(with = "humantime_serde")]
    pub raft_tick_interval: Duration,
    /// Ticks without a leader before a member campaigns.
    pub raft_election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub raft_heartbeat_ticks: usize,
    /// Log entries kept past the applied index before the log is compacted.
    pub raft_log_gc_threshold: u64,
    /// Largest gRPC message between members (a snapshot of all metadata is one).
    pub raft_max_message_bytes: usize,
    /// How long a write waits to be committed before it is reported undetermined.
    #[serde(with = "humantime_serde")]
    pub propose_timeout: Duration,
    /// How long a member starting a new group, or joining one, keeps trying to reach
    /// the others (for the cluster secret, or to be added) before it gives up.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Failure domains; read from the file's `[replication]` section (`FileConfig`).
    #[serde(skip)]
    pub replication: Replication,
    /// TLS; read from the file's `[security]` section (`FileConfig`).
    #[serde(skip)]
    pub security: util::security::SecurityConfig,
    /// Users and tokens; read from the file's `[auth]` section (`FileConfig`).
    #[serde(skip)]
    pub auth: AuthConfig,
}

/// Users, roles and tokens: the `[auth]` section. Whether auth is on is not a setting
/// but replicated state (`kvctl auth enable`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a token from a login is good for.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Whether anyone may add a user for themselves (the shell's SIGNUP).
    pub allow_signup: bool,
    /// The role a user added by signup gets (empty: none, so it may do nothing).
    pub default_role: String,
    /// A new signing key is made when the newest is this old.
    #[serde(with = "humantime_serde")]
    pub key_rotation: Duration,
    /// Most users.
    pub max_users: usize,
    /// Most roles.
    pub max_roles: usize,
    /// Most grants one role holds.
    pub max_grants_per_role: usize,
    /// Most roles one user holds.
    pub max_roles_per_user: usize,
    /// Failed logins a user or a client address may have in a row before each further
    /// one locks it out for a while.
    pub login_free_failures: u32,
    /// The longest such lockout (each failure past the free ones doubles it, from 1 s).
    #[serde(with = "humantime_serde")]
    pub login_max_lockout: Duration,
    /// Passwords checked (argon2, about 20 MiB and tens of ms each) at once; more
    /// logins wait up to a second for a turn, then are told to retry.
    pub password_checks_at_once: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: Duration::from_secs(3600),
            allow_signup: false,
            default_role: String::new(),
            key_rotation: Duration::from_secs(24 * 3600),
            max_users: 10_000,
            max_roles: 1_000,
            max_grants_per_role: 256,
            max_roles_per_user: 64,
            login_free_failures: 5,
            login_max_lockout: Duration::from_secs(60),
            password_checks_at_once: 2,
        }
    }
}

impl Validate for AuthConfig {
    fn validate(&self) -> conf::Result<()> {
        ensure(
            (Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&self.token_ttl),
            "auth.token-ttl",
            "must be between 1s and 7 days",
        )?;
        ensure(
            self.key_rotation >= Duration::from_secs(60),
            "auth.key-rotation",
            "must be at least 1 minute",
        )?;
        ensure(
            self.default_role.is_empty()
                || auth::names::check_name("role", &self.default_role).is_ok(),
            "auth.default-role",
            "must be empty or a valid role name",
        )?;
        for (key, v, max) in [
            ("auth.max-users", self.max_users, 1_000_000),
            ("auth.max-roles", self.max_roles, 100_000),
            ("auth.max-grants-per-role", self.max_grants_per_role, 10_000),
            ("auth.max-roles-per-user", self.max_roles_per_user, 1_000),
            (
                "auth.password-checks-at-once",
                self.password_checks_at_once,
                64,
            ),
        ] {
            ensure(
                (1..=max).contains(&v),
                key,
                &format!("must be between 1 and {max}"),
            )?;
        }
        ensure(
            self.login_max_lockout >= Duration::from_secs(1),
            "auth.login-max-lockout",
            "must be at least 1s",
        )
    }
}

/// Where replicas go (TiKV's PD names): the `[replication]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Replication {
    /// Store label keys that name failure domains, top first (`["zone", "rack", "host"]`):
    /// a region's replicas are spread over as many distinct values as possible, from the
    /// top label down. Every store must carry each of them.
    pub location_labels: Vec<String>,
    /// One of `location-labels`: a region with two replicas that share this label's
    /// value (and every label above it) is a placement fault that PD repairs as soon as a
    /// store elsewhere has room, and that `kvctl cluster health` reports. Empty: only two
    /// replicas sharing every location label are a fault.
    pub isolation_level: String,
    /// Values of the top location label (zones) where leaders should be: a leader
    /// elsewhere moves to a voter in one of them, and the leader balancer keeps leaders
    /// within them. Empty: leaders go where the counts say.
    pub leader_zones: Vec<String>,
}

impl Replication {
    /// The index of `isolation-level` in `location-labels`, if set.
    pub fn isolation_index(&self) -> Option<usize> {
        self.location_labels
            .iter()
            .position(|l| *l == self.isolation_level)
    }
}

impl Validate for Replication {
    fn validate(&self) -> conf::Result<()> {
        let labels = &self.location_labels;
        ensure(
            labels.len() <= 8,
            "replication.location-labels",
            "at most 8 labels",
        )?;
        ensure(
            labels
                .iter()
                .all(|l| !l.is_empty() && l.len() <= util::labels::MAX_LABEL_LEN)
                && labels
                    .iter()
                    .enumerate()
                    .all(|(i, l)| !labels[..i].contains(l)),
            "replication.location-labels",
            "labels must be non-empty, at most 128 bytes, and named once each",
        )?;
        ensure(
            self.isolation_level.is_empty() || self.isolation_index().is_some(),
            "replication.isolation-level",
            "must be one of replication.location-labels (or empty)",
        )?;
        ensure(
            self.leader_zones.is_empty() || !labels.is_empty(),
            "replication.leader-zones",
            "needs replication.location-labels: zones are values of the first one",
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:2379".into(),
            advertise_addr: String::new(),
            data_dir: PathBuf::from("./pd-data"),
            max_replicas: 3,
            max_store_down_time: Duration::from_secs(30),
            id_batch: 1000,
            operator_timeout: Duration::from_secs(600),
            enable_balance: true,
            manual_placement_hold: Duration::from_secs(1800),
            store_limit: 4,
            balance_warmup: Duration::from_secs(120),
            max_batch_split: 256,
            cluster_secret_file: PathBuf::new(),
            name: "pd".into(),
            initial_cluster: String::new(),
            join: String::new(),
            raft_tick_interval: Duration::from_millis(100),
            raft_election_ticks: 10,
            raft_heartbeat_ticks: 2,
            raft_log_gc_threshold: 10_000,
            raft_max_message_bytes: 64 << 20,
            propose_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(60),
            replication: Replication::default(),
            security: util::security::SecurityConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Config {
    /// The address clients should dial.
    pub fn client_addr(&self) -> &str {
        if self.advertise_addr.is_empty() {
            &self.addr
        } else {
            &self.advertise_addr
        }
    }
}

impl Config {
    /// The initial members, `(name, client address)` sorted by name; this member alone if
    /// `initial-cluster` is empty.
    pub fn initial_members(&self) -> conf::Result<Vec<(String, String)>> {
        if self.initial_cluster.trim().is_empty() {
            return Ok(vec![(self.name.clone(), self.client_addr().to_string())]);
        }
        let bad = |why: String| conf::Error::InvalidConfig(format!("pd.initial-cluster: {why}"));
        let mut members = vec![];
        for part in self.initial_cluster.split(',') {
            let (name, addr) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not NAME=HOST:PORT")))?;
            let (name, addr) = (name.trim(), addr.trim());
            let port = addr
                .rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then_some(p));
            if name.is_empty() || port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(bad(format!("{part:?} is not NAME=HOST:PORT")));
            }
            if members.iter().any(|(n, _): &(String, String)| n == name) {
                return Err(bad(format!("member name {name:?} is given twice")));
            }
            if members.iter().any(|(_, a): &(String, String)| a == addr) {
                return Err(bad(format!("address {addr} is given twice")));
            }
            members.push((name.to_string(), addr.to_string()));
        }
        if !members.iter().any(|(n, _)| *n == self.name) {
            return Err(bad(format!(
                "does not name this member ({:?}, pd.name)",
                self.name
            )));
        }
        members.sort();
        Ok(members)
    }

    /// The addresses `join` names.
    pub fn join_addrs(&self) -> Vec<String> {
        self.join
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect()
    }
}

impl Validate for Config {
    fn validate(&self) -> conf::Result<()> {
        if let Some((key, why)) = self.security.server_problem() {
            ensure(false, key, &why)?;
        }
        ensure(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
            "pd.name",
            "must be letters, digits, '-', '_' or '.'",
        )?;
        self.initial_members()?;
        ensure(
            self.join.is_empty() || self.initial_cluster.is_empty(),
            "pd.join",
            "a member either starts a group (initial-cluster) or joins one, not both",
        )?;
        ensure(
            self.raft_election_ticks > self.raft_heartbeat_ticks && self.raft_heartbeat_ticks >= 1,
            "pd.raft-election-ticks",
            "must exceed raft-heartbeat-ticks, which must be at least 1",
        )?;
        ensure(
            !self.raft_tick_interval.is_zero(),
            "pd.raft-tick-interval",
            "must be positive",
        )?;
        ensure(
            self.raft_log_gc_threshold >= 10,
            "pd.raft-log-gc-threshold",
            "must be at least 10",
        )?;
        ensure(
            (4 << 20..=i32::MAX as usize).contains(&self.raft_max_message_bytes),
            "pd.raft-max-message-bytes",
            "must be between 4 MiB and 2 GiB",
        )?;
        ensure(
            !self.propose_timeout.is_zero() && !self.join_timeout.is_zero(),
            "pd.propose-timeout",
            "propose-timeout and join-timeout must be positive",
        )?;
        ensure(
            self.addr.parse::<std::net::SocketAddr>().is_ok(),
            "pd.addr",
            "must be HOST:PORT with a numeric host",
        )?;
        ensure(
            self.max_replicas >= 1,
            "pd.max-replicas",
            "must be at least 1",
        )?;
        ensure(
            (1..=100_000).contains(&self.max_batch_split),
            "pd.max-batch-split",
            "must be between 1 and 100000",
        )?;
        ensure(
            !self.max_store_down_time.is_zero(),
            "pd.max-store-down-time",
            "must be positive",
        )?;
        ensure(self.id_batch >= 1, "pd.id-batch", "must be at least 1")?;
        ensure(
            self.store_limit >= 1,
            "pd.store-limit",
            "must be at least 1",
        )?;
        self.replication.validate()?;
        self.auth.validate()
    }
}

/// The pd-server config file: `[pd]`, `[replication]`, the status address, and `[log]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// PD settings.
    pub pd: Config,
    /// Failure domains (copied into `pd.replication` by [`FileConfig::pd_config`]).
    pub replication: Replication,
    /// TLS (copied into `pd.security`); its `cluster-secret-file` is `[pd]
    /// cluster-secret-file`'s other name.
    pub security: util::security::SecurityConfig,
    /// Users and tokens (copied into `pd.auth`).
    pub auth: AuthConfig,
    /// Status HTTP (`/metrics`, `/status`).
    pub status_addr: String,
    /// Logging.
    pub log: util::logger::LogConfig,
}

impl FileConfig {
    /// The PD settings with the `[replication]` section in them.
    pub fn pd_config(&self) -> Config {
        let mut cluster_secret_file = self.pd.cluster_secret_file.clone();
        if cluster_secret_file.as_os_str().is_empty() {
            cluster_secret_file = self.security.cluster_secret_file.clone();
        }
        Config {
            replication: self.replication.clone(),
            security: self.security.clone(),
            auth: self.auth.clone(),
            cluster_secret_file,
            ..self.pd.clone()
        }
    }
}

impl Validate for FileConfig {
    fn validate(&self) -> conf::Result<()> {
        self.pd_config().validate()?;
        let (a, b) = (
            &self.pd.cluster_secret_file,
            &self.security.cluster_secret_file,
        );
        ensure(
            a.as_os_str().is_empty() || b.as_os_str().is_empty() || a == b,
            "security.cluster-secret-file",
            "differs from pd.cluster-secret-file (set one of them)",
        )?;
        ensure(
            self.status_addr.is_empty() || self.status_addr.parse::<std::net::SocketAddr>().is_ok(),
            "status-addr",
            "must be IP:PORT (or empty for none)",
        )
    }
}
