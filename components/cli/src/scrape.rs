//! The stores' status HTTP servers: `/metrics` as text, fetched with a deadline.

use std::time::Duration;

/// GETs `path` from the status server at `addr`; `None` if it does not answer in 5 s.
pub(crate) async fn http_get(addr: &str, path: &str) -> Option<String> {
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), hyper::Client::new().get(uri))
        .await
        .ok()?
        .ok()?;
    let body = hyper::body::to_bytes(resp.into_body()).await.ok()?;
    String::from_utf8(body.to_vec()).ok()
}

/// Every store's `/metrics`, parsed, by status address; stores that do not answer are
/// left out.
pub(crate) async fn scrape_stores(
    addrs: &[String],
) -> std::collections::BTreeMap<String, prometheus_parse::Scrape> {
    let mut out = std::collections::BTreeMap::new();
    for a in addrs {
        let Some(text) = http_get(a, "/metrics").await else {
            continue;
        };
        let lines = text.lines().map(|l| Ok(l.to_string()));
        if let Ok(s) = prometheus_parse::Scrape::parse(lines) {
            out.insert(a.clone(), s);
        }
    }
    out
}
