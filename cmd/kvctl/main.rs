//! kvctl: the Flotilla command-line client (see `kvctl --help`).

use std::process::ExitCode;

use clap::Parser;
use cli::kvctl::{endpoints, run, run_offline, shell, Cli, Command};
use client::Client;

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::core_log::core_logs_to_stderr(&Default::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let code = rt.block_on(async {
        let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
        if let Some(res) = run_offline(&cli.command, cli.output, out, err) {
            return res.unwrap_or_else(|e| {
                eprintln!("error: {e}");
                2
            });
        }
        let creds = match cli.credentials_logged_in().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        let connect = cli.connect_timeout.min(cli.timeout);
        let client =
            match Client::connect_within(&endpoints(&cli.pd), connect, cli.timeout, creds).await {
                Ok(c) => c.with_read_mode(cli.read).with_zone(cli.zone.clone()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
        let res = match &cli.command {
            Command::Shell => shell(client, cli.output).await,
            cmd => {
                run(
                    cmd,
                    cli.output,
                    cli.read,
                    &client,
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                )
                .await
            }
        };
        res.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            // A lost transaction is an answer, not a failure to get one.
            if matches!(
                e,
                client::Error::Conflict { .. }
                    | client::Error::Aborted(_)
                    | client::Error::AlreadyExists(_)
            ) {
                1
            } else {
                2
            }
        })
    });
    ExitCode::from(code as u8)
}
