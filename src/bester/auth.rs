//! Bester users' passwords: argon2id hashes (PHC strings with a random salt) in the store,
//! never the password itself. Hashing is slow on purpose, so it runs on the blocking pool.
//! Peer secrets are compared in constant time.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

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

/// Hashes on the blocking pool.
pub async fn hash(password: &str) -> Result<String, AuthError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
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

/// Checks a user's password against the store; `Ok(None)` for a wrong name or password.
pub async fn verify_user(
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
    let stored = store.bester_password_hash(name.as_str()).await?;
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || match stored {
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
