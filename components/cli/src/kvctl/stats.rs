//! `kvctl cluster stats` (the shell's STATS): what the cluster holds and how busy it is,
//! from PD's routing table and two scrapes of every store's `/metrics` an interval
//! apart: keys and bytes (RocksDB's estimates, divided by the replica count), regions,
//! and per request type the count, rate, mean and 95th and 99th percentile latency over
//! the interval; then, from each store's `/status`, its open connections and the Raft
//! term and commit index of the regions it leads.

use std::{collections::BTreeMap, time::Duration};

use prometheus_parse::{Scrape, Value};
use serde::Serialize;

/// One request type's load over the interval.
#[derive(Debug, Serialize)]
pub struct OpStats {
    /// The RPC (raw_get, raw_put, ...).
    pub rpc: String,
    /// Requests over the interval, every store together.
    pub count: u64,
    /// Requests per second, every store together.
    pub ops_per_sec: f64,
    /// The mean latency in seconds; `None` without requests.
    pub mean_seconds: Option<f64>,
    /// The 95th percentile latency in seconds (upper bound of its bucket).
    pub p95_seconds: Option<f64>,
    /// The 99th percentile latency in seconds (upper bound of its histogram bucket);
    /// `None` without requests.
    pub p99_seconds: Option<f64>,
    /// The p99 is above the largest bucket bound (`p99_seconds` is that bound).
    pub p99_above_largest_bucket: bool,
}

/// What `kvctl cluster stats` reports.
#[derive(Debug, Serialize)]
pub struct ClusterStats {
    /// Regions PD routes.
    pub regions: usize,
    /// Stores whose metrics answered, of all that are not tombstone.
    pub stores_scraped: usize,
    /// Stores that are not tombstone.
    pub stores: usize,
    /// Keys in the raw column family, estimated.
    pub keys: u64,
    /// Bytes on disk of the raw column family, estimated.
    pub bytes: u64,
    /// Per request type.
    pub ops: Vec<OpStats>,
    /// Per store, from its `/status`.
    pub stores_detail: Vec<StoreStats>,
}

/// One store as its `/status` describes it.
#[derive(Debug, Default, Serialize)]
pub struct StoreStats {
    /// Its status address.
    pub address: String,
    /// TCP connections open to its gRPC port.
    pub open_connections: Option<u64>,
    /// Regions it leads.
    pub leaders: u64,
    /// (region id, term, commit index) of regions it leads (the first 64 by id).
    pub leading: Vec<(u64, u64, u64)>,
}

impl StoreStats {
    /// Reads a store's `/status` document.
    pub fn from_status(address: &str, status: &serde_json::Value) -> StoreStats {
        let leading = status["leading"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let n = |f: &str| r[f].as_u64().unwrap_or(0);
                (n("region_id"), n("term"), n("commit_index"))
            })
            .collect();
        StoreStats {
            address: address.to_string(),
            open_connections: status["open_connections"].as_u64(),
            leaders: status["leaders"].as_u64().unwrap_or(0),
            leading,
        }
    }
}

fn label<'a>(s: &'a prometheus_parse::Sample, name: &str) -> &'a str {
    s.labels.get(name).unwrap_or("")
}

/// A gauge summed over stores for one column family.
fn cf_sum(scrapes: &BTreeMap<String, Scrape>, metric: &str, cf: &str) -> f64 {
    scrapes
        .values()
        .flat_map(|s| &s.samples)
        .filter(|s| s.metric == metric && label(s, "cf") == cf)
        .map(|s| match s.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Requests answered per RPC by one store, summed over outcomes.
fn requests(scrape: &Scrape) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in &scrape.samples {
        if s.metric == "flotilla_server_requests_total" {
            if let Value::Counter(v) | Value::Untyped(v) = s.value {
                *out.entry(label(s, "rpc").to_string()).or_default() += v;
            }
        }
    }
    out
}

/// One store's total latency (seconds) per RPC.
fn latency_sums(scrape: &Scrape) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in &scrape.samples {
        if s.metric == "flotilla_server_request_seconds_sum" {
            if let Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v) = s.value {
                *out.entry(label(s, "rpc").to_string()).or_default() += v;
            }
        }
    }
    out
}

/// One store's latency histogram per RPC: cumulative count by bucket bound (keyed by
/// the bound's bits: bounds are positive, so their bit patterns sort as the numbers do).
fn latency_buckets(scrape: &Scrape) -> BTreeMap<String, BTreeMap<u64, f64>> {
    let mut out: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for s in &scrape.samples {
        if s.metric != "flotilla_server_request_seconds" {
            continue;
        }
        if let Value::Histogram(buckets) = &s.value {
            let per = out.entry(label(s, "rpc").to_string()).or_default();
            for b in buckets {
                *per.entry(b.less_than.to_bits()).or_default() += b.count;
            }
        }
    }
    out
}

/// What a counter gained between two scrapes of one store (0 if it went backwards: the
/// store restarted in between).
fn gained(before: Option<f64>, after: f64) -> f64 {
    (after - before.unwrap_or(0.0)).max(0.0)
}

/// The smallest bucket bound under which the fraction `q` of the interval's requests
/// fell, and whether that is the open-ended last bucket (the quantile is above every
/// bound).
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<(f64, bool)> {
    let total = buckets.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let (bound, _) = buckets.iter().find(|(_, n)| **n >= q * total)?;
    let bound = f64::from_bits(*bound);
    if bound.is_finite() {
        return Some((bound, false));
    }
    let largest = buckets
        .keys()
        .map(|b| f64::from_bits(*b))
        .filter(|b| b.is_finite())
        .fold(0.0, f64::max);
    Some((largest, true))
}

/// Judges two scrapes of each store `interval` apart; only stores in both count.
pub fn compute(
    regions: usize,
    stores: usize,
    replicas: u32,
    before: &BTreeMap<String, Scrape>,
    after: &BTreeMap<String, Scrape>,
    interval: Duration,
) -> ClusterStats {
    let mut count: BTreeMap<String, f64> = BTreeMap::new();
    let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
    let mut hist: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    let both: Vec<(&Scrape, &Scrape)> = after
        .iter()
        .filter_map(|(addr, a)| before.get(addr).map(|b| (b, a)))
        .collect();
    for (b, a) in &both {
        let (c0, c1) = (requests(b), requests(a));
        for (rpc, n) in c1 {
            *count.entry(rpc.clone()).or_default() += gained(c0.get(&rpc).copied(), n);
        }
        let (s0, s1) = (latency_sums(b), latency_sums(a));
        for (rpc, t) in s1 {
            *seconds.entry(rpc.clone()).or_default() += gained(s0.get(&rpc).copied(), t);
        }
        let (h0, h1) = (latency_buckets(b), latency_buckets(a));
        for (rpc, buckets) in h1 {
            let per = hist.entry(rpc.clone()).or_default();
            for (bound, n) in buckets {
                let was = h0.get(&rpc).and_then(|h| h.get(&bound)).copied();
                *per.entry(bound).or_default() += gained(was, n);
            }
        }
    }
    let ops = count
        .iter()
        .map(|(rpc, n)| {
            let p = hist.get(rpc).and_then(|h| quantile(h, 0.99));
            let mean = seconds.get(rpc).filter(|_| *n > 0.0).map(|t| t / n);
            OpStats {
                rpc: rpc.clone(),
                count: *n as u64,
                ops_per_sec: n / interval.as_secs_f64(),
                mean_seconds: mean,
                p95_seconds: hist
                    .get(rpc)
                    .and_then(|h| quantile(h, 0.95))
                    .map(|(b, _)| b),
                p99_seconds: p.map(|(b, _)| b),
                p99_above_largest_bucket: p.is_some_and(|(_, over)| over),
            }
        })
        .collect();
    let replicas = f64::from(replicas.max(1));
    ClusterStats {
        regions,
        stores_scraped: both.len(),
        stores,
        keys: (cf_sum(after, "flotilla_engine_keys", "default") / replicas) as u64,
        bytes: (cf_sum(after, "flotilla_engine_sst_bytes", "default") / replicas) as u64,
        ops,
        stores_detail: vec![],
    }
}

/// The report as text lines.
pub fn text(s: &ClusterStats) -> Vec<String> {
    let mut lines = vec![
        format!("regions:        {}", s.regions),
        format!(
            "stores:         {} (metrics from {})",
            s.stores, s.stores_scraped
        ),
        format!("keys (est.):    {}", s.keys),
        format!(
            "bytes (est.):   {:.1} MiB",
            s.bytes as f64 / (1u64 << 20) as f64
        ),
        "RPC\tCOUNT\tOPS/S\tMEAN\tP95\tP99".to_string(),
    ];
    let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.1}ms", s * 1000.0));
    for o in &s.ops {
        let over = if o.p99_above_largest_bucket { ">" } else { "" };
        let p99 = o
            .p99_seconds
            .map_or("-".to_string(), |p| format!("{over}{:.1}ms", p * 1000.0));
        lines.push(format!(
            "{}\t{}\t{:.1}\t{}\t{}\t{p99}",
            o.rpc,
            o.count,
            o.ops_per_sec,
            ms(o.mean_seconds),
            ms(o.p95_seconds)
        ));
    }
    for st in &s.stores_detail {
        let conns = st
            .open_connections
            .map_or("?".to_string(), |c| c.to_string());
        let regions: Vec<String> = st
            .leading
            .iter()
            .map(|(r, t, c)| format!("{r}:{t}/{c}"))
            .collect();
        lines.push(format!(
            "store {}: {conns} open connections, leads {} (region:term/commit) {}",
            st.address,
            st.leaders,
            regions.join(" ")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    const HEAD: &str = "# TYPE flotilla_server_requests_total counter\n\
        # TYPE flotilla_server_request_seconds histogram\n\
        # TYPE flotilla_engine_keys gauge\n";

    #[test]
    fn rates_and_p99_come_from_the_difference_of_two_scrapes() {
        let before = scrape(&format!(
            "{HEAD}flotilla_server_requests_total{{rpc=\"raw_put\",outcome=\"ok\"}} 100\n\
             flotilla_server_request_seconds_bucket{{rpc=\"raw_put\",le=\"0.001\"}} 90\n\
             flotilla_server_request_seconds_bucket{{rpc=\"raw_put\",le=\"0.01\"}} 100\n\
             flotilla_server_request_seconds_bucket{{rpc=\"raw_put\",le=\"+Inf\"}} 100\n\
             flotilla_server_request_seconds_sum{{rpc=\"raw_put\"}} 0.1\n\
             flotilla_server_request_seconds_count{{rpc=\"raw_put\"}} 100\n\
             flotilla_engine_keys{{cf=\"default\"}} 30\n"
        ));
        // 200 more requests in 2 s: 100 fast, 98 below 10 ms, 2 slower.
        let after = scrape(&format!(
            "{HEAD}flotilla_server_requests_total{{rpc=\"raw_put\",outcome=\"ok\"}} 300\n\
             flotilla_server_request_seconds_bucket{{rpc=\"raw_put\",le=\"0.001\"}} 190\n\
             flotilla_server_request_seconds_bucket{{rpc=\"raw_put\",le=\"0.01\"}} 298\n\
             flotilla_server_request_seconds_bucket{{rpc=\"raw_put\",le=\"+Inf\"}} 300\n\
             flotilla_server_request_seconds_sum{{rpc=\"raw_put\"}} 1\n\
             flotilla_server_request_seconds_count{{rpc=\"raw_put\"}} 300\n\
             flotilla_engine_keys{{cf=\"default\"}} 90\n"
        ));
        let at = |s: Scrape| BTreeMap::from([("s1".to_string(), s)]);
        let s = compute(4, 1, 3, &at(before), &at(after), Duration::from_secs(2));
        assert_eq!(s.keys, 30);
        assert_eq!(s.ops.len(), 1);
        assert!((s.ops[0].ops_per_sec - 100.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.ops[0].p99_seconds, Some(0.01), "{s:?}");
        assert_eq!(s.ops[0].p95_seconds, Some(0.01), "{s:?}");
        assert_eq!(s.ops[0].count, 200);
        let mean = s.ops[0].mean_seconds.expect("requests");
        assert!(
            (mean - 0.0045).abs() < 1e-9,
            "0.9 s over 200 requests: {mean}"
        );
    }
}
