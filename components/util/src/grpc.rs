//! The gRPC channel settings every Flotilla dialer shares (stores, PD, clients).

use std::{ffi::CString, sync::Arc, time::Duration};

use grpcio::{ChannelBuilder, Environment};

/// The first wait before redialling a peer whose connection failed.
pub const INITIAL_RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between redials.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// How long one dial may take: a peer cut off the network drops no packet back, and
/// gRPC's default (20 s) would hold the next dial, to its new address, that long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How soon a name may be resolved again after a connection to it failed.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a PD client pings PD while a stream is open, and how long it waits for the
/// answer before it drops the connection (a PD that went away without closing it).
pub const PD_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(3));

/// A channel builder that redials a lost peer within a second, gives up on a dial that
/// gets no answer within `CONNECT_TIMEOUT`, and resolves the peer's name afresh. gRPC's
/// own defaults (a backoff growing from 1 s to 120 s, 20 s per dial, at most one DNS
/// lookup per 30 s) leave a store that restarted, or came back on a new address under
/// the same name, unreachable for far longer than an election timeout.
pub fn channel(env: Arc<Environment>) -> ChannelBuilder {
    ChannelBuilder::new(env)
        .initial_reconnect_backoff(INITIAL_RECONNECT_BACKOFF)
        .max_reconnect_backoff(MAX_RECONNECT_BACKOFF)
        .raw_cfg_int(
            arg("grpc.min_reconnect_backoff_ms"),
            millis(CONNECT_TIMEOUT),
        )
        .raw_cfg_int(
            arg("grpc.dns_min_time_between_resolutions_ms"),
            millis(MIN_RESOLVE_INTERVAL),
        )
}

fn arg(key: &str) -> CString {
    CString::new(key).expect("no NUL byte in a channel argument name")
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).expect("a channel setting fits in i32 milliseconds")
}
