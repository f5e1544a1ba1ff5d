//! `kvctl cluster health`: what PD knows of stores, regions and operators, and what the
//! PD members and stores answer when probed directly, judged into one verdict. Healthy: every store heartbeats and every region has a leader and all
//! its replicas. Degraded: a store is down or a region lacks replicas, but every region
//! still has a leader and a quorum of live voters (the cluster serves). Unhealthy: some
//! region has no leader or no live quorum (part of the key space does not serve).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::{metapb, pdpb};
use serde::Serialize;

use pd_client::RegionRoute;

/// The cluster's state in one word; the exit code of `kvctl cluster health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Everything up and fully replicated.
    Healthy = 0,
    /// Serving, with something missing.
    Degraded = 1,
    /// Part of the key space does not serve.
    Unhealthy = 2,
}

/// How one store looks from PD.
#[derive(Debug, Serialize)]
pub struct StoreHealth {
    /// Store id.
    pub id: u64,
    /// Address clients dial.
    pub address: String,
    /// up, down (no heartbeat for the threshold), stopping (shutting down: its leaders
    /// are moving away), offline (decommissioning) or tombstone.
    pub state: &'static str,
    /// Seconds since PD last heard from it (`None`: never).
    pub last_heartbeat_secs: Option<f64>,
}

/// One PD member, probed directly.
#[derive(Debug, Serialize)]
pub struct PdMemberHealth {
    /// Its name.
    pub name: String,
    /// Whether it leads the PD group.
    pub leader: bool,
    /// up, down (did not answer a probe within its deadline), or unknown (its address
    /// does not resolve from here).
    pub state: &'static str,
}

/// Everything `kvctl cluster health` reports.
#[derive(Debug, Serialize)]
pub struct Health {
    /// The one-word answer.
    pub verdict: Verdict,
    /// Every PD member.
    pub pd_members: Vec<PdMemberHealth>,
    /// Every store.
    pub stores: Vec<StoreHealth>,
    /// How many regions PD routes.
    pub regions: usize,
    /// Replicas PD keeps per region.
    pub max_replicas: u32,
    /// Regions with no known leader, or a leader on a down store.
    pub leaderless: Vec<u64>,
    /// Regions where a majority of voters are on down stores.
    pub without_quorum: Vec<u64>,
    /// Regions with fewer live voters than `max_replicas`.
    pub under_replicated: Vec<u64>,
    /// Regions whose replicas break PD's `replication.isolation-level` (two in one
    /// failure domain).
    pub not_isolated: Vec<u64>,
    /// Operators PD is carrying out.
    pub pending_operators: usize,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// How long without a heartbeat makes a store "down" in every kvctl command (`cluster
/// health --down-after` may say otherwise for that command).
pub const DOWN_AFTER: Duration = Duration::from_secs(20);

/// Seconds since the store's last heartbeat, if it ever sent one.
fn heartbeat_age(s: &metapb::Store, now: i64) -> Option<f64> {
    (s.last_heartbeat > 0).then(|| (now - s.last_heartbeat).max(0) as f64 / 1e9)
}

/// The one notion of a store's state that every command shows: tombstone, down (no
/// heartbeat for `down_after`), stopping, offline or up.
pub fn state_of(s: &metapb::Store, stats: &pdpb::StoreStats, down_after: Duration) -> &'static str {
    state_at(s, stats, now_nanos(), down_after)
}

fn state_at(
    s: &metapb::Store,
    stats: &pdpb::StoreStats,
    now: i64,
    down_after: Duration,
) -> &'static str {
    let stale = heartbeat_age(s, now).is_none_or(|a| a > down_after.as_secs_f64());
    match s.get_state() {
        metapb::StoreState::Tombstone => "tombstone",
        _ if stale => "down",
        // Its last heartbeat is fresh, but the process is on its way out (or gone).
        _ if stats.stopping => "stopping",
        metapb::StoreState::Offline => "offline",
        metapb::StoreState::Up => "up",
    }
}

fn store_health(
    (s, stats): &(metapb::Store, pdpb::StoreStats),
    now: i64,
    down_after: Duration,
) -> StoreHealth {
    let age = heartbeat_age(s, now);
    let state = state_at(s, stats, now, down_after);
    StoreHealth {
        id: s.get_id(),
        address: s.get_address().to_string(),
        state,
        last_heartbeat_secs: age,
    }
}

/// What PD reported and what the probes found.
pub struct Observed<'a> {
    /// Every store with its statistics.
    pub stores: &'a [(metapb::Store, pdpb::StoreStats)],
    /// Every region with its leader.
    pub regions: &'a [RegionRoute],
    /// The cluster's settings.
    pub cluster: &'a metapb::Cluster,
    /// Operators in progress.
    pub operators: &'a [pdpb::OperatorInfo],
    /// Stores that did not answer a direct probe: down whatever their last heartbeat.
    pub unanswered: &'a [u64],
    /// The PD members, probed.
    pub pd_members: Vec<PdMemberHealth>,
}

/// Judges what was observed; `down_after` is how long without a heartbeat makes a store
/// down.
pub fn judge(o: Observed<'_>, down_after: Duration) -> Health {
    let now = now_nanos();
    let stores: Vec<StoreHealth> = o
        .stores
        .iter()
        .map(|s| {
            let mut h = store_health(s, now, down_after);
            if o.unanswered.contains(&h.id) && h.state != "tombstone" {
                h.state = "down";
            }
            h
        })
        .collect();
    let (regions, cluster, operators) = (o.regions, o.cluster, o.operators);
    let live = |store_id: u64| {
        stores
            .iter()
            .any(|s| s.id == store_id && matches!(s.state, "up" | "offline"))
    };
    let (mut leaderless, mut without_quorum, mut under_replicated) = (vec![], vec![], vec![]);
    let not_isolated: Vec<u64> = regions
        .iter()
        .filter(|r| r.isolation.as_ref().is_some_and(|(_, fault)| *fault))
        .map(|r| r.region.get_id())
        .collect();
    for r in regions {
        let id = r.region.get_id();
        let voters: Vec<u64> = r
            .region
            .get_peers()
            .iter()
            .filter(|p| p.get_role() == metapb::PeerRole::Voter)
            .map(|p| p.get_store_id())
            .collect();
        let live_voters = voters.iter().filter(|s| live(**s)).count();
        if !r.leader.as_ref().is_some_and(|l| live(l.get_store_id())) {
            leaderless.push(id);
        }
        if live_voters * 2 <= voters.len() {
            without_quorum.push(id);
        }
        if (live_voters as u32) < cluster.max_peer_count {
            under_replicated.push(id);
        }
    }
    let no_store_up = !stores.iter().any(|s| s.state == "up");
    let verdict = if no_store_up || !leaderless.is_empty() || !without_quorum.is_empty() {
        Verdict::Unhealthy
    } else if !under_replicated.is_empty()
        || !not_isolated.is_empty()
        || stores
            .iter()
            .any(|s| matches!(s.state, "down" | "stopping"))
        || o.pd_members.iter().any(|m| m.state == "down")
    {
        Verdict::Degraded
    } else {
        Verdict::Healthy
    };
    Health {
        verdict,
        pd_members: o.pd_members,
        stores,
        regions: regions.len(),
        max_replicas: cluster.max_peer_count,
        leaderless,
        without_quorum,
        under_replicated,
        not_isolated,
        pending_operators: operators.len(),
    }
}

/// The report as lines of text, the verdict last.
pub fn text(h: &Health) -> Vec<String> {
    let count = |state: &str| h.stores.iter().filter(|s| s.state == state).count();
    let members: Vec<String> = h
        .pd_members
        .iter()
        .map(|m| {
            let role = if m.leader { " (leader)" } else { "" };
            format!("{}{role} {}", m.name, m.state)
        })
        .collect();
    let mut lines = vec![format!("pd members: {}", members.join(", "))];
    lines.push(format!(
        "stores:     {} up, {} down, {} stopping, {} offline, {} tombstone",
        count("up"),
        count("down"),
        count("stopping"),
        count("offline"),
        count("tombstone")
    ));
    for s in h
        .stores
        .iter()
        .filter(|s| matches!(s.state, "down" | "stopping"))
    {
        let last = s
            .last_heartbeat_secs
            .map_or("never".to_string(), |a| format!("{a:.1}s ago"));
        lines.push(format!(
            "  store {} ({}) is {}: last heartbeat {last}",
            s.id, s.address, s.state
        ));
    }
    let ids = |v: &[u64]| {
        let shown: Vec<String> = v.iter().take(10).map(u64::to_string).collect();
        let more = if v.len() > 10 { ", ..." } else { "" };
        format!("{} [{}{more}]", v.len(), shown.join(", "))
    };
    lines.push(format!("regions:    {}", h.regions));
    lines.push(format!("  without a leader:  {}", ids(&h.leaderless)));
    lines.push(format!("  without a quorum:  {}", ids(&h.without_quorum)));
    lines.push(format!(
        "  under-replicated:  {} (max-replicas {})",
        ids(&h.under_replicated),
        h.max_replicas
    ));
    lines.push(format!(
        "  not isolated:      {} (two replicas in one failure domain)",
        ids(&h.not_isolated)
    ));
    lines.push(format!("operators:  {} pending", h.pending_operators));
    let verdict = match h.verdict {
        Verdict::Healthy => {
            "HEALTHY: every store is up and every region has a leader and all its replicas"
        }
        Verdict::Degraded => {
            "DEGRADED: serving, but stores or PD members are down, or regions lack replicas or isolation"
        }
        Verdict::Unhealthy => {
            "UNHEALTHY: some regions have no leader or no live quorum and do not serve"
        }
    };
    lines.push(verdict.to_string());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: u64, heartbeat_ago: Option<Duration>) -> (metapb::Store, pdpb::StoreStats) {
        let mut s = metapb::Store::default();
        s.set_id(id);
        s.set_address(format!("s{id}"));
        s.last_heartbeat = heartbeat_ago.map_or(0, |a| now_nanos() - a.as_nanos() as i64);
        (s, pdpb::StoreStats::default())
    }

    fn region(id: u64, stores: &[u64], leader: Option<u64>) -> RegionRoute {
        let mut r = metapb::Region::default();
        r.set_id(id);
        for s in stores {
            let mut p = metapb::Peer::default();
            p.set_id(id * 10 + s);
            p.set_store_id(*s);
            r.mut_peers().push(p);
        }
        let leader = leader.map(|s| {
            r.get_peers()
                .iter()
                .find(|p| p.get_store_id() == s)
                .unwrap()
                .clone()
        });
        RegionRoute {
            region: r,
            leader,
            isolation: None,
        }
    }

    fn cluster() -> metapb::Cluster {
        let mut c = metapb::Cluster::default();
        c.set_max_peer_count(3);
        c
    }

    fn judged(
        stores: &[(metapb::Store, pdpb::StoreStats)],
        regions: &[RegionRoute],
        unanswered: &[u64],
    ) -> Health {
        let c = cluster();
        let o = Observed {
            stores,
            regions,
            cluster: &c,
            operators: &[],
            unanswered,
            pd_members: vec![PdMemberHealth {
                name: "pd".into(),
                leader: true,
                state: "up",
            }],
        };
        judge(o, AFTER)
    }

    const FRESH: Option<Duration> = Some(Duration::from_secs(1));
    const STALE: Option<Duration> = Some(Duration::from_secs(60));
    const AFTER: Duration = Duration::from_secs(20);

    #[test]
    fn all_up_and_replicated_is_healthy() {
        let stores = [store(1, FRESH), store(2, FRESH), store(3, FRESH)];
        let regions = [
            region(1, &[1, 2, 3], Some(1)),
            region(2, &[1, 2, 3], Some(2)),
        ];
        let h = judged(&stores, &regions, &[]);
        assert_eq!(h.verdict, Verdict::Healthy, "{h:?}");
    }

    #[test]
    fn one_store_down_of_three_is_degraded_and_two_is_unhealthy() {
        let regions = [region(1, &[1, 2, 3], Some(1))];
        let one = [store(1, FRESH), store(2, FRESH), store(3, STALE)];
        let h = judged(&one, &regions, &[]);
        assert_eq!(h.verdict, Verdict::Degraded, "{h:?}");
        assert_eq!(h.under_replicated, [1]);

        let two = [store(1, FRESH), store(2, STALE), store(3, None)];
        let h = judged(&two, &regions, &[]);
        assert_eq!(h.verdict, Verdict::Unhealthy, "{h:?}");
        assert_eq!(h.without_quorum, [1]);
    }

    #[test]
    fn a_stopping_store_is_not_counted_live_while_its_heartbeat_is_fresh() {
        let mut stopping = store(3, FRESH);
        stopping.1.stopping = true;
        let stores = [store(1, FRESH), store(2, FRESH), stopping];
        let regions = [region(1, &[1, 2, 3], Some(1))];
        let h = judged(&stores, &regions, &[]);
        assert_eq!(h.verdict, Verdict::Degraded, "{h:?}");
        assert_eq!(h.under_replicated, [1]);
        assert!(text(&h)[1].contains("1 stopping"), "{:?}", text(&h));
    }

    #[test]
    fn a_leader_on_a_down_store_or_none_is_leaderless() {
        let stores = [store(1, FRESH), store(2, FRESH), store(3, STALE)];
        let regions = [region(1, &[1, 2, 3], Some(3)), region(2, &[1, 2, 3], None)];
        let h = judged(&stores, &regions, &[]);
        assert_eq!(h.leaderless, [1, 2]);
        assert_eq!(h.verdict, Verdict::Unhealthy);
        assert!(text(&h).last().unwrap().starts_with("UNHEALTHY"));
    }

    #[test]
    fn a_store_or_pd_member_that_does_not_answer_a_probe_is_down_at_once() {
        let stores = [store(1, FRESH), store(2, FRESH), store(3, FRESH)];
        let regions = [region(1, &[1, 2, 3], Some(1))];
        let h = judged(&stores, &regions, &[3]);
        assert_eq!(h.verdict, Verdict::Degraded, "{h:?}");
        assert_eq!(h.stores[2].state, "down");
        let h = judged(&stores, &regions, &[2, 3]);
        assert_eq!(
            h.verdict,
            Verdict::Unhealthy,
            "two of three stores silent: {h:?}"
        );

        let c = cluster();
        let o = Observed {
            stores: &stores,
            regions: &regions,
            cluster: &c,
            operators: &[],
            unanswered: &[],
            pd_members: vec![
                PdMemberHealth {
                    name: "pd1".into(),
                    leader: true,
                    state: "up",
                },
                PdMemberHealth {
                    name: "pd2".into(),
                    leader: false,
                    state: "down",
                },
            ],
        };
        let h = judge(o, AFTER);
        assert_eq!(h.verdict, Verdict::Degraded, "a PD member down: {h:?}");
        assert_eq!(text(&h)[0], "pd members: pd1 (leader) up, pd2 down");
    }
}
