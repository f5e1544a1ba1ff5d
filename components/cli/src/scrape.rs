//! Status HTTP servers as kvctl, kv-bench and the tests read them: a GET with a deadline,
//! and Prometheus text parsed by prometheus-parse. The one HTTP client and metrics parser
//! of the project.

use std::{
    collections::BTreeSet,
    sync::{Arc, OnceLock},
    time::Duration,
};

use hyper::{Body, Request};
use prometheus_parse::{Scrape, Value};
use tokio::time::timeout;
use tokio_rustls::{rustls::ServerName, TlsConnector};
use util::security::Security;

/// How long a request may wait for the answer, and then for its body.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings status ports are read with: the process's one identity (kvctl's
/// flags), set once before the first request.
static SECURITY: OnceLock<Arc<Security>> = OnceLock::new();

/// Reads status ports over TLS with `security` from now on (when it says TLS).
pub fn set_security(security: Arc<Security>) {
    let _ = SECURITY.set(security);
}

/// GETs `path` from the HTTP server at `addr` (HTTPS once [`set_security`] turned TLS
/// on) and returns the body whatever the status code; `None` if it does not answer
/// within the timeout.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    if let Some(security) = SECURITY.get().filter(|s| s.tls()) {
        return https_get(security, addr, path).await;
    }
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().ok()?;
    let resp = timeout(TIMEOUT, hyper::Client::new().get(uri))
        .await
        .ok()?
        .ok()?;
    body_text(resp).await
}

/// GETs `path` over HTTPS with `security`'s files (see [`http_get`]).
pub async fn https_get(security: &Security, addr: &str, path: &str) -> Option<String> {
    let cfg = status::tls::client_config(&*security.pem().ok()?).ok()?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = ServerName::try_from(host.trim_matches(['[', ']'])).ok()?;
    let tcp = timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let tls = timeout(TIMEOUT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::handshake(tls).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Body::empty())
        .ok()?;
    let resp = timeout(TIMEOUT, sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    body_text(resp).await
}

async fn body_text(resp: hyper::Response<Body>) -> Option<String> {
    let body = timeout(TIMEOUT, hyper::body::to_bytes(resp.into_body()))
        .await
        .ok()?
        .ok()?;
    String::from_utf8(body.to_vec()).ok()
}

/// Prometheus text, parsed; `None` if it is not Prometheus text.
pub fn parse(text: &str) -> Option<Scrape> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()
}

/// A counter's or gauge's value, summed over its label sets (0 if absent).
pub fn sum(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .sum()
}

/// The series names, as PromQL names them (a histogram's buckets as `<name>_bucket`; its
/// `_sum` and `_count` are series of their own).
pub fn series(scrape: &Scrape) -> BTreeSet<String> {
    scrape
        .samples
        .iter()
        .map(|s| match s.value {
            Value::Histogram(_) => format!("{}_bucket", s.metric),
            _ => s.metric.clone(),
        })
        .collect()
}

/// Every store's `/metrics`, parsed, by status address; stores that do not answer are
/// left out.
pub(crate) async fn scrape_stores(addrs: &[String]) -> std::collections::BTreeMap<String, Scrape> {
    let mut out = std::collections::BTreeMap::new();
    for a in addrs {
        let Some(text) = http_get(a, "/metrics").await else {
            continue;
        };
        if let Some(s) = parse(&text) {
            out.insert(a.clone(), s);
        }
    }
    out
}
