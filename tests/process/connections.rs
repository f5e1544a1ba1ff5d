//! A store under 1,000 client connections, each a BatchCommands stream kept full of
//! writes and reads, more than `server.max-inflight-requests` at once: every request is
//! answered (served, or refused server_is_busy at once, never left to time out), the
//! store's resident memory stays within its RocksDB budget plus a fixed overhead, and
//! afterwards it serves an ordinary client. Runs alone (`gate::alone`): it measures
//! memory and loads both cores.

use crate::common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{client, wait_until, ProcCluster};
use futures::{SinkExt, TryStreamExt};
use grpcio::{ChannelBuilder, EnvBuilder, WriteFlags};
use proto::tikvpb::BatchCommandsResponse_Response_oneof_cmd as Answer;
use proto_grpc::tikvpb_grpc::TikvClient;

use crate::batch_commands::{get, message, put};

const T: Duration = Duration::from_secs(60);
const CONNECTIONS: usize = 1000;
/// Requests each connection keeps in flight: 8,000 in all, against a store serving
/// at most `INFLIGHT` at once.
const PER_CONNECTION: u64 = 8;
const INFLIGHT: usize = 2048;
const LOAD: Duration = Duration::from_secs(10);
const BLOCK_CACHE_MIB: u64 = 32;
const MEMTABLE_MIB: u64 = 32;
/// What the store may use beyond RocksDB's budget: the same 320 MiB as under one
/// client (the `memory` test); 1,000 connections' buffers fit in it (measured: 142 MiB
/// in all at peak).
const OVERHEAD_MIB: u64 = 320;

/// Answers by kind, over every connection.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    busy: AtomicU64,
    failed: AtomicU64,
    /// Requests sent and never answered when their stream ended.
    unanswered: AtomicU64,
}

impl Tally {
    fn count(&self, answer: &Answer) {
        let (region_err, err) = match answer {
            Answer::RawPut(r) => (r.get_region_error(), r.get_error()),
            Answer::RawGet(r) => (r.get_region_error(), r.get_error()),
            other => panic!("an answer of another kind: {other:?}"),
        };
        // Busy for the limits only: a request that waited out its Raft timeout is also
        // answered server_is_busy, and must count as failed here.
        let reason = region_err.get_server_is_busy().get_reason();
        let limit = reason.contains("server.max-inflight-requests")
            || reason.contains("server.stream-max-inflight");
        let counter = match (limit, region_err.has_server_is_busy(), err) {
            (true, _, _) => &self.busy,
            (false, false, "") if region_err.get_message().is_empty() => &self.ok,
            _ => &self.failed,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// One connection: a stream on a channel of its own, sending `PER_CONNECTION` requests
/// at a time and waiting for their answers, until `until`.
async fn connection(store: TikvClient, n: usize, until: Instant, tally: Arc<Tally>) {
    let (mut sink, mut answers) = store.batch_commands().expect("open a stream");
    let mut round = 0u64;
    while Instant::now() < until {
        let cmds = (0..PER_CONNECTION)
            .map(|i| {
                let key = format!("c{n:04}-{:02}", (round + i) % 16);
                let cmd = if i % 2 == 0 {
                    put(&key, &"v".repeat(256))
                } else {
                    get(&key)
                };
                (round + i, Some(cmd))
            })
            .collect();
        if sink
            .send((message(cmds), WriteFlags::default()))
            .await
            .is_err()
        {
            break;
        }
        // Each of this round's ids answered exactly once, none other.
        let mut waiting: std::collections::HashSet<u64> = (round..round + PER_CONNECTION).collect();
        while !waiting.is_empty() {
            let Ok(Some(mut msg)) = answers.try_next().await else {
                tally.unanswered.fetch_add(waiting.len() as u64, Relaxed);
                return;
            };
            let ids = msg.take_request_ids();
            for (id, resp) in ids.into_iter().zip(msg.take_responses()) {
                assert!(waiting.remove(&id), "id {id} answered twice or never asked");
                tally.count(&resp.cmd.expect("an answer carries its command"));
            }
        }
        round += PER_CONNECTION;
    }
    let _ = sink.close().await;
}

#[test]
fn a_store_under_a_thousand_busy_connections_answers_every_request_within_its_memory() {
    let _alone = test_cluster::gate::alone();
    let settings = format!(
        "\n[storage]\nblock-cache-size = \"{BLOCK_CACHE_MIB}MiB\"\nmemtable-budget = \"{MEMTABLE_MIB}MiB\"\nwrite-buffer-size = \"8MiB\"\n\
         [server]\nmax-inflight-requests = {INFLIGHT}\n"
    );
    let mut cluster = ProcCluster::start_with(1, &settings);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ours = client(&rt, &cluster.pd_addr);
    wait_until("the store serves", T, || {
        rt.block_on(ours.put(b"probe", b"1")).is_ok()
    });
    let pid = cluster.stores[0]
        .as_mut()
        .and_then(|p| p.pid())
        .expect("the store runs");
    let addr = format!("127.0.0.1:{}", cluster.store_addrs[0].0);

    // A channel each, not shared: 1,000 TCP connections to the store.
    let env = Arc::new(EnvBuilder::new().cq_count(2).build());
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + LOAD;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|n| {
            let ch = ChannelBuilder::new(env.clone())
                .use_local_subchannel_pool(true)
                .connect(&addr);
            rt.spawn(connection(TikvClient::new(ch), n, until, tally.clone()))
        })
        .collect();
    let mut peak = 0;
    while Instant::now() < until + Duration::from_secs(1) {
        peak = peak.max(common::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(T, t)
                .await
                .expect("a connection ends")
                .expect("no panic");
        }
    });

    let [ok, busy, failed, unanswered] =
        [&tally.ok, &tally.busy, &tally.failed, &tally.unanswered].map(|c| c.load(Relaxed));
    let budget = (BLOCK_CACHE_MIB + MEMTABLE_MIB + OVERHEAD_MIB) << 20;
    eprintln!(
        "{CONNECTIONS} connections for {LOAD:?}: {ok} served, {busy} busy, {failed} failed, \
         {unanswered} unanswered; peak RSS {} MiB (allowed {} MiB)",
        peak >> 20,
        budget >> 20
    );
    assert_eq!(
        (failed, unanswered),
        (0, 0),
        "every request is served or refused busy"
    );
    assert!(ok > 0, "nothing was served");
    assert!(
        busy > 0,
        "the load never passed server.max-inflight-requests"
    );
    assert!(
        peak < budget,
        "peak RSS {} MiB over {} MiB",
        peak >> 20,
        budget >> 20
    );
    rt.block_on(ours.put(b"after", b"1"))
        .expect("a write after the load");
    assert_eq!(
        rt.block_on(ours.get(b"after")).expect("read"),
        Some(b"1".to_vec())
    );
}
