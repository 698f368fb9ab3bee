//! One worker's event center and the loop that drives it.
//!
//! [`EventCenter`] owns the worker's [`WorkerStack`] and its [`Timers`]; it is what handlers get to act on.
//! [`EventLoop`] adds the user's [`EventHandler`] and the receiving end of the external-event queue, and runs
//!
//! ```text
//! poll stack (timeout: 0 if work is queued, a busy-poll stack is busy, or an interrupt-driven stack is
//!             within spin_before_sleep of its last activity; else until the next timer, capped at
//!             max_wait; a busy-poll stack that has been idle a while gets idle_backoff)
//!   → handler.on_socket for each event
//!   → handler.on_timer for each timer due (those armed before this phase; later ones wait a turn)
//!   → run queued external events (at most external_batch)
//!   → handler.on_loop
//! ```
//!
//! Other threads reach the loop only through a [`Remote`]: it queues a closure on a crossbeam channel and
//! wakes the stack's `poll`. Closures run on the worker thread, in the order one sender queued them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::{fmt, io};

use crossbeam_channel::{Receiver, Sender};

use super::timer::{TimerId, Timers};
use crate::stack::{SocketEvent, Wake, WorkerStack};

/// Work handed to a worker from another thread; runs on the worker thread with its handler and center.
pub type External<S, H> = Box<dyn FnOnce(&mut H, &mut EventCenter<S>) + Send>;

/// What the loop calls into. The messenger implements it and owns its connections per [`crate::stack::SocketId`].
pub trait EventHandler<S: WorkerStack> {
    /// A socket event (edge-triggered: see the [`crate::stack`] contract). Ignore ids you no longer own.
    fn on_socket(&mut self, center: &mut EventCenter<S>, event: SocketEvent);

    /// A timer armed with [`EventCenter::add_timer`] is due.
    fn on_timer(&mut self, center: &mut EventCenter<S>, timer: TimerId);

    /// Called once per loop turn after events, timers and external events: a place to flush batched writes.
    fn on_loop(&mut self, _center: &mut EventCenter<S>) {}

    /// Called once when the loop stops, before the stack (and its sockets) is dropped.
    fn on_stop(&mut self, _center: &mut EventCenter<S>) {}
}

/// Tuning of [`EventLoop`].
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Longest blocking poll of an interrupt-driven stack (Ceph's `EventMaxWaitUs`, 30 s).
    pub max_wait: Duration,
    /// Busy-poll stacks: idle turns spun with a zero timeout before `idle_backoff` applies.
    pub busy_poll_idle_spins: u32,
    /// Busy-poll stacks: timeout passed to `poll` once idle; zero means spin forever.
    pub idle_backoff: Duration,
    /// Most external events run per turn, so a flood of them cannot starve sockets.
    pub external_batch: usize,
    /// Interrupt-driven stacks (posix): after a turn that handled something, keep polling without
    /// blocking for this long before sleeping. A thread asleep in `epoll_wait` costs its waker a
    /// wake-up (an inter-processor interrupt; tens of µs on a VM) and costs itself a context switch;
    /// spinning trades CPU for that. `None` (the default): block at once, as Ceph's EventCenter does.
    pub spin_before_sleep: Option<Duration>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            max_wait: Duration::from_secs(30),
            busy_poll_idle_spins: 1024,
            idle_backoff: Duration::from_micros(50),
            external_batch: 256,
            spin_before_sleep: None,
        }
    }
}

/// One worker's transport and timers.
pub struct EventCenter<S> {
    index: usize,
    stack: S,
    timers: Timers,
    stop: Arc<AtomicBool>,
}

impl<S: WorkerStack> EventCenter<S> {
    pub fn new(index: usize, stack: S) -> Self {
        EventCenter {
            index,
            stack,
            timers: Timers::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Which worker this is.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn stack(&self) -> &S {
        &self.stack
    }

    pub fn stack_mut(&mut self) -> &mut S {
        &mut self.stack
    }

    /// Arm a one-shot timer `after` from now.
    pub fn add_timer(&mut self, after: Duration) -> TimerId {
        self.timers.add(Instant::now() + after)
    }

    /// Arm a one-shot timer for `deadline`.
    pub fn add_timer_at(&mut self, deadline: Instant) -> TimerId {
        self.timers.add(deadline)
    }

    /// Disarm a timer. `false` if it already fired or was cancelled.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Ask the loop to stop after the current turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Why a [`Remote`] could not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker {0} has stopped")]
pub struct WorkerStopped(pub usize);

impl From<WorkerStopped> for io::Error {
    fn from(err: WorkerStopped) -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, err)
    }
}

/// A handle to a worker usable from any thread: queue work, stop it. Cheap to clone.
pub struct Remote<S, H> {
    index: usize,
    tx: Sender<External<S, H>>,
    waker: Arc<dyn Wake>,
    stop: Arc<AtomicBool>,
}

impl<S, H> Clone for Remote<S, H> {
    fn clone(&self) -> Self {
        Remote {
            index: self.index,
            tx: self.tx.clone(),
            waker: self.waker.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<S, H> fmt::Debug for Remote<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("index", &self.index)
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl<S, H> Remote<S, H> {
    /// Which worker this reaches.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Run `work` on the worker thread. Fails once the worker's loop has ended.
    pub fn submit<F>(&self, work: F) -> Result<(), WorkerStopped>
    where
        F: FnOnce(&mut H, &mut EventCenter<S>) + Send + 'static,
    {
        if self.stop.load(Ordering::Acquire) {
            return Err(WorkerStopped(self.index));
        }
        self.tx
            .send(Box::new(work))
            .map_err(|_| WorkerStopped(self.index))?;
        self.wake();
        Ok(())
    }

    /// Ask the worker to stop after its current turn. Work still queued is dropped, not run.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if let Err(err) = self.waker.wake() {
            tracing::warn!(worker = self.index, error = %err, "waking worker failed");
        }
    }
}

/// An event center with its handler and external-event queue: everything one worker thread runs.
pub struct EventLoop<S, H> {
    center: EventCenter<S>,
    handler: H,
    rx: Receiver<External<S, H>>,
    config: LoopConfig,
    events: Vec<SocketEvent>,
    idle_turns: u32,
    /// When the last turn that handled something ran its timers (kept only with `spin_before_sleep`).
    active_at: Option<Instant>,
}

impl<S: WorkerStack, H: EventHandler<S>> EventLoop<S, H> {
    /// Build a loop over `stack`; `make_handler` may already use the center (listen, connect, arm timers).
    pub fn new<F>(
        index: usize,
        stack: S,
        config: LoopConfig,
        make_handler: F,
    ) -> io::Result<(Self, Remote<S, H>)>
    where
        F: FnOnce(&mut EventCenter<S>) -> io::Result<H>,
    {
        let mut center = EventCenter::new(index, stack);
        let handler = make_handler(&mut center)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let remote = Remote {
            index,
            tx,
            waker: center.stack.waker(),
            stop: center.stop.clone(),
        };
        let events = Vec::with_capacity(1024);
        Ok((
            EventLoop {
                center,
                handler,
                rx,
                config,
                events,
                idle_turns: 0,
                active_at: None,
            },
            remote,
        ))
    }

    pub fn center(&mut self) -> &mut EventCenter<S> {
        &mut self.center
    }

    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Run turns until stopped (by [`EventCenter::stop`] or [`Remote::stop`]) or the stack fails.
    pub fn run(&mut self) -> io::Result<()> {
        let result = loop {
            if self.center.is_stopping() {
                break Ok(());
            }
            if let Err(err) = self.turn() {
                break Err(err);
            }
        };
        self.handler.on_stop(&mut self.center);
        result
    }

    /// One turn of the loop. Returns how many events, timers and external events it handled.
    pub fn turn(&mut self) -> io::Result<usize> {
        let timeout = self.poll_timeout();
        self.center.stack.poll(&mut self.events, timeout)?;
        let mut handled = self.events.len();
        for event in self.events.drain(..) {
            self.handler.on_socket(&mut self.center, event);
        }

        // Only timers armed before this phase fire now, so a handler re-arming a due timer cannot spin here.
        // The clock is read only when a timer is armed or the spin keeps time (a busy-poll turn is short).
        let now = (self.center.timers.peek().is_some() || self.config.spin_before_sleep.is_some())
            .then(Instant::now);
        let watermark = self.center.timers.next_id();
        while let (Some((deadline, id)), Some(now)) = (self.center.timers.peek(), now) {
            if deadline > now || id >= watermark {
                break;
            }
            self.center.timers.pop_expired(now);
            self.handler.on_timer(&mut self.center, id);
            handled += 1;
        }

        for _ in 0..self.config.external_batch {
            let Ok(work) = self.rx.try_recv() else { break };
            work(&mut self.handler, &mut self.center);
            handled += 1;
        }

        self.handler.on_loop(&mut self.center);
        self.idle_turns = if handled == 0 {
            self.idle_turns.saturating_add(1)
        } else {
            0
        };
        if handled > 0 && self.config.spin_before_sleep.is_some() {
            // The clock read of the timer phase: no second one per turn.
            self.active_at = now;
        }
        Ok(handled)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let spinning = if self.center.stack.is_busy_poll() {
            self.idle_turns < self.config.busy_poll_idle_spins
        } else {
            match (self.config.spin_before_sleep, self.active_at) {
                (Some(spin), Some(at)) => at.elapsed() < spin,
                _ => false,
            }
        };
        if spinning || !self.rx.is_empty() || self.center.is_stopping() {
            return Some(Duration::ZERO);
        }
        // Read the clock only when the poll may wait (not on every spinning turn).
        let until_timer = self
            .center
            .timers
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if self.center.stack.is_busy_poll() {
            let backoff = self.config.idle_backoff;
            return Some(until_timer.map_or(backoff, |t| t.min(backoff)));
        }
        Some(until_timer.map_or(self.config.max_wait, |t| t.min(self.config.max_wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::posix::PosixWorker;

    struct Nothing;
    impl EventHandler<PosixWorker> for Nothing {
        fn on_socket(&mut self, _: &mut EventCenter<PosixWorker>, _: SocketEvent) {}
        fn on_timer(&mut self, _: &mut EventCenter<PosixWorker>, _: TimerId) {}
    }

    fn event_loop(
        spin: Option<Duration>,
    ) -> (
        EventLoop<PosixWorker, Nothing>,
        Remote<PosixWorker, Nothing>,
    ) {
        let config = LoopConfig {
            max_wait: Duration::from_secs(5),
            spin_before_sleep: spin,
            ..LoopConfig::default()
        };
        EventLoop::new(0, PosixWorker::new(0).unwrap(), config, |_| Ok(Nothing)).unwrap()
    }

    /// One turn that handles something (an external event).
    fn active_turn(l: &mut EventLoop<PosixWorker, Nothing>, remote: &Remote<PosixWorker, Nothing>) {
        remote.submit(|_, _| {}).unwrap();
        assert!(l.turn().unwrap() >= 1);
    }

    #[test]
    fn interrupt_driven_stack_spins_only_within_spin_before_sleep_of_activity() {
        let blocking = Some(Duration::from_secs(5));
        // Off (the default): blocks right after activity.
        let (mut l, remote) = event_loop(None);
        active_turn(&mut l, &remote);
        assert_eq!(l.poll_timeout(), blocking);

        // On: nothing handled yet, so it blocks; after activity it polls without blocking.
        let (mut l, remote) = event_loop(Some(Duration::from_secs(60)));
        assert_eq!(l.poll_timeout(), blocking);
        active_turn(&mut l, &remote);
        assert_eq!(l.poll_timeout(), Some(Duration::ZERO));
        // Idle turns do not extend the spin.
        let at = l.active_at;
        assert_eq!(l.turn().unwrap(), 0);
        assert_eq!(l.active_at, at);

        // Once the spin has run out it blocks again.
        let (mut l, remote) = event_loop(Some(Duration::from_millis(1)));
        active_turn(&mut l, &remote);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.poll_timeout(), blocking);
    }
}
