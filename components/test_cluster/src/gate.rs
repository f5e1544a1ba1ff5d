//! Tests of one test binary run on parallel threads, but some must run alone: a test that
//! sets fail points (global to the process, so they would fire in every other test's
//! cluster), or that measures a process's CPU, memory, time or fixed ports. Such a test
//! holds [`alone`] for its whole run; every cluster a test starts holds [`shared`] for
//! its life, so the two never overlap.

use std::{
    cell::Cell,
    sync::{Condvar, Mutex, MutexGuard},
};

#[derive(Default)]
struct State {
    /// Clusters running now.
    clusters: usize,
    /// A test runs alone.
    alone: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    clusters: 0,
    alone: false,
});
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// Set on the thread of a test that holds [`Alone`]: its own clusters pass the gate.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

fn state() -> MutexGuard<'static, State> {
    // A test that panicked while holding the lock changed no count half-way.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait(g: MutexGuard<'static, State>) -> MutexGuard<'static, State> {
    CHANGED.wait(g).unwrap_or_else(|e| e.into_inner())
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
    while s.alone || s.clusters > 0 {
        s = wait(s);
    }
    s.alone = true;
    ALONE.with(|a| a.set(true));
    Alone(())
}

/// Held by a cluster for its life (it may move between threads).
pub struct Shared {
    counted: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.counted {
            state().clusters -= 1;
            CHANGED.notify_all();
        }
    }
}

/// Waits while a test runs alone (unless it is this thread's), then counts a cluster.
/// It does not wait for a test that is waiting to run alone: a test that holds one
/// cluster and starts another would then wait for that test, which waits for it.
pub fn shared() -> Shared {
    if ALONE.with(Cell::get) {
        return Shared { counted: false };
    }
    let mut s = state();
    while s.alone {
        s = wait(s);
    }
    s.clusters += 1;
    Shared { counted: true }
}
