//! TLS for status ports (rustls): the server side every process serves `/metrics` with,
//! and the client side kvctl scrapes with. Both are built from the PEM files of
//! `[security]` (`util::security::Pem`), the same files the gRPC ports use.

use std::{io::Cursor, sync::Arc};

use tokio_rustls::rustls::{
    self,
    server::{AllowAnyAnonymousOrAuthenticatedClient, AllowAnyAuthenticatedClient},
    Certificate, PrivateKey, RootCertStore,
};
use util::security::Pem;

fn certs(pem: &[u8], what: &str) -> Result<Vec<Certificate>, String> {
    let certs = rustls_pemfile::certs(&mut Cursor::new(pem)).map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    Ok(certs.into_iter().map(Certificate).collect())
}

fn key(pem: &[u8]) -> Result<PrivateKey, String> {
    let mut reader = Cursor::new(pem);
    loop {
        match rustls_pemfile::read_one(&mut reader).map_err(|e| format!("key: {e}"))? {
            Some(rustls_pemfile::Item::PKCS8Key(k))
            | Some(rustls_pemfile::Item::RSAKey(k))
            | Some(rustls_pemfile::Item::ECKey(k)) => return Ok(PrivateKey(k)),
            Some(_) => continue,
            None => return Err("key: no private key".into()),
        }
    }
}

fn roots(ca: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca, "CA")? {
        roots.add(&c).map_err(|e| format!("CA: {e}"))?;
    }
    Ok(roots)
}

/// A server's TLS settings: its certificate, and peers' certificates checked against the
/// CA (required with `require_client_cert`).
pub fn server_config(
    pem: &Pem,
    require_client_cert: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let roots = roots(&pem.ca)?;
    let verifier = if require_client_cert {
        AllowAnyAuthenticatedClient::new(roots).boxed()
    } else {
        AllowAnyAnonymousOrAuthenticatedClient::new(roots).boxed()
    };
    let cfg = rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pem.cert, "certificate")?, key(&pem.key)?)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(cfg))
}

/// A client's TLS settings: servers checked against the CA, this process's certificate
/// presented.
pub fn client_config(pem: &Pem) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder()
        .with_safe_defaults()
        .with_root_certificates(roots(&pem.ca)?);
    let cfg = if pem.cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder
            .with_client_auth_cert(certs(&pem.cert, "certificate")?, key(&pem.key)?)
            .map_err(|e| e.to_string())?
    };
    Ok(Arc::new(cfg))
}
