//! TiKV's BatchCommands stream against a kv-server, spoken on the wire as TiKV's Go
//! client speaks it: answers come back by request id; a malformed message ends the
//! stream with INVALID_ARGUMENT and serves nothing of it (also one of too many requests,
//! counted before it is decoded), while a command the store does not serve is answered
//! alone, empty; and a store or a stream with too many requests in flight answers
//! server_is_busy at once. The project's own client sends
//! everything on such streams; a busy store only slows it down.

use crate::common;

use std::{collections::HashMap, time::Duration};

use common::{client, metric, wait_until, ProcCluster};
use futures::{SinkExt, TryStreamExt};
use grpcio::{ChannelBuilder, EnvBuilder, RpcStatusCode, WriteFlags};
use proto::{
    kvrpcpb,
    tikvpb::{
        BatchCommandsEmptyRequest, BatchCommandsRequest, BatchCommandsRequest_Request,
        BatchCommandsRequest_Request_oneof_cmd as Cmd,
        BatchCommandsResponse_Response_oneof_cmd as Answer,
    },
};
use proto_grpc::tikvpb_grpc::TikvClient;
use protobuf::Message as _;

const T: Duration = Duration::from_secs(60);

pub(crate) fn store_client(addr: &str) -> TikvClient {
    let env = std::sync::Arc::new(EnvBuilder::new().cq_count(1).build());
    TikvClient::new(ChannelBuilder::new(env).connect(addr))
}

pub(crate) fn put(key: &str, value: &str) -> Cmd {
    let mut req = kvrpcpb::RawPutRequest::default();
    req.set_key(key.into());
    req.set_value(value.into());
    Cmd::RawPut(req)
}

pub(crate) fn get(key: &str) -> Cmd {
    let mut req = kvrpcpb::RawGetRequest::default();
    req.set_key(key.into());
    Cmd::RawGet(req)
}

pub(crate) fn message(cmds: Vec<(u64, Option<Cmd>)>) -> BatchCommandsRequest {
    let mut msg = BatchCommandsRequest::default();
    for (id, cmd) in cmds {
        let req = BatchCommandsRequest_Request {
            cmd,
            ..Default::default()
        };
        msg.mut_request_ids().push(id);
        msg.mut_requests().push(req);
    }
    msg
}

/// Answers by request id (`None`: an empty answer, to a command the store does not
/// serve).
type Answers = HashMap<u64, Option<Answer>>;

/// Sends `msgs` on one stream, closes it, and collects the answers by id, and the
/// status the stream failed with, if it failed.
fn exchange(
    rt: &tokio::runtime::Runtime,
    store: &TikvClient,
    msgs: Vec<BatchCommandsRequest>,
) -> (Answers, Option<grpcio::RpcStatus>) {
    // A request the store never answers must fail the test, not hang it.
    let exchanged = async {
        let (mut sink, mut answers) = store.batch_commands().expect("open a stream");
        let mut got = HashMap::new();
        let sent: grpcio::Result<()> = async {
            for msg in msgs {
                sink.send((msg, WriteFlags::default())).await?;
            }
            sink.close().await
        }
        .await;
        loop {
            match answers.try_next().await {
                Ok(Some(mut msg)) => {
                    let ids = msg.take_request_ids();
                    for (id, resp) in ids.into_iter().zip(msg.take_responses()) {
                        let fresh = got.insert(id, resp.cmd).is_none();
                        assert!(fresh, "request {id} answered twice");
                    }
                }
                Ok(None) => return (got, None),
                Err(grpcio::Error::RpcFailure(s)) => return (got, Some(s)),
                Err(e) => panic!("the stream broke: {e} (sending: {sent:?})"),
            }
        }
    };
    rt.block_on(async { tokio::time::timeout(T, exchanged).await })
        .expect("the store answered and ended the stream in time")
}

/// The answers of a stream that must end cleanly.
fn served(exchanged: (Answers, Option<grpcio::RpcStatus>)) -> Answers {
    match exchanged {
        (answers, None) => answers,
        (_, Some(s)) => panic!("the stream failed: {s:?}"),
    }
}

fn value_of(answers: &Answers, id: u64) -> Option<Vec<u8>> {
    match answers.get(&id) {
        Some(Some(Answer::RawGet(r))) => {
            assert!(!r.has_region_error() && r.get_error().is_empty(), "{r:?}");
            (!r.not_found).then(|| r.get_value().to_vec())
        }
        other => panic!("request {id}: {other:?}"),
    }
}

fn put_ok(answers: &Answers, id: u64) {
    match answers.get(&id) {
        Some(Some(Answer::RawPut(r))) => {
            assert!(!r.has_region_error() && r.get_error().is_empty(), "{r:?}")
        }
        other => panic!("request {id}: {other:?}"),
    }
}

/// The answers a stream gave before it failed with INVALID_ARGUMENT naming `why`.
fn refused(exchanged: (Answers, Option<grpcio::RpcStatus>), why: &str) -> Answers {
    match exchanged {
        (answers, Some(s)) => {
            assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT, "{s:?}");
            assert!(s.message().contains(why), "{s:?}");
            answers
        }
        (answers, None) => panic!("not refused: {answers:?}"),
    }
}

#[test]
fn a_batch_stream_answers_each_request_by_its_id_and_refuses_a_malformed_message_whole() {
    let cluster = ProcCluster::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = store_client(&format!("127.0.0.1:{}", cluster.store_addrs[0].0));
    let ours = client(&rt, &cluster.pd_addr);
    wait_until("the store serves", T, || {
        rt.block_on(ours.put(b"probe", b"1")).is_ok()
    });

    // Ids are the client's to choose: out of order, sparse, large.
    let empty = BatchCommandsEmptyRequest {
        test_id: 77,
        ..Default::default()
    };
    let first = message(vec![
        (9, Some(put("a", "1"))),
        (u64::MAX, Some(put("b", "2"))),
        (3, Some(Cmd::Empty(empty))),
    ]);
    let second = message(vec![
        (4, Some(get("a"))),
        (5, Some(get("b"))),
        (6, Some(get("c"))),
    ]);
    let answers = served(exchange(&rt, &store, vec![first]));
    assert_eq!(answers.len(), 3, "{answers:?}");
    put_ok(&answers, 9);
    put_ok(&answers, u64::MAX);
    match &answers[&3] {
        Some(Answer::Empty(r)) => assert_eq!(r.test_id, 77),
        other => panic!("{other:?}"),
    }
    let answers = served(exchange(&rt, &store, vec![second]));
    assert_eq!(value_of(&answers, 4), Some(b"1".to_vec()));
    assert_eq!(value_of(&answers, 5), Some(b"2".to_vec()));
    assert_eq!(value_of(&answers, 6), None);

    // Malformed: the stream ends naming the problem, no request of the message is
    // served, and what an earlier message asked is answered first.
    let mut uneven = message(vec![(1, Some(put("x", "1")))]);
    uneven.mut_request_ids().push(2);
    let before = message(vec![(7, Some(put("w", "1")))]);
    let answers = refused(
        exchange(&rt, &store, vec![before, uneven]),
        "1 requests but 2 request ids",
    );
    put_ok(&answers, 7);
    // A request with no command this store serves (none; TiKV's Coprocessor, field 22)
    // is answered alone, empty, as TiKV answers it; the rest of its message is served.
    let mut unknown = message(vec![(1, Some(put("y", "1"))), (2, None), (3, None)]);
    unknown.mut_requests()[2]
        .mut_unknown_fields()
        .add_length_delimited(22, vec![]);
    let answers = served(exchange(&rt, &store, vec![unknown]));
    put_ok(&answers, 1);
    assert!(
        answers[&2].is_none() && answers[&3].is_none(),
        "{answers:?}"
    );
    // Counted before it is decoded: 10,000 empty requests are 20 KB on the wire.
    let flood = message((0..10_000).map(|i| (i, None)).collect());
    let answers = refused(exchange(&rt, &store, vec![flood]), "more than the 4096");
    assert!(answers.is_empty(), "{answers:?}");
    let read = |key: &[u8]| rt.block_on(ours.get(key)).expect("read");
    assert_eq!(read(b"x"), None, "x was written by a refused message");
    assert_eq!(read(b"w"), Some(b"1".to_vec()));
    assert_eq!(read(b"y"), Some(b"1".to_vec()));

    // The project's client sends its requests on such a stream.
    let status = cluster.status_addr(0);
    let before = metric(
        &cluster.status_get(&status, "/metrics").unwrap(),
        "flotilla_server_batch_requests_per_message_count",
    );
    rt.block_on(ours.put(b"z", b"1")).expect("put");
    assert_eq!(
        rt.block_on(ours.get(b"z")).expect("get"),
        Some(b"1".to_vec())
    );
    let text = cluster.status_get(&status, "/metrics").unwrap();
    let after = metric(&text, "flotilla_server_batch_requests_per_message_count");
    assert!(after >= before + 2.0, "{before} -> {after}");
}

#[test]
fn a_store_with_too_many_requests_in_flight_answers_busy_and_the_client_backs_off() {
    let cluster = ProcCluster::start_with(
        1,
        "\n[server]\nmax-inflight-requests = 2\nstream-max-inflight = 8\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = store_client(&format!("127.0.0.1:{}", cluster.store_addrs[0].0));
    let ours = client(&rt, &cluster.pd_addr);
    wait_until("the store serves", T, || {
        rt.block_on(ours.put(b"probe", b"1")).is_ok()
    });

    // 64 writes on one stream, all read before the first is done: two are served, six
    // more fit the stream's window but not the store, and the rest find the window
    // full; all of those are refused at once rather than queued.
    let cmds = (0..64)
        .map(|i| (i, Some(put(&format!("k{i:02}"), "v"))))
        .collect();
    let answers = served(exchange(&rt, &store, vec![message(cmds)]));
    assert_eq!(answers.len(), 64);
    let (mut store_busy, mut stream_busy) = (0, 0);
    for answer in answers.values() {
        let Some(Answer::RawPut(r)) = answer else {
            panic!("{answer:?}")
        };
        let reason = r.get_region_error().get_server_is_busy().get_reason();
        if reason.contains("server.max-inflight-requests") {
            store_busy += 1;
        } else if reason.contains("server.stream-max-inflight") {
            stream_busy += 1;
        } else {
            assert!(!r.has_region_error() && r.get_error().is_empty(), "{r:?}");
        }
    }
    let busy = store_busy + stream_busy;
    assert!(
        store_busy > 0 && stream_busy > 0,
        "{store_busy} / {stream_busy}"
    );
    assert!(busy >= 32, "only {busy} of 64 writes were refused busy");
    let text = cluster
        .status_get(&cluster.status_addr(0), "/metrics")
        .unwrap();
    assert!(metric(&text, "flotilla_server_busy_total") >= busy as f64);

    // The client backs off and retries a busy answer: many writes at once all land.
    let keys: Vec<Vec<u8>> = (0..32).map(|i| format!("c{i:02}").into_bytes()).collect();
    rt.block_on(futures::future::try_join_all(
        keys.iter().map(|k| ours.put(k, b"v")),
    ))
    .expect("every write lands");
    for k in &keys {
        assert_eq!(rt.block_on(ours.get(k)).expect("read"), Some(b"v".to_vec()));
    }
}

/// A store that does not serve BatchCommands (one of an older version; here the fail
/// point `batch_commands_unimplemented`) still serves the project's client: the client
/// learns it from the stream's first answer and sends every request unary.
#[test]
fn a_store_without_the_stream_serves_the_client_by_unary_calls() {
    let cluster = ProcCluster::one_store_with_failpoints("batch_commands_unimplemented=return");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ours = client(&rt, &cluster.pd_addr);
    let keys: Vec<Vec<u8>> = (0..16).map(|i| format!("u{i:02}").into_bytes()).collect();
    for k in &keys {
        rt.block_on(ours.put(k, b"v")).expect("a write, unary");
    }
    for k in &keys {
        assert_eq!(
            rt.block_on(ours.get(k)).expect("a read, unary"),
            Some(b"v".to_vec())
        );
    }
    // The fail point took effect: the store refuses the stream.
    let store = store_client(&format!("127.0.0.1:{}", cluster.store_addrs[0].0));
    let (_, status) = exchange(&rt, &store, vec![message(vec![(1, Some(get("k")))])]);
    let status = status.expect("the stream is refused");
    assert_eq!(status.code(), RpcStatusCode::UNIMPLEMENTED, "{status:?}");
}
