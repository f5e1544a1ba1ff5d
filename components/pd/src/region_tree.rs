//! The routing table: regions by id and by range. On conflict the higher epoch wins
//! (`version` first: splits and merges; then `conf_ver`); an older report is ignored, and
//! so is a leader's report from a Raft term below the last one heard: a leader cut off
//! from its followers keeps reporting in its old term until it steps down, and must not
//! be named again once a new leader has reported.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
};

use proto::{metapb, pdpb};

/// What PD knows of one region.
#[derive(Clone, Debug, Default)]
pub struct RegionInfo {
    /// Range, epoch, peers.
    pub region: metapb::Region,
    /// The leader, once one has reported.
    pub leader: Option<metapb::Peer>,
    /// Peers the leader reports as silent.
    pub down_peers: Vec<pdpb::PeerStats>,
    /// Peers the leader reports as far behind.
    pub pending_peers: Vec<metapb::Peer>,
    /// Bytes, as estimated by the leader.
    pub approximate_size: u64,
    /// The Raft term the leader reported in; 0: not known (PD's own records, split
    /// reports), which keeps the term already known.
    pub term: u64,
}

/// Whether `a` is a strictly older shape of a region than `b`.
pub fn epoch_older(a: &metapb::RegionEpoch, b: &metapb::RegionEpoch) -> bool {
    (a.get_version(), a.get_conf_ver()) < (b.get_version(), b.get_conf_ver())
}

/// Regions by id and by end key, with per-store replica and leader counts kept up to
/// date on every change (schedulers read them on every heartbeat).
#[derive(Default)]
pub struct RegionTree {
    by_id: HashMap<u64, RegionInfo>,
    /// Encoded end key (an empty end sorts last) -> region id.
    by_end: BTreeMap<Vec<u8>, u64>,
    /// Store id -> replicas (voters and learners) on it.
    peers_on: HashMap<u64, usize>,
    /// Store id -> regions it leads.
    leaders_on: HashMap<u64, usize>,
    /// Store id -> bytes of the replicas on it, by their leaders' estimates. Wide enough
    /// that no sum of reported sizes overflows, whatever a store claims.
    size_on: HashMap<u64, u128>,
}

fn end_of(r: &metapb::Region) -> Vec<u8> {
    keys::data_end_key(r.get_end_key())
}

fn overlaps(a: &metapb::Region, b: &metapb::Region) -> bool {
    keys::ranges_overlap(
        a.get_start_key(),
        a.get_end_key(),
        b.get_start_key(),
        b.get_end_key(),
    )
}

impl RegionTree {
    /// Takes a report. Returns the ids of regions it replaced, or `None` if the report is
    /// older than what PD knows and was ignored.
    pub fn update(&mut self, mut info: RegionInfo) -> Option<Vec<u64>> {
        let id = info.region.get_id();
        let epoch = info.region.get_region_epoch();
        if let Some(old) = self.by_id.get(&id) {
            if epoch_older(epoch, old.region.get_region_epoch()) {
                return None;
            }
            if info.term == 0 {
                info.term = old.term;
            } else if info.term < old.term {
                return None;
            }
        }
        let overlapping: Vec<u64> = self
            .overlapping(&info.region)
            .into_iter()
            .filter(|o| *o != id)
            .collect();
        for o in &overlapping {
            let other = &self.by_id[o].region;
            if other.get_region_epoch().get_version() > epoch.get_version() {
                return None;
            }
        }
        for o in &overlapping {
            self.remove(*o);
        }
        self.remove(id);
        self.count(&info, 1);
        self.by_end.insert(end_of(&info.region), id);
        self.by_id.insert(id, info);
        Some(overlapping)
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.by_id.remove(&id) {
            self.count(&old, -1);
            let end = end_of(&old.region);
            if self.by_end.get(&end) == Some(&id) {
                self.by_end.remove(&end);
            }
        }
    }

    fn count(&mut self, info: &RegionInfo, delta: isize) {
        let bump = |m: &mut HashMap<u64, usize>, store: u64| {
            let n = m.entry(store).or_default();
            *n = n
                .checked_add_signed(delta)
                .expect("a count never goes below zero");
        };
        for p in info.region.get_peers() {
            bump(&mut self.peers_on, p.get_store_id());
            let size = self.size_on.entry(p.get_store_id()).or_default();
            let region = u128::from(info.approximate_size);
            *size = if delta > 0 {
                *size + region
            } else {
                size.checked_sub(region)
                    .expect("a region's size is removed as it was added")
            };
        }
        if let Some(l) = &info.leader {
            bump(&mut self.leaders_on, l.get_store_id());
        }
    }

    /// Replicas (voters and learners) on `store`.
    pub fn peer_count(&self, store: u64) -> usize {
        self.peers_on.get(&store).copied().unwrap_or(0)
    }

    /// Bytes of the replicas on `store`.
    pub fn size_on(&self, store: u64) -> u64 {
        let size = self.size_on.get(&store).copied().unwrap_or(0);
        u64::try_from(size).unwrap_or(u64::MAX)
    }

    /// Whether every region has a known leader (regions loaded from disk have none
    /// until they report).
    pub fn all_led(&self) -> bool {
        self.leaders_on.values().sum::<usize>() == self.by_id.len()
    }

    /// Regions led from `store`.
    pub fn leader_count(&self, store: u64) -> usize {
        self.leaders_on.get(&store).copied().unwrap_or(0)
    }

    fn overlapping(&self, region: &metapb::Region) -> Vec<u64> {
        let start = keys::data_key(region.get_start_key());
        let end = end_of(region);
        let mut out = vec![];
        for (_, id) in self
            .by_end
            .range((Bound::Excluded(start), Bound::Unbounded))
        {
            let r = &self.by_id[id].region;
            if keys::data_key(r.get_start_key()) >= end {
                break;
            }
            if overlaps(r, region) {
                out.push(*id);
            }
        }
        out
    }

    /// The region holding `key`.
    pub fn by_key(&self, key: &[u8]) -> Option<&RegionInfo> {
        let dk = keys::data_key(key);
        let (_, id) = self
            .by_end
            .range((Bound::Excluded(dk), Bound::Unbounded))
            .next()?;
        let info = &self.by_id[id];
        (info.region.get_start_key() <= key).then_some(info)
    }

    /// The region that ends where the region holding `key` starts.
    pub fn prev(&self, key: &[u8]) -> Option<&RegionInfo> {
        let cur = self.by_key(key)?;
        let start = cur.region.get_start_key();
        if start.is_empty() {
            return None;
        }
        self.by_end
            .get(&keys::data_key(start))
            .map(|id| &self.by_id[id])
    }

    /// A region by id.
    pub fn get(&self, id: u64) -> Option<&RegionInfo> {
        self.by_id.get(&id)
    }

    /// Regions overlapping `[start, end)` in key order, at most `limit` (0: no limit).
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<&RegionInfo> {
        let end = keys::data_end_key(end);
        let mut out = vec![];
        for (_, id) in self
            .by_end
            .range((Bound::Excluded(keys::data_key(start)), Bound::Unbounded))
        {
            let info = &self.by_id[id];
            if keys::data_key(info.region.get_start_key()) >= end
                || (limit > 0 && out.len() >= limit)
            {
                break;
            }
            out.push(info);
        }
        out
    }

    /// Every region, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &RegionInfo> {
        self.by_end.values().map(|id| &self.by_id[id])
    }

    /// How many regions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is no region.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, start: &[u8], end: &[u8], version: u64, conf_ver: u64) -> RegionInfo {
        let mut r = metapb::Region::default();
        r.set_id(id);
        r.set_start_key(start.to_vec());
        r.set_end_key(end.to_vec());
        r.mut_region_epoch().set_version(version);
        r.mut_region_epoch().set_conf_ver(conf_ver);
        RegionInfo {
            region: r,
            ..Default::default()
        }
    }

    #[test]
    fn routes_by_key_and_prefers_newer_epochs() {
        let mut t = RegionTree::default();
        t.update(info(1, b"", b"", 1, 1)).unwrap();
        assert_eq!(t.by_key(b"anything").unwrap().region.get_id(), 1);
        // A split: the left half reports first with a newer version.
        assert_eq!(t.update(info(1, b"", b"m", 2, 1)), Some(vec![]));
        assert!(
            t.by_key(b"x").is_none(),
            "right half unknown until reported"
        );
        t.update(info(2, b"m", b"", 2, 1)).unwrap();
        assert_eq!(t.by_key(b"x").unwrap().region.get_id(), 2);
        assert_eq!(t.prev(b"x").unwrap().region.get_id(), 1);
        assert!(t.prev(b"a").is_none());
        // A stale report of the unsplit region is ignored.
        assert_eq!(t.update(info(1, b"", b"", 1, 1)), None);
        assert_eq!(t.by_key(b"x").unwrap().region.get_id(), 2);
        // Membership changes bump conf_ver; an older conf_ver is ignored.
        t.update(info(2, b"m", b"", 2, 3)).unwrap();
        assert_eq!(t.update(info(2, b"m", b"", 2, 2)), None);
        let scanned: Vec<u64> = t
            .scan(b"", b"", 0)
            .iter()
            .map(|i| i.region.get_id())
            .collect();
        assert_eq!(scanned, vec![1, 2]);
        assert_eq!(t.scan(b"n", b"", 0).len(), 1);
        assert_eq!(t.scan(b"", b"", 1).len(), 1);
    }

    #[test]
    fn a_report_from_an_older_term_never_names_its_leader_again() {
        let in_term = |leader: u64, term: u64| {
            let mut i = info(1, b"", b"", 1, 1);
            let mut p = metapb::Peer::default();
            p.set_id(leader);
            p.set_store_id(leader);
            i.leader = Some(p);
            i.term = term;
            i
        };
        let leader = |t: &RegionTree| t.get(1).and_then(|i| i.leader.clone()).map(|l| l.get_id());
        let mut t = RegionTree::default();
        t.update(in_term(1, 6)).unwrap();
        t.update(in_term(2, 7)).unwrap();
        // The deposed leader reports once more, same epoch, its old term.
        assert_eq!(t.update(in_term(1, 6)), None);
        assert_eq!(leader(&t), Some(2));
        // A report that knows no term (a split report) keeps the term known...
        t.update(in_term(2, 0)).unwrap();
        assert_eq!(t.get(1).unwrap().term, 7);
        // ...so the deposed leader is still refused after it.
        assert_eq!(t.update(in_term(1, 6)), None);
        t.update(in_term(3, 8)).unwrap();
        assert_eq!(leader(&t), Some(3));
    }

    #[test]
    fn counts_replicas_leaders_and_bytes_per_store() {
        let mut a = info(1, b"", b"m", 1, 1);
        for (id, store) in [(11, 1), (12, 2)] {
            let mut p = metapb::Peer::default();
            p.set_id(id);
            p.set_store_id(store);
            a.region.mut_peers().push(p);
        }
        a.leader = Some(a.region.get_peers()[0].clone());
        a.approximate_size = 100;
        let mut t = RegionTree::default();
        t.update(a.clone()).unwrap();
        assert_eq!(
            (t.peer_count(1), t.peer_count(2), t.leader_count(1)),
            (1, 1, 1)
        );
        assert_eq!((t.size_on(1), t.size_on(2)), (100, 100));
        // A membership change replaces the old counts; it does not add to them. So does
        // a new size estimate.
        a.region.mut_peers().remove(1);
        a.region.mut_region_epoch().set_conf_ver(2);
        a.leader = None;
        a.approximate_size = 250;
        t.update(a).unwrap();
        assert_eq!(
            (t.peer_count(1), t.peer_count(2), t.leader_count(1)),
            (1, 0, 0)
        );
        assert_eq!((t.size_on(1), t.size_on(2)), (250, 0));
        // A region swallowed by a newer one no longer counts.
        t.update(info(2, b"", b"z", 2, 1)).unwrap();
        assert_eq!((t.peer_count(1), t.size_on(1)), (0, 0));
    }

    /// Sizes are whatever a store claims: sums of absurd ones must not overflow (they
    /// panicked PD), and removing them must take back exactly what was added.
    #[test]
    fn absurd_sizes_neither_overflow_nor_underflow() {
        let mut t = RegionTree::default();
        for (id, start, end) in [(1, &b""[..], &b"m"[..]), (2, b"m", b"")] {
            let mut a = info(id, start, end, 1, 1);
            let mut p = metapb::Peer::default();
            p.set_id(10 + id);
            p.set_store_id(1);
            a.region.mut_peers().push(p);
            a.approximate_size = u64::MAX;
            t.update(a).unwrap();
        }
        assert_eq!(t.size_on(1), u64::MAX, "saturates when read");
        t.update(info(3, b"", b"", 2, 1)).unwrap();
        assert_eq!(t.size_on(1), 0);
    }
}
