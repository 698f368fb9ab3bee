//! Worker threads: one thread, optionally pinned to one core, running one [`EventLoop`].
//!
//! Owns the threads and their join handles. The worker's [`WorkerStack`](crate::stack::WorkerStack) and
//! handler are created on the worker thread itself (a DPDK queue or verbs CQ must live where it is polled),
//! and [`Worker::spawn`] waits until both exist so creation errors come back to the caller. Dropping a
//! [`Worker`] stops and joins it.
//!
//! Pinning follows `WorkerConfig::pin_cores`: worker `i` gets the `i`-th usable core; when there are fewer
//! cores than workers the rest run unpinned (with a warning), and a failed pin is a warning, never an error.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::{fmt, io};

use super::center::{EventCenter, EventHandler, EventLoop, LoopConfig, Remote, WorkerStopped};
use crate::stack::NetworkStack;

/// How many workers, where they run, how they poll.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Number of worker threads (Ceph's `ms_async_op_threads`, default 3).
    pub threads: usize,
    /// Pin each worker to its own core.
    pub pin_cores: bool,
    /// Cores to pin to, by id; empty means every core the process may use.
    pub cores: Vec<usize>,
    /// Thread names are `{name_prefix}-{index}`.
    pub name_prefix: String,
    pub loop_config: LoopConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            threads: 3,
            pin_cores: false,
            cores: Vec::new(),
            name_prefix: "msgr-worker".to_string(),
            loop_config: LoopConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// The core each of the `threads` workers is pinned to (`None`: unpinned).
    pub fn core_plan(&self) -> Vec<Option<core_affinity::CoreId>> {
        if !self.pin_cores {
            return vec![None; self.threads];
        }
        let Some(available) = core_affinity::get_core_ids() else {
            tracing::warn!("cannot list cores; workers run unpinned");
            return vec![None; self.threads];
        };
        let usable: Vec<_> = if self.cores.is_empty() {
            // No explicit list: start each worker pool at the next core in turn, so two messengers in
            // one process (a client and a server, a public and a cluster messenger) do not stack their
            // first workers on core 0.
            static NEXT_START: std::sync::atomic::AtomicUsize =
                std::sync::atomic::AtomicUsize::new(0);
            let mut available = available;
            if !available.is_empty() {
                let start =
                    NEXT_START.fetch_add(self.threads, std::sync::atomic::Ordering::Relaxed);
                let n = available.len();
                available.rotate_left(start % n);
            }
            available
        } else {
            available
                .into_iter()
                .filter(|core| self.cores.contains(&core.id))
                .collect()
        };
        if usable.len() < self.threads {
            tracing::warn!(
                workers = self.threads,
                cores = usable.len(),
                "fewer usable cores than workers; the extra workers run unpinned"
            );
        }
        (0..self.threads).map(|i| usable.get(i).copied()).collect()
    }
}

type Joined = JoinHandle<io::Result<()>>;

/// One running worker thread.
pub struct Worker<S, H> {
    remote: Remote<S, H>,
    thread: Option<Joined>,
}

impl<S, H> fmt::Debug for Worker<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("remote", &self.remote)
            .finish()
    }
}

impl<S, H> Worker<S, H> {
    /// Start worker `index` of `stack`: a thread that creates its transport, calls `make_handler`, then runs.
    pub fn spawn<N, F>(
        stack: Arc<N>,
        index: usize,
        core: Option<core_affinity::CoreId>,
        name: String,
        loop_config: LoopConfig,
        make_handler: F,
    ) -> io::Result<Self>
    where
        N: NetworkStack<Worker = S>,
        S: crate::stack::WorkerStack,
        H: EventHandler<S> + 'static,
        F: FnOnce(&mut EventCenter<S>) -> io::Result<H> + Send + 'static,
    {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<Remote<S, H>>>(1);
        let thread = thread::Builder::new().name(name).spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(
                        worker = index,
                        core = core.id,
                        "pinning failed; running unpinned"
                    );
                }
            }
            let built = stack
                .new_worker(index)
                .and_then(|transport| EventLoop::new(index, transport, loop_config, make_handler));
            let mut event_loop = match built {
                Ok((event_loop, remote)) => {
                    let _ = ready_tx.send(Ok(remote));
                    event_loop
                }
                Err(err) => {
                    let kind = err.kind();
                    let _ = ready_tx.send(Err(err));
                    return Err(io::Error::from(kind));
                }
            };
            tracing::debug!(worker = index, stack = stack.name(), "worker running");
            let result = event_loop.run();
            if let Err(err) = &result {
                tracing::error!(worker = index, error = %err, "worker loop failed");
            }
            result
        })?;
        match ready_rx.recv() {
            Ok(Ok(remote)) => Ok(Worker {
                remote,
                thread: Some(thread),
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => Err(join_error(index, thread.join())),
        }
    }

    pub fn index(&self) -> usize {
        self.remote.index()
    }

    /// A handle for other threads.
    pub fn remote(&self) -> &Remote<S, H> {
        &self.remote
    }

    /// Run `work` on this worker's thread.
    pub fn submit<F>(&self, work: F) -> Result<(), WorkerStopped>
    where
        F: FnOnce(&mut H, &mut EventCenter<S>) + Send + 'static,
    {
        self.remote.submit(work)
    }

    /// Stop the loop and wait for the thread; returns the loop's error, or an error if it panicked.
    pub fn join(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.remote.stop();
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result,
                Err(_) => Err(io::Error::other(format!(
                    "worker {} panicked",
                    self.remote.index()
                ))),
            },
            None => Ok(()),
        }
    }
}

fn join_error(index: usize, joined: thread::Result<io::Result<()>>) -> io::Error {
    match joined {
        Ok(Err(err)) => err,
        Ok(Ok(())) => io::Error::other(format!("worker {index} exited during start")),
        Err(_) => io::Error::other(format!("worker {index} panicked during start")),
    }
}

impl<S, H> Drop for Worker<S, H> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(err) = self.stop_and_join() {
                tracing::warn!(worker = self.remote.index(), error = %err, "worker ended with an error");
            }
        }
    }
}

/// All workers of one stack, each running the same kind of handler.
pub struct Workers<S, H> {
    workers: Vec<Worker<S, H>>,
}

impl<S, H> Workers<S, H>
where
    S: crate::stack::WorkerStack,
    H: EventHandler<S> + 'static,
{
    /// Start `config.threads` workers; worker `i`'s handler is `make_handler(i, center)`. If one fails to
    /// start, those already started are stopped and the error is returned.
    pub fn start<N, F>(stack: Arc<N>, config: &WorkerConfig, make_handler: F) -> io::Result<Self>
    where
        N: NetworkStack<Worker = S>,
        F: Fn(usize, &mut EventCenter<S>) -> io::Result<H> + Send + Sync + 'static,
    {
        let make_handler = Arc::new(make_handler);
        let mut workers = Vec::with_capacity(config.threads);
        for (index, core) in config.core_plan().into_iter().enumerate() {
            let make = make_handler.clone();
            let name = format!("{}-{index}", config.name_prefix);
            workers.push(Worker::spawn(
                stack.clone(),
                index,
                core,
                name,
                config.loop_config.clone(),
                move |c| make(index, c),
            )?);
        }
        Ok(Workers { workers })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Worker<S, H>> {
        self.workers.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Worker<S, H>> {
        self.workers.iter()
    }

    /// Handles to every worker, in index order.
    pub fn remotes(&self) -> Vec<Remote<S, H>> {
        self.workers.iter().map(|w| w.remote().clone()).collect()
    }

    /// Stop every worker, then join them all; returns the first error.
    pub fn shutdown(self) -> io::Result<()> {
        for worker in &self.workers {
            worker.remote().stop();
        }
        let mut first = Ok(());
        for worker in self.workers {
            let result = worker.join();
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}
