//! kv-bench: load a Flotilla cluster and report throughput, latency and fsyncs per write
//! (see `kv-bench --help`).

use std::process::ExitCode;

use clap::Parser;
use cli::bench::{run, BenchArgs};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    util::grpc::quiet_core_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    match rt.block_on(run(&args)) {
        Ok(report) if args.json => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("reports serialize")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kv-bench: {e}");
            ExitCode::from(2)
        }
    }
}
