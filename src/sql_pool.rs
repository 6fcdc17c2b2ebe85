//! A bounded pool for the CPU-heavy part of a decision: parsing, rewriting and verifying a
//! request's SQL.
//!
//! Sits between the decision path and the SQL rewrite: the proxy's I/O threads hand the
//! rewrite to [`SqlPool::run`] and await it, so a flood of huge statements occupies the
//! pool's few threads, not the threads that authenticate and forward every other request.
//! The pool is bounded four ways, each refusing with a typed [`SqlPoolError`] before any
//! work starts (the decision path maps them to `503 sql_busy`, `429 sql_caller_limit`,
//! `413`): a task larger than the per-task budget, a caller that already holds its share
//! of the pool, a full queue, and a pool that has stopped. The share is
//! `per_caller_limit` tasks queued or running per [`CallerKey`] (a principal, or the
//! client address of an anonymous caller), so one client flooding the pool leaves room for
//! everyone else's SQL. Busy refusals say when to retry: the queue ahead divided by the
//! threads, at the recent mean task time. Its threads run at a lower scheduling priority,
//! so on a busy machine the I/O threads win the CPU. A task whose caller has gone away
//! (the client disconnected while it queued) is skipped.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

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
    /// Tasks one caller may have queued or running at once; one more is refused with
    /// `sql_caller_limit` while other callers' SQL is still admitted.
    #[serde(default = "default_per_caller_limit")]
    pub per_caller_limit: usize,
}

impl Default for SqlPoolConfig {
    fn default() -> Self {
        SqlPoolConfig {
            threads: 0,
            queue_limit: default_queue_limit(),
            niceness: default_niceness(),
            per_caller_limit: default_per_caller_limit(),
        }
    }
}

fn default_queue_limit() -> usize {
    64
}

fn default_niceness() -> i32 {
    5
}

fn default_per_caller_limit() -> usize {
    8
}

/// Who a task is counted against for `per_caller_limit`: a principal (`user:alice`,
/// `serviceaccount:ci`), or the client address of an anonymous caller (`ip:…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerKey(String);

impl CallerKey {
    pub fn new(key: impl Into<String>) -> CallerKey {
        CallerKey(key.into())
    }
}

/// The shortest and longest `Retry-After` a busy refusal carries.
const RETRY_AFTER_BOUNDS: (u64, u64) = (1, 60);

/// Why a task was not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlPoolError {
    #[error("the SQL work queue is full ({queue_limit} waiting); retry in {retry_after} s")]
    Busy {
        queue_limit: usize,
        retry_after: u64,
    },
    #[error(
        "this caller already has {limit} SQL statements queued or running; retry in {retry_after} s"
    )]
    CallerBusy { limit: usize, retry_after: u64 },
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
            SqlPoolError::CallerBusy { .. } => "caller_limit",
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
    /// Callers holding at least one task, queued or running.
    pub callers: prometheus::IntGauge,
}

pub struct SqlPool {
    sender: SyncSender<Job>,
    queue_limit: usize,
    max_task_bytes: usize,
    threads: usize,
    metrics: SqlPoolMetrics,
    shares: Arc<Shares>,
    timing: Arc<Timing>,
}

/// Each caller's tasks, queued or running.
struct Shares {
    limit: usize,
    held: Mutex<HashMap<CallerKey, usize>>,
    callers: prometheus::IntGauge,
}

/// One task's place in its caller's share: released when the task finishes, is skipped,
/// or is dropped unrun (queue full, pool stopped).
struct Slot {
    shares: Arc<Shares>,
    caller: CallerKey,
}

impl Shares {
    /// A slot for `caller`, or how many it already holds.
    fn take(shares: &Arc<Shares>, caller: &CallerKey) -> Result<Slot, usize> {
        let mut held = shares.held.lock();
        let count = held.entry(caller.clone()).or_insert(0);
        if *count >= shares.limit {
            return Err(*count);
        }
        *count += 1;
        if *count == 1 {
            shares.callers.set(held.len() as i64);
        }
        Ok(Slot {
            shares: shares.clone(),
            caller: caller.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock();
        if let Some(count) = held.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.caller);
                self.shares.callers.set(held.len() as i64);
            }
        }
    }
}

/// The recent mean time of one task, for `Retry-After`.
struct Timing {
    /// Exponentially weighted mean of task run times, in microseconds.
    mean_micros: AtomicU64,
}

impl Timing {
    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .mean_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    sample
                } else {
                    mean - mean / 8 + sample / 8
                })
            });
    }

    /// Seconds until `tasks` tasks ahead have run on `threads` threads, bounded.
    fn retry_after(&self, tasks: usize, threads: usize) -> u64 {
        let mean = self.mean_micros.load(Ordering::Relaxed);
        let total = mean.saturating_mul(tasks as u64) / threads.max(1) as u64;
        total
            .div_ceil(1_000_000)
            .clamp(RETRY_AFTER_BOUNDS.0, RETRY_AFTER_BOUNDS.1)
    }
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
        let timing = Arc::new(Timing {
            mean_micros: AtomicU64::new(0),
        });
        for index in 0..threads {
            let receiver = receiver.clone();
            let niceness = config.niceness;
            let queued = metrics.queued.clone();
            let timing = timing.clone();
            std::thread::Builder::new()
                .name(format!("datagate-sql-{index}"))
                .spawn(move || work(&receiver, niceness, &queued, &timing))?;
        }
        Ok(SqlPool {
            sender,
            queue_limit: config.queue_limit,
            max_task_bytes,
            threads,
            shares: Arc::new(Shares {
                limit: config.per_caller_limit.max(1),
                held: Mutex::new(HashMap::new()),
                callers: metrics.callers.clone(),
            }),
            metrics,
            timing,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task` (whose input is `size` bytes) for `caller` on a pool thread and waits
    /// for its result without blocking the caller's thread. Refused at once when the task
    /// is over budget, the caller holds its whole share, or the queue is full.
    pub async fn run<T, F>(
        &self,
        caller: &CallerKey,
        size: usize,
        task: F,
    ) -> Result<T, SqlPoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let receiver = self.submit(caller, size, task)?;
        receiver
            .await
            .map_err(|_| self.reject(SqlPoolError::WorkerLost))
    }

    /// Like [`run`](Self::run), blocking the calling thread (for callers outside an async
    /// runtime: `datagate explain`, tests).
    pub fn run_blocking<T, F>(
        &self,
        caller: &CallerKey,
        size: usize,
        task: F,
    ) -> Result<T, SqlPoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let receiver = self.submit(caller, size, task)?;
        receiver
            .blocking_recv()
            .map_err(|_| self.reject(SqlPoolError::WorkerLost))
    }

    fn submit<T, F>(
        &self,
        caller: &CallerKey,
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
        let slot = Shares::take(&self.shares, caller).map_err(|held| {
            self.reject(SqlPoolError::CallerBusy {
                limit: self.shares.limit,
                retry_after: self.timing.retry_after(held, self.threads),
            })
        })?;
        let (result_sender, result_receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller went away while this waited: nobody wants the answer.
            if result_sender.is_closed() {
                return;
            }
            // Running tasks count against the share too; the slot is given back before
            // the answer, so a caller that has its answer has its slot back.
            let result = task();
            drop(slot);
            let _ = result_sender.send(result);
        });
        self.metrics.queued.inc();
        let waiting = usize::try_from(self.metrics.queued.get()).unwrap_or(0);
        let refused = |error| {
            self.metrics.queued.dec();
            Err(self.reject(error))
        };
        match self.sender.try_send(job) {
            Ok(()) => Ok(result_receiver),
            // The job, and with it the caller's slot, is dropped here.
            Err(TrySendError::Full(_)) => refused(SqlPoolError::Busy {
                queue_limit: self.queue_limit,
                // Everything queued, and the running tasks, are ahead of a retry.
                retry_after: self
                    .timing
                    .retry_after(waiting + self.threads, self.threads),
            }),
            Err(TrySendError::Disconnected(_)) => refused(SqlPoolError::WorkerLost),
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
fn work(
    receiver: &Mutex<Receiver<Job>>,
    niceness: i32,
    queued: &prometheus::IntGauge,
    timing: &Timing,
) {
    lower_priority(niceness);
    loop {
        let job = match receiver.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        queued.dec();
        let started = Instant::now();
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("an SQL task panicked; its request is refused");
        }
        timing.record(started.elapsed());
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

    fn anyone() -> CallerKey {
        CallerKey::new("ip:127.0.0.1")
    }

    fn metrics() -> SqlPoolMetrics {
        SqlPoolMetrics {
            rejected: prometheus::IntCounterVec::new(
                prometheus::Opts::new("rejected", "test"),
                &["reason"],
            )
            .unwrap(),
            queued: prometheus::IntGauge::new("queued", "test").unwrap(),
            callers: prometheus::IntGauge::new("callers", "test").unwrap(),
        }
    }

    fn pool(threads: usize, queue_limit: usize, max_task_bytes: usize) -> SqlPool {
        pool_with_share(threads, queue_limit, max_task_bytes, 100)
    }

    fn pool_with_share(
        threads: usize,
        queue_limit: usize,
        max_task_bytes: usize,
        per_caller_limit: usize,
    ) -> SqlPool {
        SqlPool::start(
            &SqlPoolConfig {
                threads,
                queue_limit,
                niceness: 0,
                per_caller_limit,
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
            .run_blocking(&anyone(), 10, move || (6 * 7, std::thread::current().id()))
            .unwrap();
        assert_eq!(value, 42);
        assert_ne!(ran_on, caller);
    }

    #[tokio::test]
    async fn the_async_caller_awaits_without_blocking_its_runtime() {
        let pool = pool(1, 4, 1024);
        let answer = pool
            .run(&anyone(), 3, || "rewritten".to_string())
            .await
            .unwrap();
        assert_eq!(answer, "rewritten");
    }

    #[test]
    fn a_task_over_the_size_budget_is_refused_before_it_runs() {
        let pool = pool(1, 4, 100);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let error = pool
            .run_blocking(&anyone(), 101, move || {
                counter.fetch_add(1, Ordering::SeqCst)
            })
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
                pool.run_blocking(&anyone(), 1, move || {
                    begun.wait();
                    hold.wait();
                })
            })
        };
        started.wait();
        // Two fill the queue...
        let queued: Vec<_> = (0..2)
            .map(|index| pool.submit(&anyone(), 1, move || index).unwrap())
            .collect();
        assert_eq!(pool.metrics.queued.get(), 2);
        // ...the next is refused at once, without waiting.
        let error = pool.run_blocking(&anyone(), 1, || 99).unwrap_err();
        assert!(
            matches!(error, SqlPoolError::Busy { queue_limit: 2, retry_after } if retry_after >= 1),
            "{error:?}"
        );
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
        assert_eq!(pool.run_blocking(&anyone(), 1, || 7).unwrap(), 7);
    }

    #[test]
    fn a_panicking_task_fails_closed_and_the_thread_survives() {
        let pool = pool(1, 4, 1024);
        let error = pool
            .run_blocking(&anyone(), 1, || -> u32 { panic!("bad statement") })
            .unwrap_err();
        assert_eq!(error, SqlPoolError::WorkerLost);
        assert_eq!(pool.run_blocking(&anyone(), 1, || 5).unwrap(), 5);
    }

    #[test]
    fn a_task_whose_caller_left_is_skipped() {
        let pool = pool(1, 4, 1024);
        let release = Arc::new(Barrier::new(2));
        let hold = release.clone();
        let blocker = pool.submit(&anyone(), 1, move || hold.wait()).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let abandoned = pool
            .submit(&anyone(), 1, move || counter.fetch_add(1, Ordering::SeqCst))
            .unwrap();
        drop(abandoned);
        release.wait();
        blocker.blocking_recv().unwrap();
        // The queue is FIFO with one thread: this runs after the abandoned task's turn.
        assert_eq!(pool.run_blocking(&anyone(), 1, || 1).unwrap(), 1);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn one_caller_is_held_to_its_share_while_others_are_admitted() {
        let pool = Arc::new(pool_with_share(1, 8, 1024, 2));
        let greedy = CallerKey::new("user:greedy");
        let other = CallerKey::new("user:other");
        let release = Arc::new(Barrier::new(2));
        let started = Arc::new(Barrier::new(2));
        let (hold, begun) = (release.clone(), started.clone());
        // One running and one queued: the greedy caller's whole share.
        let running = pool
            .submit(&greedy, 1, move || {
                begun.wait();
                hold.wait();
            })
            .unwrap();
        started.wait();
        let queued = pool.submit(&greedy, 1, || "queued").unwrap();
        let error = pool.run_blocking(&greedy, 1, || "third").unwrap_err();
        assert!(
            matches!(error, SqlPoolError::CallerBusy { limit: 2, retry_after } if retry_after >= 1),
            "{error:?}"
        );
        assert_eq!(error.reason(), "caller_limit");
        assert_eq!(
            pool.metrics
                .rejected
                .with_label_values(&["caller_limit"])
                .get(),
            1
        );
        assert_eq!(pool.metrics.callers.get(), 1);
        // Another caller's task still gets in, behind the greedy one's.
        let admitted = pool.submit(&other, 1, || "other").unwrap();
        assert_eq!(pool.metrics.callers.get(), 2);
        release.wait();
        running.blocking_recv().unwrap();
        assert_eq!(queued.blocking_recv().unwrap(), "queued");
        assert_eq!(admitted.blocking_recv().unwrap(), "other");
        // Finished tasks give their slots back.
        assert_eq!(pool.run_blocking(&greedy, 1, || 1).unwrap(), 1);
        assert_eq!(pool.run_blocking(&greedy, 1, || 2).unwrap(), 2);
        assert_eq!(pool.metrics.callers.get(), 0);
    }

    #[test]
    fn a_task_refused_for_a_full_queue_gives_its_slot_back() {
        let pool = Arc::new(pool_with_share(1, 1, 1024, 3));
        let caller = CallerKey::new("user:alice");
        let release = Arc::new(Barrier::new(2));
        let started = Arc::new(Barrier::new(2));
        let (hold, begun) = (release.clone(), started.clone());
        let running = pool
            .submit(&caller, 1, move || {
                begun.wait();
                hold.wait();
            })
            .unwrap();
        started.wait();
        let queued = pool.submit(&caller, 1, || ()).unwrap();
        // The queue is full before the share is: busy, and the slot is not kept.
        for _ in 0..3 {
            assert!(matches!(
                pool.run_blocking(&caller, 1, || ()),
                Err(SqlPoolError::Busy { .. })
            ));
        }
        release.wait();
        running.blocking_recv().unwrap();
        queued.blocking_recv().unwrap();
        for _ in 0..3 {
            pool.run_blocking(&caller, 1, || ()).unwrap();
        }
    }

    #[test]
    fn retry_after_is_the_work_ahead_over_the_threads_within_bounds() {
        let timing = Timing {
            mean_micros: AtomicU64::new(0),
        };
        assert_eq!(
            timing.retry_after(100, 2),
            1,
            "no measurement yet: the minimum"
        );
        timing.record(Duration::from_millis(500));
        assert_eq!(timing.retry_after(8, 2), 2);
        assert_eq!(timing.retry_after(9, 2), 3, "rounded up");
        assert_eq!(timing.retry_after(10_000, 1), 60, "at most a minute");
        // The mean follows recent tasks.
        for _ in 0..64 {
            timing.record(Duration::from_millis(10));
        }
        assert_eq!(timing.retry_after(8, 2), 1);
    }
}
