//! `kvctl region check`: the consistency check between a region's replicas. The leader
//! proposes a ComputeHash entry; every replica hashes its data when it applies it; then
//! each replica's hash at that entry is read from its store and compared.

use std::time::Duration;

use proto::raft_serverpb::{ComputeHashRequest, RegionHashRequest};

use crate::{Attempt, Backoff, Client, Kind, Result};

/// Every replica's hash of one region at one applied index.
#[derive(Clone, Debug)]
pub struct RegionCheck {
    /// The region.
    pub region_id: u64,
    /// The index of the ComputeHash entry the hashes are at.
    pub index: u64,
    /// (store id, its replica's hash; `None`: it did not answer in time).
    pub replicas: Vec<(u64, Option<u64>)>,
}

impl RegionCheck {
    /// Whether every replica answered with the same hash.
    pub fn consistent(&self) -> bool {
        let first = self.replicas.first().and_then(|r| r.1);
        first.is_some() && self.replicas.iter().all(|r| r.1 == first)
    }
}

impl Client {
    /// Hashes every replica of `region_id` at one applied index and collects the hashes.
    pub async fn check_region(&self, region_id: u64) -> Result<RegionCheck> {
        let (index, route) = self.compute_hash(region_id).await?;
        let mut replicas = vec![];
        for peer in route.region.get_peers() {
            let store = peer.get_store_id();
            replicas.push((store, self.replica_hash(store, region_id, index).await));
        }
        Ok(RegionCheck {
            region_id,
            index,
            replicas,
        })
    }

    /// Has the leader propose the ComputeHash entry; returns its index.
    async fn compute_hash(&self, region_id: u64) -> Result<(u64, pd_client::RegionRoute)> {
        let mut backoff = Backoff::new(self.timeout);
        loop {
            let route = self.region_by_id(region_id, &mut backoff).await?;
            let attempt = self
                .attempt_at(Kind::Slow, route.clone(), &backoff, |c, ctx, _| {
                    let mut req = ComputeHashRequest::default();
                    req.set_region_id(ctx.region_id);
                    req.set_region_epoch(ctx.get_region_epoch().clone());
                    async move {
                        let mut resp = c.compute_hash_async_opt(&req, c.opt())?.await?;
                        Ok((resp.region_error.take(), resp.take_error(), resp.index))
                    }
                })
                .await?;
            match attempt {
                Attempt::Done(index) => return Ok((index, route)),
                Attempt::Retry(why) | Attempt::NotReady(why) => backoff.wait(why).await?,
            }
        }
    }

    /// One replica's hash at `index`, once it has applied that far (or `None` if it does
    /// not within the client's timeout).
    async fn replica_hash(&self, store_id: u64, region_id: u64, index: u64) -> Option<u64> {
        let deadline = std::time::Instant::now() + self.timeout;
        let mut req = RegionHashRequest::default();
        req.set_region_id(region_id);
        req.set_index(index);
        while std::time::Instant::now() < deadline {
            if let Ok(client) = self.store(store_id).await {
                if let Ok(rx) = client.region_hash_async_opt(&req, client.opt()) {
                    if let Ok(resp) = rx.await {
                        if resp.found {
                            return Some(resp.hash);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}
