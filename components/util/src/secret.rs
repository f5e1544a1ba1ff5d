//! The cluster secret: what proves that a request comes from a process of this cluster.
//! Until TLS certificates exist, store-to-store streams (Raft messages, snapshots) and the
//! calls through which stores report to PD carry it in a gRPC header, and are refused
//! without it: a client that reaches a store's or PD's port cannot forge a Raft message,
//! a snapshot or a region report.
//!
//! pd-server creates it at its first start (`<data-dir>/cluster-secret`, readable only by
//! its owner); stores are given the same file (`security.cluster-secret-file`). A
//! single-node kv-server with its embedded PD creates its own.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// The gRPC header that carries the secret.
pub const HEADER: &str = "x-flotilla-cluster-secret";

/// The file a process creates its secret in when none is configured.
pub const FILE_NAME: &str = "cluster-secret";

/// A cluster's shared secret.
#[derive(Clone)]
pub struct ClusterSecret(String);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

fn err(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Secret(format!("cluster secret {}: {why}", path.display()))
}

impl ClusterSecret {
    /// Reads the secret in `path`.
    pub fn load(path: &Path) -> Result<ClusterSecret> {
        let text = fs::read_to_string(path).map_err(|e| err(path, e))?;
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(err(path, "must hold at least 16 characters"));
        }
        Ok(ClusterSecret(secret.to_string()))
    }

    /// Reads the secret in `path`, creating a random one there first if there is none
    /// and `fresh` says the data it guards is new. A secret missing beside old data is an
    /// error: a new one would lock every store of the cluster out.
    pub fn load_or_create(path: &Path, fresh: bool) -> Result<ClusterSecret> {
        if !path.exists() {
            if !fresh {
                return Err(err(
                    path,
                    "missing, but the data directory is not new: restore the file (every \
                     store of the cluster has a copy)",
                ));
            }
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            write_private(path, &secret).map_err(|e| err(path, e))?;
        }
        Self::load(path)
    }

    /// No secret: a process whose cluster proves itself with TLS certificates
    /// (`util::security`) sends none and matches none.
    pub fn none() -> ClusterSecret {
        ClusterSecret(String::new())
    }

    /// The secret as sent in [`HEADER`].
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// gRPC call metadata carrying this secret in [`HEADER`].
    pub fn headers(&self) -> grpcio::Metadata {
        let mut b = grpcio::MetadataBuilder::with_capacity(1);
        if !self.0.is_empty() {
            b.add_str(HEADER, &self.0)
                .expect("the secret is a valid ASCII header value");
        }
        b.build()
    }

    /// Writes `secret` (received from another member of the cluster) to `path`, readable
    /// only by its owner, and reads it back.
    pub fn save(path: &Path, secret: &str) -> Result<ClusterSecret> {
        write_private(path, secret).map_err(|e| err(path, e))?;
        Self::load(path)
    }

    /// Whether request headers (name, value) carry this secret in [`HEADER`].
    pub fn carried_by<'a>(&self, mut headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> bool {
        headers.any(|(k, v)| k == HEADER && self.matches(v))
    }

    /// Whether a header value is this secret (compared in constant time).
    pub fn matches(&self, value: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        !ours.is_empty()
            && value.len() == ours.len()
            && value
                .iter()
                .zip(ours)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Where a process keeps its secret: the configured file, or one in `data_dir`.
pub fn path_in(configured: &Path, data_dir: &Path) -> PathBuf {
    if configured.as_os_str().is_empty() {
        data_dir.join(FILE_NAME)
    } else {
        configured.to_path_buf()
    }
}

fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    // The name must survive a power loss too.
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back_and_compared_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert!(
            ClusterSecret::load_or_create(&path, false).is_err(),
            "not beside old data"
        );
        let a = ClusterSecret::load_or_create(&path, true).unwrap();
        let b = ClusterSecret::load_or_create(&path, false).unwrap();
        assert_eq!(a.as_str(), b.as_str());
        assert!(a.matches(b.as_str().as_bytes()));
        assert!(!a.matches(b""));
        assert!(!a.matches(&b.as_str().as_bytes()[1..]));
        std::fs::write(dir.path().join("short"), "abc").unwrap();
        assert!(ClusterSecret::load(&dir.path().join("short")).is_err());
        assert!(ClusterSecret::load(&dir.path().join("missing")).is_err());
        assert!(
            !ClusterSecret::none().matches(b""),
            "no secret matches nothing"
        );
    }
}
