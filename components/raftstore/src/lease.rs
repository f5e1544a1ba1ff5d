//! The leader lease: a leader that a quorum acknowledged at time T stays the only leader
//! until T plus the lease, so it may serve linearizable reads from its own applied state
//! without a ReadIndex round until then.
//!
//! Why that holds. With check-quorum on, a voter that heard from its leader less than an
//! election timeout ago (counted in its own ticks) refuses every vote and pre-vote, so no
//! other leader can be elected until a quorum has gone that long without the leader. A
//! quorum that acknowledged a round the leader sent at T heard from it after T; any
//! election quorum shares a voter with it. The lease is shorter than the election timeout
//! by two ticks: one for the tick the voter's count starts in, one for the clocks'
//! drift.
//!
//! What breaks the argument, and what this module does about it:
//! - A leader transfer makes the transferee campaign at once and the voters grant it
//!   their votes in spite of their leader: once a TimeoutNow went out, the lease is gone
//!   for the rest of the term.
//! - A follower that learns its leader's store is down may stop waiting for it (see
//!   `hibernate::on_stores_down`): it does so only once a lease (and a tick) has passed
//!   since it last heard from the leader ([`Contact`]), and not at all if it hears from
//!   the leader meanwhile.
//! - A voter that restarted knows no leader, and raft-rs grants votes at once to a peer
//!   that knows none: it refuses them ([`refuses_vote`]) for a lease after the restart.
//! - A new leader serves nothing from its lease before it has applied an entry of its own
//!   term: before, writes the previous leader acknowledged may be unapplied here.
//!
//! Times are the leader's monotonic clock. A test-only fail point (`leader_clock_slow`)
//! plays a leader whose clock runs slow: its ticks stop, so check-quorum does not depose
//! it, and its lease lasts as many milliseconds longer as the fail point's value says. It
//! shows that the history checker catches a lease that outlives its leader.

use std::time::{Duration, Instant};

use raft::{
    eraftpb::{Message, MessageType},
    CAMPAIGN_TRANSFER,
};

/// A leader's lease in its current term.
#[derive(Debug)]
pub(crate) struct Lease {
    /// How long an acknowledgement keeps the lease; zero turns lease reads off.
    max: Duration,
    term: u64,
    /// Valid before this instant.
    until: Option<Instant>,
    /// A TimeoutNow went out in `term`: no lease again in it.
    revoked: bool,
}

impl Lease {
    /// No lease yet; acknowledgements keep it for `max`.
    pub fn new(max: Duration) -> Lease {
        Lease {
            max,
            term: 0,
            until: None,
            revoked: false,
        }
    }

    /// A new term (or role) starts: the old lease is gone.
    pub fn on_term(&mut self, term: u64) {
        self.term = term;
        self.until = None;
        self.revoked = false;
    }

    /// A quorum acknowledged what the leader sent at `sent` in `term`.
    pub fn renew(&mut self, term: u64, sent: Instant) {
        if self.max.is_zero() || self.revoked || term != self.term {
            return;
        }
        let until = sent + self.max + skew();
        if self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
    }

    /// A TimeoutNow went out: another peer may be elected at once.
    pub fn revoke(&mut self) {
        self.revoked = true;
        self.until = None;
    }

    /// Whether a read arriving at `now` may be served from the lease of `term` (the
    /// peer's current one: a lease of another term never counts, whatever the role
    /// changes between two Readies looked like).
    pub fn is_valid(&self, term: u64, now: Instant) -> bool {
        term == self.term && self.until.is_some_and(|u| now < u)
    }

    /// Whether less than a third of the lease is left at `now`: time to renew it.
    pub fn expires_soon(&self, now: Instant) -> bool {
        self.until
            .is_some_and(|u| u.saturating_duration_since(now) < self.max / 3)
    }
}

/// Test only: how much longer than it should the lease lasts (`leader_clock_slow`, in
/// milliseconds).
fn skew() -> Duration {
    fail::fail_point!("leader_clock_slow", |ms| Duration::from_millis(
        ms.and_then(|s| s.parse().ok()).unwrap_or(0)
    ));
    Duration::ZERO
}

/// Whether a peer that restarted (and so knows no leader yet) must drop the vote or
/// pre-vote request `m`: until `until`, a leader it acknowledged before the restart may
/// still hold its lease. A leader transfer's request is let through, as voters in a lease
/// let it through.
pub(crate) fn refuses_vote(
    m: &Message,
    leader_known: bool,
    until: Option<Instant>,
    now: Instant,
) -> bool {
    let vote = matches!(
        m.get_msg_type(),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    );
    vote && !leader_known && m.context != CAMPAIGN_TRANSFER && until.is_some_and(|t| now < t)
}

/// A follower's last word from a leader (any append, heartbeat or snapshot): until a
/// lease has passed since, the leader may still be serving reads from its lease.
#[derive(Debug, Default)]
pub(crate) struct Contact {
    last: Option<Instant>,
}

impl Contact {
    /// A leader's message arrived.
    pub fn heard(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// When the leader last heard from can no longer hold a lease from it (`None`: no
    /// leader was ever heard from).
    pub fn lease_gone_at(&self, max: Duration) -> Option<Instant> {
        self.last.map(|t| t + max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(800);

    #[test]
    fn an_acknowledgement_keeps_the_lease_from_when_it_was_sent() {
        let mut l = Lease::new(MAX);
        let t0 = Instant::now();
        assert!(
            !l.is_valid(l.term, t0),
            "no lease before any acknowledgement"
        );
        l.on_term(3);
        l.renew(3, t0);
        assert!(l.is_valid(l.term, t0 + MAX - Duration::from_millis(1)));
        assert!(!l.is_valid(l.term, t0 + MAX));
        assert!(!l.expires_soon(t0));
        assert!(l.expires_soon(t0 + MAX / 2 + MAX / 4));
        // An older round's acknowledgement does not shorten it.
        l.renew(3, t0 - Duration::from_millis(500));
        assert!(l.is_valid(l.term, t0 + MAX - Duration::from_millis(1)));
    }

    #[test]
    fn another_term_a_revocation_or_a_zero_lease_give_nothing() {
        let t0 = Instant::now();
        let mut l = Lease::new(MAX);
        l.on_term(3);
        l.renew(2, t0);
        assert!(
            !l.is_valid(l.term, t0),
            "an acknowledgement of an older term"
        );
        l.renew(3, t0);
        l.on_term(4);
        assert!(!l.is_valid(l.term, t0), "a new term drops the lease");
        l.renew(4, t0);
        l.revoke();
        assert!(!l.is_valid(l.term, t0));
        l.renew(4, t0);
        assert!(!l.is_valid(l.term, t0), "revoked for the rest of the term");
        l.on_term(5);
        l.renew(5, t0);
        assert!(l.is_valid(5, t0));
        assert!(!l.is_valid(6, t0), "a lease is for its own term only");
        let mut off = Lease::new(Duration::ZERO);
        off.on_term(1);
        off.renew(1, t0);
        assert!(!off.is_valid(off.term, t0));
    }

    #[test]
    fn a_restarted_voter_refuses_votes_for_a_lease_unless_for_a_transfer() {
        let now = Instant::now();
        let until = Some(now + MAX);
        let msg = |t: MessageType, ctx: &[u8]| {
            let mut m = Message::default();
            m.set_msg_type(t);
            m.context = ctx.to_vec().into();
            m
        };
        let vote = msg(MessageType::MsgRequestVote, b"");
        let pre_vote = msg(MessageType::MsgRequestPreVote, b"");
        assert!(refuses_vote(&vote, false, until, now));
        assert!(refuses_vote(&pre_vote, false, until, now));
        assert!(
            !refuses_vote(&vote, false, until, now + MAX),
            "the window is over"
        );
        assert!(
            !refuses_vote(&vote, true, until, now),
            "raft-rs's own lease check applies"
        );
        assert!(!refuses_vote(&vote, false, None, now), "not restarted");
        let transfer = msg(MessageType::MsgRequestVote, CAMPAIGN_TRANSFER);
        assert!(!refuses_vote(&transfer, false, until, now));
        let append = msg(MessageType::MsgAppend, b"");
        assert!(!refuses_vote(&append, false, until, now));
    }

    #[test]
    fn contact_says_when_the_leader_s_lease_is_gone() {
        let mut c = Contact::default();
        assert_eq!(c.lease_gone_at(MAX), None);
        let t0 = Instant::now();
        c.heard(t0);
        assert_eq!(c.lease_gone_at(MAX), Some(t0 + MAX));
    }
}
