//! pd-server: the Flotilla placement driver.

#[path = "../log_flags.rs"]
mod log_flags;
#[path = "../tls_flags.rs"]
mod tls_flags;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use conf::Validate;
use pd::{FileConfig, PdServer};
use util::shutdown::Shutdown;

/// Flags override the config file.
#[derive(Parser)]
#[command(name = "pd-server", version, about = "The Flotilla placement driver")]
struct Args {
    /// TOML config file (see etc/pd-server.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This member's name in its PD group.
    #[arg(long)]
    name: Option<String>,
    /// gRPC address (clients, stores and the other PD members).
    #[arg(long)]
    addr: Option<String>,
    /// The members of a new PD group: NAME=HOST:PORT,... (read at the first start only).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Join a running PD group through these members' addresses (HOST:PORT,...); needs
    /// --cluster-secret-file, copied from a member.
    #[arg(long)]
    join: Option<String>,
    /// Address announced to clients, if not --addr.
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Voters per region.
    #[arg(long)]
    max_replicas: Option<usize>,
    /// How long a store may be silent before its replicas are replaced (e.g. 30s).
    #[arg(long, value_parser = conf::parse_duration)]
    max_store_down_time: Option<Duration>,
    /// Status HTTP address (/metrics, /status).
    #[arg(long)]
    status_addr: Option<String>,
    /// The cluster secret stores must present; created there if missing (default:
    /// <data-dir>/cluster-secret). Give every store the same file.
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// Store label keys naming failure domains, top first (e.g. zone,rack,host).
    #[arg(long, value_delimiter = ',')]
    location_labels: Option<Vec<String>>,
    /// The location label two replicas of a region must not share (e.g. zone).
    #[arg(long)]
    isolation_level: Option<String>,
    /// Zones (values of the first location label) where leaders should be.
    #[arg(long, value_delimiter = ',')]
    leader_zones: Option<Vec<String>>,
    #[command(flatten)]
    tls: tls_flags::TlsFlags,
    #[command(flatten)]
    log: log_flags::LogFlags,
}

fn config(args: &Args) -> conf::Result<FileConfig> {
    let mut cfg = match &args.config {
        Some(path) => conf::load(path)?,
        None => FileConfig::default(),
    };
    let pd = &mut cfg.pd;
    if let Some(v) = &args.name {
        pd.name = v.clone();
    }
    if let Some(v) = &args.initial_cluster {
        pd.initial_cluster = v.clone();
    }
    if let Some(v) = &args.join {
        pd.join = v.clone();
    }
    if let Some(v) = &args.addr {
        pd.addr = v.clone();
    }
    if let Some(v) = &args.advertise_addr {
        pd.advertise_addr = v.clone();
    }
    if let Some(v) = &args.data_dir {
        pd.data_dir = v.clone();
    }
    if let Some(v) = args.max_replicas {
        pd.max_replicas = v;
    }
    if let Some(v) = args.max_store_down_time {
        pd.max_store_down_time = v;
    }
    if let Some(v) = &args.status_addr {
        cfg.status_addr = v.clone();
    }
    if let Some(v) = &args.cluster_secret_file {
        cfg.pd.cluster_secret_file = v.clone();
    }
    if let Some(v) = &args.location_labels {
        cfg.replication.location_labels = v.iter().map(|l| l.trim().to_string()).collect();
    }
    if let Some(v) = &args.isolation_level {
        cfg.replication.isolation_level = v.clone();
    }
    if let Some(v) = &args.leader_zones {
        cfg.replication.leader_zones = v.iter().map(|z| z.trim().to_string()).collect();
    }
    args.tls.apply(&mut cfg.security);
    args.log.apply(&mut cfg.log);
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    util::panic::abort_on_panic();
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pd-server: {e}");
            return ExitCode::from(2);
        }
    };
    util::core_log::core_logs_to_stderr(&cfg.log);
    let logger = util::logger::new(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    rt.block_on(async {
        let server = match PdServer::start(cfg.pd_config(), logger.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pd-server: {e}");
                return ExitCode::from(1);
            }
        };
        let shutdown = Shutdown::default();
        shutdown.trigger_on_signals();
        if !cfg.status_addr.is_empty() {
            let source = server.status_source();
            let status: status::StatusFn = Arc::new(move || match source() {
                Some(s) => serde_json::json!({
                    "name": s.name,
                    "is_leader": s.is_leader,
                    "leader": s.leader,
                    "term": s.term,
                    "cluster_id": s.cluster_id,
                    "bootstrapped": s.bootstrapped,
                    "stores": s.stores,
                }),
                None => serde_json::json!({ "stopping": true }),
            });
            let addr = match cfg.status_addr.parse() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("pd-server: status-addr: {e}");
                    return ExitCode::from(2);
                }
            };
            let security = match util::security::Security::for_server(&cfg.security) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pd-server: {e}");
                    return ExitCode::from(2);
                }
            };
            let served = status::serve(addr, status, security, shutdown.clone(), logger.clone());
            if let Err(e) = served.await {
                eprintln!("pd-server: {e}");
                return ExitCode::from(1);
            }
        }
        shutdown.wait().await;
        server.shutdown();
        ExitCode::SUCCESS
    })
}
