//! PD metrics.

use std::sync::LazyLock;

use prometheus::{register_int_counter, IntCounter};

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
