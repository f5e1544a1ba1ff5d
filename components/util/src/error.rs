/// Errors of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data directory cannot be used (another process holds it).
    #[error("{0}")]
    DataDir(String),
    /// The cluster secret is missing or unreadable.
    #[error("{0}")]
    Secret(String),
    /// A TLS setting or file is wrong.
    #[error("{0}")]
    Tls(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
