//! The client's session (the Raft thesis, section 6.3): every raw write gets a number, so
//! that a write whose first try's outcome is unknown (no answer, a broken connection, a
//! leader change) can be sent again and is applied once: the region answers a resend
//! with the first answer. TiKV's clients send no numbers and keep TiKV's behaviour.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use parking_lot::Mutex;
use proto::kvrpcpb;

/// In a store's undetermined answer when the session cannot settle the write (it forgot
/// the session, or the number answered another write): a resend is pointless.
const UNSETTLED: &str = "client session";

/// A session: its id, the next number, and the numbers not yet settled.
#[derive(Debug)]
pub(crate) struct Session {
    id: u64,
    next: AtomicU64,
    open: Mutex<BTreeSet<u64>>,
}

impl Session {
    /// A session with a random id, so that two clients (or restarts) never share one.
    pub(crate) fn new() -> Arc<Session> {
        Arc::new(Session {
            id: rand::random::<u64>() | 1,
            next: AtomicU64::new(1),
            open: Mutex::default(),
        })
    }

    /// Numbers the next write; the number is settled when the ticket drops.
    pub(crate) fn number(self: &Arc<Self>) -> Ticket {
        // Under the lock, so that no try can state an acknowledged point past a number
        // taken but not yet in the set.
        let mut open = self.open.lock();
        let seq = self.next.fetch_add(1, Relaxed);
        open.insert(seq);
        drop(open);
        Ticket {
            session: self.clone(),
            seq,
            maybe_applied: AtomicBool::new(false),
            first_sent_ms: AtomicU64::new(0),
        }
    }

    /// Every number below it is settled: the client sends none of them again.
    fn acked_below(&self) -> u64 {
        let open = self.open.lock();
        open.first()
            .copied()
            .unwrap_or_else(|| self.next.load(Relaxed))
    }
}

/// One numbered write, across its tries.
#[derive(Debug)]
pub(crate) struct Ticket {
    session: Arc<Session>,
    seq: u64,
    /// Whether a try's outcome was unknown: later tries are resends.
    maybe_applied: AtomicBool,
    /// When the first try was sent (unix ms; 0: not yet).
    first_sent_ms: AtomicU64,
}

impl Ticket {
    /// Puts the session's fields into a try's context.
    pub(crate) fn stamp(&self, ctx: &mut kvrpcpb::Context) {
        ctx.session_client_id = self.session.id;
        ctx.session_seq = self.seq;
        ctx.session_acked_below = self.session.acked_below();
        ctx.session_retry = self.maybe_applied.load(Relaxed);
        let now = util::clock::unix_ms();
        // The first stamp sets it; later ones keep it.
        let _ = self
            .first_sent_ms
            .compare_exchange(0, now, Relaxed, Relaxed);
        let first = self.first_sent_ms.load(Relaxed);
        ctx.session_first_sent_ms = first;
        // Never before the first try, even if the clock was set back since: a region
        // counts on a resend being sent no earlier than its first try.
        ctx.session_sent_ms = now.max(first);
    }

    /// Whether a store refused a try only for its sending time (too old, or the clocks
    /// too far apart): nothing applied, and a try sent now may pass. The name of the
    /// limit is the contract.
    pub(crate) fn refused_for_its_age(why: &str) -> bool {
        why.contains("raftstore.session-ttl / 20")
    }

    /// A try's outcome is unknown: whether to send it again (the store will answer a
    /// resend with the first answer), given why (`false` if the session cannot say).
    pub(crate) fn resend_after(&self, why: &str) -> bool {
        self.maybe_applied.store(true, Relaxed);
        !why.contains(UNSETTLED)
    }

    /// Whether some try may have been applied.
    pub(crate) fn maybe_applied(&self) -> bool {
        self.maybe_applied.load(Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session.open.lock().remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledged_point_is_the_oldest_unsettled_number() {
        let s = Session::new();
        let a = s.number();
        let b = s.number();
        let mut ctx = kvrpcpb::Context::default();
        b.stamp(&mut ctx);
        assert_eq!((ctx.session_seq, ctx.session_acked_below), (2, 1));
        assert!(!ctx.session_retry);
        let first = ctx.session_first_sent_ms;
        assert!(first != 0 && first == ctx.session_sent_ms);
        drop(a);
        assert!(b.resend_after("no answer within 5s"));
        std::thread::sleep(std::time::Duration::from_millis(5));
        b.stamp(&mut ctx);
        // A resend says when it was sent, and when the first try was.
        assert_eq!(ctx.session_first_sent_ms, first);
        assert!(ctx.session_sent_ms > first);
        assert_eq!((ctx.session_seq, ctx.session_acked_below), (2, 2));
        assert!(ctx.session_retry);
        assert!(!b.resend_after("region 2 no longer remembers client session 0x1"));
        drop(b);
        assert_eq!(s.acked_below(), 3);
        assert_ne!(ctx.session_client_id, 0);
    }
}
