//! Bester users' passwords: argon2id hashes (PHC strings with a random salt) in the store,
//! never the password itself. Hashing is slow on purpose, so it runs on the blocking pool,
//! and each hash takes 19 MiB: every hash and verification goes through [`Hashing`], which
//! lets only a few run at once (issue 12: 400 concurrent failed logins took the hub from
//! 17 MiB to 1 GiB). Peer secrets are compared in constant time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use tokio::sync::Semaphore;

use crate::store::{Store, StoreError};

/// Longest username.
pub const MAX_USERNAME: usize = 64;
/// Shortest password an administrator or a user may set.
pub const MIN_PASSWORD: usize = 8;
/// Longest password (bounds the hashing work one request can cause).
pub const MAX_PASSWORD: usize = 1024;

/// A valid username: 1–64 chars of `A-Za-z0-9._-` (no `:`, which marks server origins in
/// `from`, and no `@`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Option<Username> {
        let ok = !s.is_empty()
            && s.len() <= MAX_USERNAME
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| Username(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a new password's length; the error is what the user is told.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.len() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes long"
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Every hashing slot stayed taken for the whole wait.
    #[error("every password hashing slot is busy")]
    Busy,
}

/// The hashing slots: at most `slots` argon2 hashes run at once. Up to `queue` more wait
/// for a slot, at most `wait`, in arrival order (tokio's semaphore is fair), then fail with
/// [`AuthError::Busy`]; with the waiting room full a request fails at once. (A flood of
/// 2,000 logins kept 2,000 connections waiting for the whole `wait` before the waiting
/// room was bounded; now most are answered and closed as they arrive.)
pub struct Hashing {
    slots: Arc<Semaphore>,
    count: usize,
    wait: Duration,
    queue: usize,
    waiting: AtomicUsize,
}

/// One place in the waiting room, given back when dropped (also when the waiter is
/// cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hashing {
    pub fn new(slots: usize, queue: usize, wait: Duration) -> Hashing {
        let count = slots.max(1);
        Hashing {
            slots: Arc::new(Semaphore::new(count)),
            count,
            wait,
            queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// How many hashes may run at once.
    pub fn slots(&self) -> usize {
        self.count
    }

    /// Hashes running right now.
    pub fn running(&self) -> usize {
        self.count - self.slots.available_permits()
    }

    /// Requests waiting for a slot right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A free slot, waiting for one (at most the configured wait) if the waiting room has
    /// a place.
    pub async fn slot(&self) -> Result<HashSlot, AuthError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(HashSlot(permit));
        }
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(AuthError::Busy);
        }
        let _place = Waiting(&self.waiting);
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(HashSlot(permit)),
            // Timed out, or the semaphore was closed (it never is).
            Ok(Err(_)) | Err(_) => Err(AuthError::Busy),
        }
    }

    /// Runs `work` on the blocking pool once a slot is free.
    async fn run<T, F>(&self, work: F) -> Result<T, AuthError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.slot().await?.run(work).await
    }
}

/// A taken hashing slot.
pub struct HashSlot(tokio::sync::OwnedSemaphorePermit);

impl HashSlot {
    /// Runs `work` on the blocking pool. The slot goes with the work, not with the caller:
    /// a caller that gives up (its connection closed) while the hash runs does not free
    /// the slot before the hash has finished.
    pub async fn run<T, F>(self, work: F) -> Result<T, AuthError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.0;
        Ok(tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await?)
    }
}

/// Hashes `password` with argon2id and a fresh 128-bit salt (blocking; see [`hash`]).
pub fn hash_blocking(password: &str) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (blocking). A malformed stored hash
/// never matches.
pub fn verify_blocking(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a stored Bester password hash is malformed");
            false
        }
    }
}

/// Hashes on the blocking pool, in a hashing slot.
pub async fn hash(hashing: &Hashing, password: &str) -> Result<String, AuthError> {
    let password = password.to_owned();
    hashing.run(move || hash_blocking(&password)).await?
}

/// A hash no password is known for, verified against when the user does not exist so that
/// unknown and known usernames take the same time to refuse.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random: [u8; 16] = rand::random();
        hash_blocking(&format!("{random:?}")).unwrap_or_default()
    })
}

/// Checks a user's password against the store, in a hashing slot; `Ok(None)` for a wrong
/// name or password.
pub async fn verify_user(
    hashing: &Hashing,
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<Username>, AuthError> {
    let Some(name) = Username::parse(username) else {
        return Ok(None);
    };
    if password.len() > MAX_PASSWORD {
        return Ok(None);
    }
    // The slot first: a login turned away `busy` costs no database query either.
    let slot = hashing.slot().await?;
    let stored = store.bester_password_hash(name.as_str()).await?;
    let password = password.to_owned();
    let matches = slot
        .run(move || match stored {
            Some(hash) => verify_blocking(&password, &hash),
            None => {
                let _ = verify_blocking(&password, dummy_hash());
                false
            }
        })
        .await?;
    Ok(matches.then_some(name))
}

pub use crate::auth::constant_time_eq;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_verify() {
        let a = hash_blocking("correct horse").unwrap();
        let b = hash_blocking("correct horse").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(!a.contains("correct"));
        assert!(verify_blocking("correct horse", &a));
        assert!(!verify_blocking("wrong horse", &a));
        assert!(!verify_blocking("correct horse", "not a hash"));
    }

    /// A caller that gives up does not free its slot before its hash has finished; a
    /// waiter whose wait runs out, and one that finds the waiting room full, are told
    /// `Busy`.
    #[tokio::test]
    async fn slots_bound_the_hashes_running_at_once() {
        let hashing = Arc::new(Hashing::new(1, 1, Duration::from_millis(50)));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let h = hashing.clone();
        let first = tokio::spawn(async move {
            h.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .await
        });
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hashing.running(), 1);
        first.abort();
        let _ = first.await;
        assert_eq!(hashing.running(), 1, "the slot stays with the running work");
        // One place in the waiting room: a second waiter is turned away at once.
        let h = hashing.clone();
        let waiter = tokio::spawn(async move { h.run(|| ()).await });
        while hashing.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(hashing.run(|| ()).await, Err(AuthError::Busy)));
        // The first waiter's wait runs out.
        assert!(matches!(waiter.await.unwrap(), Err(AuthError::Busy)));
        assert_eq!(hashing.waiting(), 0);
        release_tx.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while hashing.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(hashing.running(), 0);
        assert!(hashing.run(|| ()).await.is_ok());
    }

    #[test]
    fn usernames() {
        assert!(Username::parse("alice.b-c_1").is_some());
        for bad in ["", "a b", "a:b", "a@b", &"x".repeat(65)] {
            assert!(Username::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
