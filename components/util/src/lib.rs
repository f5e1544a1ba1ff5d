//! Plumbing shared by Flotilla's processes and its client library: the clock, logging (the
//! gRPC core's lines included), gRPC channel settings, retry with backoff, the cluster
//! secret, TLS, the data-directory lock, graceful shutdown, the panic hook, the rule for
//! store labels, and the wire conventions messages cannot carry.
//!
//! Must not depend on any other Flotilla crate, nor on HTTP or command-line crates: the
//! client library links it. Config files are `conf`'s, the status server `status`'s.

pub mod clock;
pub mod core_log;
pub mod dir_lock;
mod error;
pub mod grpc;
pub mod labels;
pub mod logger;
pub mod panic;
pub mod retry;
pub mod secret;
pub mod security;
pub mod shutdown;
pub mod wire;

pub use error::{Error, Result};
