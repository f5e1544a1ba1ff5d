//! Per-key latches: commands on the same keys run one at a time (in arrival order), from
//! reading their snapshot to their writes being applied.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::Arc,
};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// A fixed set of slots; a key takes the slot its hash falls in, so unrelated keys
/// sometimes wait for each other, never related ones.
pub struct Latches {
    slots: Vec<Arc<Mutex<()>>>,
}

/// Held while a command runs; dropping it lets the next command on its keys in.
pub struct Guard {
    _held: Vec<OwnedMutexGuard<()>>,
}

impl Latches {
    /// `slots` latches (at least one).
    pub fn new(slots: usize) -> Self {
        Latches {
            slots: (0..slots.max(1)).map(|_| Arc::default()).collect(),
        }
    }

    /// Waits for every key's latch. Slots are taken in ascending order, so two commands
    /// never hold one each of the other's; each slot queues its waiters first come,
    /// first served.
    pub async fn acquire<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> Guard {
        let mut slots: Vec<usize> = keys.into_iter().map(|k| self.slot(k)).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut held = Vec::with_capacity(slots.len());
        for s in slots {
            held.push(self.slots[s].clone().lock_owned().await);
        }
        Guard { _held: held }
    }

    fn slot(&self, key: &[u8]) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.slots.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_command_on_a_shared_key_waits_for_the_one_holding_it() {
        let latches = Arc::new(Latches::new(64));
        // A key named twice (or two keys in one slot) is taken once.
        let a = latches.acquire([&b"x"[..], b"y", b"x"]).await;
        let l = latches.clone();
        let waiter = tokio::spawn(async move {
            let _g = l.acquire([&b"y"[..], b"z"]).await;
        });
        // On this single-threaded runtime the waiter runs until it blocks.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "a shared key waits");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .expect("the waiter ran");
    }
}
