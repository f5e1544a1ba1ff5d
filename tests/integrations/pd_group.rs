//! PD as a Raft group of three members in this process: the group outlives its leader,
//! ids are never handed out twice and timestamps only rise across failovers, a restarted
//! member catches up, and a member that disagrees with the others is refused.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use conf::Validate;
use pd_client::PdClient;
use test_cluster::pd_group::{member_config, PdGroup};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn the_pd_group_outlives_its_leader_with_unique_ids_and_rising_timestamps() {
    let _gate = test_cluster::gate::shared();
    let mut group = PdGroup::start(3);
    let rt = runtime();
    let secret = util::secret::ClusterSecret::load(&group.secret_file()).expect("secret");
    let pd = rt
        .block_on(PdClient::connect_as_store(
            &group.endpoints(),
            Duration::from_secs(20),
            util::security::Credentials::with_secret(Some(secret)),
            util::logger::discard(),
        ))
        .expect("connect");
    let mut ids = HashSet::new();
    let mut last_ts = 0;
    let mut leaders = HashSet::new();
    for round in 0..4 {
        for _ in 0..30 {
            let id = rt.block_on(pd.alloc_id()).expect("alloc id");
            assert!(ids.insert(id), "id {id} handed out twice");
            let ts = rt.block_on(pd.get_ts()).expect("timestamp");
            assert!(ts > last_ts, "timestamp {ts} after {last_ts}");
            last_ts = ts;
        }
        let leader = group.wait_leader(Duration::from_secs(10));
        leaders.insert(leader);
        let killed = Instant::now();
        group.stop(leader);
        let ts = rt.block_on(pd.get_ts()).expect("timestamp after failover");
        println!(
            "round {round}: pd leader pd{} stopped; next timestamp after {:?}",
            leader + 1,
            killed.elapsed()
        );
        assert!(
            ts > last_ts,
            "timestamp {ts} after the failover is not above {last_ts}"
        );
        last_ts = ts;
        let new_leader = group.wait_leader(Duration::from_secs(10));
        assert_ne!(new_leader, leader, "a stopped member cannot lead");
        // Back on its data: the next round stops another member, and then this one is
        // needed for a quorum, so it must have caught up.
        group.restart(leader);
    }
    assert!(
        leaders.len() >= 2,
        "leadership moved between members: {leaders:?}"
    );
}

#[test]
fn a_member_that_lost_its_disk_is_replaced_through_join() {
    let _gate = test_cluster::gate::shared();
    let mut group = PdGroup::start(3);
    let rt = runtime();
    let pd = rt
        .block_on(PdClient::connect(
            &group.endpoints(),
            Duration::from_secs(20),
            util::logger::discard(),
        ))
        .expect("connect");
    let before = rt.block_on(pd.get_ts()).expect("timestamp");
    let leader = group.wait_leader(Duration::from_secs(10));
    let lost = (leader + 1) % 3;
    group.replace(lost);
    test_cluster::wait_until("the new member caught up", Duration::from_secs(20), || {
        group.status(lost).is_some_and(|s| s.cluster_id != 0)
    });
    let members = rt.block_on(pd.members()).expect("members");
    assert_eq!(members.get_members().len(), 3, "{members:?}");
    let replaced = members
        .get_members()
        .iter()
        .find(|m| m.get_name() == format!("pd{}", lost + 1))
        .expect("the replaced member is listed")
        .member_id;
    assert!(replaced > 3, "the new member has a new id: {replaced}");
    // It joined as a learner; the leader promotes it once it caught up.
    test_cluster::wait_until("the new member to vote", Duration::from_secs(20), || {
        group
            .status(leader)
            .is_some_and(|s| s.voters.len() == 3 && s.voters.contains(&replaced))
    });
    // With the third member down, the group needs the new one for a quorum.
    let third = (0..3)
        .find(|&j| j != leader && j != lost)
        .expect("a third member");
    group.stop(third);
    let after = rt
        .block_on(pd.get_ts())
        .expect("timestamp with the new member in the quorum");
    assert!(after > before);
}

#[test]
fn a_member_that_disagrees_with_the_group_is_refused_and_the_group_serves_on() {
    let _gate = test_cluster::gate::shared();
    let group = PdGroup::start(3);
    let tmp = tempfile::tempdir().expect("temp dir");
    let members = group.endpoints();
    let addr4 = format!("127.0.0.1:{}", test_cluster::free_port());

    // Another initial cluster than the one pd1 was started with.
    let other = format!("pd1={},pd4={addr4}", members[0]);
    let cfg = member_config("pd4", &addr4, tmp.path().join("a"), &other);
    let err = pd::PdServer::start(cfg, util::logger::discard())
        .err()
        .expect("a member with another initial cluster must not start");
    assert!(err.to_string().contains("initial cluster"), "{err}");

    // An address that answers under another name.
    let wrong = format!("pd2={},pd9={addr4}", members[2]);
    let cfg = member_config("pd9", &addr4, tmp.path().join("b"), &wrong);
    let err = pd::PdServer::start(cfg, util::logger::discard())
        .err()
        .expect("a member whose peers answer under other names must not start");
    assert!(err.to_string().contains("answers as pd member"), "{err}");

    // A name given twice.
    let twice = format!("pd1={},pd1={addr4}", members[0]);
    let cfg = member_config("pd1", &addr4, tmp.path().join("c"), &twice);
    let err = cfg.validate().expect_err("a name given twice is refused");
    assert!(err.to_string().contains("given twice"), "{err}");

    let rt = runtime();
    let pd = rt
        .block_on(PdClient::connect(
            &members,
            Duration::from_secs(10),
            util::logger::discard(),
        ))
        .expect("connect");
    rt.block_on(pd.get_ts()).expect("the group still serves");
}
