//! Shared plumbing for every Flotilla process: config loading, logging, the status HTTP
//! server (`/metrics`, `/status`), and graceful shutdown.
//!
//! Must not depend on any other Flotilla crate: everything else may depend on this one.

#![deny(missing_docs)]

pub mod config;
pub mod dir_lock;
mod error;
pub mod grpc;
pub mod logger;
pub mod panic;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod status;
pub mod wire;

pub use error::{Error, Result};
