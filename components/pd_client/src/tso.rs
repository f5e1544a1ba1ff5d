//! Timestamps fetched in batches: callers that ask while a fetch is in flight are
//! answered together by the next one, a single TSO request for all of them, so that
//! many clients' transactions cost PD one request per round trip rather than one each.
//!
//! Every timestamp handed out was allocated by PD after its caller asked (a batch is
//! sent only after every caller in it queued), so a timestamp fetched after another was
//! returned is larger, as with one request per caller.

use std::{future::Future, mem};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::Result;

/// Most timestamps one request asks for (PD allows up to 2^18 - 1 at once).
const MAX_BATCH: usize = 4096;

/// Callers waiting for a timestamp, and the right to fetch for them.
#[derive(Default)]
pub(crate) struct TsoBatcher {
    waiting: Mutex<Vec<oneshot::Sender<Result<u64>>>>,
    /// Held by the caller whose request is in flight; tokio's mutex queues the others
    /// in order, and each finds its answer already there or fetches the next batch.
    fetching: tokio::sync::Mutex<()>,
}

impl TsoBatcher {
    /// A timestamp; `fetch(n)` asks PD for `n` and returns the last of them (the batch
    /// is the `n` consecutive timestamps ending there).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<u64>
    where
        F: Fn(u32) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        'ask: loop {
            let (tx, mut rx) = oneshot::channel();
            self.waiting.lock().push(tx);
            let _fetching = self.fetching.lock().await;
            // Answers are handed out before the lock is released: one not here yet is
            // still queued, behind at most MAX_BATCH others, so this fetches until it
            // is served.
            loop {
                match rx.try_recv() {
                    Ok(answer) => return answer,
                    // The caller that took it into its batch was dropped mid-fetch.
                    Err(oneshot::error::TryRecvError::Closed) => continue 'ask,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                let batch = {
                    let mut waiting = self.waiting.lock();
                    // Callers that gave up while queued get nothing.
                    waiting.retain(|t| !t.is_closed());
                    let take = waiting.len().min(MAX_BATCH);
                    let rest = waiting.split_off(take);
                    mem::replace(&mut *waiting, rest)
                };
                if batch.is_empty() {
                    continue 'ask;
                }
                let answer = fetch(batch.len() as u32).await;
                hand_out(batch, answer);
            }
        }
    }
}

/// Gives each caller of a batch its own timestamp, in the order they queued.
fn hand_out(batch: Vec<oneshot::Sender<Result<u64>>>, last: Result<u64>) {
    let n = batch.len() as u64;
    for (i, tx) in batch.into_iter().enumerate() {
        let _ = tx.send(last.clone().map(|last| last - (n - 1) + i as u64));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use super::*;
    use crate::Error;

    /// A PD that hands out consecutive timestamps and counts its requests.
    #[derive(Default)]
    struct FakePd {
        next: AtomicU64,
        requests: AtomicU64,
    }

    impl FakePd {
        async fn fetch(&self, n: u32) -> Result<u64> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(self.next.fetch_add(u64::from(n), Ordering::SeqCst) + u64::from(n))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_requests_and_get_unique_timestamps() {
        let pd = Arc::new(FakePd::default());
        let b = Arc::new(TsoBatcher::default());
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (pd, b) = (pd.clone(), b.clone());
                tokio::spawn(async move { b.get(|n| pd.fetch(n)).await.unwrap() })
            })
            .collect();
        let mut got = vec![];
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (1..=200).collect::<Vec<u64>>(), "each caller its own");
        let requests = pd.requests.load(Ordering::SeqCst);
        assert!(requests < 200, "{requests} requests for 200 timestamps");
    }

    #[tokio::test]
    async fn a_timestamp_asked_for_after_another_returned_is_larger() {
        let pd = FakePd::default();
        let b = TsoBatcher::default();
        let first = b.get(|n| pd.fetch(n)).await.unwrap();
        let second = b.get(|n| pd.fetch(n)).await.unwrap();
        assert!(second > first);
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_its_whole_batch_and_the_next_one_fetches_again() {
        let b = TsoBatcher::default();
        let err = b
            .get(|_| async {
                Err(Error::Unavailable {
                    endpoints: "pd".into(),
                    last: "down".into(),
                })
            })
            .await
            .expect_err("PD is down");
        assert!(err.to_string().contains("down"));
        assert_eq!(
            b.get(|n| async move { Ok(u64::from(n) + 9) })
                .await
                .unwrap(),
            10
        );
    }

    #[tokio::test]
    async fn a_caller_dropped_mid_fetch_leaves_the_others_to_ask_again() {
        let b = Arc::new(TsoBatcher::default());
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let started_tx = Mutex::new(Some(started_tx));
        let b1 = b.clone();
        let hung = tokio::spawn(async move {
            b1.get(|_| {
                if let Some(tx) = started_tx.lock().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<Result<u64>>()
            })
            .await
        });
        started_rx.await.unwrap();
        let b2 = b.clone();
        let waiter =
            tokio::spawn(async move { b2.get(|n| async move { Ok(u64::from(n) + 99) }).await });
        tokio::task::yield_now().await;
        hung.abort();
        assert_eq!(waiter.await.unwrap().unwrap(), 100);
    }
}
