//! `kvctl cluster stats`: what the cluster holds and how busy it is, from PD's routing
//! table and two scrapes of every store's `/metrics` an interval apart: keys and bytes
//! (RocksDB's estimates, divided by the replica count), regions, and per request type
//! the rate and the 99th percentile latency over the interval.

use std::{collections::BTreeMap, time::Duration};

use prometheus_parse::{Scrape, Value};
use serde::Serialize;

/// One request type's load over the interval.
#[derive(Debug, Serialize)]
pub struct OpStats {
    /// The RPC (raw_get, raw_put, ...).
    pub rpc: String,
    /// Requests per second, every store together.
    pub ops_per_sec: f64,
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

/// The smallest bucket bound under which 99% of the interval's requests fell, and
/// whether that is the open-ended last bucket (the p99 is above every bound).
fn p99(buckets: &BTreeMap<u64, f64>) -> Option<(f64, bool)> {
    let total = buckets.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let (bound, _) = buckets.iter().find(|(_, n)| **n >= 0.99 * total)?;
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
            let p = hist.get(rpc).and_then(p99);
            OpStats {
                rpc: rpc.clone(),
                ops_per_sec: n / interval.as_secs_f64(),
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
        "RPC\tOPS/S\tP99".to_string(),
    ];
    for o in &s.ops {
        let over = if o.p99_above_largest_bucket { ">" } else { "" };
        let p99 = o
            .p99_seconds
            .map_or("-".to_string(), |p| format!("{over}{:.1}ms", p * 1000.0));
        lines.push(format!("{}\t{:.1}\t{p99}", o.rpc, o.ops_per_sec));
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
    }
}
