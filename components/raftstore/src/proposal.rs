//! Proposals waiting for their entries to commit. A proposal is made at (term, index),
//! and the queue keeps them in that order: terms never go down and, within a term,
//! indexes go up. Committed entries arrive in the same order, so each one settles every
//! proposal ordered before it: a proposal of an older term, or of the same term at a
//! lower index, can no longer commit (its entry was overwritten by another leader's).
//!
//! Comparing by index alone went wrong when a peer lost and regained leadership with
//! proposals of its first term still queued: they blocked the queue's front while the
//! new term's proposals committed, which were then reported lost though applied.

use std::collections::VecDeque;

use crate::msg::Proposal;

/// Proposals by (term, index).
#[derive(Default)]
pub(crate) struct ProposalQueue {
    queue: VecDeque<Proposal>,
}

impl ProposalQueue {
    /// Adds a proposal made after every one queued.
    pub fn push(&mut self, p: Proposal) {
        debug_assert!(self
            .queue
            .back()
            .is_none_or(|b| (b.term, b.index) < (p.term, p.index)));
        self.queue.push_back(p);
    }

    /// Whether no proposal waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The proposal whose entry committed at (`term`, `index`), if this peer made it;
    /// every proposal ordered before it is lost and goes into `lost`.
    pub fn take(&mut self, term: u64, index: u64, lost: &mut Vec<Proposal>) -> Option<Proposal> {
        while let Some(p) = self.queue.front() {
            if (p.term, p.index) >= (term, index) {
                break;
            }
            lost.push(self.queue.pop_front().expect("front exists"));
        }
        let front = self.queue.front()?;
        if (front.term, front.index) == (term, index) {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// Every proposal at or below `index`, for a peer whose log a snapshot replaced up
    /// to it: whether each one's entry is in the snapshot or was overwritten first is
    /// not known here. Without this a later commit would settle them as lost.
    pub fn take_covered(&mut self, index: u64) -> Vec<Proposal> {
        let (covered, rest) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|p| p.index <= index);
        self.queue = rest;
        covered.into()
    }

    /// Every waiting proposal, for a peer that is going away.
    pub fn drain(&mut self) -> impl Iterator<Item = Proposal> + '_ {
        self.queue.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn p(term: u64, index: u64) -> Proposal {
        Proposal {
            index,
            term,
            cb: Box::new(|_| {}),
            proposed_at: Instant::now(),
        }
    }

    fn ids(ps: &[Proposal]) -> Vec<(u64, u64)> {
        ps.iter().map(|p| (p.term, p.index)).collect()
    }

    /// A leader of term 5 proposed at 10 to 12, lost leadership (the new leader wrote 11
    /// and 12 in term 6), won it back in term 7 and proposed at 13 and 14.
    #[test]
    fn proposals_of_a_lost_term_never_hide_a_later_terms_commits() {
        let mut q = ProposalQueue::default();
        for (t, i) in [(5, 10), (5, 11), (5, 12), (7, 13), (7, 14)] {
            q.push(p(t, i));
        }
        let mut lost = vec![];
        assert_eq!(q.take(5, 10, &mut lost).map(|p| p.index), Some(10));
        assert!(q.take(6, 11, &mut lost).is_none());
        assert!(q.take(6, 12, &mut lost).is_none());
        assert_eq!(ids(&lost), vec![(5, 11), (5, 12)]);
        let took = q.take(7, 13, &mut lost).expect("committed in term 7");
        assert_eq!((took.term, took.index), (7, 13));
        assert_eq!(q.take(7, 14, &mut lost).map(|p| p.index), Some(14));
        assert_eq!(lost.len(), 2);
        assert!(q.is_empty());
    }

    /// A peer that lost leadership with proposals at 10 to 12 (term 5) and at 11 (term 7)
    /// catches up by a snapshot at 11: the proposals it covers have unknown outcomes, the
    /// one above it is still settled by the commit at its index.
    #[test]
    fn a_snapshot_takes_the_proposals_it_covers_whatever_their_term() {
        let mut q = ProposalQueue::default();
        for (t, i) in [(5, 10), (5, 12), (7, 11)] {
            q.push(p(t, i));
        }
        assert_eq!(ids(&q.take_covered(11)), vec![(5, 10), (7, 11)]);
        let mut lost = vec![];
        assert!(q.take(8, 12, &mut lost).is_none());
        assert_eq!(ids(&lost), vec![(5, 12)]);
        assert!(q.is_empty());
    }

    /// The case that went wrong by index alone: term 7's proposal at 11 commits while
    /// term 5's proposal at 12 is still at the front.
    #[test]
    fn a_new_terms_proposal_at_a_lower_index_is_matched() {
        let mut q = ProposalQueue::default();
        for (t, i) in [(5, 12), (7, 11), (7, 12)] {
            q.push(p(t, i));
        }
        let mut lost = vec![];
        assert_eq!(
            q.take(7, 11, &mut lost).map(|p| (p.term, p.index)),
            Some((7, 11))
        );
        assert_eq!(ids(&lost), vec![(5, 12)]);
        assert_eq!(
            q.take(7, 12, &mut lost).map(|p| (p.term, p.index)),
            Some((7, 12))
        );
    }
}
