//! Supervised tasks and readiness.
//!
//! Every long-lived task of `serve` returns a [`TaskResult`]. A task ends only on a failure
//! that retrying cannot fix (a corrupt database, the ingest writer gone): the
//! [`Supervisor`] logs it with the task's name, cancels the others and `serve` exits
//! non-zero, so systemd restarts the process instead of leaving it half alive. A task that
//! ends without an error before shutdown was asked for is a failure too. A dependency that
//! is only unavailable for a while (a locked or full disk, a lost connection) makes the
//! task report itself in [`Health`], which turns `/readyz` not-ready, and retry with a
//! capped, jittered backoff ([`Retry`]) until it works again.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A failure that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Fatal {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Fatal {
    /// A fatal failure described by `what`, caused by `source`.
    pub fn new(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// A fatal failure with no underlying error.
    pub fn msg(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }
}

/// What a supervised task returns: `Ok` only when it stopped because shutdown was asked.
pub type TaskResult = Result<(), Fatal>;

/// A supervised task failed, so the controller stopped.
#[derive(Debug, thiserror::Error)]
#[error("task {task} failed: {error}{}", cause(.error))]
pub struct TaskFailed {
    pub task: &'static str,
    #[source]
    pub error: Fatal,
}

fn cause(e: &Fatal) -> String {
    e.source
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

/// Runs named tasks under one shutdown signal and reports the first that fails.
#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<(&'static str, TaskResult)>,
    /// The names of the tasks not finished yet, to say which ones outlive the drain time.
    running: Vec<&'static str>,
    shutdown: CancellationToken,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `shutdown` is cancelled; it cancels `shutdown`
    /// itself when a task fails.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            running: Vec::new(),
            shutdown,
        }
    }

    /// Spawns a task on the runtime.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = TaskResult> + Send + 'static,
    {
        self.running.push(name);
        self.tasks.spawn(async move {
            tracing::debug!(task = name, "task started");
            (name, task.await)
        });
    }

    /// Runs `work` on a thread of its own (work that blocks), supervised like a task.
    pub fn spawn_thread<F>(&mut self, name: &'static str, work: F) -> std::io::Result<()>
    where
        F: FnOnce() -> TaskResult + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ = tx.send(work());
            })?;
        self.spawn(name, async move {
            rx.await
                .unwrap_or_else(|_| Err(Fatal::msg("the thread ended without a result")))
        });
        Ok(())
    }

    /// Waits until shutdown is asked for or a task fails, then waits up to `drain` for the
    /// rest to finish. Returns the first failure.
    pub async fn run(mut self, drain: Duration) -> Result<(), TaskFailed> {
        let mut failed: Option<TaskFailed> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if deadline.is_none() && self.shutdown.is_cancelled() {
                deadline = Some(tokio::time::Instant::now() + drain);
            }
            let next = match deadline {
                None => tokio::select! {
                    n = self.tasks.join_next() => n,
                    _ = self.shutdown.cancelled() => continue,
                },
                Some(d) => match tokio::time::timeout_at(d, self.tasks.join_next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        let left = self.tasks.len();
                        tracing::warn!(
                            tasks = left,
                            names = ?self.running,
                            "tasks did not stop within the drain time"
                        );
                        self.tasks.abort_all();
                        break;
                    }
                },
            };
            let Some(joined) = next else { break };
            let stopping = self.shutdown.is_cancelled();
            let (task, result) = match joined {
                Ok(r) => {
                    if let Some(i) = self.running.iter().position(|n| *n == r.0) {
                        self.running.swap_remove(i);
                    }
                    r
                }
                Err(e) => {
                    // A panic (or an abort, which only happens after the drain time).
                    tracing::error!(error = %e, "a task panicked");
                    ("unknown", Err(Fatal::new("the task panicked", e)))
                }
            };
            let error = match result {
                Ok(()) if stopping => {
                    tracing::debug!(task, "task stopped");
                    continue;
                }
                Ok(()) => Fatal::msg("the task ended before shutdown was asked for"),
                Err(e) => e,
            };
            tracing::error!(task, error = %error, cause = %cause(&error), "task failed; the controller stops");
            if failed.is_none() {
                failed = Some(TaskFailed { task, error });
            }
            self.shutdown.cancel();
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// What keeps the controller from being ready now, by component; `/readyz` answers 503
/// while anything is listed.
#[derive(Debug)]
pub struct Health {
    problems: Mutex<BTreeMap<&'static str, String>>,
    metrics: Metrics,
}

impl Health {
    /// Components that report here, each ready until it says otherwise (so
    /// `pifleet_ready` has a series for each from the start).
    pub const COMPONENTS: [&'static str; 4] = ["ingest-writer", "dispatcher", "crl", Self::KEYS];

    /// This controller's key files agree with the fleet's (`rotation::keyset`).
    pub const KEYS: &'static str = "keys";

    pub fn new(metrics: Metrics) -> Self {
        for c in Self::COMPONENTS {
            metrics.ready.with_label_values(&[c]).set(1);
        }
        Self {
            problems: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    /// `component` cannot do its work for now (it keeps retrying).
    pub fn degraded(&self, component: &'static str, why: &dyn fmt::Display) {
        let why = why.to_string();
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.insert(component, why.clone()).is_none() {
            tracing::warn!(component, error = %why, "not ready: retrying");
        }
        self.metrics.ready.with_label_values(&[component]).set(0);
    }

    /// `component` works again.
    pub fn recovered(&self, component: &'static str) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(component).is_some() {
            tracing::info!(component, "ready again");
        }
        self.metrics.ready.with_label_values(&[component]).set(1);
    }

    /// Whether `component` reported a problem it has not recovered from.
    pub fn is_degraded(&self, component: &str) -> bool {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.contains_key(component)
    }

    /// The components that are not ready, with why.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

/// Capped exponential backoff with jitter for retrying a transient failure.
#[derive(Debug)]
pub struct Retry {
    next: Duration,
    max: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(100);

    /// Backoff from 100 ms, doubling up to `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST.min(max),
            max,
        }
    }

    /// The next pause: between half and all of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(2);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Waits the next pause, or until `shutdown`; false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backs_off_to_its_cap() {
        let mut r = Retry::new(Duration::from_millis(800));
        let delays: Vec<u128> = (0..6).map(|_| r.next_delay().as_millis()).collect();
        for (d, step) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!((step / 2..=step).contains(d), "{delays:?}");
        }
        r.reset();
        assert!(r.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_failing_task_stops_the_others_and_is_reported() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        let stopped = CancellationToken::new();
        let seen = stopped.clone();
        let token = shutdown.clone();
        s.spawn("waits", async move {
            token.cancelled().await;
            seen.cancel();
            Ok(())
        });
        s.spawn("breaks", async { Err(Fatal::msg("database is corrupt")) });
        let err = s.run(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.task, "breaks");
        assert!(shutdown.is_cancelled() && stopped.is_cancelled());
        assert!(err.to_string().contains("database is corrupt"), "{err}");
    }

    #[tokio::test]
    async fn a_task_ending_early_is_a_failure_and_shutdown_is_not() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        s.spawn("quits", async { Ok(()) });
        let err = s.run(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.task, "quits");

        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        let token = shutdown.clone();
        s.spawn("waits", async move {
            token.cancelled().await;
            Ok(())
        });
        shutdown.cancel();
        s.run(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_thread_is_reported_by_name() {
        let mut s = Supervisor::new(CancellationToken::new());
        s.spawn_thread("publisher", || Err(Fatal::msg("broker link closed")))
            .unwrap();
        let err = s.run(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.task, "publisher");
    }

    #[test]
    fn health_lists_what_is_not_ready() {
        let h = Health::new(Metrics::new().unwrap());
        assert!(h.problems().is_empty());
        h.degraded("ingest-writer", &"database is locked");
        h.degraded("ingest-writer", &"database is locked");
        assert_eq!(
            h.problems(),
            vec![("ingest-writer", "database is locked".to_owned())]
        );
        h.recovered("ingest-writer");
        assert!(h.problems().is_empty());
    }
}
