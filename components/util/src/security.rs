//! TLS for every gRPC port: the `[security]` section both servers read, the credentials
//! a process dials and listens with, and who the peer of a call is.
//!
//! With `ca-path`, `cert-path` and `key-path` set (TiKV's names), every channel a process
//! opens is TLS and every port it listens on accepts only TLS. A peer that presents a
//! certificate must present one signed by the CA; with `require-client-cert` (the
//! default) every peer must present one (mutual TLS). A certificate whose common name is
//! in `cluster-cn` proves its holder is a process of this cluster, in place of the cluster
//! secret. The files are read again when they change, so certificates rotate without a
//! restart: servers pick new ones at the next connection, dialers at the next channel.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use grpcio::{
    CertificateRequestType, ChannelBuilder, ChannelCredentialsBuilder, CheckResult, RpcContext,
    RpcStatus, RpcStatusCode, ServerChecker, ServerCredentials, ServerCredentialsBuilder,
    ServerCredentialsFetcher,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{secret::ClusterSecret, Error, Result};

/// The common names `kvctl cert init` gives the PD and store certificates.
pub const DEFAULT_CLUSTER_CN: [&str; 2] = ["flotilla-pd", "flotilla-store"];

/// The `[security]` section of kv-server and pd-server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SecurityConfig {
    /// The cluster secret (see `util::secret`). Without TLS: required by a store with an
    /// external PD (pd-server's `<data-dir>/cluster-secret`); empty means
    /// `<data-dir>/cluster-secret`, created at first start by pd-server and by a store
    /// with the embedded PD. With TLS, cluster certificates take its place.
    pub cluster_secret_file: PathBuf,
    /// The CA certificate (PEM) every peer's certificate must be signed by.
    pub ca_path: PathBuf,
    /// This process's certificate (PEM), presented to every peer.
    pub cert_path: PathBuf,
    /// This process's private key (PEM).
    pub key_path: PathBuf,
    /// If not empty, only peers whose certificate's common name is listed may call.
    pub cert_allowed_cn: Vec<String>,
    /// Common names of the certificates of this cluster's processes: a call carrying
    /// one may send Raft messages, report to PD and change placement.
    pub cluster_cn: Vec<String>,
    /// Every peer must present a certificate (mutual TLS). Off, a client may connect
    /// with the CA alone and then proves itself with a user's token: turn auth on first
    /// (`kvctl auth enable`), or such clients read and write every key.
    pub require_client_cert: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            cluster_secret_file: PathBuf::new(),
            ca_path: PathBuf::new(),
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            cert_allowed_cn: Vec::new(),
            cluster_cn: DEFAULT_CLUSTER_CN.iter().map(|s| s.to_string()).collect(),
            require_client_cert: true,
        }
    }
}

impl SecurityConfig {
    /// Whether the TLS files are set.
    pub fn tls(&self) -> bool {
        !self.ca_path.as_os_str().is_empty()
    }

    /// The first problem with the section for a client (kvctl, kv-bench), as (key, why):
    /// a CA alone is enough to check servers; a certificate needs its key and a CA.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let (cert, key) = (!empty(&self.cert_path), !empty(&self.key_path));
        if cert != key {
            return Some((
                "security.cert-path",
                "cert-path and key-path are set together or not at all".into(),
            ));
        }
        if cert && !self.tls() {
            return Some((
                "security.ca-path",
                "a certificate needs the CA that checks the other side's (ca-path)".into(),
            ));
        }
        None
    }

    /// The first problem with the section for a server, as (key, why).
    pub fn server_problem(&self) -> Option<(&'static str, String)> {
        if let Some(p) = self.problem() {
            return Some(p);
        }
        if !self.tls() {
            return None;
        }
        if empty(&self.cert_path) {
            return Some((
                "security.cert-path",
                "a server with ca-path needs its own certificate and key too".into(),
            ));
        }
        if self.cluster_cn.is_empty() {
            return Some((
                "security.cluster-cn",
                "must name the common names of the cluster's certificates".into(),
            ));
        }
        let missing: Vec<&str> = self
            .cluster_cn
            .iter()
            .filter(|cn| !self.cert_allowed_cn.is_empty() && !self.cert_allowed_cn.contains(cn))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Some((
                "security.cert-allowed-cn",
                format!(
                    "must list the cluster's own common names too (missing: {})",
                    missing.join(", ")
                ),
            ));
        }
        None
    }
}

fn empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// The PEM files as last read.
#[derive(Clone)]
pub struct Pem {
    /// The CA certificate.
    pub ca: Vec<u8>,
    /// This process's certificate chain; empty for a client without one.
    pub cert: Vec<u8>,
    /// Its private key; empty for a client without a certificate.
    pub key: Vec<u8>,
}

/// What identifies a version of the files: modification time, length, inode and change
/// time (a copy that keeps the modification time still changes the others).
type Stamp = Vec<(Option<SystemTime>, u64, u64, i64)>;

fn stamp(paths: &[&Path]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => (
                m.modified().ok(),
                m.len(),
                m.ino(),
                m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ),
            Err(_) => (None, 0, 0, 0),
        })
        .collect()
}

fn read_pem(path: &Path, what: &str, marker: &str) -> Result<Vec<u8>> {
    if empty(path) {
        return Ok(Vec::new());
    }
    let bytes =
        std::fs::read(path).map_err(|e| Error::Tls(format!("{what} {}: {e}", path.display())))?;
    // gRPC takes PEM as a C string: a NUL byte (a file padded with zeros after a crash,
    // DER appended) would end it early, or abort the process.
    if bytes.contains(&0) {
        return Err(Error::Tls(format!(
            "{what} {}: not PEM (holds a NUL byte)",
            path.display()
        )));
    }
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(Error::Tls(format!(
            "{what} {}: not PEM (no \"{marker}\")",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A process's TLS settings and the files they name, re-read when they change.
pub struct Security {
    cfg: SecurityConfig,
    current: Mutex<Option<(Stamp, Arc<Pem>)>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls())
            .finish()
    }
}

impl Security {
    /// Plaintext: channels and ports without TLS.
    pub fn plaintext() -> Arc<Security> {
        Arc::new(Security {
            cfg: SecurityConfig::default(),
            current: Mutex::new(None),
        })
    }

    /// A client's settings from `cfg`, with the files read once to report a bad one at
    /// start.
    pub fn new(cfg: &SecurityConfig) -> Result<Arc<Security>> {
        Self::checked(cfg, cfg.problem())
    }

    /// A server's settings from `cfg` (it needs a certificate with a CA), with the files
    /// read once to report a bad one at start.
    pub fn for_server(cfg: &SecurityConfig) -> Result<Arc<Security>> {
        Self::checked(cfg, cfg.server_problem())
    }

    fn checked(
        cfg: &SecurityConfig,
        problem: Option<(&'static str, String)>,
    ) -> Result<Arc<Security>> {
        if let Some((key, why)) = problem {
            return Err(Error::Tls(format!("{key}: {why}")));
        }
        let security = Arc::new(Security {
            cfg: cfg.clone(),
            current: Mutex::new(None),
        });
        if security.tls() {
            security.pem()?;
        }
        Ok(security)
    }

    /// Whether channels and ports use TLS.
    pub fn tls(&self) -> bool {
        self.cfg.tls()
    }

    /// The settings.
    pub fn config(&self) -> &SecurityConfig {
        &self.cfg
    }

    fn paths(&self) -> [&Path; 3] {
        [&self.cfg.ca_path, &self.cfg.cert_path, &self.cfg.key_path]
    }

    /// The files as they are now, and whether they changed since the last call. A file
    /// being rewritten (unreadable or not PEM for a moment) keeps the last good version.
    pub fn pem_changed(&self) -> Result<(Arc<Pem>, bool)> {
        let now = stamp(&self.paths());
        let mut current = self.current.lock();
        if let Some((seen, pem)) = current.as_ref() {
            if *seen == now {
                return Ok((pem.clone(), false));
            }
        }
        let read = (|| {
            Ok(Pem {
                ca: read_pem(&self.cfg.ca_path, "security.ca-path", "CERTIFICATE")?,
                cert: read_pem(&self.cfg.cert_path, "security.cert-path", "CERTIFICATE")?,
                key: read_pem(&self.cfg.key_path, "security.key-path", "PRIVATE KEY")?,
            })
        })();
        match (read, current.as_ref()) {
            (Ok(pem), _) => {
                let pem = Arc::new(pem);
                *current = Some((now, pem.clone()));
                Ok((pem, true))
            }
            (Err(_), Some((_, pem))) => Ok((pem.clone(), false)),
            (Err(e), None) => Err(e),
        }
    }

    /// The files as they are now.
    pub fn pem(&self) -> Result<Arc<Pem>> {
        self.pem_changed().map(|(pem, _)| pem)
    }

    /// Opens a channel to `addr` from `builder`: TLS with this process's certificate
    /// when TLS is on (the files as they are now), plaintext otherwise.
    pub fn connect(&self, builder: ChannelBuilder, addr: &str) -> grpcio::Channel {
        if !self.tls() {
            return builder.connect(addr);
        }
        // Read at start (`Security::new`) and kept since: a file broken later leaves the
        // last good version in use.
        let pem = self
            .pem()
            .expect("the files were read when the settings were made, and are kept");
        let b = ChannelCredentialsBuilder::new().root_cert(pem.ca.clone());
        let creds = match pem.cert.is_empty() {
            true => b.build(),
            false => b.cert(pem.cert.clone(), pem.key.clone()).build(),
        };
        builder.set_credentials(creds).connect(addr)
    }

    /// Listens on `addr`: TLS (certificates re-read on change) when TLS is on.
    pub fn listen(&self, server: &mut grpcio::Server, addr: &str) -> grpcio::Result<u16> {
        let creds = if self.tls() {
            let request = if self.cfg.require_client_cert {
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify
            } else {
                CertificateRequestType::RequestClientCertificateAndVerify
            };
            // The fetcher keeps its own copy, so its first call reads (and builds).
            let own = Security {
                cfg: self.cfg.clone(),
                current: Mutex::new(None),
            };
            ServerCredentials::with_fetcher(Box::new(Fetcher(Arc::new(own), request)), request)
        } else {
            ServerCredentials::insecure()
        };
        server.add_listening_port(addr, creds)
    }

    /// A check run before every call: with `cert-allowed-cn`, the peer's certificate
    /// must carry one of the names.
    pub fn checker(&self) -> CnChecker {
        CnChecker {
            allowed: Arc::new(if self.tls() {
                self.cfg.cert_allowed_cn.clone()
            } else {
                Vec::new()
            }),
        }
    }

    /// Whether the peer of a call presented a certificate of this cluster's processes.
    pub fn is_cluster_peer(&self, ctx: &RpcContext) -> bool {
        self.tls() && peer_cn(ctx).is_some_and(|cn| self.cfg.cluster_cn.contains(&cn))
    }

    /// Whether a call comes from a process of this cluster: it carries `secret`, or a
    /// cluster certificate.
    pub fn is_cluster_call(&self, ctx: &RpcContext, secret: &ClusterSecret) -> bool {
        secret.carried_by(ctx.request_headers().iter()) || self.is_cluster_peer(ctx)
    }
}

/// The gRPC header a user's token travels in, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// Everything a call offers as proof of who makes it, taken from its context so that it
/// can be judged off the gRPC thread against the auth state.
#[derive(Clone, Default)]
pub struct Proof {
    /// It carries the cluster secret or a cluster certificate.
    pub cluster: bool,
    /// The token in its `authorization` header, if any (any string: checked later).
    pub token: Option<String>,
    /// The common name of its verified client certificate, if any.
    pub cn: Option<String>,
    /// The peer's address without its port ("127.0.0.1"), for rate limits.
    pub peer: String,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Proof")
            .field("cluster", &self.cluster)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("cn", &self.cn)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Security {
    /// What `ctx` offers as proof (see [`Proof`]).
    pub fn proof(&self, ctx: &RpcContext, secret: &ClusterSecret) -> Proof {
        let token = ctx
            .request_headers()
            .iter()
            .find(|(k, _)| *k == AUTHORIZATION)
            .map(|(_, v)| {
                let v = String::from_utf8_lossy(v);
                v.strip_prefix("Bearer ").unwrap_or(&v).trim().to_string()
            })
            .filter(|t| !t.is_empty());
        let peer = ctx.peer();
        let peer = peer
            .strip_prefix("ipv4:")
            .or_else(|| peer.strip_prefix("ipv6:"))
            .unwrap_or(&peer);
        let peer = peer.rsplit_once(':').map_or(peer, |(host, _)| host);
        Proof {
            cluster: self.is_cluster_call(ctx, secret),
            token,
            cn: if self.tls() { peer_cn(ctx) } else { None },
            peer: peer.to_string(),
        }
    }
}

/// The common name of the verified certificate the peer of a call presented.
pub fn peer_cn(ctx: &RpcContext) -> Option<String> {
    let auth = ctx.auth_context()?;
    let cn = auth
        .into_iter()
        .find(|p| p.name() == "x509_common_name")
        .and_then(|p| p.value_str().ok().map(str::to_string));
    cn
}

/// Hands gRPC the certificates at start and again whenever the files changed (it asks
/// before every new connection).
struct Fetcher(Arc<Security>, CertificateRequestType);

impl ServerCredentialsFetcher for Fetcher {
    fn fetch(
        &self,
    ) -> std::result::Result<Option<ServerCredentialsBuilder>, Box<dyn std::error::Error>> {
        let (pem, changed) = self.0.pem_changed()?;
        if !changed {
            return Ok(None);
        }
        Ok(Some(
            ServerCredentialsBuilder::new()
                .root_cert(pem.ca.clone(), self.1)
                .add_cert(pem.cert.clone(), pem.key.clone()),
        ))
    }
}

/// Refuses calls whose certificate's common name is not in `cert-allowed-cn`.
#[derive(Clone)]
pub struct CnChecker {
    allowed: Arc<Vec<String>>,
}

impl ServerChecker for CnChecker {
    fn check(&mut self, ctx: &RpcContext) -> CheckResult {
        if self.allowed.is_empty() {
            return CheckResult::Continue;
        }
        match peer_cn(ctx) {
            Some(cn) if self.allowed.contains(&cn) => CheckResult::Continue,
            cn => CheckResult::Abort(RpcStatus::with_message(
                RpcStatusCode::UNAUTHENTICATED,
                format!(
                    "certificate common name {} is not in this cluster's security.cert-allowed-cn",
                    cn.as_deref()
                        .map_or("(none)".to_string(), |c| format!("{c:?}"))
                ),
            )),
        }
    }

    fn box_clone(&self) -> Box<dyn ServerChecker> {
        Box::new(self.clone())
    }
}

/// What a process or client presents to those it calls: its certificate (through the
/// channels it opens) and, where it holds one, the cluster secret or a user's token (in
/// call headers).
#[derive(Clone)]
pub struct Credentials {
    /// The TLS settings channels are opened with.
    pub security: Arc<Security>,
    /// The cluster secret, sent with every call; clients have none.
    pub secret: Option<ClusterSecret>,
    /// A user's token (from a login), sent with every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("security", &self.security)
            .field("secret", &self.secret)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            security: Security::plaintext(),
            secret: None,
            token: None,
        }
    }
}

impl Credentials {
    /// Plaintext channels and `secret`.
    pub fn with_secret(secret: Option<ClusterSecret>) -> Credentials {
        Credentials {
            secret,
            ..Credentials::default()
        }
    }

    /// Opens a channel to `addr` (see [`Security::connect`]).
    pub fn connect(&self, builder: ChannelBuilder, addr: &str) -> grpcio::Channel {
        self.security.connect(builder, addr)
    }

    /// The headers every call carries, if any.
    pub fn headers(&self) -> Option<grpcio::Metadata> {
        if self.secret.is_none() && self.token.is_none() {
            return None;
        }
        let mut b = grpcio::MetadataBuilder::new();
        if let Some(s) = self.secret.as_ref().filter(|s| !s.as_str().is_empty()) {
            b.add_str(crate::secret::HEADER, s.as_str())
                .expect("the secret is a valid ASCII header value");
        }
        if let Some(t) = &self.token {
            // A token that is no valid header value is sent as none; the server then
            // says authentication is required.
            let _ = b.add_str(AUTHORIZATION, &format!("Bearer {t}"));
        }
        Some(b.build())
    }

    /// `opt` with the headers every call carries.
    pub fn call_option(&self, opt: grpcio::CallOption) -> grpcio::CallOption {
        match self.headers() {
            Some(h) => opt.headers(h),
            None => opt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ca: &str, cert: &str, key: &str) -> SecurityConfig {
        SecurityConfig {
            ca_path: ca.into(),
            cert_path: cert.into(),
            key_path: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn settings_are_checked_by_name() {
        assert!(cfg("", "", "").server_problem().is_none(), "plaintext");
        assert!(
            cfg("ca", "", "").problem().is_none(),
            "a client with a CA alone"
        );
        let (key, _) = cfg("ca", "", "").server_problem().unwrap();
        assert_eq!(key, "security.cert-path", "a server needs a certificate");
        assert_eq!(
            cfg("ca", "c", "").problem().unwrap().0,
            "security.cert-path"
        );
        assert_eq!(cfg("", "c", "k").problem().unwrap().0, "security.ca-path");
        let mut c = cfg("ca", "c", "k");
        assert!(c.server_problem().is_none());
        c.require_client_cert = false;
        assert!(c.server_problem().is_none(), "tokens prove clients then");
        c.require_client_cert = true;
        c.cert_allowed_cn = vec!["root".into(), "flotilla-pd".into()];
        let (key, why) = c.server_problem().unwrap();
        assert_eq!(key, "security.cert-allowed-cn");
        assert!(why.contains("flotilla-store"), "{why}");
        c.cluster_cn.clear();
        assert_eq!(c.server_problem().unwrap().0, "security.cluster-cn");
    }

    #[test]
    fn files_are_reread_on_change_and_a_bad_rewrite_keeps_the_last_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f).display().to_string();
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(path("ca.pem"), cert).unwrap();
        std::fs::write(path("c.pem"), cert).unwrap();
        std::fs::write(path("k.pem"), "-----BEGIN PRIVATE KEY-----\nA\n").unwrap();
        let s = Security::for_server(&cfg(&path("ca.pem"), &path("c.pem"), &path("k.pem")))
            .expect("valid PEM files");
        let (first, _) = s.pem_changed().unwrap();
        let (_, changed) = s.pem_changed().unwrap();
        assert!(!changed, "nothing changed");
        let longer = format!("{cert}{cert}");
        std::fs::write(path("c.pem"), &longer).unwrap();
        let (second, changed) = s.pem_changed().unwrap();
        assert!(changed && second.cert == longer.as_bytes());
        // Half-written (not PEM, or zero-padded): the last good version stays.
        std::fs::write(path("c.pem"), format!("{cert}\0\0")).unwrap();
        assert!(!s.pem_changed().unwrap().1, "a NUL byte is not PEM");
        std::fs::write(path("c.pem"), "garbage").unwrap();
        let (kept, changed) = s.pem_changed().unwrap();
        assert!(!changed && Arc::ptr_eq(&kept, &second) && !Arc::ptr_eq(&kept, &first));
        std::fs::remove_file(path("ca.pem")).unwrap();
        let missing = Security::for_server(&cfg(&path("ca.pem"), &path("c.pem"), &path("k.pem")));
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("security.ca-path"));
    }
}
