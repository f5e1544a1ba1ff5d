//! `kvctl benchmark N [PREFIX] [VALUE_SIZE]` (the shell's BENCHMARK): a short load for a
//! first look at a cluster's speed from where kvctl runs. For measurements, kv-bench.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

use client::{Client, Error, Result};

use super::Printer;

/// Most operations per phase.
const MAX_OPS: u64 = 1_000_000;
/// Largest value.
const MAX_VALUE: usize = 1 << 20;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;
/// How long the keys written live: the load leaves nothing behind for long.
const KEY_TTL: Duration = Duration::from_secs(600);

/// Runs the put phase, then the get phase, and prints each one's figures.
pub(super) async fn run(
    client: &Client,
    n: u64,
    prefix: &str,
    value_size: usize,
    p: &mut Printer<'_>,
) -> Result<i32> {
    if n == 0 || n > MAX_OPS {
        return Err(Error::InvalidArgument(format!(
            "benchmark N must be 1 to {MAX_OPS}"
        )));
    }
    if value_size > MAX_VALUE {
        return Err(Error::InvalidArgument(format!(
            "benchmark VALUE_SIZE must be at most {MAX_VALUE} bytes"
        )));
    }
    let value = vec![b'v'; value_size];
    let key = |i: u64| format!("{prefix}{i:07}").into_bytes();
    let put = phase(n, |i| {
        let (k, v) = (key(i), value.clone());
        async move { client.put_with_ttl(&k, &v, KEY_TTL).await }
    })
    .await?;
    report(p, "put", n, &put);
    let get = phase(n, |i| {
        let k = key(i);
        async move { client.get(&k).await.map(|_| ()) }
    })
    .await?;
    report(p, "get", n, &get);
    Ok(0)
}

/// Runs `op(0..n)`, [`IN_FLIGHT`] at a time; the wall time and each operation's latency.
async fn phase<F, Fut>(n: u64, op: F) -> Result<(Duration, Histogram<u64>)>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let started = Instant::now();
    let mut timed = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let at = Instant::now();
                fut.await.map(|()| at.elapsed())
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(took) = timed.next().await {
        hist.saturating_record(took?.as_micros() as u64);
    }
    Ok((started.elapsed(), hist))
}

fn report(p: &mut Printer<'_>, what: &str, n: u64, (took, hist): &(Duration, Histogram<u64>)) {
    let rate = n as f64 / took.as_secs_f64().max(1e-9);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if p.json {
        p.line(json!({
            "op": what, "count": n, "seconds": took.as_secs_f64(), "ops_per_second": rate,
            "p50_ms": ms(0.5), "p95_ms": ms(0.95), "p99_ms": ms(0.99),
        }));
    } else {
        p.line(format!(
            "{what}\t{n} ops in {:.2} s\t{rate:.0} ops/s\tp50 {:.2} ms\tp95 {:.2} ms\tp99 {:.2} ms",
            took.as_secs_f64(),
            ms(0.5),
            ms(0.95),
            ms(0.99)
        ));
    }
}
