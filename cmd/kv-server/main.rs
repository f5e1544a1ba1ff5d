//! kv-server: a Flotilla store. Without `--pd` it also runs an embedded PD, so that one
//! command with no flags gives a working single node.

#[path = "../log_flags.rs"]
mod log_flags;
#[path = "../tls_flags.rs"]
mod tls_flags;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use conf::Validate;
use node::{Config, Node};
use util::shutdown::Shutdown;

/// Flags override the config file.
#[derive(Parser)]
#[command(name = "kv-server", version, about = "A Flotilla storage node")]
struct Args {
    /// TOML config file (see etc/kv-server.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC address for clients and other stores.
    #[arg(long)]
    addr: Option<String>,
    /// Address announced to PD and other stores, if not --addr.
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Status HTTP address (/metrics, /status).
    #[arg(long)]
    status_addr: Option<String>,
    /// Status address announced to PD, if not --status-addr.
    #[arg(long)]
    advertise_status_addr: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PD addresses, comma-separated; none starts an embedded PD.
    #[arg(long)]
    pd: Option<String>,
    /// The cluster secret (the file pd-server created: <pd data-dir>/cluster-secret).
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// Where this store sits, KEY=VALUE,... (e.g. zone=z1,rack=r1,host=h1): PD keeps a
    /// region's replicas in distinct values of its location labels.
    #[arg(long)]
    labels: Option<String>,
    #[command(flatten)]
    tls: tls_flags::TlsFlags,
    #[command(flatten)]
    log: log_flags::LogFlags,
}

fn config(args: &Args) -> conf::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => conf::load(path)?,
        None => Config::default(),
    };
    let s = &mut cfg.server;
    if let Some(v) = &args.addr {
        s.addr = v.clone();
    }
    if let Some(v) = &args.advertise_addr {
        s.advertise_addr = v.clone();
    }
    if let Some(v) = &args.status_addr {
        s.status_addr = v.clone();
    }
    if let Some(v) = &args.advertise_status_addr {
        s.advertise_status_addr = v.clone();
    }
    if let Some(v) = &args.data_dir {
        s.data_dir = v.clone();
    }
    if let Some(v) = &args.cluster_secret_file {
        cfg.security.cluster_secret_file = v.clone();
    }
    if let Some(v) = &args.pd {
        s.pd_endpoints = v
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
    }
    if let Some(v) = &args.labels {
        cfg.server.labels = node::parse_labels(v)?;
    }
    args.tls.apply(&mut cfg.security);
    args.log.apply(&mut cfg.log);
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    util::panic::abort_on_panic();
    // Process tests set fail points through FAILPOINTS (TiKV's convention, e.g.
    // `raw_cas_answer_lost=1*return(3000)`); with it unset, every fail point is inert.
    let _failpoints = std::env::var_os("FAILPOINTS").map(|_| fail::FailScenario::setup());
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kv-server: {e}");
            return ExitCode::from(2);
        }
    };
    util::core_log::core_logs_to_stderr(&cfg.log);
    // A test's way to crash the process as a gRPC core assertion would.
    fail::fail_point!("grpc_core_assertion", |_| {
        util::core_log::fail_like_a_core_assertion("the fail point grpc_core_assertion")
    });
    let logger = util::logger::new(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kv-server")
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    rt.block_on(async {
        let node = match Node::start(cfg, logger.clone()).await {
            Ok(n) => n,
            Err(e) => {
                slog::error!(logger, "cannot start"; "err" => %e);
                eprintln!("kv-server: {e}");
                return ExitCode::from(1);
            }
        };
        let shutdown = Shutdown::default();
        shutdown.trigger_on_signals();
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = node.retired() => {}
        }
        node.stop().await;
        ExitCode::SUCCESS
    })
}
