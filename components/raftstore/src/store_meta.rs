//! What the store knows about all its regions at once: ranges (for overlap checks and
//! key lookups) and which ones it leads.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use proto::metapb;

/// A peer's Raft term and commit index as of its last Ready, published without a lock
/// (the peer stores, the status endpoint loads).
#[derive(Debug, Default)]
pub struct RaftProgress {
    term: AtomicU64,
    commit: AtomicU64,
}

impl RaftProgress {
    /// Publishes the peer's hard state.
    pub(crate) fn set(&self, term: u64, commit: u64) {
        self.term.store(term, Ordering::Relaxed);
        self.commit.store(commit, Ordering::Relaxed);
    }

    /// (term, commit index).
    pub fn get(&self) -> (u64, u64) {
        (
            self.term.load(Ordering::Relaxed),
            self.commit.load(Ordering::Relaxed),
        )
    }
}

/// Every initialized region on this store.
#[derive(Default)]
pub struct StoreMeta {
    regions: HashMap<u64, metapb::Region>,
    /// Encoded end key -> region id, for finding the region of a key.
    ranges: BTreeMap<Vec<u8>, u64>,
    leaders: HashSet<u64>,
    /// The Raft progress of each region this store leads.
    leader_progress: HashMap<u64, Arc<RaftProgress>>,
    /// Regions whose peer here is campaigning (a candidate): it may lead in a moment.
    campaigning: HashSet<u64>,
    /// The store is shutting down: it hands its leaders away and takes no new ones.
    pub(crate) stopping: bool,
    /// New regions whose peers a split applied here is about to create; a message for
    /// one of them must not create it first.
    pub(crate) pending_split_peers: HashSet<u64>,
    /// Ranges of snapshots accepted by peers (by region id) but not yet persisted: they
    /// count as taken in overlap checks.
    snapshot_ranges: HashMap<u64, metapb::Region>,
    /// Region id -> (index, hash) of the last ComputeHash this store's replica applied.
    hashes: HashMap<u64, (u64, u64)>,
    /// Regions whose peer here was destroyed and whose apply side has yet to delete the
    /// data (with the range, if it had one): no peer of that id is created and no
    /// snapshot overlapping the range is taken meanwhile.
    destroying: HashMap<u64, Option<metapb::Region>>,
    /// Region id -> (snapshot applies started, one under way): a stale read that saw
    /// neither change while it read the engine read whole data.
    snapshot_applies: HashMap<u64, (u64, bool)>,
}

impl StoreMeta {
    /// A snapshot starts replacing the region's data (`true`), or has replaced it.
    pub(crate) fn set_snapshot_applying(&mut self, region_id: u64, applying: bool) {
        let e = self.snapshot_applies.entry(region_id).or_default();
        e.0 += u64::from(applying);
        e.1 = applying;
    }

    /// (snapshot applies started, one under way) for the region.
    pub fn snapshot_applies(&self, region_id: u64) -> (u64, bool) {
        self.snapshot_applies
            .get(&region_id)
            .copied()
            .unwrap_or_default()
    }

    /// Marks a range as taken by a snapshot `region`'s peer accepted.
    pub(crate) fn claim_snapshot_range(&mut self, region: metapb::Region) {
        self.snapshot_ranges.insert(region.get_id(), region);
    }

    /// Drops a snapshot's range claim (it was persisted, or dropped).
    pub(crate) fn release_snapshot_range(&mut self, region_id: u64) {
        self.snapshot_ranges.remove(&region_id);
    }

    /// Adds or updates a region (and ends any snapshot claim of its own).
    pub fn set_region(&mut self, region: metapb::Region) {
        self.snapshot_ranges.remove(&region.get_id());
        if let Some(old) = self.regions.get(&region.get_id()) {
            let old_end = keys::data_end_key(old.get_end_key());
            if self.ranges.get(&old_end) == Some(&region.get_id()) {
                self.ranges.remove(&old_end);
            }
        }
        self.ranges
            .insert(keys::data_end_key(region.get_end_key()), region.get_id());
        self.regions.insert(region.get_id(), region);
    }

    /// Records this replica's hash of a region at a ComputeHash entry.
    pub(crate) fn set_hash(&mut self, region_id: u64, index: u64, hash: u64) {
        self.hashes.insert(region_id, (index, hash));
    }

    /// This replica's hash of a region at the ComputeHash entry `index`, once applied.
    pub fn hash_at(&self, region_id: u64, index: u64) -> Option<u64> {
        self.hashes
            .get(&region_id)
            .filter(|(i, _)| *i == index)
            .map(|(_, h)| *h)
    }

    /// Forgets a region.
    pub fn remove_region(&mut self, region_id: u64) {
        self.snapshot_ranges.remove(&region_id);
        // `snapshot_applies` stays: a replica removed and added again under a read must
        // not show the same count it had (see `server::storage::ApplyGuard`).
        self.hashes.remove(&region_id);
        if let Some(old) = self.regions.remove(&region_id) {
            let end = keys::data_end_key(old.get_end_key());
            if self.ranges.get(&end) == Some(&region_id) {
                self.ranges.remove(&end);
            }
        }
        self.leaders.remove(&region_id);
        self.leader_progress.remove(&region_id);
        self.campaigning.remove(&region_id);
    }

    /// Publishes the progress of a region this store now leads (`Some`), or no longer does.
    pub(crate) fn set_leader_progress(
        &mut self,
        region_id: u64,
        progress: Option<Arc<RaftProgress>>,
    ) {
        match progress {
            Some(p) => self.leader_progress.insert(region_id, p),
            None => self.leader_progress.remove(&region_id),
        };
    }

    /// (region id, term, commit index) of each region this store leads, by region id.
    pub fn leader_progress(&self) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = self
            .leader_progress
            .iter()
            .map(|(id, p)| {
                let (term, commit) = p.get();
                (*id, term, commit)
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Forgets a region whose peer was destroyed, keeping its id and range taken until
    /// [`StoreMeta::end_destroy`].
    pub(crate) fn begin_destroy(&mut self, region: &metapb::Region) {
        self.remove_region(region.get_id());
        let range = (!region.get_peers().is_empty()).then(|| region.clone());
        self.destroying.insert(region.get_id(), range);
    }

    /// The apply side has deleted a destroyed region's data.
    pub(crate) fn end_destroy(&mut self, region_id: u64) {
        self.destroying.remove(&region_id);
    }

    /// Whether a destroyed peer of this region still has data to delete here.
    pub(crate) fn is_destroying(&self, region_id: u64) -> bool {
        self.destroying.contains_key(&region_id)
    }

    /// Records whether this store leads a region, or is campaigning to.
    pub fn set_role(&mut self, region_id: u64, is_leader: bool, is_candidate: bool) {
        for (set, member) in [
            (&mut self.leaders, is_leader),
            (&mut self.campaigning, is_candidate),
        ] {
            if member {
                set.insert(region_id);
            } else {
                set.remove(&region_id);
            }
        }
    }

    /// A region other than `region`'s own that overlaps its range, if any.
    pub fn overlapping(&self, region: &metapb::Region) -> Option<u64> {
        self.overlapping_range(
            region.get_id(),
            region.get_start_key(),
            region.get_end_key(),
        )
    }

    /// A region other than `region_id` that overlaps `[start, end)`, if any: a live one,
    /// one whose accepted snapshot claims the range, or one whose data is being deleted.
    pub fn overlapping_range(&self, region_id: u64, start: &[u8], end: &[u8]) -> Option<u64> {
        let destroying = self.destroying.values().flatten();
        let claimed = self.snapshot_ranges.values().chain(destroying).find(|r| {
            r.get_id() != region_id
                && keys::ranges_overlap(r.get_start_key(), r.get_end_key(), start, end)
        });
        if let Some(r) = claimed {
            return Some(r.get_id());
        }
        let start = keys::data_key(start);
        let end = keys::data_end_key(end);
        // The first region whose end is past our start is the only candidate left of us;
        // walk forward while regions start before our end.
        for (_, id) in self
            .ranges
            .range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
        {
            let other = &self.regions[id];
            if keys::data_key(other.get_start_key()) >= end {
                break;
            }
            if *id != region_id {
                return Some(*id);
            }
        }
        None
    }

    /// The region holding `key`, if this store has it.
    pub fn region_for_key(&self, key: &[u8]) -> Option<&metapb::Region> {
        let dk = keys::data_key(key);
        let (_, id) = self
            .ranges
            .range((
                std::ops::Bound::Excluded(dk.clone()),
                std::ops::Bound::Unbounded,
            ))
            .next()?;
        let region = &self.regions[id];
        crate::util::key_in_region(key, region).then_some(region)
    }

    /// Up to `limit` regions that follow `region` without a gap, in key order.
    pub fn following(&self, region: &metapb::Region, limit: usize) -> Vec<metapb::Region> {
        let mut out = vec![];
        let mut end = region.get_end_key().to_vec();
        while !end.is_empty() && out.len() < limit {
            match self.region_for_key(&end) {
                Some(next) if next.get_start_key() == end.as_slice() => {
                    end = next.get_end_key().to_vec();
                    out.push(next.clone());
                }
                _ => break,
            }
        }
        out
    }

    /// Every region, in no particular order.
    pub fn regions(&self) -> impl Iterator<Item = &metapb::Region> {
        self.regions.values()
    }

    /// A region by id.
    pub fn region(&self, region_id: u64) -> Option<&metapb::Region> {
        self.regions.get(&region_id)
    }

    /// Number of regions.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Number of regions this store leads.
    pub fn leader_count(&self) -> usize {
        self.leaders.len()
    }

    /// Regions led here, or about to be (a candidate), that have a voter on another
    /// store to hand leadership to.
    pub fn movable_leader_count(&self, store_id: u64) -> usize {
        self.leaders
            .iter()
            .chain(&self.campaigning)
            .filter_map(|id| self.regions.get(id))
            .filter(|r| {
                r.get_peers().iter().any(|p| {
                    p.get_store_id() != store_id && p.get_role() == metapb::PeerRole::Voter
                })
            })
            .count()
    }

    /// Whether this store leads `region_id`.
    pub fn is_leader(&self, region_id: u64) -> bool {
        self.leaders.contains(&region_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &[u8], end: &[u8]) -> metapb::Region {
        let mut r = metapb::Region::default();
        r.set_id(id);
        r.set_start_key(start.to_vec());
        r.set_end_key(end.to_vec());
        r
    }

    #[test]
    fn finds_regions_by_key_and_overlap() {
        let mut m = StoreMeta::default();
        m.set_region(region(1, b"", b"m"));
        m.set_region(region(2, b"m", b""));
        assert_eq!(m.region_for_key(b"a").map(|r| r.get_id()), Some(1));
        assert_eq!(m.region_for_key(b"m").map(|r| r.get_id()), Some(2));
        assert_eq!(m.region_for_key(b"zzz").map(|r| r.get_id()), Some(2));
        assert_eq!(m.overlapping(&region(3, b"k", b"n")), Some(1));
        assert_eq!(m.overlapping(&region(1, b"", b"m")), None);
        let after: Vec<u64> = m
            .following(&region(1, b"", b"m"), 8)
            .iter()
            .map(|r| r.get_id())
            .collect();
        assert_eq!(after, vec![2]);
        m.remove_region(2);
        assert_eq!(m.region_for_key(b"x"), None);
        assert_eq!(m.overlapping(&region(3, b"n", b"")), None);
    }

    /// Two peers created by messages (no range yet) must not both accept snapshots for
    /// overlapping ranges: the first claim blocks the second until it is released.
    #[test]
    fn snapshot_claims_count_as_overlaps() {
        let mut m = StoreMeta::default();
        assert_eq!(m.overlapping(&region(7, b"a", b"m")), None);
        m.claim_snapshot_range(region(7, b"a", b"m"));
        assert_eq!(m.overlapping(&region(8, b"k", b"z")), Some(7));
        assert_eq!(m.overlapping(&region(8, b"m", b"z")), None);
        assert_eq!(m.overlapping(&region(7, b"a", b"z")), None, "its own claim");
        m.set_region(region(7, b"a", b"m"));
        assert_eq!(m.overlapping(&region(8, b"k", b"z")), Some(7), "now live");
        m.remove_region(7);
        m.claim_snapshot_range(region(9, b"", b""));
        assert_eq!(m.overlapping(&region(8, b"k", b"z")), Some(9));
        m.release_snapshot_range(9);
        assert_eq!(m.overlapping(&region(8, b"k", b"z")), None);
    }

    #[test]
    fn range_overlap_treats_empty_ends_as_unbounded() {
        assert!(keys::ranges_overlap(b"", b"", b"x", b"y"));
        assert!(keys::ranges_overlap(b"a", b"c", b"b", b""));
        assert!(!keys::ranges_overlap(b"a", b"b", b"b", b"c"));
        assert!(!keys::ranges_overlap(b"b", b"", b"a", b"b"));
        assert!(keys::ranges_overlap(b"b", b"", b"a", b"c"));
    }
}
