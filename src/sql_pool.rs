//! A bounded pool for the CPU-heavy part of a decision: parsing, rewriting and verifying a
//! request's SQL.
//!
//! Sits between the decision path and the SQL rewrite: the proxy's I/O threads hand the
//! rewrite to [`SqlPool::run`] and await it, so a flood of huge statements occupies the
//! pool's few threads, not the threads that authenticate and forward every other request.
//! The pool is bounded three ways, each refusing with a typed [`SqlPoolError`] before any
//! work starts (the decision path maps them to `503 sql_busy` / `413`): a task larger than
//! the per-task budget, a full queue, and a pool that has stopped. Its threads run at a
//! lower scheduling priority, so on a busy machine the I/O threads win the CPU.
//! A task whose caller has gone away (the client disconnected while it queued) is skipped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use parking_lot::Mutex;
use serde::Deserialize;

/// `sql.pool` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlPoolConfig {
    /// Threads doing SQL work; 0 means one per CPU.
    #[serde(default)]
    pub threads: usize,
    /// Tasks waiting for a thread; one more is refused with `sql_busy`.
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// The niceness of the pool's threads (0–19; higher yields more CPU to the I/O
    /// threads).
    #[serde(default = "default_niceness")]
    pub niceness: i32,
}

impl Default for SqlPoolConfig {
    fn default() -> Self {
        SqlPoolConfig {
            threads: 0,
            queue_limit: default_queue_limit(),
            niceness: default_niceness(),
        }
    }
}

fn default_queue_limit() -> usize {
    64
}

fn default_niceness() -> i32 {
    5
}

/// Why a task was not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlPoolError {
    #[error("the SQL work queue is full ({queue_limit} waiting); retry shortly")]
    Busy { queue_limit: usize },
    #[error("the SQL is {size} bytes, over the {limit}-byte budget of one task")]
    TooLarge { size: usize, limit: usize },
    #[error("the SQL worker stopped before finishing the task")]
    WorkerLost,
}

impl SqlPoolError {
    /// The metrics label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            SqlPoolError::Busy { .. } => "busy",
            SqlPoolError::TooLarge { .. } => "too_large",
            SqlPoolError::WorkerLost => "worker_lost",
        }
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Counters the pool keeps (registered by [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct SqlPoolMetrics {
    /// Tasks refused, by reason (busy, too_large, worker_lost).
    pub rejected: prometheus::IntCounterVec,
    /// Tasks waiting for a thread.
    pub queued: prometheus::IntGauge,
}

pub struct SqlPool {
    sender: SyncSender<Job>,
    queue_limit: usize,
    max_task_bytes: usize,
    threads: usize,
    metrics: SqlPoolMetrics,
}

impl SqlPool {
    /// Starts the threads. They end when the pool is dropped.
    pub fn start(
        config: &SqlPoolConfig,
        max_task_bytes: usize,
        metrics: SqlPoolMetrics,
    ) -> std::io::Result<SqlPool> {
        let threads = if config.threads == 0 {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1)
        } else {
            config.threads
        };
        // A rendezvous channel would refuse whenever every thread is busy; the queue
        // absorbs bursts up to its limit.
        let (sender, receiver) = sync_channel::<Job>(config.queue_limit);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = receiver.clone();
            let niceness = config.niceness;
            let queued = metrics.queued.clone();
            std::thread::Builder::new()
                .name(format!("datagate-sql-{index}"))
                .spawn(move || work(&receiver, niceness, &queued))?;
        }
        Ok(SqlPool {
            sender,
            queue_limit: config.queue_limit,
            max_task_bytes,
            threads,
            metrics,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task` (whose input is `size` bytes) on a pool thread and waits for its
    /// result without blocking the caller's thread. Refused at once when the task is over
    /// budget or the queue is full.
    pub async fn run<T, F>(&self, size: usize, task: F) -> Result<T, SqlPoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let receiver = self.submit(size, task)?;
        receiver
            .await
            .map_err(|_| self.reject(SqlPoolError::WorkerLost))
    }

    /// Like [`run`](Self::run), blocking the calling thread (for callers outside an async
    /// runtime: `datagate explain`, tests).
    pub fn run_blocking<T, F>(&self, size: usize, task: F) -> Result<T, SqlPoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let receiver = self.submit(size, task)?;
        receiver
            .blocking_recv()
            .map_err(|_| self.reject(SqlPoolError::WorkerLost))
    }

    fn submit<T, F>(
        &self,
        size: usize,
        task: F,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, SqlPoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if size > self.max_task_bytes {
            return Err(self.reject(SqlPoolError::TooLarge {
                size,
                limit: self.max_task_bytes,
            }));
        }
        let (result_sender, result_receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller went away while this waited: nobody wants the answer.
            if result_sender.is_closed() {
                return;
            }
            let _ = result_sender.send(task());
        });
        self.metrics.queued.inc();
        match self.sender.try_send(job) {
            Ok(()) => Ok(result_receiver),
            Err(TrySendError::Full(_)) => {
                self.metrics.queued.dec();
                Err(self.reject(SqlPoolError::Busy {
                    queue_limit: self.queue_limit,
                }))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queued.dec();
                Err(self.reject(SqlPoolError::WorkerLost))
            }
        }
    }

    fn reject(&self, error: SqlPoolError) -> SqlPoolError {
        self.metrics
            .rejected
            .with_label_values(&[error.reason()])
            .inc();
        error
    }
}

/// One pool thread: take a task, run it, repeat until the pool is dropped. A panicking
/// task loses its own result (its caller gets `WorkerLost`), not the thread.
fn work(receiver: &Mutex<Receiver<Job>>, niceness: i32, queued: &prometheus::IntGauge) {
    lower_priority(niceness);
    loop {
        let job = match receiver.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        queued.dec();
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("an SQL task panicked; its request is refused");
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority(niceness: i32) {
    if niceness <= 0 {
        return;
    }
    // On Linux the niceness is per thread: `who = 0` is the calling thread.
    // SAFETY: setpriority has no memory-safety preconditions.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, niceness.min(19)) };
    if result != 0 {
        tracing::debug!("could not lower the SQL threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_niceness: i32) {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::*;

    fn metrics() -> SqlPoolMetrics {
        SqlPoolMetrics {
            rejected: prometheus::IntCounterVec::new(
                prometheus::Opts::new("rejected", "test"),
                &["reason"],
            )
            .unwrap(),
            queued: prometheus::IntGauge::new("queued", "test").unwrap(),
        }
    }

    fn pool(threads: usize, queue_limit: usize, max_task_bytes: usize) -> SqlPool {
        SqlPool::start(
            &SqlPoolConfig {
                threads,
                queue_limit,
                niceness: 0,
            },
            max_task_bytes,
            metrics(),
        )
        .unwrap()
    }

    #[test]
    fn runs_tasks_off_the_calling_thread_and_returns_their_result() {
        let pool = pool(2, 4, 1024);
        let caller = std::thread::current().id();
        let (value, ran_on) = pool
            .run_blocking(10, move || (6 * 7, std::thread::current().id()))
            .unwrap();
        assert_eq!(value, 42);
        assert_ne!(ran_on, caller);
    }

    #[tokio::test]
    async fn the_async_caller_awaits_without_blocking_its_runtime() {
        let pool = pool(1, 4, 1024);
        let answer = pool.run(3, || "rewritten".to_string()).await.unwrap();
        assert_eq!(answer, "rewritten");
    }

    #[test]
    fn a_task_over_the_size_budget_is_refused_before_it_runs() {
        let pool = pool(1, 4, 100);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let error = pool
            .run_blocking(101, move || counter.fetch_add(1, Ordering::SeqCst))
            .unwrap_err();
        assert_eq!(
            error,
            SqlPoolError::TooLarge {
                size: 101,
                limit: 100
            }
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(
            pool.metrics
                .rejected
                .with_label_values(&["too_large"])
                .get(),
            1
        );
    }

    #[test]
    fn a_full_queue_refuses_with_busy_and_counts_it() {
        let pool = Arc::new(pool(1, 2, 1024));
        // Hold the only thread until every slot is taken.
        let release = Arc::new(Barrier::new(2));
        let started = Arc::new(Barrier::new(2));
        let (hold, begun) = (release.clone(), started.clone());
        let blocker = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                pool.run_blocking(1, move || {
                    begun.wait();
                    hold.wait();
                })
            })
        };
        started.wait();
        // Two fill the queue...
        let queued: Vec<_> = (0..2)
            .map(|index| pool.submit(1, move || index).unwrap())
            .collect();
        assert_eq!(pool.metrics.queued.get(), 2);
        // ...the next is refused at once, without waiting.
        let error = pool.run_blocking(1, || 99).unwrap_err();
        assert_eq!(error, SqlPoolError::Busy { queue_limit: 2 });
        assert_eq!(error.reason(), "busy");
        assert_eq!(pool.metrics.rejected.with_label_values(&["busy"]).get(), 1);
        release.wait();
        blocker.join().unwrap().unwrap();
        let results: Vec<i32> = queued
            .into_iter()
            .map(|receiver| receiver.blocking_recv().unwrap())
            .collect();
        assert_eq!(results, vec![0, 1]);
        assert_eq!(pool.metrics.queued.get(), 0);
        // Capacity is back.
        assert_eq!(pool.run_blocking(1, || 7).unwrap(), 7);
    }

    #[test]
    fn a_panicking_task_fails_closed_and_the_thread_survives() {
        let pool = pool(1, 4, 1024);
        let error = pool
            .run_blocking(1, || -> u32 { panic!("bad statement") })
            .unwrap_err();
        assert_eq!(error, SqlPoolError::WorkerLost);
        assert_eq!(pool.run_blocking(1, || 5).unwrap(), 5);
    }

    #[test]
    fn a_task_whose_caller_left_is_skipped() {
        let pool = pool(1, 4, 1024);
        let release = Arc::new(Barrier::new(2));
        let hold = release.clone();
        let blocker = pool.submit(1, move || hold.wait()).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let abandoned = pool
            .submit(1, move || counter.fetch_add(1, Ordering::SeqCst))
            .unwrap();
        drop(abandoned);
        release.wait();
        blocker.blocking_recv().unwrap();
        // The queue is FIFO with one thread: this runs after the abandoned task's turn.
        assert_eq!(pool.run_blocking(1, || 1).unwrap(), 1);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
