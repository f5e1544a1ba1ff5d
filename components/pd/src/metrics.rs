//! PD metrics: what PD hears (heartbeats, timestamp requests), what it decides
//! (operators), and, read at each scrape, what the cluster looks like.

use std::{collections::BTreeMap, sync::LazyLock};

use prometheus::{
    core::{Collector, Desc},
    exponential_buckets,
    proto::MetricFamily,
    register_histogram_vec, register_int_counter, register_int_counter_vec, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Region heartbeats received.
pub static REGION_HEARTBEATS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_pd_region_heartbeats_total",
        "Region heartbeats received"
    )
    .expect("register metric")
});

/// Store heartbeats received.
pub static STORE_HEARTBEATS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "flotilla_pd_store_heartbeats_total",
        "Store heartbeats received"
    )
    .expect("register metric")
});

/// Time to handle a heartbeat, by kind.
pub static HEARTBEAT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "flotilla_pd_heartbeat_seconds",
        "Time PD takes to handle a heartbeat, by kind (region, store)",
        &["kind"],
        exponential_buckets(0.00001, 2.0, 20).expect("valid buckets")
    )
    .expect("register metric")
});

/// Operators, by kind and event.
pub static OPERATORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_pd_operators_total",
        "Operators by kind and event (created, finished, timed_out, cancelled: the region split or merged away under it)",
        &["kind", "event"]
    )
    .expect("register metric")
});

/// Timestamp requests and the timestamps they asked for.
pub static TSO: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_pd_tso_total",
        "Timestamp oracle: requests, and timestamps handed out",
        &["what"]
    )
    .expect("register metric")
});

/// 1 while this PD member leads its group and serves, else 0.
pub static PD_IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "flotilla_pd_is_leader",
        "1 while this PD member leads its Raft group and serves"
    )
    .expect("register metric")
});

/// The PD group's Raft term as this member sees it.
pub static PD_RAFT_TERM: LazyLock<IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!("flotilla_pd_raft_term", "Raft term of the PD group")
        .expect("register metric")
});

/// Events of the PD group on this member.
pub static PD_RAFT_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "flotilla_pd_raft_events_total",
        "PD group events on this member: became_leader (leader changes), snapshot_applied",
        &["event"]
    )
    .expect("register metric")
});

/// The timestamp oracle's persisted bound (ms since the epoch).
pub static TSO_WINDOW: LazyLock<IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "flotilla_pd_tso_window_ms",
        "The timestamp oracle's bound committed through the PD group (physical ms): no timestamp at or above it was handed out"
    )
    .expect("register metric")
});

/// Registers every series, so that a scrape shows zeros before the first event.
pub fn register_all() {
    LazyLock::force(&REGION_HEARTBEATS);
    LazyLock::force(&STORE_HEARTBEATS);
    for kind in ["region", "store"] {
        HEARTBEAT_SECONDS.with_label_values(&[kind]);
    }
    for what in ["requests", "timestamps"] {
        TSO.with_label_values(&[what]);
    }
    LazyLock::force(&OPERATORS);
    LazyLock::force(&PD_IS_LEADER);
    LazyLock::force(&PD_RAFT_TERM);
    LazyLock::force(&TSO_WINDOW);
    for event in ["became_leader", "snapshot_applied"] {
        PD_RAFT_EVENTS.with_label_values(&[event]);
    }
}

/// The cluster at a glance (`PdCore::summary`), as the collector reports it.
#[derive(Debug, Default)]
pub struct Summary {
    /// Stores by state: up, down, offline, tombstone.
    pub stores: BTreeMap<&'static str, usize>,
    /// Regions PD routes.
    pub regions: usize,
    /// Regions with no known leader, or one on a down store.
    pub leaderless: usize,
    /// Regions with fewer live voters than `max-replicas`.
    pub under_replicated: usize,
    /// Operators in progress.
    pub operators: usize,
    /// Regions whose replicas break the isolation rule (`replication.isolation-level`).
    pub not_isolated: usize,
}

/// Reads the cluster's summary; `None` once PD is gone.
pub type SummaryFn = Box<dyn Fn() -> Option<Summary> + Send + Sync>;

/// The cluster as PD sees it, computed at each scrape.
pub struct ClusterCollector {
    summary: SummaryFn,
    descs: Vec<Desc>,
}

const SERIES: [(&str, &str); 6] = [
    (
        "flotilla_pd_stores",
        "Stores by state (up, down, offline, tombstone)",
    ),
    ("flotilla_pd_regions", "Regions PD routes"),
    (
        "flotilla_pd_leaderless_regions",
        "Regions with no known leader, or one on a down store",
    ),
    (
        "flotilla_pd_under_replicated_regions",
        "Regions with fewer live voters than max-replicas",
    ),
    ("flotilla_pd_pending_operators", "Operators in progress"),
    (
        "flotilla_pd_regions_not_isolated",
        "Regions with two replicas in one failure domain (replication.isolation-level)",
    ),
];

impl ClusterCollector {
    /// A collector of what `summary` reads, reporting nothing once it reads `None`.
    pub fn new(summary: SummaryFn) -> ClusterCollector {
        let descs = SERIES
            .iter()
            .enumerate()
            .map(|(i, (name, help))| {
                let labels = if i == 0 {
                    vec!["state".to_string()]
                } else {
                    vec![]
                };
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
                .expect("valid metric description")
            })
            .collect();
        ClusterCollector { summary, descs }
    }
}

impl Collector for ClusterCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(s) = (self.summary)() else {
            return vec![];
        };
        let stores =
            IntGaugeVec::new(Opts::new(SERIES[0].0, SERIES[0].1), &["state"]).expect("valid gauge");
        for state in ["up", "down", "offline", "tombstone"] {
            let n = s.stores.get(state).copied().unwrap_or(0);
            stores.with_label_values(&[state]).set(n as i64);
        }
        let gauge = |i: usize, v: usize| {
            let g = IntGauge::new(SERIES[i].0, SERIES[i].1).expect("valid gauge");
            g.set(v as i64);
            g.collect().remove(0)
        };
        vec![
            stores.collect().remove(0),
            gauge(1, s.regions),
            gauge(2, s.leaderless),
            gauge(3, s.under_replicated),
            gauge(4, s.operators),
            gauge(5, s.not_isolated),
        ]
    }
}
