//! The batch system: finite state machines with mailboxes, run in rounds by a pool of
//! poller threads.
//!
//! An FSM is scheduled (put on the pool's shared queue) only when it has mail and is not
//! already scheduled, so an idle FSM costs nothing. A poller takes up to `max_batch` FSMs,
//! lets its [`PollHandler`] drain each one's mailbox, then calls [`PollHandler::end`] once
//! for the whole round: that is where the Raft pool writes every peer's Ready in one
//! WriteBatch with one fsync, and the apply pool writes every region's applied data.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use parking_lot::{lock_api::ArcMutexGuard, Mutex, RawMutex, RwLock};

/// A state machine driven by messages.
pub trait Fsm: Send + 'static {
    /// What its mailbox carries.
    type Message: Send + 'static;
}

/// An FSM locked by the poller that runs it this round.
pub type FsmGuard<F> = ArcMutexGuard<RawMutex, F>;

struct Cell<F: Fsm> {
    scheduled: AtomicBool,
    fsm: Arc<Mutex<F>>,
    inbox: Receiver<F::Message>,
}

/// The address of one FSM: sending wakes it up.
pub struct Mailbox<F: Fsm> {
    tx: Sender<F::Message>,
    cell: Arc<Cell<F>>,
    scheduler: Sender<Task<F>>,
    /// Most messages [`Mailbox::try_send`] lets wait; internal mail ([`Mailbox::send`])
    /// is never refused, since losing it would stall the FSM.
    capacity: usize,
}

/// Why [`Mailbox::try_send`] gave a message back.
pub enum SendError<M> {
    /// The mailbox holds its capacity.
    Full(M),
    /// The pool has stopped.
    Closed(M),
}

/// What a poller's queue carries: an FSM to run, or `None` to stop.
type Task<F> = Option<Arc<Cell<F>>>;

impl<F: Fsm> Clone for Mailbox<F> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            cell: self.cell.clone(),
            scheduler: self.scheduler.clone(),
            capacity: self.capacity,
        }
    }
}

impl<F: Fsm> Mailbox<F> {
    /// Delivers a message and schedules the FSM if it is idle. Gives the message back if
    /// the pool has stopped.
    pub fn send(&self, msg: F::Message) -> Result<(), F::Message> {
        self.tx.send(msg).map_err(|e| e.into_inner())?;
        if !self.cell.scheduled.swap(true, Ordering::AcqRel) {
            // The pool is gone only at shutdown; the message is then moot.
            let _ = self.scheduler.send(Some(self.cell.clone()));
        }
        Ok(())
    }

    /// Like [`Mailbox::send`], but refuses a message while the mailbox holds its
    /// capacity: for mail from outside (clients, other stores) that must not pile up.
    pub fn try_send(&self, msg: F::Message) -> Result<(), SendError<F::Message>> {
        if self.tx.len() >= self.capacity {
            return Err(SendError::Full(msg));
        }
        self.send(msg).map_err(SendError::Closed)
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// Region id -> mailbox.
pub struct Router<F: Fsm> {
    boxes: Arc<RwLock<HashMap<u64, Mailbox<F>>>>,
}

impl<F: Fsm> Clone for Router<F> {
    fn clone(&self) -> Self {
        Router {
            boxes: self.boxes.clone(),
        }
    }
}

impl<F: Fsm> Default for Router<F> {
    fn default() -> Self {
        Router {
            boxes: Arc::default(),
        }
    }
}

impl<F: Fsm> Router<F> {
    /// Sends to one region; gives the message back if the region is not registered or
    /// its pool stopped.
    pub fn send(&self, region_id: u64, msg: F::Message) -> std::result::Result<(), F::Message> {
        let mailbox = self.boxes.read().get(&region_id).cloned();
        match mailbox {
            Some(mb) => mb.send(msg),
            None => Err(msg),
        }
    }

    /// Sends to one region unless its mailbox is full (see [`Mailbox::try_send`]).
    pub fn try_send(
        &self,
        region_id: u64,
        msg: F::Message,
    ) -> std::result::Result<(), SendError<F::Message>> {
        let mailbox = self.boxes.read().get(&region_id).cloned();
        match mailbox {
            Some(mb) => mb.try_send(msg),
            None => Err(SendError::Closed(msg)),
        }
    }

    /// Sends a message made by `make` to every registered region `pick` accepts.
    pub fn broadcast(
        &self,
        mut pick: impl FnMut(u64) -> bool,
        mut make: impl FnMut() -> F::Message,
    ) {
        let boxes: Vec<Mailbox<F>> = self
            .boxes
            .read()
            .iter()
            .filter(|(id, _)| pick(**id))
            .map(|(_, mb)| mb.clone())
            .collect();
        for mb in boxes {
            let _ = mb.send(make());
        }
    }

    pub(crate) fn register(&self, region_id: u64, mailbox: Mailbox<F>) {
        self.boxes.write().insert(region_id, mailbox);
    }

    /// Takes a region's mailbox out of the router; mail already in it stays.
    pub(crate) fn unregister(&self, region_id: u64) -> Option<Mailbox<F>> {
        self.boxes.write().remove(&region_id)
    }

    pub(crate) fn clear(&self) {
        self.boxes.write().clear();
    }

    /// Whether a region is registered.
    pub fn contains(&self, region_id: u64) -> bool {
        self.boxes.read().contains_key(&region_id)
    }

    /// How many regions are registered.
    pub fn len(&self) -> usize {
        self.boxes.read().len()
    }

    /// Whether no region is registered.
    pub fn is_empty(&self) -> bool {
        self.boxes.read().is_empty()
    }
}

/// What a poller does with the FSMs of one round.
pub trait PollHandler<F: Fsm>: Send + 'static {
    /// Handles the mail of one FSM (at most a bounded number of messages).
    fn handle(&mut self, fsm: &mut F, inbox: &Receiver<F::Message>);
    /// Finishes the round for every FSM handled in it.
    fn end(&mut self, fsms: &mut [FsmGuard<F>]);
}

/// Creates mailboxes for a pool; cheap to clone.
pub struct Registrar<F: Fsm> {
    scheduler: Sender<Task<F>>,
    capacity: usize,
}

impl<F: Fsm> Clone for Registrar<F> {
    fn clone(&self) -> Self {
        Registrar {
            scheduler: self.scheduler.clone(),
            capacity: self.capacity,
        }
    }
}

impl<F: Fsm> Registrar<F> {
    /// Registers an FSM with the pool and returns its mailbox.
    pub fn mailbox(&self, fsm: F) -> Mailbox<F> {
        let (tx, inbox) = unbounded();
        Mailbox {
            tx,
            cell: Arc::new(Cell {
                scheduled: AtomicBool::new(false),
                fsm: Arc::new(Mutex::new(fsm)),
                inbox,
            }),
            scheduler: self.scheduler.clone(),
            capacity: self.capacity,
        }
    }
}

/// A pool of pollers for one kind of FSM.
pub struct BatchSystem<F: Fsm> {
    scheduler: Sender<Task<F>>,
    capacity: usize,
    /// `None` once shut down.
    queue: Option<Receiver<Task<F>>>,
    threads: Vec<JoinHandle<()>>,
}

impl<F: Fsm> BatchSystem<F> {
    /// A pool with no pollers yet, whose mailboxes take up to `capacity` messages from
    /// [`Mailbox::try_send`]; mailboxes can be created before it starts.
    pub fn new(capacity: usize) -> Self {
        let (scheduler, queue) = unbounded();
        BatchSystem {
            scheduler,
            capacity,
            queue: Some(queue),
            threads: vec![],
        }
    }

    /// Registers an FSM and returns its mailbox.
    pub fn mailbox(&self, fsm: F) -> Mailbox<F> {
        self.registrar().mailbox(fsm)
    }

    /// A handle that creates mailboxes for this pool from other threads.
    pub fn registrar(&self) -> Registrar<F> {
        Registrar {
            scheduler: self.scheduler.clone(),
            capacity: self.capacity,
        }
    }

    /// Starts `pollers` threads, each with the handler `make_handler` returns.
    pub fn spawn<H: PollHandler<F>>(
        &mut self,
        name: &str,
        pollers: usize,
        max_batch: usize,
        mut make_handler: impl FnMut() -> H,
    ) {
        for i in 0..pollers {
            let queue = self.queue.clone().expect("pool not shut down");
            let scheduler = self.scheduler.clone();
            let handler = make_handler();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || poll(queue, scheduler, handler, max_batch))
                .expect("spawn poller thread");
            self.threads.push(thread);
        }
    }

    /// Stops the pollers once the FSMs already scheduled have run, and waits for them.
    pub fn shutdown(&mut self) {
        // Mailboxes hold senders of the queue, so it never closes: send one stop per poller.
        for _ in &self.threads {
            let _ = self.scheduler.send(None);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Dropping the last receiver discards the FSMs still queued, and makes every later
        // schedule (a message racing with shutdown) drop its FSM at once: otherwise an
        // FSM could outlive the pool with whatever it holds (the engine, senders that
        // other threads wait on to close).
        self.queue = None;
    }
}

fn poll<F: Fsm, H: PollHandler<F>>(
    queue: Receiver<Task<F>>,
    scheduler: Sender<Task<F>>,
    mut handler: H,
    max_batch: usize,
) {
    let mut batch: Vec<Arc<Cell<F>>> = Vec::with_capacity(max_batch);
    loop {
        let mut stop = false;
        match queue.recv() {
            Ok(Some(cell)) => batch.push(cell),
            Ok(None) | Err(_) => return,
        }
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(Some(cell)) => batch.push(cell),
                Ok(None) => {
                    stop = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let mut guards: Vec<FsmGuard<F>> = batch.iter().map(|c| c.fsm.lock_arc()).collect();
        for (cell, guard) in batch.iter().zip(guards.iter_mut()) {
            handler.handle(guard, &cell.inbox);
        }
        handler.end(&mut guards);
        drop(guards);
        for cell in batch.drain(..) {
            cell.scheduled.store(false, Ordering::Release);
            // Mail that arrived after the FSM was drained found it still scheduled and
            // did not reschedule it; do it now.
            if !cell.inbox.is_empty()
                && !cell.scheduled.swap(true, Ordering::AcqRel)
                && scheduler.send(Some(cell)).is_err()
            {
                return;
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    struct Counter {
        seen: u64,
        rounds: Arc<std::sync::atomic::AtomicU64>,
    }
    impl Fsm for Counter {
        type Message = u64;
    }
    struct Handler {
        max_per_round: usize,
        total: Arc<std::sync::atomic::AtomicU64>,
    }
    impl PollHandler<Counter> for Handler {
        fn handle(&mut self, fsm: &mut Counter, inbox: &Receiver<u64>) {
            for _ in 0..self.max_per_round {
                match inbox.try_recv() {
                    Ok(n) => {
                        fsm.seen += n;
                        self.total.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
        }
        fn end(&mut self, fsms: &mut [FsmGuard<Counter>]) {
            for f in fsms.iter() {
                f.rounds.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn every_message_is_handled_once_across_pollers() {
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut system = BatchSystem::new(usize::MAX);
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let boxes: Vec<_> = (0..50)
            .map(|_| {
                system.mailbox(Counter {
                    seen: 0,
                    rounds: rounds.clone(),
                })
            })
            .collect();
        let t = total.clone();
        // A small per-round limit forces FSMs with leftover mail to be rescheduled.
        system.spawn("test-poller", 3, 8, move || Handler {
            max_per_round: 3,
            total: t.clone(),
        });
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let boxes = boxes.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        boxes[(i % 50) as usize].send(1).unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while total.load(Ordering::SeqCst) < 4000 {
            assert!(Instant::now() < deadline, "messages were lost");
            std::thread::yield_now();
        }
        for b in &boxes {
            let f = b.cell.fsm.lock();
            assert_eq!(f.seen, 80);
        }
        assert!(rounds.load(Ordering::SeqCst) > 0);
        system.shutdown();
    }

    #[test]
    fn mail_after_shutdown_does_not_keep_the_fsm_alive() {
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut system = BatchSystem::new(usize::MAX);
        let mailbox = system.mailbox(Counter {
            seen: 0,
            rounds: rounds.clone(),
        });
        system.spawn("test-poller", 1, 8, || Handler {
            max_per_round: 8,
            total: Arc::new(Default::default()),
        });
        system.shutdown();
        // A message racing with shutdown: the FSM must not end up parked in the pool's
        // queue, where it would live as long as the pool does.
        mailbox
            .send(1)
            .expect("the mailbox itself still accepts mail");
        drop(mailbox);
        assert_eq!(Arc::strong_count(&rounds), 1, "the FSM was dropped");
        drop(system);
    }
}
