//! What a run measured: per kind of operation, the count, throughput, latency
//! percentiles and errors by kind; printed as a table or as JSON.

use std::{collections::BTreeMap, fmt, time::Duration};

use hdrhistogram::Histogram;

use super::workload::Op;

/// The histograms' top: a slower operation counts as taking an hour.
const HOUR_US: u64 = 3_600_000_000;

/// One worker's (or, added up, the run's) measurements of one kind of operation.
pub struct OpStats {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for OpStats {
    fn default() -> OpStats {
        OpStats {
            hist: Histogram::new_with_bounds(1, HOUR_US, 3).expect("valid histogram bounds"),
            errors: BTreeMap::new(),
        }
    }
}

impl OpStats {
    /// Counts one success that took `took`.
    pub fn ok(&mut self, took: Duration) {
        self.hist.saturating_record(took.as_micros() as u64);
    }

    /// Counts one failure.
    pub fn failed(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Adds another worker's measurements.
    pub fn add(&mut self, other: OpStats) {
        self.hist
            .add(other.hist)
            .expect("histograms of the same precision add");
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    fn report(&self, op: &str, seconds: f64) -> OpReport {
        let q = |q: f64| self.hist.value_at_quantile(q);
        OpReport {
            op: op.to_string(),
            count: self.hist.len(),
            ops_per_sec: self.hist.len() as f64 / seconds,
            mean_us: self.hist.mean(),
            p50_us: q(0.5),
            p95_us: q(0.95),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: self.hist.max(),
            errors: self.errors.clone(),
        }
    }
}

/// Measurements per kind of operation, indexed as [`Op::ALL`].
#[derive(Default)]
pub struct Stats(pub [OpStats; 5]);

impl Stats {
    /// The measurements of `op`.
    pub fn of(&mut self, op: Op) -> &mut OpStats {
        &mut self.0[op as usize]
    }

    /// Adds another worker's measurements.
    pub fn add(&mut self, other: Stats) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            a.add(b);
        }
    }

    /// Failed operations of every kind.
    pub fn failures(&self) -> u64 {
        self.0.iter().flat_map(|s| s.errors.values()).sum()
    }

    /// The report lines: one per kind that ran, and a total when there are several.
    pub fn report(&self, seconds: f64) -> Vec<OpReport> {
        let mut lines: Vec<OpReport> = Op::ALL
            .iter()
            .zip(&self.0)
            .filter(|(_, s)| !s.hist.is_empty() || !s.errors.is_empty())
            .map(|(op, s)| s.report(op.name(), seconds))
            .collect();
        if lines.len() > 1 {
            let mut all = OpStats::default();
            for s in &self.0 {
                all.add(OpStats {
                    hist: s.hist.clone(),
                    errors: s.errors.clone(),
                });
            }
            lines.push(all.report("total", seconds));
        }
        lines
    }
}

/// One line of the final table.
#[derive(Debug, serde::Serialize)]
pub struct OpReport {
    /// read, update, insert, scan, txn or total.
    pub op: String,
    /// Successful operations.
    pub count: u64,
    /// Successful operations per second of the measured time.
    pub ops_per_sec: f64,
    /// Mean latency in microseconds.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
}

/// What a run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// flotilla or etcd.
    pub driver: String,
    /// The workload's name.
    pub workload: String,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Connections they shared.
    pub connections: usize,
    /// Measured time (after the warm-up).
    pub seconds: f64,
    /// Warm-up time, not measured.
    pub warmup_seconds: f64,
    /// Per kind of operation, then the total.
    pub ops: Vec<OpReport>,
    /// Raft log fsyncs on all stores during the measured time (Flotilla only).
    pub fsyncs: Option<f64>,
    /// Writes applied and answered on leaders meanwhile (Flotilla only).
    pub writes_applied: Option<f64>,
    /// fsyncs / writes_applied.
    pub fsyncs_per_write: Option<f64>,
    /// Set when the run stopped before doing what it was asked (a load cut short).
    pub incomplete: Option<String>,
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {}: {} clients over {} connections, {:.1} s measured after {:.1} s of warm-up",
            self.driver,
            self.workload,
            self.clients,
            self.connections,
            self.seconds,
            self.warmup_seconds
        )?;
        writeln!(
            f,
            "{:<7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  errors",
            "op", "count", "ops/s", "mean ms", "p50", "p95", "p99", "p99.9", "max"
        )?;
        for l in &self.ops {
            let errors = if l.errors.is_empty() {
                "0".to_string()
            } else {
                l.errors
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            writeln!(
                f,
                "{:<7} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {errors}",
                l.op,
                l.count,
                l.ops_per_sec,
                ms(l.mean_us),
                ms(l.p50_us as f64),
                ms(l.p95_us as f64),
                ms(l.p99_us as f64),
                ms(l.p999_us as f64),
                ms(l.max_us as f64),
            )?;
        }
        if let (Some(fs), Some(w), Some(r)) =
            (self.fsyncs, self.writes_applied, self.fsyncs_per_write)
        {
            writeln!(
                f,
                "raft log: {fs:.0} fsyncs for {w:.0} writes, {r:.3} fsyncs per write"
            )?;
        }
        if let Some(why) = &self.incomplete {
            writeln!(f, "incomplete: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_a_line_per_kind_and_a_total() {
        let mut s = Stats::default();
        s.of(Op::Read).ok(Duration::from_millis(2));
        s.of(Op::Read).ok(Duration::from_millis(4));
        s.of(Op::Update).ok(Duration::from_millis(10));
        s.of(Op::Update).failed("timeout".into());
        let lines = s.report(2.0);
        let names: Vec<&str> = lines.iter().map(|l| l.op.as_str()).collect();
        assert_eq!(names, ["read", "update", "total"]);
        assert_eq!(lines[0].count, 2);
        assert_eq!(lines[0].ops_per_sec, 1.0);
        assert_eq!(lines[2].count, 3);
        assert_eq!(lines[2].errors["timeout"], 1);
        assert!(
            lines[1].p99_us >= 9_990 && lines[1].p99_us <= 10_010,
            "{}",
            lines[1].p99_us
        );
    }
}
