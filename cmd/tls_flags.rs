//! The TLS flags kv-server and pd-server share; they override `[security]`.

use std::path::PathBuf;

use util::security::SecurityConfig;

/// TLS settings from the command line.
#[derive(clap::Args)]
pub struct TlsFlags {
    /// The CA certificate (PEM) every peer's certificate must be signed by; with
    /// --cert-path and --key-path, every port and channel uses TLS.
    #[arg(long)]
    ca_path: Option<PathBuf>,
    /// This process's certificate (PEM).
    #[arg(long)]
    cert_path: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long)]
    key_path: Option<PathBuf>,
    /// Only peers whose certificate's common name is listed may call (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cert_allowed_cn: Option<Vec<String>>,
}

impl TlsFlags {
    /// Writes the flags given into `cfg`.
    pub fn apply(&self, cfg: &mut SecurityConfig) {
        if let Some(v) = &self.ca_path {
            cfg.ca_path = v.clone();
        }
        if let Some(v) = &self.cert_path {
            cfg.cert_path = v.clone();
        }
        if let Some(v) = &self.key_path {
            cfg.key_path = v.clone();
        }
        if let Some(v) = &self.cert_allowed_cn {
            cfg.cert_allowed_cn = v.iter().map(|c| c.trim().to_string()).collect();
        }
    }
}
