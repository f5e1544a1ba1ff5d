//! The raw calls of `tikvpb.Tikv`, one function each: a wire request in, its answer out,
//! on storage this store serves. `service.rs` routes them (here, or forwarded) and turns
//! errors into the response's; a unary call and a request on a BatchCommands stream both
//! end here.

use proto::kvrpcpb;

use crate::{storage::RawStorage, Error, Result};

pub(crate) async fn get(
    s: RawStorage,
    req: kvrpcpb::RawGetRequest,
) -> Result<kvrpcpb::RawGetResponse> {
    let mut resp = kvrpcpb::RawGetResponse::default();
    match s
        .get(req.get_context(), req.get_cf(), req.get_key())
        .await?
    {
        Some(v) => resp.set_value(v),
        None => resp.not_found = true,
    }
    Ok(resp)
}

pub(crate) async fn batch_get(
    s: RawStorage,
    req: kvrpcpb::RawBatchGetRequest,
) -> Result<kvrpcpb::RawBatchGetResponse> {
    let pairs = s
        .batch_get(req.get_context(), req.get_cf(), req.get_keys())
        .await?;
    let mut resp = kvrpcpb::RawBatchGetResponse::default();
    resp.set_pairs(kv_pairs(pairs));
    Ok(resp)
}

pub(crate) async fn put(
    s: RawStorage,
    req: kvrpcpb::RawPutRequest,
) -> Result<kvrpcpb::RawPutResponse> {
    let pair = [(req.get_key().to_vec(), req.get_value().to_vec())];
    s.batch_put_ttl(req.get_context(), req.get_cf(), &pair, &[req.ttl])
        .await?;
    Ok(kvrpcpb::RawPutResponse::default())
}

pub(crate) async fn batch_put(
    s: RawStorage,
    req: kvrpcpb::RawBatchPutRequest,
) -> Result<kvrpcpb::RawBatchPutResponse> {
    let pairs = pairs_of(req.get_pairs());
    let ttls = batch_ttls(&req, pairs.len())?;
    s.batch_put_ttl(req.get_context(), req.get_cf(), &pairs, &ttls)
        .await?;
    Ok(kvrpcpb::RawBatchPutResponse::default())
}

pub(crate) async fn delete(
    s: RawStorage,
    req: kvrpcpb::RawDeleteRequest,
) -> Result<kvrpcpb::RawDeleteResponse> {
    s.batch_delete(req.get_context(), req.get_cf(), &[req.get_key().to_vec()])
        .await?;
    Ok(kvrpcpb::RawDeleteResponse::default())
}

pub(crate) async fn batch_delete(
    s: RawStorage,
    req: kvrpcpb::RawBatchDeleteRequest,
) -> Result<kvrpcpb::RawBatchDeleteResponse> {
    s.batch_delete(req.get_context(), req.get_cf(), req.get_keys())
        .await?;
    Ok(kvrpcpb::RawBatchDeleteResponse::default())
}

pub(crate) async fn scan(
    s: RawStorage,
    req: kvrpcpb::RawScanRequest,
) -> Result<kvrpcpb::RawScanResponse> {
    let pairs = s
        .scan(
            req.get_context(),
            req.get_cf(),
            req.get_start_key(),
            req.get_end_key(),
            req.limit as usize,
            req.key_only,
            req.reverse,
        )
        .await?;
    let mut resp = kvrpcpb::RawScanResponse::default();
    resp.set_kvs(kv_pairs(pairs));
    Ok(resp)
}

pub(crate) async fn delete_range(
    s: RawStorage,
    req: kvrpcpb::RawDeleteRangeRequest,
) -> Result<kvrpcpb::RawDeleteRangeResponse> {
    s.delete_range(
        req.get_context(),
        req.get_cf(),
        req.get_start_key(),
        req.get_end_key(),
    )
    .await?;
    Ok(kvrpcpb::RawDeleteRangeResponse::default())
}

pub(crate) async fn compare_and_swap(
    s: RawStorage,
    req: kvrpcpb::RawCASRequest,
) -> Result<kvrpcpb::RawCASResponse> {
    let previous = (!req.previous_not_exist).then(|| req.get_previous_value());
    let res = s
        .compare_and_swap_ttl(
            req.get_context(),
            req.get_cf(),
            req.get_key(),
            (req.get_value(), req.ttl),
            previous,
        )
        .await?;
    let mut resp = kvrpcpb::RawCASResponse::default();
    resp.set_succeed(res.succeed);
    match res.previous {
        Some(v) => resp.set_previous_value(v),
        None => resp.previous_not_exist = true,
    }
    Ok(resp)
}

pub(crate) async fn get_key_ttl(
    s: RawStorage,
    req: kvrpcpb::RawGetKeyTTLRequest,
) -> Result<kvrpcpb::RawGetKeyTTLResponse> {
    let mut resp = kvrpcpb::RawGetKeyTTLResponse::default();
    match s
        .get_key_ttl(req.get_context(), req.get_cf(), req.get_key())
        .await?
    {
        Some(ttl) => resp.ttl = ttl,
        None => resp.not_found = true,
    }
    Ok(resp)
}

pub(crate) async fn split_region(
    s: RawStorage,
    mut req: kvrpcpb::SplitRegionRequest,
) -> Result<kvrpcpb::SplitRegionResponse> {
    let mut keys = if req.get_split_keys().is_empty() {
        vec![req.take_split_key()]
    } else {
        req.take_split_keys().into_vec()
    };
    // As TiKV does: without `is_raw_kv` the keys are transactional user keys, and the
    // region is cut where their encodings sort.
    if !req.is_raw_kv {
        keys = keys.iter().map(|k| keys::txn::encode_bytes(k)).collect();
    }
    let regions = s.split_region(req.get_context(), keys).await?;
    let mut resp = kvrpcpb::SplitRegionResponse::default();
    if let [left, right, ..] = regions.as_slice() {
        resp.set_left(left.clone());
        resp.set_right(right.clone());
    }
    resp.set_regions(regions.into());
    Ok(resp)
}

/// The time to live of each pair of a RawBatchPut: `ttls`, one per pair; or the
/// deprecated single `ttl` for every pair when `ttls` is empty. Both set is refused.
fn batch_ttls(req: &kvrpcpb::RawBatchPutRequest, pairs: usize) -> Result<Vec<u64>> {
    match (req.get_ttls().is_empty(), req.ttl) {
        (true, 0) => Ok(vec![]),
        (true, ttl) => Ok(vec![ttl; pairs]),
        (false, 0) => Ok(req.get_ttls().to_vec()),
        (false, _) => Err(Error::InvalidRequest(
            "RawBatchPut sets both ttl and ttls: give ttls (one per pair) alone".into(),
        )),
    }
}

fn pairs_of(kvs: &[kvrpcpb::KvPair]) -> Vec<(Vec<u8>, Vec<u8>)> {
    kvs.iter()
        .map(|p| (p.get_key().to_vec(), p.get_value().to_vec()))
        .collect()
}

fn kv_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> protobuf::RepeatedField<kvrpcpb::KvPair> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            let mut p = kvrpcpb::KvPair::default();
            p.set_key(k);
            p.set_value(v);
            p
        })
        .collect()
}
