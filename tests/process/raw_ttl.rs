//! Raw TTL as users reach it: `kvctl put --ttl` and `kvctl ttl`, TiKV's client's
//! `put_with_ttl` and `get_key_ttl_secs`, and a RawBatchPut that sets both `ttl` and
//! `ttls` refused by name.

use crate::common;

use std::time::Duration;

use common::{wait_until, ProcCluster};
use proto::kvrpcpb;

const T: Duration = Duration::from_secs(30);

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn keys_written_with_a_ttl_expire_for_kvctl_and_tikv_client() {
    let cluster = ProcCluster::start(1);
    let pd = cluster.pd_addr.clone();
    let kvctl = |args: &[&str]| common::kvctl(&pd, args);

    let out = kvctl(&["put", "lease", "l1", "--ttl", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kvctl(&["ttl", "lease"]);
    assert!(out.status.success(), "{}", text(&out));
    let left: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("seconds");
    assert!((50..=60).contains(&left), "{left}");
    assert_eq!(
        String::from_utf8_lossy(&kvctl(&["get", "lease"]).stdout),
        "l1\n"
    );
    let out = kvctl(&["put", "session", "s1", "--ttl", "1s"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kvctl(&["put", "bad", "x", "--ttl", "1500ms"]);
    assert!(
        !out.status.success() && text(&out).contains("whole seconds"),
        "{}",
        text(&out)
    );
    wait_until("the key expires", T, || {
        !kvctl(&["get", "session"]).status.success()
    });
    let out = kvctl(&["ttl", "session"]);
    assert!(
        !out.status.success() && text(&out).contains("not found"),
        "{}",
        text(&out)
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tikv = tikv_client::RawClient::new(vec![pd.clone()]).await.unwrap();
        tikv.put_with_ttl("lease".to_owned(), "x".to_owned(), 600)
            .await
            .expect("put with ttl");
        let left = tikv.get_key_ttl_secs("lease".to_owned()).await.unwrap();
        assert!(left.is_some_and(|t| (590..=600).contains(&t)), "{left:?}");
        tikv.put("plain".to_owned(), "y".to_owned()).await.unwrap();
        assert_eq!(
            tikv.get_key_ttl_secs("plain".to_owned()).await.unwrap(),
            Some(0)
        );
        assert_eq!(
            tikv.get_key_ttl_secs("nothing".to_owned()).await.unwrap(),
            None
        );
    });

    // Both the deprecated single ttl and per-pair ttls: refused, nothing written.
    let ours = common::client(&rt, &pd);
    let route = rt.block_on(ours.pd().get_region(b"both")).unwrap();
    let leader = route.leader.clone().expect("a leader");
    let (store, _) = rt
        .block_on(ours.pd().get_store(leader.get_store_id()))
        .unwrap();
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let tikv = proto_grpc::tikvpb_grpc::TikvClient::new(
        grpcio::ChannelBuilder::new(env).connect(store.get_address()),
    );
    let mut req = kvrpcpb::RawBatchPutRequest::default();
    let ctx = req.mut_context();
    ctx.set_region_id(route.region.get_id());
    ctx.set_region_epoch(route.region.get_region_epoch().clone());
    ctx.set_peer(leader);
    let mut p = kvrpcpb::KvPair::default();
    p.set_key(b"both".to_vec());
    p.set_value(b"v".to_vec());
    req.mut_pairs().push(p);
    req.ttl = 5;
    req.mut_ttls().push(5);
    let resp = tikv.raw_batch_put(&req).expect("an answer");
    assert!(resp.get_error().contains("ttls"), "{resp:?}");
    assert_eq!(rt.block_on(ours.get(b"both")).unwrap(), None);
}
