//! Raftstore settings: the `[raftstore]` section of a store's config file.

use std::time::Duration;

use bytesize::ByteSize;
use conf::{ensure, Validate};
use serde::{Deserialize, Serialize};

/// Raftstore settings; every key has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Fsync the Raft log before acknowledging; turn off only for benchmarks.
    pub sync_log: bool,
    /// One Raft tick.
    #[serde(with = "humantime_serde")]
    pub raft_base_tick_interval: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub raft_election_timeout_ticks: usize,
    /// Ticks between leader heartbeats.
    pub raft_heartbeat_ticks: usize,
    /// How long a quorum's acknowledgement lets a leader serve reads without a ReadIndex
    /// round (see `lease`); zero turns lease reads off. At most the election timeout less
    /// two ticks.
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
    /// Largest append message a leader sends at once.
    pub raft_max_size_per_msg: ByteSize,
    /// Appends in flight to one follower.
    pub raft_max_inflight_msgs: usize,
    /// Largest command (and so largest value) a region accepts.
    pub raft_entry_max_size: ByteSize,
    /// How often a leader considers compacting its log.
    #[serde(with = "humantime_serde")]
    pub raft_log_gc_tick_interval: Duration,
    /// Compact at least this many applied entries at once.
    pub raft_log_gc_threshold: u64,
    /// Past this many entries the log is compacted even if a follower still needs them
    /// (that follower then gets a snapshot).
    pub raft_log_gc_count_limit: u64,
    /// Past this many bytes of log, likewise.
    pub raft_log_gc_size_limit: ByteSize,
    /// How often a leader reports its region to PD when nothing changed.
    #[serde(with = "humantime_serde")]
    pub pd_heartbeat_tick_interval: Duration,
    /// How often the store reports its statistics to PD.
    #[serde(with = "humantime_serde")]
    pub pd_store_heartbeat_tick_interval: Duration,
    /// A peer silent for this long is reported to PD as down.
    #[serde(with = "humantime_serde")]
    pub max_peer_down_duration: Duration,
    /// Threads that run Raft peers.
    pub store_pool_size: usize,
    /// Threads that apply committed entries.
    pub apply_pool_size: usize,
    /// Most peers handled in one round (so in one fsync).
    pub max_batch_size: usize,
    /// Most messages one peer handles in one round, so that one busy region cannot starve
    /// the others.
    pub messages_per_round: usize,
    /// A region larger than this (keys plus values) is split in two.
    pub region_split_size: ByteSize,
    /// A region with more keys than this is split in two.
    pub region_split_keys: u64,
    /// How often a leader considers measuring its region for a split.
    #[serde(with = "humantime_serde")]
    pub split_region_check_tick_interval: Duration,
    /// A region is measured again only after this much has been written to it, so that
    /// quiet regions are never scanned.
    pub region_split_check_diff: ByteSize,
    /// Stop ticking a region whose peers are all up to date and that has been quiet for
    /// a while; any message, proposal or the loss of its leader's store wakes it.
    pub hibernate_regions: bool,
    /// How often a hibernating leader still reports its region to PD.
    #[serde(with = "humantime_serde")]
    pub pd_heartbeat_idle_interval: Duration,
    /// Most keys one split request may give.
    pub max_split_keys: usize,
    /// Most requests from clients waiting in one peer's mailbox; past it they get
    /// server_is_busy (Raft messages from other stores are never refused for it).
    pub peer_mailbox_capacity: usize,
    /// Most committed entries a leader may have handed to its apply side and not seen
    /// applied; past it new proposals get server_is_busy, so a slow apply side cannot
    /// make its queue grow without bound.
    pub max_apply_lag: u64,
    /// A region forgets a client session idle this long (by the leaders' clocks); a
    /// resend from a forgotten session gets an error instead of a second apply. A try
    /// sent more than a twentieth of it away from the leader's clock is refused.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Most client sessions a region remembers; past it the least recently active is
    /// forgotten.
    pub max_sessions_per_region: u64,
    /// Most bytes of sessions a region keeps; past it the least recently active are
    /// forgotten, and one session alone this large takes no new write until it
    /// acknowledges earlier ones.
    pub max_session_bytes_per_region: ByteSize,
    /// How far past its acknowledged point a client session may number a write: a
    /// number further ahead is refused as garbage. Sequence numbers are per client,
    /// across regions, so this bounds the writes it sends while its oldest waits.
    pub session_window: u64,
    /// Leadership goes only to a peer at most this many entries behind the leader (and
    /// heard from lately): raft refuses writes while a transfer waits for the transferee
    /// to catch up, so a lagging one would stall the region for up to an election.
    pub leader_transfer_max_log_lag: u64,
    /// A leadership transfer not done by then is abandoned and writes resume (raft would
    /// wait a whole election timeout); from a heartbeat interval to under the election
    /// timeout.
    #[serde(with = "humantime_serde")]
    pub leader_transfer_timeout: Duration,
    /// Largest snapshot this store accepts (the sum of its files' declared sizes); it
    /// must also fit in the free disk space.
    pub snap_max_size: ByteSize,
    /// Free disk space kept in reserve: below it client writes are refused (reads and
    /// replication go on) until space is freed.
    pub reserve_space: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync_log: true,
            raft_base_tick_interval: Duration::from_millis(100),
            raft_election_timeout_ticks: 10,
            raft_heartbeat_ticks: 2,
            leader_lease: Duration::from_millis(800),
            raft_max_size_per_msg: ByteSize::mib(1),
            raft_max_inflight_msgs: 256,
            raft_entry_max_size: ByteSize::mib(8),
            raft_log_gc_tick_interval: Duration::from_secs(3),
            raft_log_gc_threshold: 50,
            raft_log_gc_count_limit: 20_000,
            raft_log_gc_size_limit: ByteSize::mib(64),
            pd_heartbeat_tick_interval: Duration::from_secs(10),
            pd_store_heartbeat_tick_interval: Duration::from_secs(10),
            max_peer_down_duration: Duration::from_secs(30),
            store_pool_size: 2,
            apply_pool_size: 2,
            max_batch_size: 256,
            messages_per_round: 4096,
            region_split_size: ByteSize::mib(96),
            region_split_keys: 960_000,
            split_region_check_tick_interval: Duration::from_secs(10),
            region_split_check_diff: ByteSize::mib(6),
            hibernate_regions: true,
            pd_heartbeat_idle_interval: Duration::from_secs(60),
            max_split_keys: 256,
            peer_mailbox_capacity: 40_960,
            max_apply_lag: 8192,
            session_ttl: Duration::from_secs(600),
            max_sessions_per_region: 4096,
            max_session_bytes_per_region: ByteSize::mib(16),
            session_window: 1 << 20,
            leader_transfer_max_log_lag: 128,
            leader_transfer_timeout: Duration::from_millis(500),
            snap_max_size: ByteSize::gib(16),
            reserve_space: ByteSize::mib(256),
        }
    }
}

impl Config {
    /// A store that has not heartbeated to PD for this long is presumed down by the
    /// others (three missed heartbeats).
    pub fn store_silent_after(&self) -> Duration {
        self.pd_store_heartbeat_tick_interval * 3
    }

    /// How long a deposed leader may go on telling its followers it leads: check-quorum
    /// deposes it within two election timeouts. A follower's word from its leader is
    /// taken to be this much older than it looks (raw stale reads).
    pub fn stale_margin(&self) -> Duration {
        self.raft_base_tick_interval * (2 * self.raft_election_timeout_ticks as u32)
    }

    /// The longest `leader-lease` may be: the election timeout less two ticks.
    pub fn max_leader_lease(&self) -> Duration {
        self.raft_base_tick_interval * self.raft_election_timeout_ticks.saturating_sub(2) as u32
    }

    /// How long a follower takes its leader to hold a lease after it last heard from it
    /// (or after it restarted, having forgotten its leader): the longest lease any leader
    /// may hold, not this store's own (a store with lease reads off must still wait out
    /// the lease of a leader that has them on), and a tick for the clocks' drift.
    pub fn lease_wait(&self) -> Duration {
        self.max_leader_lease() + self.raft_base_tick_interval
    }

    /// Whole ticks in `d` (at least one).
    pub fn ticks(&self, d: Duration) -> u64 {
        let base = self.raft_base_tick_interval.as_millis().max(1);
        ((d.as_millis() / base) as u64).max(1)
    }
}

impl Validate for Config {
    fn validate(&self) -> conf::Result<()> {
        ensure(
            !self.raft_base_tick_interval.is_zero(),
            "raftstore.raft-base-tick-interval",
            "must be positive",
        )?;
        ensure(
            self.raft_heartbeat_ticks > 0,
            "raftstore.raft-heartbeat-ticks",
            "must be positive",
        )?;
        ensure(
            self.raft_election_timeout_ticks > self.raft_heartbeat_ticks,
            "raftstore.raft-election-timeout-ticks",
            "must be greater than raft-heartbeat-ticks",
        )?;
        let tick = self.raft_base_tick_interval;
        ensure(
            self.leader_transfer_timeout >= tick * self.raft_heartbeat_ticks as u32
                && self.leader_transfer_timeout < tick * self.raft_election_timeout_ticks as u32,
            "raftstore.leader-transfer-timeout",
            "must be at least a heartbeat interval (raft-base-tick-interval times \
             raft-heartbeat-ticks) and under the election timeout (times \
             raft-election-timeout-ticks)",
        )?;
        ensure(
            self.leader_lease <= self.max_leader_lease(),
            "raftstore.leader-lease",
            "must be at most the election timeout (raft-base-tick-interval times \
             raft-election-timeout-ticks) less two ticks: a voter's count of an election \
             timeout starts within a tick of hearing from its leader, and clocks drift",
        )?;
        ensure(
            self.leader_transfer_max_log_lag > 0,
            "raftstore.leader-transfer-max-log-lag",
            "must be positive (under load a leader is always a few entries ahead)",
        )?;
        ensure(
            self.raft_entry_max_size.as_u64() >= 1024,
            "raftstore.raft-entry-max-size",
            "must be at least 1KiB",
        )?;
        ensure(
            self.raft_log_gc_count_limit > self.raft_log_gc_threshold,
            "raftstore.raft-log-gc-count-limit",
            "must be greater than raft-log-gc-threshold",
        )?;
        ensure(
            self.store_pool_size > 0,
            "raftstore.store-pool-size",
            "must be positive",
        )?;
        ensure(
            self.apply_pool_size > 0,
            "raftstore.apply-pool-size",
            "must be positive",
        )?;
        ensure(
            self.max_batch_size > 0 && self.messages_per_round > 0,
            "raftstore.max-batch-size",
            "batch limits must be positive",
        )?;
        ensure(
            self.region_split_size.as_u64() > 0,
            "raftstore.region-split-size",
            "must be positive",
        )?;
        ensure(
            self.region_split_keys > 1,
            "raftstore.region-split-keys",
            "must be at least 2",
        )?;
        ensure(
            self.region_split_check_diff.as_u64() <= self.region_split_size.as_u64(),
            "raftstore.region-split-check-diff",
            "must not exceed region-split-size",
        )?;
        ensure(
            self.max_split_keys > 0,
            "raftstore.max-split-keys",
            "must be positive",
        )?;
        ensure(
            self.peer_mailbox_capacity > 0,
            "raftstore.peer-mailbox-capacity",
            "must be positive",
        )?;
        ensure(
            self.max_apply_lag > 0,
            "raftstore.max-apply-lag",
            "must be positive",
        )?;
        ensure(
            self.session_ttl >= Duration::from_secs(10),
            "raftstore.session-ttl",
            "must be at least 10s (a twentieth of it is how far a try's sending time may be \
             from a leader's clock)",
        )?;
        ensure(
            self.max_sessions_per_region > 0
                && self.session_window > 0
                && self.max_session_bytes_per_region.as_u64() > 0,
            "raftstore.max-sessions-per-region",
            "max-sessions-per-region, max-session-bytes-per-region and session-window must be positive",
        )?;
        ensure(
            self.max_session_bytes_per_region.as_u64() <= crate::snap::MAX_SESSION_FILE / 2,
            "raftstore.max-session-bytes-per-region",
            "must be at most 32MiB (a snapshot carries the table in one piece)",
        )?;
        ensure(
            self.snap_max_size.as_u64() >= self.region_split_size.as_u64(),
            "raftstore.snap-max-size",
            "must be at least region-split-size",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower with lease reads off waits out a leader's lease all the same.
    #[test]
    fn a_followers_wait_does_not_depend_on_its_own_lease() {
        let on = Config::default();
        let off = Config {
            leader_lease: Duration::ZERO,
            ..Config::default()
        };
        assert!(on.lease_wait() > on.leader_lease);
        assert_eq!(off.lease_wait(), on.lease_wait());
        assert_eq!(on.max_leader_lease(), Duration::from_millis(800));
    }
}
