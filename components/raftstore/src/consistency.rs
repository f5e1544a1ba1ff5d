//! Consistency check between replicas: every replica hashes a region's data when it
//! applies the same ComputeHash entry, so equal data gives equal hashes at that index
//! (TiKV's ComputeHash); the hashes are then read and compared from outside
//! (`kvctl region check`, the fault tests). The hash runs on the apply poller
//! (`fsm::apply::consistency`).

use engine::Cf;
use proto::metapb;

use crate::Result;

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
            feed(k);
            feed(v);
            Ok(true)
        })?;
    }
    Ok((u64::from(hi.finalize()) << 32) | u64::from(lo.finalize()))
}
