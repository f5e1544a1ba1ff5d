//! Consistency check between replicas: every replica hashes a region's data when it
//! applies the same ComputeHash entry, so equal data gives equal hashes at that index
//! (TiKV's ComputeHash); the hashes are then read and compared from outside
//! (`kvctl region check`, the fault tests). The leader proposes ComputeHash at most
//! once per [`HASH_INTERVAL`], since every replica scans the region for one; the hash
//! runs on the apply poller.

use std::time::{Duration, Instant};

use engine::Cf;
use proto::metapb;

use crate::{
    fsm::{
        apply::{ApplyContext, ApplyFsm},
        peer::PeerFsm,
    },
    msg::CmdResponse,
    Error, Result,
};

/// Least time between two consistency checks of one region.
pub const HASH_INTERVAL: Duration = Duration::from_secs(1);

/// A 64-bit hash of the region's range and of every pair of its data column families.
pub fn region_hash(engine: &engine::Engine, region: &metapb::Region) -> Result<u64> {
    // Two CRC32s with different seeds: stable across builds and releases, unlike std's
    // hasher, which stores running different versions may not share.
    let mut lo = crc32fast::Hasher::new_with_initial(0);
    let mut hi = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
    let mut feed = |bytes: &[u8]| {
        let len = (bytes.len() as u64).to_le_bytes();
        for h in [&mut lo, &mut hi] {
            h.update(&len);
            h.update(bytes);
        }
    };
    feed(region.get_start_key());
    feed(region.get_end_key());
    let start = keys::data_key(region.get_start_key());
    let end = keys::data_end_key(region.get_end_key());
    let snap = engine.snapshot();
    for cf in Cf::DATA {
        feed(cf.name().as_bytes());
        snap.scan(cf, &start, &end, |k, v| {
            // Raw values with an expiry are left out: each replica's compactions drop
            // them on its own clock, so equal replicas may hold different ones.
            let expires = cf == Cf::Default
                && keys::raw::decode(v).is_some_and(|(_, at)| at != keys::raw::NO_EXPIRY);
            if !expires {
                feed(k);
                feed(v);
            }
            Ok(true)
        })?;
    }
    Ok((u64::from(hi.finalize()) << 32) | u64::from(lo.finalize()))
}

impl PeerFsm {
    /// Refuses a ComputeHash proposed less than [`HASH_INTERVAL`] after the last one.
    pub(crate) fn check_hash_interval(&mut self) -> Result<()> {
        if self.last_hash.is_some_and(|t| t.elapsed() < HASH_INTERVAL) {
            return Err(Error::Busy(format!(
                "region {} was hashed less than {HASH_INTERVAL:?} ago",
                self.region_id()
            )));
        }
        self.last_hash = Some(Instant::now());
        Ok(())
    }
}

impl ApplyFsm {
    /// Hashes the region as of the ComputeHash entry at `index`: everything applied
    /// before it is written out first, so the hash sees exactly that state.
    pub(crate) fn exec_compute_hash(
        &mut self,
        index: u64,
        ctx: &mut ApplyContext,
    ) -> Result<CmdResponse> {
        ctx.write();
        let hash = region_hash(&ctx.engine, &self.region)?;
        ctx.store_meta
            .lock()
            .set_hash(self.region.get_id(), index, hash);
        Ok(CmdResponse {
            hash: Some((index, hash)),
            ..Default::default()
        })
    }
}
