//! `kvctl`: one-shot data and admin commands, and an interactive shell with history.
//!
//! Exit codes: 0 success; 1 "not found" (`get` of a missing key) or a failed
//! compare-and-swap; 2 any error (printed on stderr).

use std::{io::Write, sync::Arc, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use proto::metapb;
use serde_json::json;

use client::{Client, Error, ReadMode, Result};

use crate::progress::Progress;

mod benchmark;
mod cert;
mod health;
mod pd;
mod shell;
mod stats;
mod txn;
mod users;

pub use cert::CertCommand;
pub use health::{Health, PdMemberHealth, Verdict};
pub use pd::PdCommand;
pub use shell::shell;
pub use txn::TxnCommand;
pub use users::{AuthCommand, RoleCommand, UserCommand};

/// kvctl: the Flotilla command-line client.
#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Read, write and administer a Flotilla cluster"
)]
pub struct Cli {
    /// PD addresses, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        env = "FLOTILLA_PD"
    )]
    pub pd: String,
    /// Output format of commands that print data.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How long a command may retry before it gives up.
    #[arg(long, global = true, default_value = "20s", value_parser = humantime_duration)]
    pub timeout: Duration,
    /// How long to look for a PD member that answers before giving up.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime_duration)]
    pub connect_timeout: Duration,
    /// The cluster secret (pd-server's <data-dir>/cluster-secret), needed for commands
    /// that change placement: region move, transfer-leader, store delete.
    #[arg(long, global = true, env = "FLOTILLA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Log in as this user for this command (password from the terminal, or
    /// --password-stdin); without it, the token `kvctl login` saved is used.
    #[arg(
        long = "user",
        global = true,
        env = "FLOTILLA_USER",
        value_name = "NAME"
    )]
    pub login_as: Option<String>,
    /// Read passwords from the first line of standard input instead of the terminal.
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// Where `kvctl login` keeps its token (default: ~/.kvctl_token).
    #[arg(long, global = true, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Where get, scan and txn reads are served: leader, follower, closest (a replica in
    /// --zone, else the leader) or stale=DURATION (the closest replica alone, at most
    /// that far behind).
    #[arg(long, global = true, default_value = "leader", env = "FLOTILLA_READ")]
    pub read: ReadMode,
    /// The zone this client runs in (the stores' `zone` label), for closest and stale
    /// reads.
    #[arg(long, global = true, env = "FLOTILLA_ZONE")]
    pub zone: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn humantime_duration(s: &str) -> std::result::Result<Duration, String> {
    conf::parse_duration(s)
}

/// How to print results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Plain text: values alone, tables with tab-separated columns.
    Text,
    /// JSON documents.
    Json,
}

/// A kvctl command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to VALUE; prints OK.
    #[command(visible_alias = "set")]
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Remove the key after this long (e.g. 30s, 2h; whole seconds).
        #[arg(long, value_parser = humantime_duration)]
        ttl: Option<Duration>,
    },
    /// The cluster's keys, regions and load (as `cluster stats`).
    Stats {
        /// How long to watch the load.
        #[arg(long, default_value = "2s", value_parser = humantime_duration)]
        interval: Duration,
    },
    /// Print 1 if KEY exists, 0 if not.
    Has {
        /// The key.
        key: String,
    },
    /// Apply puts and deletes atomically, as one transaction: batch put K V put K2 V2
    /// delete K3 (verbs in any case; set is put). Transactional keys, as `txn` reads
    /// them (not the raw keys of put and get). Prints OK and the commit timestamp.
    Batch {
        /// PUT KEY VALUE, SET KEY VALUE or DELETE KEY, repeated.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        ops: Vec<String>,
    },
    /// A short load: N puts of VALUE_SIZE-byte values under PREFIX (living 10 minutes),
    /// then N gets of them, 16 at a time; prints each phase's throughput and latency
    /// percentiles.
    Benchmark {
        /// Operations per phase (1 to 1000000).
        n: u64,
        /// The keys' prefix (keys are PREFIX0000000, PREFIX0000001, ...).
        #[arg(default_value = "bench/")]
        prefix: String,
        /// Bytes per value (at most 1 MiB).
        #[arg(default_value_t = 64)]
        value_size: usize,
    },
    /// Print the time KEY has left to live in seconds (0: it never expires); exit 1 with
    /// "not found" if it does not exist.
    Ttl {
        /// The key.
        key: String,
    },
    /// Print the value of KEY; exit 1 with "not found" on stderr if it does not exist.
    Get {
        /// The key.
        key: String,
    },
    /// Remove KEY; prints OK.
    Delete {
        /// The key.
        key: String,
    },
    /// Print pairs in [START, END) as KEY<TAB>VALUE lines, in key order.
    Scan {
        /// First key (default: the start of the key space).
        start: Option<String>,
        /// End key, exclusive (default: the end of the key space).
        end: Option<String>,
        /// Most pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Set KEY to NEW if it holds EXPECTED; with --absent, if it does not exist
    /// (then give only KEY NEW). Prints OK or FAILED and the previous value.
    Cas {
        /// The key must not exist (instead of holding EXPECTED).
        #[arg(long)]
        absent: bool,
        /// KEY EXPECTED NEW, or KEY NEW with --absent.
        #[arg(required = true, num_args = 2..=3)]
        args: Vec<String>,
    },
    /// Split the region that holds KEY at KEY; prints the resulting regions.
    Split {
        /// The key that starts the new region.
        key: String,
    },
    /// Regions.
    Region {
        /// What to do with regions.
        #[command(subcommand)]
        command: RegionCommand,
    },
    /// Stores.
    Store {
        /// What to do with stores.
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The cluster as a whole.
    Cluster {
        /// What to ask about the cluster.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The PD members: list them with their health and leader, move the leadership.
    Pd {
        /// What to do with PD.
        #[command(subcommand)]
        command: PdCommand,
    },
    /// What PD is doing.
    Operator {
        /// What to do with operators.
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Transactions: each command a transaction of its own (in the shell, BEGIN ...
    /// COMMIT groups statements into one).
    Txn {
        /// What to do.
        #[command(subcommand)]
        command: TxnCommand,
    },
    /// TLS certificates: a CA and certificates for the cluster and its clients (needs no
    /// cluster).
    Cert {
        /// What to make.
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Log in: ask for the password, get a token from PD and keep it (0600) for later
    /// commands until it expires.
    Login {
        /// The user.
        name: String,
    },
    /// Forget the token `login` kept.
    Logout,
    /// Who this kvctl is to the cluster, and whether auth is on.
    Whoami,
    /// Add a user for yourself, with PD's default role (if PD allows signup).
    Signup {
        /// The user.
        name: String,
    },
    /// Users and roles: turn checking on or off.
    Auth {
        /// What to do.
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Users.
    User {
        /// What to do.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Roles and their permissions.
    Role {
        /// What to do.
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// An interactive shell (with history) that takes these commands, and BEGIN
    /// [PESSIMISTIC], COMMIT and ROLLBACK: in between, get/put/delete/scan run in one
    /// transaction and see its own writes.
    Shell,
}

/// Region commands.
#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Every region: id, range, epoch, leader store, peers with roles.
    List,
    /// Move a region's leadership to its voter on another store; waits until it moved.
    TransferLeader {
        /// The region id.
        id: u64,
        /// The store that should lead.
        #[arg(long)]
        to: u64,
    },
    /// Move a region's replica from one store to another (add a learner there, promote
    /// it once caught up, remove the old one); prints each step and waits until done.
    Move {
        /// The region id.
        id: u64,
        /// The store that has the replica now.
        #[arg(long)]
        from: u64,
        /// The store that should have it.
        #[arg(long)]
        to: u64,
    },
    /// Split a region at one or more keys; prints the resulting regions.
    Split {
        /// The region id.
        id: u64,
        /// A key that starts a new region (repeat for several).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Check that every replica of a region holds the same data: each hashes it at the
    /// same applied index. Prints each replica's hash; exits 1 if they differ.
    Check {
        /// The region id.
        id: u64,
    },
    /// One region, by id or by a key it holds.
    Show {
        /// The region id.
        id: Option<u64>,
        /// A key the region holds.
        #[arg(long, conflicts_with = "id")]
        key: Option<String>,
    },
}

/// Store commands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Every store: id, address, state, region and leader counts, last heartbeat.
    List,
    /// One store.
    Show {
        /// The store id.
        id: u64,
    },
    /// Decommission a store: PD moves every replica on it to other stores, then marks
    /// it tombstone. Refused if fewer than max-replicas stores would remain.
    Delete {
        /// The store id.
        id: u64,
        /// Show progress until the store is tombstone; give up if no replica moved
        /// within --timeout.
        #[arg(long)]
        wait: bool,
    },
}

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Stores up/down/offline/tombstone, regions without a leader, a quorum or all their
    /// replicas, pending operators, and a verdict. Exit 0 healthy, 1 degraded (serving
    /// with something missing), 2 unhealthy (some regions do not serve) or PD unreachable.
    Health {
        /// A store PD has not heard from for this long counts as down.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        down_after: Duration,
    },
    /// Keys and bytes (estimates), regions, and per request type the rate and p99
    /// latency, from every store's metrics scraped twice an interval apart.
    Stats {
        /// Time between the two scrapes.
        #[arg(long, default_value = "2s", value_parser = humantime_duration)]
        interval: Duration,
    },
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Operators in progress.
    List,
}

/// Parses the PD flag into endpoints.
pub fn endpoints(pd: &str) -> Vec<String> {
    pd.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn show_key(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

fn role(r: metapb::PeerRole) -> &'static str {
    match r {
        metapb::PeerRole::Voter => "voter",
        metapb::PeerRole::Learner => "learner",
        metapb::PeerRole::IncomingVoter => "incoming-voter",
        metapb::PeerRole::DemotingVoter => "demoting-voter",
    }
}

fn region_json(route: &pd_client::RegionRoute) -> serde_json::Value {
    let r = &route.region;
    json!({
        "id": r.get_id(),
        "start_key": show_key(r.get_start_key()),
        "end_key": show_key(r.get_end_key()),
        "epoch": {"conf_ver": r.get_region_epoch().get_conf_ver(), "version": r.get_region_epoch().get_version()},
        "leader_store": route.leader.as_ref().map(|l| l.get_store_id()),
        "peers": r.get_peers().iter().map(|p| json!({
            "id": p.get_id(), "store_id": p.get_store_id(), "role": role(p.get_role()),
        })).collect::<Vec<_>>(),
        "isolation": route.isolation.as_ref().map(|(level, _)| level),
        "not_isolated": route.isolation.as_ref().map(|(_, fault)| fault),
    })
}

fn region_line(route: &pd_client::RegionRoute) -> String {
    let r = &route.region;
    let peers: Vec<String> = r
        .get_peers()
        .iter()
        .map(|p| format!("{}@{}:{}", p.get_id(), p.get_store_id(), role(p.get_role())))
        .collect();
    // A region that breaks the isolation level is flagged where the eye lands last.
    let isolation = match &route.isolation {
        Some((level, true)) => format!("\t{}!", or_dash(level)),
        Some((level, false)) => format!("\t{}", or_dash(level)),
        None => String::new(),
    };
    format!(
        "{}\t{:?}\t{:?}\t{}/{}\t{}\t{}{isolation}",
        r.get_id(),
        show_key(r.get_start_key()),
        show_key(r.get_end_key()),
        r.get_region_epoch().get_conf_ver(),
        r.get_region_epoch().get_version(),
        route
            .leader
            .as_ref()
            .map_or("-".to_string(), |l| l.get_store_id().to_string()),
        peers.join(",")
    )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Where a command's output goes, and in what format.
struct Printer<'a> {
    json: bool,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
}

impl Printer<'_> {
    fn line(&mut self, s: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{s}");
    }

    /// Raw bytes (keys and values are printed as stored, not as lossy UTF-8).
    fn bytes(&mut self, parts: &[&[u8]]) {
        for p in parts {
            let _ = self.out.write_all(p);
        }
    }

    fn ok(&mut self) {
        if self.json {
            self.line(json!({"ok": true}));
        } else {
            self.line("OK");
        }
    }

    fn diagnostic(&mut self, s: &str) {
        let _ = writeln!(self.err, "{s}");
    }
}

/// Runs one command, its reads served as `read` says; returns the exit code. Output goes
/// to `out`, diagnostics to `err`.
pub async fn run(
    cmd: &Command,
    output: Output,
    read: ReadMode,
    client: &Client,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let mut p = Printer {
        json: output == Output::Json,
        out,
        err,
    };
    match cmd {
        Command::Put { key, value, ttl } => {
            let ttl = ttl.unwrap_or_default();
            client
                .put_with_ttl(key.as_bytes(), value.as_bytes(), ttl)
                .await?;
            p.ok();
            Ok(0)
        }
        Command::Stats { interval } => cluster_stats(client, *interval, &mut p).await,
        Command::Login { name } => users::login_command(client, name, &mut p).await,
        Command::Logout => users::logout_command(&mut p),
        Command::Whoami => users::whoami(client.pd(), &mut p).await,
        Command::Signup { name } => {
            let password = users::read_password("password: ")?;
            users::signup(client.pd(), name, &password).await?;
            p.ok();
            Ok(0)
        }
        Command::Auth { command } => users::auth_command(client, command, &mut p).await,
        Command::User { command } => users::user_command(client, command, &mut p).await,
        Command::Role { command } => users::role_command(client, command, &mut p).await,
        Command::Has { key } => {
            let found = client.get_with(key.as_bytes(), read).await?.is_some();
            match p.json {
                true => p.line(json!({"key": key, "exists": found})),
                false => p.line(u8::from(found)),
            }
            Ok(0)
        }
        Command::Batch { ops } => {
            let ops = txn::parse_batch(ops)?;
            txn::batch(&client::txn::TxnClient::new(client), &ops, &mut p).await
        }
        Command::Benchmark {
            n,
            prefix,
            value_size,
        } => benchmark::run(client, *n, prefix, *value_size, &mut p).await,
        Command::Ttl { key } => match client.get_key_ttl(key.as_bytes()).await? {
            Some(ttl) if p.json => {
                p.line(json!({"key": key, "ttl_seconds": ttl.as_secs()}));
                Ok(0)
            }
            Some(ttl) => {
                p.line(ttl.as_secs());
                Ok(0)
            }
            None => {
                p.diagnostic("not found");
                Ok(1)
            }
        },
        Command::Get { key } => get(client, key, read, &mut p).await,
        Command::Delete { key } => {
            client.delete(key.as_bytes()).await?;
            p.ok();
            Ok(0)
        }
        Command::Scan { start, end, limit } => {
            let start = start.as_deref().unwrap_or("").as_bytes();
            let end = end.as_deref().unwrap_or("").as_bytes();
            scan(client, start, end, *limit, read, &mut p).await
        }
        Command::Cas { absent, args } => cas(client, *absent, args, &mut p).await,
        Command::Split { key } => {
            let route = client.pd().get_region(key.as_bytes()).await?;
            split(
                client,
                route.region.get_id(),
                std::slice::from_ref(key),
                &mut p,
            )
            .await
        }
        Command::Region { command } => region(client, command, &mut p).await,
        Command::Store { command } => store(client, command, &mut p).await,
        Command::Cluster {
            command: ClusterCommand::Health { down_after },
        } => cluster_health(client, *down_after, &mut p).await,
        Command::Cluster {
            command: ClusterCommand::Stats { interval },
        } => cluster_stats(client, *interval, &mut p).await,
        Command::Operator {
            command: OperatorCommand::List,
        } => operators(client, &mut p).await,
        Command::Pd { command } => pd::run(client, command, &mut p).await,
        Command::Txn { command } => {
            txn::run(&client::txn::TxnClient::new(client), command, read, &mut p).await
        }
        Command::Cert { command } => cert::run(command, &mut p),
        Command::Shell => Err(Error::InvalidArgument(
            "the shell cannot start a shell".into(),
        )),
    }
}

/// Runs a command that needs no cluster (`cert`), if `cmd` is one; output to `out`,
/// diagnostics to `err`.
pub fn run_offline(
    cmd: &Command,
    output: Output,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Option<Result<i32>> {
    let mut p = Printer {
        json: output == Output::Json,
        out,
        err,
    };
    match cmd {
        Command::Cert { command } => Some(cert::run(command, &mut p)),
        _ => None,
    }
}

/// The TLS flags of kvctl and kv-bench.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// The CA certificate (PEM) the cluster's certificates are signed by: dial with TLS.
    #[arg(long, global = true, env = "FLOTILLA_CA_PATH")]
    pub ca_path: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for a cluster that asks for one.
    #[arg(long, global = true, env = "FLOTILLA_CERT_PATH")]
    pub cert_path: Option<std::path::PathBuf>,
    /// The private key (PEM) of --cert-path.
    #[arg(long, global = true, env = "FLOTILLA_KEY_PATH")]
    pub key_path: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The TLS settings the flags give (plaintext without --ca-path); status ports are
    /// scraped with them too.
    pub fn security(&self) -> std::result::Result<Arc<util::security::Security>, String> {
        let cfg = util::security::SecurityConfig {
            ca_path: self.ca_path.clone().unwrap_or_default(),
            cert_path: self.cert_path.clone().unwrap_or_default(),
            key_path: self.key_path.clone().unwrap_or_default(),
            ..Default::default()
        };
        let security =
            util::security::Security::new(&cfg).map_err(|e| format!("TLS flags: {e}"))?;
        crate::scrape::set_security(security.clone());
        Ok(security)
    }
}

impl Cli {
    /// What to dial the cluster with: TLS from --ca-path, --cert-path and --key-path,
    /// and the cluster secret from --cluster-secret-file.
    pub fn credentials(&self) -> std::result::Result<util::security::Credentials, String> {
        let secret = match self.cluster_secret_file.as_deref() {
            Some(f) => Some(util::secret::ClusterSecret::load(f).map_err(|e| e.to_string())?),
            None => None,
        };
        let security = self.tls.security()?;
        users::configure(users::Options {
            password_stdin: self.password_stdin,
            token_file: self.token_file.clone(),
        });
        let token = users::token_file().and_then(|f| users::saved_token(&f));
        Ok(util::security::Credentials {
            security,
            secret,
            token,
        })
    }

    /// [`Cli::credentials`], with a token from logging in as `--user` if given.
    pub async fn credentials_logged_in(
        &self,
    ) -> std::result::Result<util::security::Credentials, String> {
        let mut creds = self.credentials()?;
        let Some(user) = &self.login_as else {
            return Ok(creds);
        };
        let password = users::read_password("password: ").map_err(|e| e.to_string())?;
        let anonymous = Client::connect_within(
            &endpoints(&self.pd),
            self.connect_timeout.min(self.timeout),
            self.timeout,
            util::security::Credentials {
                token: None,
                ..creds.clone()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let (token, _) = users::login(anonymous.pd(), user, &password)
            .await
            .map_err(|e| format!("logging in as {user}: {e}"))?;
        creds.token = Some(token);
        Ok(creds)
    }
}

async fn get(client: &Client, key: &str, read: ReadMode, p: &mut Printer<'_>) -> Result<i32> {
    match client.get_with(key.as_bytes(), read).await? {
        Some(v) if p.json => p.line(json!({"key": key, "value": show_key(&v)})),
        Some(v) => p.bytes(&[&v, b"\n"]),
        None => {
            if p.json {
                p.line(json!({"key": key, "value": null}));
            }
            p.diagnostic("not found");
            return Ok(1);
        }
    }
    Ok(0)
}

async fn scan(
    client: &Client,
    start: &[u8],
    end: &[u8],
    limit: usize,
    read: ReadMode,
    p: &mut Printer<'_>,
) -> Result<i32> {
    print_pairs(&client.scan_with(start, end, limit, read).await?, p);
    Ok(0)
}

/// Pairs as KEY<TAB>VALUE lines (or a JSON array).
fn print_pairs(pairs: &[(Vec<u8>, Vec<u8>)], p: &mut Printer<'_>) {
    if p.json {
        let v: Vec<_> = pairs
            .iter()
            .map(|(k, v)| json!({"key": show_key(k), "value": show_key(v)}))
            .collect();
        p.line(serde_json::Value::Array(v));
    } else {
        for (k, v) in pairs {
            p.bytes(&[k, b"\t", v, b"\n"]);
        }
    }
}

async fn cas(client: &Client, absent: bool, args: &[String], p: &mut Printer<'_>) -> Result<i32> {
    let (key, expected, new) = match (absent, args) {
        (true, [k, n]) => (k, None, n),
        (false, [k, e, n]) => (k, Some(e.as_bytes()), n),
        (true, _) => return Err(Error::InvalidArgument("with --absent give KEY NEW".into())),
        (false, _) => {
            return Err(Error::InvalidArgument(
                "give KEY EXPECTED NEW (or --absent KEY NEW)".into(),
            ))
        }
    };
    let res = client
        .compare_and_swap(key.as_bytes(), expected, new.as_bytes())
        .await?;
    let prev = res.previous.as_deref().map(show_key);
    if p.json {
        p.line(json!({"succeed": res.succeed, "previous": prev}));
    } else if res.succeed {
        p.line("OK");
    } else {
        p.line(format!(
            "FAILED\tprevious={}",
            prev.unwrap_or_else(|| "<none>".into())
        ));
    }
    Ok(if res.succeed { 0 } else { 1 })
}

async fn split(client: &Client, id: u64, keys: &[String], p: &mut Printer<'_>) -> Result<i32> {
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    let regions = client.split_region(id, &keys).await?;
    let routes: Vec<pd_client::RegionRoute> = regions
        .into_iter()
        .map(|region| pd_client::RegionRoute {
            region,
            ..Default::default()
        })
        .collect();
    print_regions(&routes, p);
    Ok(0)
}

fn print_regions(routes: &[pd_client::RegionRoute], p: &mut Printer<'_>) {
    if p.json {
        p.line(serde_json::Value::Array(
            routes.iter().map(region_json).collect(),
        ));
    } else {
        let isolation = if routes.iter().any(|r| r.isolation.is_some()) {
            "\tISOLATION(!: below isolation-level)"
        } else {
            ""
        };
        p.line(format!(
            "ID\tSTART\tEND\tCONF_VER/VERSION\tLEADER_STORE\tPEERS(id@store:role){isolation}"
        ));
        for r in routes {
            p.line(region_line(r));
        }
    }
}

async fn region(client: &Client, command: &RegionCommand, p: &mut Printer<'_>) -> Result<i32> {
    match command {
        RegionCommand::List => print_regions(&client.regions().await?, p),
        RegionCommand::TransferLeader { id, to } => {
            client.pd().transfer_leader(*id, *to).await?;
            let deadline = std::time::Instant::now() + client.timeout();
            loop {
                let route = client.pd().get_region_by_id(*id).await?;
                if route
                    .leader
                    .as_ref()
                    .is_some_and(|l| l.get_store_id() == *to)
                {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        elapsed: client.timeout(),
                        last: format!("the leader of region {id} has not moved to store {to} yet"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            p.ok();
        }
        RegionCommand::Split { id, keys } => return split(client, *id, keys, p).await,
        RegionCommand::Check { id } => {
            let check = client.check_region(*id).await?;
            for (store, hash) in &check.replicas {
                let hash = hash.map_or("no answer".to_string(), |h| format!("{h:016x}"));
                p.line(format!("store {store}\t{hash}"));
            }
            if !check.consistent() {
                p.line(format!(
                    "region {id}: replicas DIFFER at index {}",
                    check.index
                ));
                return Ok(1);
            }
            p.line(format!(
                "region {id}: {} replicas agree at index {}",
                check.replicas.len(),
                check.index
            ));
        }
        RegionCommand::Move { id, from, to } => {
            client.pd().move_peer(*id, *from, *to).await?;
            wait_for_move(client, *id, *from, *to, p).await?;
            p.ok();
        }
        RegionCommand::Show { id, key } => {
            let route = match (id, key) {
                (Some(id), _) => client.pd().get_region_by_id(*id).await?,
                (None, Some(k)) => client.pd().get_region(k.as_bytes()).await?,
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "give a region id or --key KEY".into(),
                    ))
                }
            };
            if p.json {
                p.line(region_json(&route));
            } else {
                p.line(region_line(&route));
            }
        }
    }
    Ok(0)
}

/// Waits until region `id` has a replica on `to` and none on `from`, printing the
/// move operator's current step whenever it changes.
async fn wait_for_move(
    client: &Client,
    id: u64,
    from: u64,
    to: u64,
    p: &mut Printer<'_>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut last_step = String::new();
    loop {
        let route = client.pd().get_region_by_id(id).await?;
        let stores: Vec<u64> = route
            .region
            .get_peers()
            .iter()
            .map(|p| p.get_store_id())
            .collect();
        if stores.contains(&to) && !stores.contains(&from) {
            return Ok(());
        }
        let step = client
            .pd()
            .get_operators()
            .await?
            .into_iter()
            // Only this command's operator: a balancer's or a repair's steps are not the move.
            .find(|o| o.region_id == id && o.get_kind() == "move-peer")
            .map(|o| o.get_step().to_string())
            .unwrap_or_default();
        if !step.is_empty() && step != last_step {
            p.diagnostic(&format!(
                "region {id}: {step} ({:.1}s)",
                started.elapsed().as_secs_f64()
            ));
            last_step = step;
        }
        if started.elapsed() >= client.timeout() {
            return Err(Error::Timeout {
                elapsed: started.elapsed(),
                last: format!("region {id} is still moving from store {from} to store {to}; see `kvctl operator list`"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn store(client: &Client, command: &StoreCommand, p: &mut Printer<'_>) -> Result<i32> {
    if let StoreCommand::Delete { id, wait } = command {
        client.pd().delete_store(*id).await?;
        if *wait {
            wait_for_decommission(client, *id, p).await?;
        }
        p.ok();
        return Ok(0);
    }
    let stores = client.stores().await?;
    let labels = |s: &metapb::Store| {
        let kv: Vec<String> = s
            .get_labels()
            .iter()
            .map(|l| format!("{}={}", l.get_key(), l.get_value()))
            .collect();
        if kv.is_empty() {
            "-".to_string()
        } else {
            kv.join(",")
        }
    };
    let store_json = |(s, st): &(metapb::Store, proto::pdpb::StoreStats)| {
        let labels: serde_json::Map<String, serde_json::Value> = s
            .get_labels()
            .iter()
            .map(|l| (l.get_key().to_string(), json!(l.get_value())))
            .collect();
        json!({
            "id": s.get_id(), "address": s.get_address(), "labels": labels,
            "state": health::state_of(s, st, health::DOWN_AFTER),
            "region_count": st.region_count, "leader_count": st.leader_count,
            "capacity_bytes": st.capacity, "used_bytes": st.used_size,
            "available_bytes": st.available,
            "last_heartbeat_unix_nanos": s.last_heartbeat,
        })
    };
    if let StoreCommand::Show { id } = command {
        let Some(one) = stores.iter().find(|(s, _)| s.get_id() == *id) else {
            return Err(Error::InvalidArgument(format!("store {id} does not exist")));
        };
        if p.json {
            p.line(store_json(one));
        } else {
            let (s, st) = one;
            let gib = |b: u64| format!("{:.2} GiB ({b} bytes)", b as f64 / (1u64 << 30) as f64);
            p.line(format!("id:              {}", s.get_id()));
            p.line(format!("address:         {}", s.get_address()));
            p.line(format!("labels:          {}", labels(s)));
            p.line(format!(
                "state:           {}",
                health::state_of(s, st, health::DOWN_AFTER)
            ));
            p.line(format!("capacity:        {}", gib(st.capacity)));
            p.line(format!("used:            {}", gib(st.used_size)));
            p.line(format!("available:       {}", gib(st.available)));
            p.line(format!("regions:         {}", st.region_count));
            p.line(format!("leaders:         {}", st.leader_count));
            p.line(format!(
                "last heartbeat:  {}",
                heartbeat_age(s.last_heartbeat)
            ));
        }
        return Ok(0);
    }
    if p.json {
        p.line(serde_json::Value::Array(
            stores.iter().map(store_json).collect(),
        ));
    } else {
        p.line("ID\tADDRESS\tLABELS\tSTATE\tREGIONS\tLEADERS\tLAST_HEARTBEAT");
        for (s, st) in &stores {
            p.line(format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                s.get_id(),
                s.get_address(),
                labels(s),
                health::state_of(s, st, health::DOWN_AFTER),
                st.region_count,
                st.leader_count,
                heartbeat_age(s.last_heartbeat)
            ));
        }
    }
    Ok(0)
}

/// Follows a decommission until the store is tombstone, showing how many of its
/// replicas have moved. Gives up when nothing moved for the client's timeout.
async fn wait_for_decommission(client: &Client, id: u64, p: &mut Printer<'_>) -> Result<()> {
    let (_, stats) = client.pd().get_store(id).await?;
    let total = u64::from(stats.region_count);
    let mut progress = Progress::new(format!("replicas moved off store {id}"), total);
    let mut left = total;
    let mut last_change = std::time::Instant::now();
    loop {
        let (store, stats) = client.pd().get_store(id).await?;
        if store.get_state() == metapb::StoreState::Tombstone {
            progress.set(total, p.err);
            progress.finish();
            return Ok(());
        }
        let now_left = u64::from(stats.region_count);
        if now_left != left {
            left = now_left;
            last_change = std::time::Instant::now();
        }
        progress.set(total.saturating_sub(left), p.err);
        if last_change.elapsed() >= client.timeout() {
            progress.finish();
            return Err(Error::Timeout {
                elapsed: last_change.elapsed(),
                last: format!(
                    "store {id} still holds {left} replicas and none moved lately; see `kvctl operator list`"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn cluster_health(client: &Client, down_after: Duration, p: &mut Printer<'_>) -> Result<i32> {
    let pd = client.pd();
    let stores = client.stores().await?;
    let regions = client.regions().await?;
    let cluster = pd.get_cluster_config().await?;
    let operators = pd.get_operators().await?;
    let pd_members = pd::members(client)
        .await?
        .into_iter()
        .map(|m| health::PdMemberHealth {
            state: m.probe.word(),
            name: m.name,
            leader: m.leader,
        })
        .collect();
    // Every store probed at once, each within a second.
    let probes = stores
        .iter()
        .filter(|(s, _)| s.get_state() != metapb::StoreState::Tombstone)
        .map(|(s, _)| async move {
            let probe = client
                .probe_store(s.get_address(), pd::PROBE_TIMEOUT)
                .await
                .map(|()| Duration::ZERO);
            pd::Probe::of(probe).is_down().then_some(s.get_id())
        });
    let unanswered: Vec<u64> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let observed = health::Observed {
        stores: &stores,
        regions: &regions,
        cluster: &cluster,
        operators: &operators,
        unanswered: &unanswered,
        pd_members,
    };
    let h = health::judge(observed, down_after);
    if p.json {
        p.line(serde_json::to_value(&h).expect("the report serializes"));
    } else {
        p.line(format!("pd:         reachable, cluster {}", cluster.id));
        for l in health::text(&h) {
            p.line(l);
        }
    }
    Ok(h.verdict as i32)
}

async fn cluster_stats(client: &Client, interval: Duration, p: &mut Printer<'_>) -> Result<i32> {
    let stores = client.pd().get_all_stores(true).await?;
    let addrs: Vec<String> = stores
        .iter()
        .map(|s| s.get_status_address().to_string())
        .collect();
    let before = crate::scrape::scrape_stores(&addrs).await;
    tokio::time::sleep(interval).await;
    let after = crate::scrape::scrape_stores(&addrs).await;
    if after.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no store's status address answered ({}); stores announce it with \
             --advertise-status-addr",
            addrs.join(", ")
        )));
    }
    let regions = client.regions().await?.len();
    let replicas = client.pd().get_cluster_config().await?.max_peer_count;
    let mut s = stats::compute(regions, stores.len(), replicas, &before, &after, interval);
    for addr in &addrs {
        if let Some(v) = crate::scrape::http_get(addr, "/status")
            .await
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            s.stores_detail
                .push(stats::StoreStats::from_status(addr, &v));
        }
    }
    if p.json {
        p.line(serde_json::to_value(&s).expect("the report serializes"));
    } else {
        for l in stats::text(&s) {
            p.line(l);
        }
    }
    Ok(0)
}

async fn operators(client: &Client, p: &mut Printer<'_>) -> Result<i32> {
    let ops = client.pd().get_operators().await?;
    if p.json {
        let v: Vec<_> = ops
            .iter()
            .map(|o| json!({"region_id": o.region_id, "kind": o.get_kind(), "step": o.get_step(), "age_ms": o.age_ms}))
            .collect();
        p.line(serde_json::Value::Array(v));
    } else {
        p.line("REGION\tKIND\tSTEP\tAGE");
        for o in ops {
            p.line(format!(
                "{}\t{}\t{}\t{:.1}s",
                o.region_id,
                o.get_kind(),
                o.get_step(),
                o.age_ms as f64 / 1000.0
            ));
        }
    }
    Ok(0)
}

fn heartbeat_age(unix_nanos: i64) -> String {
    if unix_nanos == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    format!("{:.1}s ago", (now - unix_nanos).max(0) as f64 / 1e9)
}
