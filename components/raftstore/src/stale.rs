//! What a replica may serve without asking its leader (stale reads), owned by its peer on
//! the Raft poller.
//!
//! Every message a leader sends carries its word (`LeaderState`): its term, its commit
//! index, and the last resolved timestamp it confirmed (see `server::safe_ts`). A leader
//! sends words only once it has committed an entry of its term, so that its commit index
//! covers every write its predecessors acknowledged. A follower takes the word only from
//! the leader of its own term, and acts on it only once it has applied up to that commit
//! index: then it holds every write any leader had acknowledged when the message was sent (its state is at most as old as the time since
//! it received it, on this replica's monotonic clock), and every transaction committed at
//! or below the safe timestamp. A replica never serves a stale read above what it has
//! applied.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Words not yet acted on, at most: a follower far behind keeps the oldest and the newest.
const PENDING_MAX: usize = 8;

/// A leader's word, waiting for this replica to apply up to `commit`.
#[derive(Clone, Copy, Debug)]
struct Word {
    commit: u64,
    safe_ts: u64,
    received: Instant,
}

/// One replica's stale-read state.
#[derive(Debug, Default)]
pub struct StaleState {
    /// Added to the age of every word (see `Config::stale_margin`).
    margin: Duration,
    /// Transactional reads at or below it may be served here.
    safe_ts: u64,
    /// When a leader's word that this replica has since caught up with arrived.
    fresh_at: Option<Instant>,
    pending: VecDeque<Word>,
    /// Leader only: the resolved timestamp it confirmed, shipped on every message.
    shipped_safe_ts: u64,
}

impl StaleState {
    /// A replica's state before any word, whose words count `margin` older than they
    /// look.
    pub fn new(margin: Duration) -> StaleState {
        StaleState {
            margin,
            ..Default::default()
        }
    }

    /// Takes a word from the leader; `applied` is this replica's applied index.
    pub fn on_word(&mut self, commit: u64, safe_ts: u64, applied: u64, now: Instant) {
        let word = Word {
            commit,
            safe_ts,
            received: now,
        };
        let full = self.pending.len() >= PENDING_MAX;
        match self.pending.back_mut() {
            // A word asking for no more than the last replaces it: waiting for the
            // higher of the two indexes is safe for both.
            Some(last) if last.commit >= commit => {
                last.safe_ts = last.safe_ts.max(safe_ts);
                last.received = now;
            }
            Some(last) if full => *last = word,
            _ => self.pending.push_back(word),
        }
        self.on_applied(applied);
    }

    /// Acts on the words this replica has now applied far enough for.
    pub fn on_applied(&mut self, applied: u64) {
        while let Some(w) = self.pending.front().copied() {
            if w.commit > applied {
                break;
            }
            self.pending.pop_front();
            self.safe_ts = self.safe_ts.max(w.safe_ts);
            self.fresh_at = Some(self.fresh_at.map_or(w.received, |f| f.max(w.received)));
        }
    }

    /// Leader only: a resolved timestamp the store confirmed by a read index at `index`
    /// in this term. The leader serves stale reads at or below it once it has applied
    /// `index`, and ships it to its followers.
    pub fn on_resolved(&mut self, safe_ts: u64, index: u64, applied: u64, now: Instant) {
        self.shipped_safe_ts = self.shipped_safe_ts.max(safe_ts);
        self.on_word(index, safe_ts, applied, now);
    }

    /// What a leader ships: its confirmed resolved timestamp.
    pub fn shipped_safe_ts(&self) -> u64 {
        self.shipped_safe_ts
    }

    /// A new term: what this replica shipped as leader was confirmed in the old one.
    pub fn on_term_changed(&mut self) {
        self.shipped_safe_ts = 0;
    }

    /// The safe timestamp.
    pub fn safe_ts(&self) -> u64 {
        self.safe_ts
    }

    /// How old this replica's applied state may be at `now`: since the last word it has
    /// caught up with arrived, plus the margin for a leader that no longer knew it was
    /// deposed; `None` if it has never caught up with a word.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.fresh_at
            .map(|f| now.saturating_duration_since(f) + self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_counts_only_once_its_commit_index_is_applied() {
        let t0 = Instant::now();
        let mut s = StaleState::default();
        s.on_word(10, 500, 9, t0);
        assert_eq!((s.safe_ts(), s.age(t0)), (0, None), "index 10 not applied");
        s.on_word(12, 600, 9, t0 + Duration::from_secs(1));
        s.on_applied(10);
        assert_eq!(s.safe_ts(), 500);
        assert_eq!(
            s.age(t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        s.on_applied(12);
        assert_eq!(s.safe_ts(), 600);
        assert_eq!(
            s.age(t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(2))
        );
        // An older word never lowers what was reached.
        s.on_word(12, 100, 12, t0);
        assert_eq!(s.safe_ts(), 600);
    }

    #[test]
    fn a_follower_far_behind_keeps_its_oldest_words_and_the_newest() {
        let t0 = Instant::now();
        let mut s = StaleState::default();
        for i in 1..=20 {
            s.on_word(i * 10, i, 0, t0 + Duration::from_millis(i));
        }
        assert_eq!(s.pending.len(), PENDING_MAX);
        s.on_applied(70);
        assert_eq!(s.safe_ts(), 7);
        s.on_applied(200);
        assert_eq!(s.safe_ts(), 20, "the newest word was kept");
    }
}
