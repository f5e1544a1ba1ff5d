//! kv-bench: load a Flotilla (or etcd) cluster and report throughput, latency and, for
//! Flotilla, fsyncs per write (see `kv-bench --help`).

use std::process::ExitCode;

use clap::Parser;
use cli::bench::{check, run, BenchArgs, Output};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    if args.check_only {
        return match check(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kv-bench: {e}");
                ExitCode::from(2)
            }
        };
    }
    util::core_log::core_logs_to_stderr(&Default::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let result = rt.block_on(run(&args));
    // Connections and client tasks end with the runtime, before the process exits.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(report) if args.output == Output::Json => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("reports serialize")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kv-bench: {e}");
            ExitCode::from(2)
        }
    }
}
