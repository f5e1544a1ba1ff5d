//! Loading and checking TOML config files. Every config struct in Flotilla uses
//! kebab-case keys, denies unknown keys (a typo must not be silently ignored), has
//! defaults for every key and a `validate()` that names the offending key.
//!
//! A leaf: depends on no other Flotilla crate, and on nothing async, gRPC or HTTP, so
//! that every crate (raftstore included) may use it.

use std::path::Path;

use serde::de::DeserializeOwned;

use std::path::PathBuf;

/// Why a config file cannot be used.
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
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A config structure that can check its own values.
pub trait Validate {
    /// Checks values that parse but make no sense; the error names the key.
    fn validate(&self) -> Result<()>;
}

/// Reads, parses and validates a config file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: T = toml::from_str(&text).map_err(|source| Error::ParseConfig {
        path: path.to_path_buf(),
        source,
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// Fails with a message naming `key` unless `ok`.
pub fn ensure(ok: bool, key: &str, why: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!("{key}: {why}")))
    }
}

/// Parses a human-readable duration such as "10s" or "250ms".
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}
