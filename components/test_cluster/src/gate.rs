//! Tests of one test binary run on parallel threads, but some must run alone: a test that
//! sets fail points (global to the process, so they would fire in every other test's
//! cluster), or that measures a process's CPU, memory, time, process-wide metrics or
//! fixed ports. Such a test holds [`alone`] for its whole run; every cluster a test starts
//! holds [`shared`] for its life, so the two never overlap.

use std::{
    cell::Cell,
    sync::{Condvar, Mutex, MutexGuard},
    thread::ThreadId,
    time::{Duration, Instant},
};

struct State {
    /// Clusters running now.
    clusters: usize,
    /// A test runs alone.
    alone: bool,
    /// Tests waiting to run alone: new clusters wait for them, so that they get their turn.
    waiting: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    clusters: 0,
    alone: false,
    waiting: 0,
});
static CHANGED: Condvar = Condvar::new();

/// Longer than any test may run (the watchdog's limit), so that only a gate used wrongly
/// (a cluster started on a helper thread of a test that runs alone) reaches it.
const MAX_WAIT: Duration = Duration::from_secs(900);

thread_local! {
    /// Set on the thread of a test that holds [`Alone`]: its own clusters pass the gate.
    static ALONE: Cell<bool> = const { Cell::new(false) };
    /// Clusters this thread's test holds: a second one must not wait for a test that
    /// waits to run alone, which waits for the first.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

fn state() -> MutexGuard<'static, State> {
    // A test that panicked while holding the lock changed no count half-way.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits while `blocked` holds; panics, naming the state, past `MAX_WAIT`.
fn wait_while(
    mut s: MutexGuard<'static, State>,
    blocked: impl Fn(&State) -> bool,
) -> MutexGuard<'static, State> {
    let deadline = Instant::now() + MAX_WAIT;
    while blocked(&s) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "test gate: waited {MAX_WAIT:?} (clusters {}, alone {}, waiting {})",
            s.clusters,
            s.alone,
            s.waiting
        );
        s = CHANGED
            .wait_timeout(s, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    s
}

/// Held by a test that must run with no other test's cluster in its process.
pub struct Alone(());

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
        state().alone = false;
        CHANGED.notify_all();
    }
}

/// Waits until no other test's cluster runs, then keeps new ones out until dropped.
pub fn alone() -> Alone {
    let mut s = state();
    s.waiting += 1;
    let mut s = wait_while(s, |s| s.alone || s.clusters > 0);
    s.waiting -= 1;
    s.alone = true;
    ALONE.with(|a| a.set(true));
    Alone(())
}

/// Held by a cluster for its life (it may move between threads).
pub struct Shared {
    /// The thread that took it, if it was counted.
    counted: Option<ThreadId>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let Some(owner) = self.counted else { return };
        if std::thread::current().id() == owner {
            HELD.with(|h| h.set(h.get().saturating_sub(1)));
        }
        state().clusters -= 1;
        CHANGED.notify_all();
    }
}

/// Waits while a test runs alone (unless it is this thread's) or waits to, then counts
/// a cluster.
pub fn shared() -> Shared {
    if ALONE.with(Cell::get) {
        return Shared { counted: None };
    }
    let holds = HELD.with(Cell::get) > 0;
    let mut s = wait_while(state(), |s| s.alone || (s.waiting > 0 && !holds));
    s.clusters += 1;
    HELD.with(|h| h.set(h.get() + 1));
    Shared {
        counted: Some(std::thread::current().id()),
    }
}
