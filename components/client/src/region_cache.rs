//! Regions this client has learned, by range, with their leaders.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
};

use pd_client::RegionRoute;
use proto::metapb;

/// Cached routes, keyed by encoded end key (an empty end sorts last), with an index by
/// region id so that a region error costs a lookup, not a scan of every region.
#[derive(Default)]
pub struct RegionCache {
    by_end: BTreeMap<Vec<u8>, RegionRoute>,
    /// Region id -> its key in `by_end`.
    end_of: HashMap<u64, Vec<u8>>,
}

impl RegionCache {
    /// The cached route for `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<RegionRoute> {
        let (_, route) = self
            .by_end
            .range((Bound::Excluded(keys::data_key(key)), Bound::Unbounded))
            .next()?;
        (route.region.get_start_key() <= key).then(|| route.clone())
    }

    /// Adds a route, dropping cached routes it overlaps.
    pub fn insert(&mut self, route: RegionRoute) {
        self.invalidate(route.region.get_id());
        let start = keys::data_key(route.region.get_start_key());
        let end = keys::data_end_key(route.region.get_end_key());
        let stale: Vec<Vec<u8>> = self
            .by_end
            .range((Bound::Excluded(start), Bound::Unbounded))
            .take_while(|(_, r)| keys::data_key(r.region.get_start_key()) < end)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(old) = self.by_end.remove(&k) {
                self.end_of.remove(&old.region.get_id());
            }
        }
        self.end_of.insert(route.region.get_id(), end.clone());
        self.by_end.insert(end, route);
    }

    /// Forgets a region.
    pub fn invalidate(&mut self, region_id: u64) {
        if let Some(end) = self.end_of.remove(&region_id) {
            self.by_end.remove(&end);
        }
    }

    /// Records a new leader for a cached region.
    pub fn set_leader(&mut self, region_id: u64, leader: metapb::Peer) {
        let route = self
            .end_of
            .get(&region_id)
            .and_then(|end| self.by_end.get_mut(end));
        if let Some(r) = route {
            r.leader = Some(leader);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: u64, start: &[u8], end: &[u8]) -> RegionRoute {
        let mut r = metapb::Region::default();
        r.set_id(id);
        r.set_start_key(start.to_vec());
        r.set_end_key(end.to_vec());
        RegionRoute {
            region: r,
            ..Default::default()
        }
    }

    #[test]
    fn lookups_and_replacement() {
        let mut c = RegionCache::default();
        c.insert(route(1, b"", b""));
        assert_eq!(c.get(b"k").unwrap().region.get_id(), 1);
        // A split learned from epoch_not_match replaces the wider region.
        c.insert(route(1, b"", b"m"));
        c.insert(route(2, b"m", b""));
        assert_eq!(c.get(b"a").unwrap().region.get_id(), 1);
        assert_eq!(c.get(b"m").unwrap().region.get_id(), 2);
        c.set_leader(2, metapb::Peer::default());
        assert!(c.get(b"x").unwrap().leader.is_some());
        c.invalidate(2);
        assert!(c.get(b"x").is_none());
        // Routes replaced by an overlapping one are gone from the id index too.
        c.insert(route(3, b"", b""));
        c.invalidate(1);
        assert_eq!(c.get(b"a").unwrap().region.get_id(), 3);
        assert_eq!((c.by_end.len(), c.end_of.len()), (1, 1));
    }
}
