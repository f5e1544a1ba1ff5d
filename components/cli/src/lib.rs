//! Flotilla's command-line tools over the client library: `kvctl`'s commands and shell
//! ([`kvctl`]) and `kv-bench`'s workloads ([`bench`]), with what only they need
//! (argument parsing, line editing, progress bars, latency histograms, scraping the
//! stores' `/metrics`).
//!
//! Depends on `client` and the wire types; nothing of the store or PD servers. The client
//! library must never depend on this crate: its users would link the command-line
//! crates.

pub mod bench;
pub mod kvctl;
mod progress;
pub mod scrape;
