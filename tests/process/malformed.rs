//! Malformed, truncated, oversized and out-of-range requests sent as raw bytes over gRPC
//! to a store and to PD. Each bad request gets a clear error (a gRPC status, or an error
//! in the response that names the problem), no process dies, and afterwards the database
//! holds exactly what it held and takes writes.

use crate::common;

use std::{io::Read, sync::Arc, time::Duration};

use common::{client, voters, wait_until, ProcCluster};
use grpcio::{
    CallOption, ChannelBuilder, Client, EnvBuilder, GrpcSlice, Marshaller, MessageReader, Method,
    MethodType, RpcStatusCode,
};
use proto::{errorpb, kvrpcpb, pdpb};
use protobuf::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};

#[allow(clippy::ptr_arg)] // grpcio's serializer signature for a `Vec<u8>` message
fn raw_ser(b: &Vec<u8>, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    *buf = GrpcSlice::from(b.clone());
    Ok(())
}

fn raw_de(mut r: MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut v = vec![];
    r.read_to_end(&mut v).expect("read a response from memory");
    Ok(v)
}

const RAW: Marshaller<Vec<u8>> = Marshaller {
    ser: raw_ser,
    de: raw_de,
};

fn unary(name: &'static str) -> Method<Vec<u8>, Vec<u8>> {
    Method {
        ty: MethodType::Unary,
        name,
        req_mar: RAW,
        resp_mar: RAW,
    }
}

fn call(c: &Client, name: &'static str, body: &[u8]) -> grpcio::Result<Vec<u8>> {
    let opt = CallOption::default().timeout(Duration::from_secs(20));
    c.unary_call(&unary(name), &body.to_vec(), opt)
}

/// The error a store's answer carries, if any (region error or key-level error).
fn store_error(resp: &[u8]) -> Option<String> {
    // Every raw response starts with `region_error = 1`; most have `error = 2`.
    let mut r = kvrpcpb::RawPutResponse::default();
    if r.merge_from_bytes(resp).is_err() {
        let mut s = kvrpcpb::RawScanResponse::default();
        s.merge_from_bytes(resp).expect("a raw response");
        return s
            .has_region_error()
            .then(|| s.get_region_error().get_message().to_string());
    }
    if r.has_region_error() {
        Some(region_error_text(r.get_region_error()))
    } else if !r.get_error().is_empty() {
        Some(r.get_error().to_string())
    } else {
        None
    }
}

fn region_error_text(e: &errorpb::Error) -> String {
    format!("{} ({e:?})", e.get_message())
}

/// Asserts that a request was refused with a message that mentions `why`.
fn assert_refused(res: grpcio::Result<Vec<u8>>, why: &str, what: &str) {
    let text = match res {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_ne!(s.code(), RpcStatusCode::OK, "{what}");
            format!("{:?}: {}", s.code(), s.message())
        }
        Err(e) => panic!("{what}: not a clear refusal: {e}"),
        Ok(resp) => store_error(&resp).unwrap_or_else(|| panic!("{what} was accepted")),
    };
    assert!(
        text.to_lowercase().contains(&why.to_lowercase()),
        "{what}: {text:?} does not mention {why:?}"
    );
}

/// Asserts that PD's answer carries an error in its header that mentions `why`, and
/// nothing else (any response's header is field 1, so one type parses them all).
fn assert_pd_refused(resp: &[u8], why: &str, what: &str) {
    let r = pdpb::AskBatchSplitResponse::parse_from_bytes(resp).expect("a PD response");
    let text = r.get_header().get_error().get_message();
    assert!(
        text.contains(why) && r.get_ids().is_empty(),
        "{what}: {r:?} does not mention {why:?}"
    );
}

const STORE_WRITES: [&str; 7] = [
    "/tikvpb.Tikv/RawPut",
    "/tikvpb.Tikv/RawBatchPut",
    "/tikvpb.Tikv/RawDelete",
    "/tikvpb.Tikv/RawBatchDelete",
    "/tikvpb.Tikv/RawDeleteRange",
    "/tikvpb.Tikv/RawCompareAndSwap",
    "/tikvpb.Tikv/SplitRegion",
];
const STORE_READS: [&str; 3] = [
    "/tikvpb.Tikv/RawGet",
    "/tikvpb.Tikv/RawBatchGet",
    "/tikvpb.Tikv/RawScan",
];
const PD_CALLS: [&str; 10] = [
    "/pdpb.PD/GetRegion",
    "/pdpb.PD/GetRegionByID",
    "/pdpb.PD/ScanRegions",
    "/pdpb.PD/GetStore",
    "/pdpb.PD/PutStore",
    "/pdpb.PD/StoreHeartbeat",
    "/pdpb.PD/AskBatchSplit",
    "/pdpb.PD/ReportBatchSplit",
    "/pdpb.PD/AllocID",
    "/pdpb.PD/Bootstrap",
];

/// Bytes no protobuf decoder accepts: a zero tag, a field longer than the message, a
/// varint that never ends, a known field with the wrong wire type.
fn undecodable() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("field number zero", vec![0x00, 0x01]),
        (
            "length past the end",
            vec![0x12, 0xff, 0xff, 0xff, 0x0f, b'k'],
        ),
        (
            "endless varint",
            vec![
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
        ("wrong wire type", vec![0x12 - 2, 0x01, 0x0b]),
    ]
}

/// A valid request cut inside its key field: the declared length runs past the end.
fn truncated_puts() -> Vec<Vec<u8>> {
    let mut put = kvrpcpb::RawPutRequest::default();
    put.set_key(b"truncated-key".to_vec());
    put.set_value(b"value".to_vec());
    let bytes = put.write_to_bytes().unwrap();
    // Field 2 (key): tag, length, then the key's bytes; cut anywhere inside them.
    let key_start = 2;
    (key_start + 1..key_start + put.get_key().len())
        .map(|cut| bytes[..cut].to_vec())
        .collect()
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let mut cluster = ProcCluster::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&rt, &cluster.pd_addr);
    wait_until("one voter", Duration::from_secs(60), || {
        voters(&rt, &c) == 1
    });
    for i in 0..20 {
        rt.block_on(c.put(format!("k{i:02}").as_bytes(), b"before"))
            .unwrap();
    }
    let before = rt.block_on(c.scan(b"", b"", 1000)).unwrap();
    let store_addr = rt.block_on(c.stores()).unwrap()[0]
        .0
        .get_address()
        .to_string();
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let channel = |addr: &str| {
        Client::new(
            ChannelBuilder::new(env.clone())
                .max_send_message_len(128 << 20)
                .connect(addr),
        )
    };
    let (store, pd) = (channel(&store_addr), channel(&cluster.pd_addr));

    // Undecodable bytes, to every method of both services.
    for name in STORE_WRITES.iter().chain(&STORE_READS).chain(&PD_CALLS) {
        let target = if name.starts_with("/pdpb") {
            &pd
        } else {
            &store
        };
        for (what, bytes) in undecodable() {
            match call(target, name, &bytes) {
                Err(grpcio::Error::RpcFailure(s)) => assert_ne!(s.code(), RpcStatusCode::OK),
                other => panic!("{name} with {what}: decoded? {other:?}"),
            }
        }
    }
    for (i, bytes) in truncated_puts().into_iter().enumerate() {
        assert!(
            call(&store, "/tikvpb.Tikv/RawPut", &bytes).is_err(),
            "truncated put {i} decoded"
        );
    }
    // Random bytes to the read-only methods: whatever they decode to, an answer comes back.
    let mut rng = StdRng::seed_from_u64(8);
    for _ in 0..200 {
        let len = rng.gen_range(0..256);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        for name in STORE_READS {
            let _ = call(&store, name, &bytes);
        }
        for name in [
            "/pdpb.PD/GetRegion",
            "/pdpb.PD/ScanRegions",
            "/pdpb.PD/GetRegionByID",
            "/pdpb.PD/GetStore",
        ] {
            let _ = call(&pd, name, &bytes);
        }
    }

    // Oversized: past the gRPC message limit, and past the Raft entry limit.
    let mut put = kvrpcpb::RawPutRequest::default();
    put.set_key(b"huge".to_vec());
    put.set_value(vec![b'x'; 65 << 20]);
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/RawPut",
            &put.write_to_bytes().unwrap(),
        ),
        "larger than max",
        "a 65 MiB put",
    );
    put.set_value(vec![b'x'; 9 << 20]);
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/RawPut",
            &put.write_to_bytes().unwrap(),
        ),
        "raft-entry-max-size",
        "a 9 MiB put",
    );

    // Out of range.
    let mut get = kvrpcpb::RawGetRequest::default();
    get.set_key(b"k01".to_vec());
    get.mut_context().set_region_id(999_999);
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/RawGet",
            &get.write_to_bytes().unwrap(),
        ),
        "999999",
        "an unknown region",
    );
    let mut put = kvrpcpb::RawPutRequest::default();
    put.set_key(b"k01".to_vec());
    put.set_value(b"changed".to_vec());
    put.set_cf("raft".into());
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/RawPut",
            &put.write_to_bytes().unwrap(),
        ),
        "column family",
        "the raft cf",
    );
    put.set_cf(String::new());
    put.set_key(vec![]);
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/RawPut",
            &put.write_to_bytes().unwrap(),
        ),
        "empty",
        "an empty key",
    );
    let mut range = kvrpcpb::RawDeleteRangeRequest::default();
    range.set_start_key(b"k10".to_vec());
    range.set_end_key(b"k00".to_vec());
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/RawDeleteRange",
            &range.write_to_bytes().unwrap(),
        ),
        "must be before end",
        "a backwards range",
    );
    let mut split = kvrpcpb::SplitRegionRequest::default();
    for i in 0..10_000 {
        split.mut_split_keys().push(format!("s{i:05}").into_bytes());
    }
    assert_refused(
        call(
            &store,
            "/tikvpb.Tikv/SplitRegion",
            &split.write_to_bytes().unwrap(),
        ),
        "max-split-keys",
        "10000 split keys",
    );
    let mut scan = kvrpcpb::RawScanRequest::default();
    scan.set_start_key(b"k".to_vec());
    scan.set_limit(u32::MAX);
    let resp = call(
        &store,
        "/tikvpb.Tikv/RawScan",
        &scan.write_to_bytes().unwrap(),
    )
    .expect("a bounded scan");
    let resp = kvrpcpb::RawScanResponse::parse_from_bytes(&resp).unwrap();
    assert!(
        resp.has_region_error() || resp.get_kvs().len() == before.len(),
        "{resp:?}"
    );
    let mut by_id = pdpb::GetRegionByIDRequest::default();
    by_id.set_region_id(u64::MAX);
    let resp = call(
        &pd,
        "/pdpb.PD/GetRegionByID",
        &by_id.write_to_bytes().unwrap(),
    );
    let resp = pdpb::GetRegionResponse::parse_from_bytes(&resp.expect("an answer")).unwrap();
    assert!(!resp.has_region(), "{resp:?}");
    // An absurd split count for a real region, from a caller with and without the
    // cluster secret: refused for the count, or for the missing secret.
    let region = rt.block_on(c.regions()).unwrap().remove(0).region;
    let mut ask = pdpb::AskBatchSplitRequest::default();
    ask.set_region(region);
    ask.set_split_count(u32::MAX);
    let ask = ask.write_to_bytes().unwrap();
    let secret = util::secret::ClusterSecret::load(
        &common::secret_of(&cluster.pd_addr).expect("the cluster's secret"),
    )
    .unwrap();
    let mut headers = grpcio::MetadataBuilder::new();
    headers
        .add_str(util::secret::HEADER, secret.as_str())
        .unwrap();
    let with_secret = CallOption::default()
        .timeout(Duration::from_secs(20))
        .headers(headers.build());
    let answer = pd
        .unary_call(&unary("/pdpb.PD/AskBatchSplit"), &ask, with_secret)
        .expect("an answer");
    assert_pd_refused(&answer, "pd.max-batch-split", "split count u32::MAX");
    let answer = call(&pd, "/pdpb.PD/AskBatchSplit", &ask).expect("an answer");
    assert_pd_refused(
        &answer,
        "cluster secret",
        "a split asked without the secret",
    );

    // Nothing died, nothing changed, and writes still work.
    assert!(
        cluster.pds[0].as_mut().is_some_and(|p| p.is_running()),
        "PD is up"
    );
    assert!(
        cluster.stores[0].as_mut().unwrap().is_running(),
        "the store is up"
    );
    assert_eq!(
        rt.block_on(c.scan(b"", b"", 1000)).unwrap(),
        before,
        "the database changed"
    );
    rt.block_on(c.put(b"after", b"ok")).unwrap();
    assert_eq!(
        rt.block_on(c.get(b"after")).unwrap().as_deref(),
        Some(&b"ok"[..])
    );
}
