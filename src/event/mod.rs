//! Event centers and worker threads: the loop between a network stack and the messenger.
//!
//! Owns, per worker: the [`WorkerStack`](crate::stack::WorkerStack), a timer queue ([`timer`]), the
//! external-event queue other threads use, and the thread that runs them ([`threads`]). Nothing here knows
//! about frames or connections: the messenger implements [`EventHandler`] and keeps its `proto::Connection`s
//! per [`SocketId`](crate::stack::SocketId).
//!
//! Invariants: a worker's stack, sockets, timers and handler are touched only by its own thread; other
//! threads reach it only through [`Remote::submit`] (a crossbeam channel plus the stack's waker); handlers
//! are never re-entered (events, timers and external work run one after another on the loop).
//!
//! ```no_run
//! use std::sync::Arc;
//! use msgr::event::{EventCenter, EventHandler, TimerId, WorkerConfig, Workers};
//! use msgr::stack::posix::{PosixStack, PosixWorker};
//! use msgr::stack::SocketEvent;
//!
//! struct Quiet;
//! impl EventHandler<PosixWorker> for Quiet {
//!     fn on_socket(&mut self, _: &mut EventCenter<PosixWorker>, _: SocketEvent) {}
//!     fn on_timer(&mut self, _: &mut EventCenter<PosixWorker>, _: TimerId) {}
//! }
//!
//! let workers = Workers::start(Arc::new(PosixStack::new()), &WorkerConfig::default(), |_, _| Ok(Quiet))?;
//! workers.get(0).unwrap().submit(|_handler, center| println!("on worker {}", center.index())).unwrap();
//! workers.shutdown()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod center;
pub mod threads;
pub mod timer;

pub use center::{
    EventCenter, EventHandler, EventLoop, External, LoopConfig, Remote, WorkerStopped,
};
pub use threads::{Worker, WorkerConfig, Workers};
pub use timer::{TimerId, Timers};
