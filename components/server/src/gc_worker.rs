//! Garbage collection of old transactional versions, on a task of its own.
//!
//! Every `gc.run-interval`: the store leading the first region (one store at a time, by
//! Raft) resolves the locks of transactions older than now minus `gc.life-time` and
//! raises PD's safe point to it, through the transactional client as any GC leader
//! would; then every store makes sure no lock below PD's safe point is left anywhere
//! (PD takes a safe point from any client) and drops, in each region it leads, the
//! versions below it that no read can see. A region is collected once per safe point,
//! by whichever store leads it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use proto::kvrpcpb::Context;
use raftstore::StoreMeta;
use slog::{info, warn, Logger};
use util::shutdown::Shutdown;

use crate::{config::GcConfig, metrics, txn_storage::TxnStorage};

/// What the worker needs from the store.
pub struct GcWorker {
    /// Its settings.
    pub cfg: GcConfig,
    /// This store.
    pub store_id: u64,
    /// PD, for the safe point and timestamps.
    pub pd: Arc<pd_client::PdClient>,
    /// PD's addresses, for the transactional client that resolves locks.
    pub pd_endpoints: Vec<String>,
    /// What that client dials with (TLS, the cluster secret).
    pub creds: util::security::Credentials,
    /// Where versions are dropped.
    pub txn: TxnStorage,
    /// Which regions this store leads.
    pub meta: Arc<Mutex<StoreMeta>>,
    /// Stops the worker.
    pub shutdown: Shutdown,
    /// Logs with the store's fields.
    pub logger: Logger,
}

impl GcWorker {
    /// Runs rounds until shutdown.
    pub async fn run(self) {
        let mut client = None;
        let mut collected: HashMap<u64, u64> = HashMap::new();
        // The highest safe point below which every lock was resolved, by this store.
        let mut swept = 0;
        // The first round at once: a store must know the safe point before it serves
        // reads below it.
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.run_interval) => {}
                    _ = self.shutdown.wait() => return,
                }
            }
            first = false;
            // Known before anything below it can be dropped or asked for.
            if let Ok(sp) = self.pd.get_gc_safe_point().await {
                self.txn.set_gc_safe_point(sp);
            }
            match self.advance(&mut client).await {
                Ok(Some(sp)) => swept = swept.max(sp),
                Ok(None) => {}
                Err(e) => warn!(self.logger, "gc safe point not advanced"; "err" => %e),
            }
            let safe_point = match self.pd.get_gc_safe_point().await {
                Ok(sp) => sp,
                Err(e) => {
                    warn!(self.logger, "gc safe point unknown"; "err" => %e);
                    continue;
                }
            };
            let due = self.due(safe_point, &mut collected);
            if due.is_empty() {
                continue;
            }
            // Whoever raised the safe point (any client may) need not have resolved the
            // locks below it, and a lock's primary may be in another region: every lock
            // below it, anywhere, is settled before this store drops a version.
            // Known before the sweep: no transaction starts below it here afterwards.
            self.txn.set_gc_safe_point(safe_point);
            if safe_point > swept {
                match self.sweep(&mut client, safe_point).await {
                    Ok(()) => swept = safe_point,
                    Err(e) => {
                        warn!(self.logger, "gc postponed: locks below the safe point remain";
                              "safe_point" => safe_point, "err" => %e);
                        continue;
                    }
                }
            }
            self.collect(safe_point, due, &mut collected).await;
        }
    }

    /// The transactional client that resolves locks, connected on first use.
    async fn client<'a>(
        &self,
        slot: &'a mut Option<client::txn::TxnClient>,
    ) -> client::Result<&'a client::txn::TxnClient> {
        if slot.is_none() {
            let timeout = self.cfg.run_interval.max(Duration::from_secs(10));
            let creds = self.creds.clone();
            *slot = Some(
                client::txn::TxnClient::connect_with(&self.pd_endpoints, timeout, creds).await?,
            );
        }
        Ok(slot.as_ref().expect("connected above"))
    }

    /// As the leader of the first region: resolves locks below now minus the life
    /// time and raises the safe point there; returns the safe point it swept below.
    async fn advance(
        &self,
        client: &mut Option<client::txn::TxnClient>,
    ) -> client::Result<Option<u64>> {
        let leads_first = {
            let meta = self.meta.lock();
            meta.region_for_key(b"")
                .is_some_and(|r| meta.is_leader(r.get_id()))
        };
        if !leads_first {
            return Ok(None);
        }
        let now = self.pd.get_ts().await?;
        let life_ms = self.cfg.life_time.as_millis() as u64;
        let target =
            txn::types::from_physical_ms(txn::types::physical_ms(now).saturating_sub(life_ms));
        if target == 0 || target <= self.pd.get_gc_safe_point().await? {
            return Ok(None);
        }
        let report = self.client(client).await?.gc(target).await?;
        metrics::GC_LOCKS_RESOLVED.inc_by(report.locks_resolved);
        info!(self.logger, "gc safe point advanced"; "safe_point" => report.safe_point,
              "locks_resolved" => report.locks_resolved);
        Ok(Some(target))
    }

    /// Resolves every lock in the cluster below `safe_point`.
    async fn sweep(
        &self,
        client: &mut Option<client::txn::TxnClient>,
        safe_point: u64,
    ) -> client::Result<()> {
        let resolved = self
            .client(client)
            .await?
            .resolve_locks_below(safe_point)
            .await?;
        metrics::GC_LOCKS_RESOLVED.inc_by(resolved);
        Ok(())
    }

    /// The regions this store leads that were not collected at `safe_point` yet.
    fn due(&self, safe_point: u64, collected: &mut HashMap<u64, u64>) -> Vec<Context> {
        if safe_point == 0 {
            return vec![];
        }
        let meta = self.meta.lock();
        collected.retain(|id, _| meta.region(*id).is_some());
        meta.regions()
            .filter(|r| meta.is_leader(r.get_id()))
            .filter(|r| collected.get(&r.get_id()).is_none_or(|sp| *sp < safe_point))
            .filter_map(|r| {
                let peer = r
                    .get_peers()
                    .iter()
                    .find(|p| p.get_store_id() == self.store_id)?;
                let mut ctx = Context::default();
                ctx.set_region_id(r.get_id());
                ctx.set_region_epoch(r.get_region_epoch().clone());
                ctx.set_peer(peer.clone());
                Some(ctx)
            })
            .collect()
    }

    /// Drops versions below `safe_point` in each of `regions`.
    async fn collect(
        &self,
        safe_point: u64,
        regions: Vec<Context>,
        collected: &mut HashMap<u64, u64>,
    ) {
        metrics::GC_SAFE_POINT.set(safe_point as i64);
        self.txn.set_gc_safe_point(safe_point);
        for ctx in regions {
            match self.txn.gc(&ctx, safe_point).await {
                Ok(dropped) => {
                    metrics::GC_VERSIONS_DROPPED.inc_by(dropped);
                    collected.insert(ctx.region_id, safe_point);
                }
                // Retried next round (the region split, or its leader moved).
                Err(e) => warn!(self.logger, "gc of a region failed"; "region_id" => ctx.region_id,
                                "err" => %e),
            }
        }
    }
}
