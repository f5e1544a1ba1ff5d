//! Advances the safe timestamp of the regions this store leads, every
//! `server.safe-ts-interval`: one timestamp from PD per round, then a resolved timestamp
//! per region (`TxnStorage::advance_safe_ts`), which the leader peer ships to its
//! followers on every message. Transactional stale reads on any replica read at or below
//! it. Hibernating regions are left alone (advancing them would wake them), and the
//! worker's own messages do not keep a region from hibernating: the replicas of an idle
//! region keep the safe timestamp they had and refuse newer stale reads, which clients
//! then send to the leader.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use slog::{debug, Logger};
use util::shutdown::Shutdown;

use crate::{metrics, txn_storage::TxnStorage};

/// Regions advanced at once (each waits for a read index round).
const CONCURRENCY: usize = 16;

/// Runs rounds until `shutdown`.
pub async fn run(
    txn: TxnStorage,
    pd: Arc<pd_client::PdClient>,
    interval: Duration,
    shutdown: Shutdown,
    logger: Logger,
) {
    // Exported from the start, before the first round.
    metrics::RESOLVED_TS_LAG.set(0.0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
        let now = match pd.get_ts().await {
            Ok(ts) => ts,
            Err(e) => {
                debug!(logger, "no timestamp for the safe ts round"; "err" => %e);
                continue;
            }
        };
        let results: Vec<_> = futures::stream::iter(txn.led_regions())
            .map(|ctx| {
                let txn = &txn;
                async move { (ctx.region_id, txn.advance_safe_ts(&ctx, now).await) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut oldest = now;
        for (region_id, res) in results {
            match res {
                Ok(ts) => oldest = oldest.min(ts),
                // Retried next round (the leader moved, the region split).
                Err(e) => {
                    debug!(logger, "safe ts not advanced"; "region_id" => region_id, "err" => %e)
                }
            }
        }
        let lag_ms = txn::types::physical_ms(now).saturating_sub(txn::types::physical_ms(oldest));
        metrics::RESOLVED_TS_LAG.set(lag_ms as f64 / 1000.0);
    }
}
