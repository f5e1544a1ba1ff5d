use std::path::PathBuf;

/// Errors of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A config file is not valid TOML for the expected structure.
    #[error("invalid config file {path}: {source}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: toml::de::Error,
    },
    /// A config value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A data directory cannot be used (another process holds it).
    #[error("{0}")]
    DataDir(String),
    /// The cluster secret is missing or unreadable.
    #[error("{0}")]
    Secret(String),
    /// The status server could not start.
    #[error("status server on {addr}: {source}")]
    Status {
        /// The address it tried to bind.
        addr: String,
        /// Why.
        source: hyper::Error,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
