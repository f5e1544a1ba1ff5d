//! Splitting a region: the leader checks the keys and asks PD for ids (through a
//! [`crate::PdTask::AskBatchSplit`]); the split is then proposed like any admin command. Every
//! replica applies it, writing the new regions' initial states in the same batch as the
//! parent's shrunk range, and the store creates the new regions' peers.
//!
//! The parent keeps its id and the leftmost range; each split key starts a new region.
//! A new region's peer that already exists on this store (created by a message from a
//! replica that split first, and possibly having voted since) is left alone: it catches
//! up by snapshot instead of being overwritten.
//!
//! This module holds what both sides share: key checks and the new regions' layout. The
//! leader's part runs on the Raft poller (`fsm::peer::split`), applying it on the apply
//! poller (`fsm::apply::split`).

use proto::{
    metapb, pdpb,
    raft_cmdpb::{AdminCmdType, AdminRequest, BatchSplitRequest, RaftCmdRequest, SplitRequest},
};

use crate::{util::key_in_region, Error, Result};

pub(crate) fn show(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

/// Checks split keys against the region: each non-empty, inside it, not its start key,
/// not between the versions of a transactional key, strictly ascending.
pub fn validate_split_keys(region: &metapb::Region, keys: &[Vec<u8>]) -> Result<()> {
    let invalid = |why: String| Err(Error::InvalidRequest(why));
    if keys.is_empty() {
        return invalid("no split key given".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if key.is_empty() {
            return invalid("a split key must not be empty".into());
        }
        if key.as_slice() == region.get_start_key() {
            return invalid(format!(
                "split key {} is the start key of region {}; it would leave an empty region",
                show(key),
                region.get_id()
            ));
        }
        if !key_in_region(key, region) {
            return invalid(format!(
                "split key {} is outside region {} [{}, {})",
                show(key),
                region.get_id(),
                show(region.get_start_key()),
                show(region.get_end_key())
            ));
        }
        let point = keys::txn::split_point(key);
        if point != key.as_slice() {
            return invalid(format!(
                "split key {} falls between the versions of the transactional key encoded as {}; split there instead",
                show(key),
                show(point)
            ));
        }
        if i > 0 && keys[i - 1] >= *key {
            return invalid("split keys must be strictly ascending".into());
        }
    }
    Ok(())
}

/// The BatchSplit command the leader `peer` proposes for `region`, with PD's ids.
pub fn split_command(
    region: &metapb::Region,
    peer: &metapb::Peer,
    keys: &[Vec<u8>],
    ids: Vec<pdpb::SplitID>,
) -> Result<RaftCmdRequest> {
    if ids.len() != keys.len() {
        return Err(Error::Pd(format!(
            "asked for {} split ids, got {}",
            keys.len(),
            ids.len()
        )));
    }
    let mut splits = BatchSplitRequest::default();
    for (key, mut id) in keys.iter().zip(ids) {
        let mut s = SplitRequest::default();
        s.set_split_key(key.clone());
        s.new_region_id = id.new_region_id;
        s.set_new_peer_ids(id.take_new_peer_ids());
        splits.mut_requests().push(s);
    }
    let mut admin = AdminRequest::default();
    admin.set_cmd_type(AdminCmdType::BatchSplit);
    admin.set_splits(splits);
    let mut cmd = RaftCmdRequest::default();
    let header = cmd.mut_header();
    header.set_region_id(region.get_id());
    header.set_peer(peer.clone());
    header.set_region_epoch(region.get_region_epoch().clone());
    cmd.set_admin_request(admin);
    Ok(cmd)
}

/// The regions splitting `region` by `req` produces, in key order: the parent shrunk to
/// the first range, then one new region per split key. All share the new epoch.
pub fn split_regions(
    region: &metapb::Region,
    req: &BatchSplitRequest,
) -> Result<Vec<metapb::Region>> {
    let keys: Vec<Vec<u8>> = req
        .get_requests()
        .iter()
        .map(|r| r.get_split_key().to_vec())
        .collect();
    validate_split_keys(region, &keys)?;
    let mut epoch = region.get_region_epoch().clone();
    epoch.set_version(epoch.get_version() + keys.len() as u64);
    let mut out = Vec::with_capacity(keys.len() + 1);
    let mut parent = region.clone();
    parent.set_end_key(keys[0].clone());
    parent.set_region_epoch(epoch.clone());
    out.push(parent);
    for (i, r) in req.get_requests().iter().enumerate() {
        if r.get_new_peer_ids().len() != region.get_peers().len() {
            return Err(Error::InvalidRequest(format!(
                "split of region {} brings {} peer ids for {} peers",
                region.get_id(),
                r.get_new_peer_ids().len(),
                region.get_peers().len()
            )));
        }
        let mut new = metapb::Region::default();
        new.set_id(r.new_region_id);
        new.set_start_key(keys[i].clone());
        new.set_end_key(
            keys.get(i + 1)
                .cloned()
                .unwrap_or_else(|| region.get_end_key().to_vec()),
        );
        new.set_region_epoch(epoch.clone());
        for (p, id) in region.get_peers().iter().zip(r.get_new_peer_ids()) {
            let mut np = p.clone();
            np.set_id(*id);
            new.mut_peers().push(np);
        }
        out.push(new);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> metapb::Region {
        let mut r = metapb::Region::default();
        r.set_id(1);
        r.set_start_key(b"b".to_vec());
        r.set_end_key(b"y".to_vec());
        r.mut_region_epoch().set_version(3);
        r.mut_region_epoch().set_conf_ver(2);
        for (id, store) in [(10, 1), (11, 2)] {
            let mut p = metapb::Peer::default();
            p.set_id(id);
            p.set_store_id(store);
            r.mut_peers().push(p);
        }
        r
    }

    fn request(keys: &[&[u8]]) -> BatchSplitRequest {
        let mut b = BatchSplitRequest::default();
        for (i, k) in keys.iter().enumerate() {
            let mut s = SplitRequest::default();
            s.set_split_key(k.to_vec());
            s.new_region_id = 100 + i as u64;
            s.set_new_peer_ids(vec![200 + 2 * i as u64, 201 + 2 * i as u64]);
            b.mut_requests().push(s);
        }
        b
    }

    #[test]
    fn split_cuts_ranges_and_gives_new_peers_on_the_same_stores() {
        let out = split_regions(&region(), &request(&[b"f", b"m"])).unwrap();
        let ranges: Vec<(u64, &[u8], &[u8])> = out
            .iter()
            .map(|r| (r.get_id(), r.get_start_key(), r.get_end_key()))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (1, &b"b"[..], &b"f"[..]),
                (100, &b"f"[..], &b"m"[..]),
                (101, &b"m"[..], &b"y"[..])
            ]
        );
        for r in &out {
            assert_eq!(r.get_region_epoch().get_version(), 5);
            assert_eq!(r.get_region_epoch().get_conf_ver(), 2);
        }
        let stores: Vec<u64> = out[2]
            .get_peers()
            .iter()
            .map(|p| p.get_store_id())
            .collect();
        assert_eq!(stores, vec![1, 2]);
        assert_eq!(out[2].get_peers()[0].get_id(), 202);
    }

    #[test]
    fn bad_split_keys_are_refused_with_the_reason() {
        let r = region();
        let err = |keys: &[&[u8]]| {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
            validate_split_keys(&r, &keys).unwrap_err().to_string()
        };
        assert!(err(&[]).contains("no split key"));
        assert!(err(&[b""]).contains("must not be empty"));
        assert!(err(&[b"b"]).contains("start key"));
        assert!(err(&[b"a"]).contains("outside region 1"));
        assert!(err(&[b"y"]).contains("outside region 1"));
        assert!(err(&[b"m", b"f"]).contains("ascending"));
        assert!(err(&[b"m", b"m"]).contains("ascending"));
        let version = keys::txn::write_key(b"k", 7);
        assert!(err(&[keys::origin_key(&version).unwrap()]).contains("between the versions"));
        assert!(validate_split_keys(&r, &[b"c".to_vec(), b"x".to_vec()]).is_ok());
    }
}
