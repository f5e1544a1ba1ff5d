//! Checks shared by proposal and apply, and the region edits both sides read.

use proto::{
    metapb,
    raft_cmdpb::{CmdType, Request},
};

use raft::eraftpb::ConfState;

use crate::{Error, Result};

/// Whether `key` lies in `[start, end)` of the region (an empty end is unbounded).
pub fn key_in_region(key: &[u8], region: &metapb::Region) -> bool {
    key >= region.get_start_key() && (region.get_end_key().is_empty() || key < region.get_end_key())
}

/// Checks a request's epoch against the region's. Reads and writes check `version` (a
/// split or merge moved keys); admin commands check `conf_ver` too.
pub fn check_epoch(
    region: &metapb::Region,
    req: &metapb::RegionEpoch,
    check_conf_ver: bool,
) -> Result<()> {
    let cur = region.get_region_epoch();
    let stale = req.get_version() != cur.get_version()
        || (check_conf_ver && req.get_conf_ver() != cur.get_conf_ver());
    if stale {
        return Err(Error::EpochNotMatch {
            reason: format!(
                "request epoch (conf_ver {}, version {}) but region {} is at (conf_ver {}, version {})",
                req.get_conf_ver(),
                req.get_version(),
                region.get_id(),
                cur.get_conf_ver(),
                cur.get_version()
            ),
            current: vec![region.clone()],
        });
    }
    Ok(())
}

/// Checks that every key a request touches lies in the region.
pub fn check_request_keys(region: &metapb::Region, req: &Request) -> Result<()> {
    let not_in = |key: &[u8]| Error::KeyNotInRegion {
        key: key.to_vec(),
        region: Box::new(region.clone()),
    };
    let single = |key: &[u8]| {
        if key_in_region(key, region) {
            Ok(())
        } else {
            Err(not_in(key))
        }
    };
    match req.get_cmd_type() {
        CmdType::Put => single(req.get_put().get_key()),
        CmdType::Delete => single(req.get_delete().get_key()),
        CmdType::CompareAndSwap => single(req.get_cas().get_key()),
        CmdType::DeleteRange => {
            let dr = req.get_delete_range();
            single(dr.get_start_key())?;
            let end = dr.get_end_key();
            let region_end = region.get_end_key();
            if !region_end.is_empty() && (end.is_empty() || end > region_end) {
                return Err(not_in(end));
            }
            Ok(())
        }
        CmdType::Invalid => Err(Error::InvalidRequest(
            "request without a command type".into(),
        )),
    }
}

/// The voters and learners a region's peers form.
pub fn conf_state_of(region: &metapb::Region) -> ConfState {
    let mut cs = ConfState::default();
    for p in region.get_peers() {
        match p.get_role() {
            metapb::PeerRole::Learner => cs.mut_learners().push(p.get_id()),
            _ => cs.mut_voters().push(p.get_id()),
        }
    }
    cs
}
