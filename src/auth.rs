//! Device authentication and connection policy: signed device tokens, origin checks and the
//! per-socket push rate limiter.
//!
//! A device token is `hh1.<payload>.<signature>`: the payload is URL-safe base64 (no
//! padding) of `{"sub": <device name>, "exp": <unix seconds>, "jti": <token id>}`, the
//! signature URL-safe base64 of HMAC-SHA256(key, "hh1." + payload). The key is the hub's
//! secret (`HOMEHUB_SECRET_KEY`, or one generated on first start and kept in the database).
//! Revocation is by token id (`jti`), checked on every connect. Every connection keeps the
//! id of the token it was admitted with ([`TokenId`], on its registry entry), so revoking a
//! token also closes exactly the live connections admitted with it, on every door
//! (`Registry::kill_token`).

use std::collections::HashSet;
use std::sync::RwLock;

use tokio::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "hh1.";

/// The id (`jti`) of the token a connection was admitted with (token mode). Kept on the
/// connection's registry entry, so a revocation can close it.
pub type TokenId = Box<str>;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The device name the token was issued to.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Token id, for revocation.
    pub jti: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("token issued to another device")]
    WrongDevice,
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Signs `claims` with `key`.
pub fn sign(key: &[u8], claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{PREFIX}{payload}");
    let mut m = mac(key);
    m.update(signed.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signed}.{sig}")
}

/// Checks the signature and expiry of `token` (revocation is the caller's).
pub fn verify(key: &[u8], token: &str, now_unix: i64) -> Result<Claims, TokenError> {
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (payload, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key);
    m.update(PREFIX.as_bytes());
    m.update(payload.as_bytes());
    // Constant-time comparison.
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now_unix {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The hub's token key and the ids of revoked tokens (loaded from the store at start,
/// updated on revocation), checked on every connect.
pub struct Keyring {
    key: Vec<u8>,
    revoked: RwLock<HashSet<String>>,
}

impl Keyring {
    pub fn new(key: Vec<u8>, revoked: impl IntoIterator<Item = String>) -> Keyring {
        Keyring {
            key,
            revoked: RwLock::new(revoked.into_iter().collect()),
        }
    }

    /// A signed token for `device`, valid for `ttl_secs` from `now_unix`.
    pub fn issue(&self, device: &str, now_unix: i64, ttl_secs: u64) -> (String, Claims) {
        let claims = Claims {
            sub: device.to_owned(),
            exp: now_unix.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            jti: new_token_id(),
        };
        (sign(&self.key, &claims), claims)
    }

    /// Verifies `token`; with `device`, it must have been issued to that device.
    pub fn check(
        &self,
        token: &str,
        device: Option<&str>,
        now_unix: i64,
    ) -> Result<Claims, TokenError> {
        let claims = verify(&self.key, token, now_unix)?;
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&claims.jti)
        {
            return Err(TokenError::Revoked);
        }
        if device.is_some_and(|d| d != claims.sub) {
            return Err(TokenError::WrongDevice);
        }
        Ok(claims)
    }

    /// Whether the token with id `id` has been revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    pub fn revoke(&self, id: &str) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
    }
}

/// Whether `s` has the shape of a device token (as opposed to, e.g., a long-poll session
/// token, which shares the `token` query parameter).
pub fn looks_like_device_token(s: &str) -> bool {
    s.starts_with(PREFIX)
}

/// Constant-time equality, so a secret cannot be guessed byte by byte from timings.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A new random token id.
pub fn new_token_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The token carried in a `Sec-WebSocket-Protocol` entry `base64url.bearer.phx.<b64>`
/// (Phoenix 1.8 `authToken`, §1.5): both base64 alphabets, padding optional.
pub fn token_from_subprotocol(entry: &str) -> Option<String> {
    let b64 = entry.strip_prefix("base64url.bearer.phx.")?;
    let b64 = b64.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Origin policy for browser clients (§1.7). Requests without an `Origin` header (native
/// clients) always pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Any origin.
    Any,
    /// The origin's host must be the host the request was sent to (`Host` header).
    SameHost,
    /// One of these patterns: `scheme://host[:port]`, `host`, `*.example.com`; missing
    /// parts are wildcards.
    List(Vec<String>),
}

impl OriginPolicy {
    /// `""` → same host, `"*"` → any, else a comma-separated list.
    pub fn parse(s: &str) -> OriginPolicy {
        match s.trim() {
            "" => OriginPolicy::SameHost,
            "*" => OriginPolicy::Any,
            list => OriginPolicy::List(
                list.split(',')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
        }
    }

    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim().to_ascii_lowercase();
        let (scheme, rest) = origin.split_once("://").unwrap_or(("", origin.as_str()));
        let (o_host, o_port) = split_host_port(rest);
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::SameHost => {
                let host = host.map(str::to_ascii_lowercase).unwrap_or_default();
                split_host_port(&host).0 == o_host
            }
            OriginPolicy::List(patterns) => patterns.iter().any(|p| {
                let (p_scheme, p_rest) = match p.split_once("://") {
                    Some((s, r)) => (Some(s), r),
                    None => (None, p.as_str()),
                };
                let (p_host, p_port) = split_host_port(p_rest);
                let host_ok = match p_host.strip_prefix("*.") {
                    Some(apex) => o_host == apex || o_host.ends_with(&format!(".{apex}")),
                    None => o_host == p_host,
                };
                host_ok
                    && p_scheme.is_none_or(|s| s == scheme)
                    && p_port.is_none_or(|port| Some(port) == o_port)
            }),
        }
    }
}

fn split_host_port(s: &str) -> (&str, Option<&str>) {
    let s = s.trim_end_matches('/');
    if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (s, None),
    }
}

/// A token bucket: `rate` pushes per second with bursts of `burst`. Owned by one socket's
/// task, so no locking. Time is tokio's clock (the std clock outside a runtime), so tests
/// run it on paused time.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate` 0 disables limiting.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the socket is over its rate.
    pub fn allow(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "frontdoor".into(),
            exp,
            jti: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn tokens_verify_expire_and_resist_forgery() {
        let key = b"a secret key of reasonable length!!";
        let t = sign(key, &claims(2_000));
        assert_eq!(verify(key, &t, 1_000), Ok(claims(2_000)));
        assert_eq!(verify(key, &t, 2_000), Err(TokenError::Expired));
        assert_eq!(
            verify(b"another key", &t, 1_000),
            Err(TokenError::BadSignature)
        );
        // A payload changed to another device keeps the old signature: refused.
        let (head, sig) = t.rsplit_once('.').unwrap();
        let forged_claims = Claims {
            sub: "backdoor".into(),
            ..claims(2_000)
        };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{PREFIX}{forged_payload}.{sig}");
        assert_ne!(head, format!("{PREFIX}{forged_payload}"));
        assert_eq!(verify(key, &forged, 1_000), Err(TokenError::BadSignature));
        for junk in ["", "hh1.", "hh1.x", "hh1.x.y", "hh2.a.b", "hh1.!!.??"] {
            assert!(verify(key, junk, 1_000).is_err(), "{junk}");
        }
    }

    #[test]
    fn subprotocol_tokens_decode_both_alphabets() {
        assert_eq!(
            token_from_subprotocol("base64url.bearer.phx.dG9r").as_deref(),
            Some("tok")
        );
        // "a?>" encodes to "YT8+" in the standard alphabet, "YT8-" in the URL-safe one.
        assert_eq!(
            token_from_subprotocol("base64url.bearer.phx.YT8+").as_deref(),
            Some("a?>")
        );
        assert_eq!(
            token_from_subprotocol("base64url.bearer.phx.YT8-").as_deref(),
            Some("a?>")
        );
        assert_eq!(
            token_from_subprotocol("base64url.bearer.phx.dG9r==").as_deref(),
            Some("tok")
        );
        assert_eq!(token_from_subprotocol("phoenix"), None);
    }

    #[test]
    fn origin_policies() {
        let same = OriginPolicy::parse("");
        assert!(same.allows(None, Some("hub.local:4000")));
        assert!(same.allows(Some("http://hub.local:8080"), Some("hub.local:4000")));
        assert!(!same.allows(Some("https://evil.example"), Some("hub.local:4000")));
        assert!(OriginPolicy::parse("*").allows(Some("https://evil.example"), None));
        let list =
            OriginPolicy::parse("https://app.example.com, *.home.lan, http://localhost:3000");
        assert!(list.allows(Some("https://app.example.com"), None));
        assert!(!list.allows(Some("http://app.example.com"), None));
        assert!(list.allows(Some("http://home.lan"), None));
        assert!(list.allows(Some("https://ui.home.lan:8443"), None));
        assert!(!list.allows(Some("https://evilhome.lan"), None));
        assert!(list.allows(Some("http://localhost:3000"), None));
        assert!(!list.allows(Some("http://localhost:3001"), None));
    }

    #[test]
    fn rate_limiter_allows_bursts_then_refuses() {
        let mut r = RateLimiter::new(1, 3);
        assert!(r.allow() && r.allow() && r.allow());
        assert!(!r.allow());
        let mut unlimited = RateLimiter::new(0, 0);
        assert!((0..10_000).all(|_| unlimited.allow()));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_refills_at_its_rate_up_to_its_burst() {
        use std::time::Duration;
        let mut r = RateLimiter::new(2, 4);
        assert_eq!((0..10).filter(|_| r.allow()).count(), 4, "the burst");
        // Two tokens a second: after 499 ms not one yet, at 500 ms exactly one.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!r.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(r.allow());
        assert!(!r.allow());
        // A long pause refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| r.allow()).count(), 4);
    }
}
