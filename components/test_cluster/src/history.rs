//! Recording what clients saw, and checking it for linearizability per key.
//!
//! Clients record every operation with [`Recorder::invoke`] before sending it and
//! [`Recorder::complete`] when its outcome is known: ok (with what it returned), failed
//! (certainly not applied) or unknown (undetermined: it may or may not have applied). A
//! process whose operation ended unknown never issues another; its caller takes a new
//! process id, as Jepsen does.
//!
//! The check uses a library checker (todc-utils' Wing-Gong-Lowe search with memoized
//! states), once per key: linearizability is local, so a history is linearizable only if
//! every key's is. Failed operations are left out; an unknown one completes after every
//! other operation, which lets it take effect at any point after its invocation, or not
//! at all (nothing observes the state after the history ends). On a violation the whole
//! history goes to a file and the smallest failing sub-history of the key is printed.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use parking_lot::Mutex;
use serde::Serialize;
use todc_utils::{
    linearizability::{
        history::{Action, History},
        WGLChecker,
    },
    specifications::Specification,
};

/// A value this test wrote, by the number it carries (values are unique per history).
pub type Value = u64;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Op {
    /// Read one key.
    Get(Vec<u8>),
    /// Write one key.
    Put(Vec<u8>, Value),
    /// Remove one key.
    Delete(Vec<u8>),
    /// Write `new` if the key holds `expected` (`None`: if it does not exist).
    Cas(Vec<u8>, Option<Value>, Value),
    /// Write several keys in one atomic batch.
    BatchPut(Vec<(Vec<u8>, Value)>),
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Outcome {
    /// The operation took effect; a read returned this (`None`: no such key).
    Read(Option<Value>),
    /// A write or batch took effect.
    Written,
    /// A compare-and-swap took effect and said whether it swapped.
    Swapped(bool),
    /// Certainly not applied.
    Failed,
    /// Undetermined: it may or may not have applied.
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
struct Record {
    process: usize,
    op: Op,
    invoked_us: u128,
    completed_us: Option<u128>,
    outcome: Option<Outcome>,
    /// The error a failed or unknown operation got, for whoever reads a saved history.
    error: Option<String>,
}

/// How a store's answer to a write is recorded: an undetermined result is unknown, any
/// other error means the write was refused before it could apply.
pub fn outcome_of<T>(res: &server::Result<T>, ok: impl FnOnce(&T) -> Outcome) -> Outcome {
    match res {
        Ok(t) => ok(t),
        Err(server::Error::Undetermined(_))
        | Err(server::Error::Raft(raftstore::Error::Undetermined(_))) => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    }
}

/// A shared, thread-safe log of operations; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            started: Instant::now(),
            records: Arc::default(),
        }
    }
}

/// One operation in flight; completing it consumes it.
pub struct Invocation {
    index: usize,
}

impl Recorder {
    /// Records that `process` is about to send `op`.
    pub fn invoke(&self, process: usize, op: Op) -> Invocation {
        let mut records = self.records.lock();
        records.push(Record {
            process,
            op,
            invoked_us: self.started.elapsed().as_micros(),
            completed_us: None,
            outcome: None,
            error: None,
        });
        Invocation {
            index: records.len() - 1,
        }
    }

    /// Records how an operation ended.
    pub fn complete(&self, inv: Invocation, outcome: Outcome) {
        self.complete_with(inv, outcome, None);
    }

    /// Records how an operation ended, with the error it got, if any.
    pub fn complete_with(&self, inv: Invocation, outcome: Outcome, error: Option<String>) {
        let mut records = self.records.lock();
        let r = &mut records[inv.index];
        r.completed_us = Some(self.started.elapsed().as_micros());
        r.outcome = Some(outcome);
        r.error = error;
    }

    /// Operations recorded so far, by outcome: (ok, failed, unknown).
    pub fn counts(&self) -> (usize, usize, usize) {
        let records = self.records.lock();
        let count = |f: fn(&Outcome) -> bool| {
            records
                .iter()
                .filter(|r| r.outcome.as_ref().is_some_and(f))
                .count()
        };
        (
            count(|o| !matches!(o, Outcome::Failed | Outcome::Unknown)),
            count(|o| matches!(o, Outcome::Failed)),
            count(|o| matches!(o, Outcome::Unknown)),
        )
    }

    /// Checks every key's history; on a violation, saves the whole history as JSON in
    /// `dir` and returns the smallest failing sub-history of the first bad key.
    pub fn check(&self, dir: &Path) -> Result<(), Violation> {
        let records = self.records.lock().clone();
        for (key, ops) in per_key(&records) {
            if is_linearizable(&ops) {
                continue;
            }
            let file = dir.join("history.json");
            let _ = std::fs::write(
                &file,
                serde_json::to_vec_pretty(&records).unwrap_or_default(),
            );
            return Err(Violation {
                key,
                smallest: shrink(ops),
                file,
            });
        }
        Ok(())
    }
}

/// A key whose history is not linearizable.
pub struct Violation {
    /// The key.
    pub key: Vec<u8>,
    /// A smallest sub-history that still fails: removing any one operation from it makes
    /// it linearizable.
    pub smallest: Vec<KeyOp>,
    /// Where the whole history was saved.
    pub file: PathBuf,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?} is not linearizable; whole history in {}; smallest failing part:",
            String::from_utf8_lossy(&self.key),
            self.file.display()
        )?;
        for op in &self.smallest {
            writeln!(f, "  {op:?}")?;
        }
        Ok(())
    }
}

/// One operation on one key, as the checker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyOp {
    process: usize,
    invoked_us: u128,
    /// `None`: unknown, completes after everything else.
    completed_us: Option<u128>,
    effect: Effect,
}

/// What an operation did to (or saw of) one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Effect {
    Read(Option<Value>),
    Write(Option<Value>),
    /// Expected, new, and whether it swapped (`None`: unknown).
    Cas(Option<Value>, Value, Option<bool>),
}

fn per_key(records: &[Record]) -> BTreeMap<Vec<u8>, Vec<KeyOp>> {
    let mut out: BTreeMap<Vec<u8>, Vec<KeyOp>> = BTreeMap::new();
    for r in records {
        let unknown = matches!(r.outcome, Some(Outcome::Unknown) | None);
        let completed_us = if unknown { None } else { r.completed_us };
        let mut push = |key: &Vec<u8>, effect| {
            out.entry(key.clone()).or_default().push(KeyOp {
                process: r.process,
                invoked_us: r.invoked_us,
                completed_us,
                effect,
            })
        };
        match (&r.op, &r.outcome) {
            (_, Some(Outcome::Failed)) => {}
            (Op::Get(k), Some(Outcome::Read(v))) => push(k, Effect::Read(*v)),
            (Op::Get(_), _) => {} // a read that did not answer observed nothing
            (Op::Put(k, v), _) => push(k, Effect::Write(Some(*v))),
            (Op::Delete(k), _) => push(k, Effect::Write(None)),
            (Op::Cas(k, e, n), Some(Outcome::Swapped(s))) => push(k, Effect::Cas(*e, *n, Some(*s))),
            (Op::Cas(k, e, n), _) => push(k, Effect::Cas(*e, *n, None)),
            (Op::BatchPut(pairs), _) => {
                for (k, v) in pairs {
                    push(k, Effect::Write(Some(*v)));
                }
            }
        }
    }
    out
}

/// A key's sequential behaviour, for the checker.
struct KeySpec;

impl Specification for KeySpec {
    type State = Option<Value>;
    type Operation = Effect;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &Effect, state: &Option<Value>) -> (bool, Option<Value>) {
        match op {
            Effect::Read(v) => (v == state, *state),
            Effect::Write(v) => (true, *v),
            Effect::Cas(expected, new, swapped) => {
                let holds = state == expected;
                let after = if holds { Some(*new) } else { *state };
                (swapped.is_none_or(|s| s == holds), after)
            }
        }
    }
}

fn is_linearizable(ops: &[KeyOp]) -> bool {
    if ops.is_empty() {
        return true;
    }
    // Calls and responses in time order; unknown operations answer after everything.
    // The checker wants small, dense process ids.
    let mut dense = BTreeMap::new();
    let mut events: Vec<(u128, usize, Action<Effect>)> = vec![];
    for op in ops {
        let next = dense.len();
        let p = *dense.entry(op.process).or_insert(next);
        events.push((op.invoked_us, p, Action::Call(op.effect.clone())));
        let done = op.completed_us.unwrap_or(u128::MAX);
        events.push((done, p, Action::Response(op.effect.clone())));
    }
    // A response at the same instant as a call goes after it (the ops overlap).
    events.sort_by_key(|(t, _, a)| (*t, matches!(a, Action::Response(_))));
    let actions = events.into_iter().map(|(_, p, a)| (p, a)).collect();
    WGLChecker::<KeySpec>::is_linearizable(History::from_actions(actions))
}

/// Removes operations one at a time while the rest still fails, until every remaining
/// one is needed for the failure. The write of a value that a remaining operation read
/// is kept: without it the read fails for a duller reason (a value never written).
fn shrink(mut ops: Vec<KeyOp>) -> Vec<KeyOp> {
    let written = |op: &KeyOp| match op.effect {
        Effect::Write(Some(v)) | Effect::Cas(_, v, _) => Some(v),
        _ => None,
    };
    let observed = |ops: &[KeyOp], v: Value| {
        ops.iter().any(|o| match o.effect {
            Effect::Read(r) => r == Some(v),
            Effect::Cas(e, _, _) => e == Some(v),
            Effect::Write(_) => false,
        })
    };
    let mut i = 0;
    while i < ops.len() {
        let mut without = ops.clone();
        without.remove(i);
        let needed = written(&ops[i]).is_some_and(|v| observed(&without, v));
        if !needed && !is_linearizable(&without) {
            ops = without;
        } else {
            i += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(p: usize, from: u128, to: Option<u128>, effect: Effect) -> KeyOp {
        KeyOp {
            process: p,
            invoked_us: from,
            completed_us: to,
            effect,
        }
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught_and_shrunk() {
        use Effect::*;
        let ops = vec![
            op(0, 0, Some(10), Write(Some(1))),
            op(1, 5, Some(12), Read(Some(1))),
            op(0, 20, Some(30), Write(Some(2))),
            op(2, 40, Some(50), Read(Some(1))),
            op(3, 41, Some(45), Read(Some(2))),
        ];
        assert!(!is_linearizable(&ops));
        let smallest = shrink(ops);
        // The write of 1, the write of 2 acknowledged before the read began, the read.
        assert_eq!(smallest.len(), 3, "{smallest:?}");
        assert_eq!(smallest[2].effect, Read(Some(1)));
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        use Effect::*;
        let took_effect = vec![
            op(0, 0, None, Write(Some(7))),
            op(1, 10, Some(20), Read(Some(7))),
        ];
        assert!(is_linearizable(&took_effect));
        let did_not = vec![
            op(0, 0, None, Write(Some(7))),
            op(1, 10, Some(20), Read(None)),
        ];
        assert!(is_linearizable(&did_not));
        let flickers = vec![
            op(0, 0, None, Write(Some(7))),
            op(1, 10, Some(20), Read(Some(7))),
            op(1, 30, Some(40), Read(None)),
        ];
        assert!(
            !is_linearizable(&flickers),
            "once seen, a write cannot be undone"
        );
    }

    #[test]
    fn compare_and_swap_results_must_match_the_state() {
        use Effect::*;
        let ok = vec![
            op(0, 0, Some(10), Write(Some(1))),
            op(1, 20, Some(30), Cas(Some(1), 2, Some(true))),
            op(2, 40, Some(50), Cas(Some(1), 3, Some(false))),
            op(2, 60, Some(70), Read(Some(2))),
        ];
        assert!(is_linearizable(&ok));
        // A swap that succeeded and reported failure (a blind retry of it would).
        let lie = vec![
            op(0, 0, Some(10), Write(Some(1))),
            op(1, 20, Some(30), Cas(Some(1), 2, Some(false))),
            op(2, 40, Some(50), Read(Some(2))),
        ];
        assert!(!is_linearizable(&lie));
    }
}
