//! Requests without routing (a dumb client's) that cover several regions: each is cut at
//! region boundaries and served one region at a time, and the answers are merged, so a
//! dumb client's batch, scan or range delete sees the whole key space as one.
//!
//! Like the smart client's, a write spanning regions is one write per region, not atomic
//! across them: an error stops it, and what earlier regions applied stays applied.

use proto::{kvrpcpb, metapb};
use raftstore::util::key_in_region;

/// How a request is cut at region boundaries. The defaults suit requests about one key.
pub trait Span: Clone {
    /// The response that merged parts add up to.
    type Resp;

    /// The part of the request that `region` (the region of its route key) holds.
    fn within(&self, _region: &metapb::Region) -> Self {
        self.clone()
    }

    /// What is left once `region` has answered this part with `answer`.
    fn after(&self, _region: &metapb::Region, _answer: &Self::Resp) -> Option<Self> {
        None
    }

    /// Adds the answer of a later part to the answer so far.
    fn merge(&self, _so_far: &mut Self::Resp, _next: Self::Resp) {}

    /// Bytes of data an answer carries (what `server.max-response-size` bounds).
    fn answer_bytes(_answer: &Self::Resp) -> u64 {
        0
    }
}

fn pairs_bytes(pairs: &[kvrpcpb::KvPair]) -> u64 {
    pairs
        .iter()
        .map(|p| (p.get_key().len() + p.get_value().len() + 8) as u64)
        .sum()
}

/// The region's end, if a range ending at `end` (empty: unbounded) goes on past it.
fn continues_past<'a>(region: &'a metapb::Region, end: &[u8]) -> Option<&'a [u8]> {
    let region_end = region.get_end_key();
    (!region_end.is_empty() && (end.is_empty() || region_end < end)).then_some(region_end)
}

macro_rules! one_key {
    ($($req:ty => $resp:ty),* $(,)?) => {
        $(impl Span for $req {
            type Resp = $resp;
        })*
    };
}

one_key!(
    kvrpcpb::RawGetRequest => kvrpcpb::RawGetResponse,
    kvrpcpb::RawPutRequest => kvrpcpb::RawPutResponse,
    kvrpcpb::RawDeleteRequest => kvrpcpb::RawDeleteResponse,
    kvrpcpb::RawCASRequest => kvrpcpb::RawCASResponse,
    kvrpcpb::RawGetKeyTTLRequest => kvrpcpb::RawGetKeyTTLResponse,
    kvrpcpb::SplitRegionRequest => kvrpcpb::SplitRegionResponse,
);

/// Batches of keys: the keys in the region, then the rest.
macro_rules! keyed_batch {
    ($req:ty => $resp:ty, $items:ident, $set:ident, |$item:ident| $key:expr
     $(, merge: |$acc:ident, $next:ident| $merge:expr)?
     $(, size: |$bytes:ident| $size:expr)?) => {
        impl Span for $req {
            type Resp = $resp;

            fn within(&self, region: &metapb::Region) -> Self {
                let mut part = self.clone();
                let items = self.$items().iter().filter(|$item| key_in_region($key, region));
                part.$set(items.cloned().collect());
                part
            }

            fn after(&self, region: &metapb::Region, _: &$resp) -> Option<Self> {
                let rest: Vec<_> = self
                    .$items()
                    .iter()
                    .filter(|$item| !key_in_region($key, region))
                    .cloned()
                    .collect();
                (!rest.is_empty()).then(|| {
                    let mut next = self.clone();
                    next.$set(rest.into());
                    next
                })
            }

            $(fn merge(&self, $acc: &mut $resp, mut $next: $resp) {
                $merge
            })?

            $(fn answer_bytes(answer: &$resp) -> u64 {
                let $bytes = answer;
                $size
            })?
        }
    };
}

keyed_batch!(kvrpcpb::RawBatchGetRequest => kvrpcpb::RawBatchGetResponse, get_keys, set_keys,
    |k| k, merge: |acc, next| acc.mut_pairs().extend(next.take_pairs()),
    size: |answer| pairs_bytes(answer.get_pairs()));

/// A batch put's pairs, with their per-pair ttls (if given), that `keep` selects.
fn batch_put_part(
    req: &kvrpcpb::RawBatchPutRequest,
    keep: impl Fn(&[u8]) -> bool,
) -> kvrpcpb::RawBatchPutRequest {
    let mut part = req.clone();
    let ttls = req.get_ttls();
    let (mut pairs, mut kept_ttls) = (vec![], vec![]);
    for (i, p) in req.get_pairs().iter().enumerate() {
        if keep(p.get_key()) {
            pairs.push(p.clone());
            if let Some(t) = ttls.get(i) {
                kept_ttls.push(*t);
            }
        }
    }
    part.set_pairs(pairs.into());
    // A count that does not match the pairs stays as it was, to be refused by name.
    if ttls.len() == req.get_pairs().len() {
        part.set_ttls(kept_ttls);
    }
    part
}

impl Span for kvrpcpb::RawBatchPutRequest {
    type Resp = kvrpcpb::RawBatchPutResponse;

    fn within(&self, region: &metapb::Region) -> Self {
        batch_put_part(self, |k| key_in_region(k, region))
    }

    fn after(&self, region: &metapb::Region, _: &Self::Resp) -> Option<Self> {
        let rest = batch_put_part(self, |k| !key_in_region(k, region));
        (!rest.get_pairs().is_empty()).then_some(rest)
    }
}
keyed_batch!(kvrpcpb::RawBatchDeleteRequest => kvrpcpb::RawBatchDeleteResponse, get_keys, set_keys,
    |k| k);

impl Span for kvrpcpb::RawScanRequest {
    type Resp = kvrpcpb::RawScanResponse;

    /// A forward scan goes on from the region's end with what is left of its limit. A
    /// reverse scan is routed by its lower bound (`end_key`), so it goes on upwards with
    /// its whole limit: the higher regions' pairs come first in its answer.
    fn after(&self, region: &metapb::Region, answer: &Self::Resp) -> Option<Self> {
        let limit = self.get_limit() as usize;
        let mut next = self.clone();
        if self.get_reverse() {
            let region_end = continues_past(region, self.get_start_key())?;
            next.set_end_key(region_end.to_vec());
        } else {
            let left = limit
                .checked_sub(answer.get_kvs().len())
                .filter(|n| *n > 0)?;
            let region_end = continues_past(region, self.get_end_key())?;
            next.set_start_key(region_end.to_vec());
            next.set_limit(left as u32);
        }
        Some(next)
    }

    fn answer_bytes(answer: &Self::Resp) -> u64 {
        pairs_bytes(answer.get_kvs())
    }

    fn merge(&self, so_far: &mut Self::Resp, mut next: Self::Resp) {
        if self.get_reverse() {
            let mut kvs = next.take_kvs().into_vec();
            kvs.extend(so_far.take_kvs());
            kvs.truncate(self.get_limit() as usize);
            so_far.set_kvs(kvs.into());
        } else {
            so_far.mut_kvs().extend(next.take_kvs());
        }
    }
}

impl Span for kvrpcpb::RawDeleteRangeRequest {
    type Resp = kvrpcpb::RawDeleteRangeResponse;

    fn within(&self, region: &metapb::Region) -> Self {
        let mut part = self.clone();
        if let Some(region_end) = continues_past(region, self.get_end_key()) {
            part.set_end_key(region_end.to_vec());
        }
        part
    }

    fn after(&self, region: &metapb::Region, _: &Self::Resp) -> Option<Self> {
        let region_end = continues_past(region, self.get_end_key())?;
        let mut next = self.clone();
        next.set_start_key(region_end.to_vec());
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: &str, end: &str) -> metapb::Region {
        let mut r = metapb::Region::default();
        r.set_start_key(start.into());
        r.set_end_key(end.into());
        r
    }

    fn kvs(keys: &[&str]) -> protobuf::RepeatedField<kvrpcpb::KvPair> {
        keys.iter()
            .map(|k| {
                let mut p = kvrpcpb::KvPair::default();
                p.set_key(k.as_bytes().to_vec());
                p
            })
            .collect()
    }

    #[test]
    fn batches_are_cut_at_region_boundaries() {
        let mut req = kvrpcpb::RawBatchGetRequest::default();
        req.set_keys(
            ["m", "a", "x", "c"]
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        );
        let left = region("", "d");
        assert_eq!(req.within(&left).get_keys(), [b"a".to_vec(), b"c".to_vec()]);
        let rest = req.after(&left, &Default::default()).unwrap();
        assert_eq!(rest.get_keys(), [b"m".to_vec(), b"x".to_vec()]);
        assert!(rest.after(&region("d", ""), &Default::default()).is_none());
    }

    #[test]
    fn a_batch_put_keeps_each_pair_with_its_ttl() {
        let mut req = kvrpcpb::RawBatchPutRequest::default();
        req.set_pairs(kvs(&["m", "a", "x"]));
        req.set_ttls(vec![1, 2, 3]);
        let left = region("", "d");
        let part = req.within(&left);
        assert_eq!((part.get_pairs().len(), part.get_ttls()), (1, &[2][..]));
        let rest = req.after(&left, &Default::default()).unwrap();
        assert_eq!(rest.get_ttls(), [1, 3]);
        // A mismatched count is passed on whole, for the store to refuse by name.
        req.set_ttls(vec![5]);
        assert_eq!(req.within(&left).get_ttls(), [5]);
    }

    #[test]
    fn forward_scans_go_on_with_what_is_left_of_the_limit() {
        let mut req = kvrpcpb::RawScanRequest::default();
        req.set_start_key(b"a".to_vec());
        req.set_end_key(b"z".to_vec());
        req.set_limit(3);
        let mut so_far = kvrpcpb::RawScanResponse::default();
        so_far.set_kvs(kvs(&["a", "b"]));
        let next = req.after(&region("", "k"), &so_far).unwrap();
        assert_eq!((next.get_start_key(), next.get_limit()), (&b"k"[..], 1));
        // The range ends inside the region, or the limit is reached: done.
        assert!(req.after(&region("", ""), &so_far).is_none());
        so_far.set_kvs(kvs(&["a", "b", "c"]));
        assert!(req.after(&region("", "k"), &so_far).is_none());
    }

    #[test]
    fn reverse_scans_go_upwards_and_keep_the_highest_pairs() {
        let mut req = kvrpcpb::RawScanRequest::default();
        req.set_reverse(true);
        req.set_start_key(b"z".to_vec());
        req.set_end_key(b"a".to_vec());
        req.set_limit(3);
        let mut so_far = kvrpcpb::RawScanResponse::default();
        so_far.set_kvs(kvs(&["c", "b", "a"]));
        let next = req.after(&region("", "k"), &so_far).unwrap();
        assert_eq!((next.get_end_key(), next.get_limit()), (&b"k"[..], 3));
        let mut higher = kvrpcpb::RawScanResponse::default();
        higher.set_kvs(kvs(&["m", "l"]));
        req.merge(&mut so_far, higher);
        let keys: Vec<_> = so_far
            .get_kvs()
            .iter()
            .map(|p| p.get_key().to_vec())
            .collect();
        assert_eq!(keys, [b"m".to_vec(), b"l".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn range_deletes_are_cut_at_region_ends() {
        let mut req = kvrpcpb::RawDeleteRangeRequest::default();
        req.set_start_key(b"b".to_vec());
        req.set_end_key(vec![]);
        let r = region("a", "k");
        assert_eq!(req.within(&r).get_end_key(), b"k");
        assert_eq!(
            req.after(&r, &Default::default()).unwrap().get_start_key(),
            b"k"
        );
        assert!(req.after(&region("k", ""), &Default::default()).is_none());
    }
}
