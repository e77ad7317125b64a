//! Bounds argon2 work. Every password check and hash runs on the blocking pool, at most
//! `auth.argon2_concurrency` at a time, each in one of as many reused working memories
//! (`auth.argon2_memory_kib` each), and at most `auth.argon2_queue` requests wait for a turn.
//! A request that finds the queue full is refused at once ([`Busy`], HTTP 503) instead of
//! queueing, so memory stays bounded however many sign-ins arrive together.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::password::{Memory, PasswordError, Passwords};

/// The queue is full: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress")]
pub struct Busy;

/// Why a hash could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The blocking task panicked or was cancelled at shutdown.
    #[error("the hashing task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The semaphore was closed (never happens: nothing closes it).
    #[error("the argon2 pool is closed")]
    Closed,
}

/// Runs argon2 for the API with bounded concurrency and a bounded queue.
pub struct Hasher {
    passwords: Arc<Passwords>,
    /// Working memories of finished runs, for the next ones (at most one per run permit).
    memories: Arc<Mutex<Vec<Memory>>>,
    /// A permit per argon2 run allowed at once.
    run: Arc<Semaphore>,
    /// A permit per request admitted (running or waiting): concurrency + queue.
    admit: Arc<Semaphore>,
    concurrency: usize,
    queue: usize,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("passwords", &self.passwords)
            .field("concurrency", &self.concurrency)
            .field("queue", &self.queue)
            .field(
                "running",
                &(self.concurrency - self.run.available_permits()),
            )
            .finish()
    }
}

impl Hasher {
    /// At most `concurrency` (at least 1) runs at once and `queue` requests waiting.
    pub fn new(passwords: Passwords, concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            passwords: Arc::new(passwords),
            memories: Arc::new(Mutex::new(Vec::with_capacity(concurrency))),
            run: Arc::new(Semaphore::new(concurrency)),
            admit: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
            concurrency,
            queue,
        }
    }

    /// A place in the queue, or [`Busy`] when it is full. Take it before anything else a
    /// request records (such as a sign-in attempt), so a refusal leaves no trace. It covers
    /// every argon2 run of the request and is given back when dropped.
    pub fn admit(&self) -> Result<Admission, Busy> {
        let slot = self.admit.clone().try_acquire_owned().map_err(|_| Busy)?;
        Ok(Admission {
            _slot: slot,
            run: self.run.clone(),
            passwords: self.passwords.clone(),
            memories: self.memories.clone(),
        })
    }

    /// See [`Passwords::needs_rehash`] (no argon2 run).
    pub fn needs_rehash(&self, stored: &str) -> bool {
        self.passwords.needs_rehash(stored)
    }
}

/// An admitted request: its argon2 runs wait for a free run permit.
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    run: Arc<Semaphore>,
    passwords: Arc<Passwords>,
    memories: Arc<Mutex<Vec<Memory>>>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission").finish_non_exhaustive()
    }
}

impl Admission {
    /// Runs `f` on the blocking pool once a run permit is free, in a reused working memory.
    /// The permit moves into the blocking task, so it is held until argon2 finishes even if
    /// the request is dropped meanwhile (a client that disconnects cannot free its place
    /// early); so there are never more working memories than permits.
    async fn run<T, F>(&self, f: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce(&Passwords, &mut Memory) -> T + Send + 'static,
    {
        let permit = self
            .run
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        let passwords = self.passwords.clone();
        let memories = self.memories.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let mut memory = free_list(&memories).pop().unwrap_or_default();
            let out = f(&passwords, &mut memory);
            // A stored hash of a higher cost grew it: let that go rather than keep it.
            if memory.kib() <= passwords.run_kib() {
                free_list(&memories).push(memory);
            }
            drop(permit);
            out
        })
        .await?)
    }

    /// Verifies a password (see [`Passwords::verify`]: `None` costs the same and fails).
    /// False too if the check could not run.
    pub async fn verify(&self, stored: Option<String>, password: String) -> bool {
        self.run(move |p, m| p.verify_in(stored.as_deref(), &password, m))
            .await
            .unwrap_or(false)
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move |p, m| p.hash_in(&password, m))
            .await?
            .map_err(HashError::from)
    }
}

/// The list of free working memories (a poisoned lock still holds a usable list).
fn free_list(m: &Mutex<Vec<Memory>>) -> MutexGuard<'_, Vec<Memory>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::password::Argon2Cost;

    fn hasher(concurrency: usize, queue: usize) -> Hasher {
        let cost = Argon2Cost {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        };
        Hasher::new(Passwords::new(cost).unwrap(), concurrency, queue)
    }

    #[test]
    fn admission_is_bounded_by_concurrency_plus_queue() {
        let h = hasher(2, 3);
        let held: Vec<Admission> = (0..5).map(|_| h.admit().unwrap()).collect();
        assert_eq!(h.admit().unwrap_err(), Busy);
        drop(held);
        assert!(h.admit().is_ok());
        let none = hasher(1, 0);
        let only = none.admit().unwrap();
        assert_eq!(none.admit().unwrap_err(), Busy);
        drop(only);
        assert!(none.admit().is_ok());
    }

    #[tokio::test]
    async fn hash_and_verify_through_an_admission() {
        let h = hasher(1, 1);
        let a = h.admit().unwrap();
        let stored = a.hash("correct horse".into()).await.unwrap();
        assert!(a.verify(Some(stored.clone()), "correct horse".into()).await);
        assert!(!a.verify(Some(stored), "correct horsf".into()).await);
        assert!(!a.verify(None, "correct horse".into()).await);
        // One working memory, reused by every run.
        let memories = h.memories.lock().unwrap();
        assert_eq!(memories.len(), 1);
        assert_eq!(memories[0].kib(), 256);
    }

    /// Runs never exceed the concurrency, also when their requests give up waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_are_bounded_even_when_requests_are_dropped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let h = Arc::new(hasher(2, 100));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (h, now, peak) = (h.clone(), now.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let a = h.admit().unwrap();
                let run = a.run(move |_, _| {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
                if i % 2 == 0 {
                    // Give up soon: the run, once started, still holds its permit.
                    let _ = tokio::time::timeout(Duration::from_millis(5), run).await;
                } else {
                    run.await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Wait for the runs of abandoned requests to finish.
        let _all = h.run.acquire_many(2).await.unwrap();
        assert!(peak.load(Ordering::SeqCst) <= 2, "{peak:?}");
        assert_eq!(now.load(Ordering::SeqCst), 0);
        assert!(h.memories.lock().unwrap().len() <= 2);
    }
}
