//! Transports: the edges where bytes become typed messages.
//!
//! `websocket` serves the Phoenix socket at `/socket/websocket`, `relay` the raw device
//! relay at `/relay`, `compendium` the Compendium relay at `/compendium`. `handshake`
//! decides and answers their upgrades; all three run on the shared driver in `ws`; each
//! decodes its own protocol once, at the edge. `longpoll` is Phoenix's HTTP transport.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::auth::{Claims, Keyring, OriginPolicy, TokenId};
use crate::config::AuthMode;
use crate::core::close_code;
use crate::core::outbox::Receiver;
use crate::core::{Conn, Door, Registry};
use crate::domain::DeviceName;
use crate::metrics::Metrics;
use crate::services::Hub;

use std::collections::HashMap;

/// Connect parameters from the query string.
#[derive(Debug, Default)]
pub struct Params {
    /// Every parameter as Phoenix (Plug) reads them: percent-decoded, duplicate keys
    /// resolved last-wins, empty components (a trailing `&`) tolerated (§1.3).
    pub map: HashMap<String, String>,
    /// The last `token` value shaped like a device token. Long-poll clients append their
    /// session token as a later `token` (§7.5), so last-wins alone would lose it.
    pub device_token: Option<String>,
}

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        let mut params = Params::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if k == "token" && crate::auth::looks_like_device_token(&v) {
                params.device_token = Some(v.clone().into_owned());
            }
            if !k.is_empty() {
                params.map.insert(k.into_owned(), v.into_owned());
            }
        }
        params
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

/// What every device door checks before it accepts a connection, and where an accepted
/// one is registered: the auth mode, allowed origins, the token keyring, the registry's
/// per-address count and the refusal counter. One per door set, built from the hub once.
pub struct Gate {
    auth: AuthMode,
    origins: OriginPolicy,
    keyring: Arc<Keyring>,
    registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    max_conns_per_ip: usize,
}

impl Gate {
    pub fn new(hub: &Hub) -> Gate {
        Gate {
            auth: hub.config.auth,
            origins: hub.origins.clone(),
            keyring: hub.keyring.clone(),
            registry: hub.registry.clone(),
            metrics: hub.metrics.clone(),
            max_conns_per_ip: hub.config.max_conns_per_ip,
        }
    }

    /// Whether the request's `Origin` (if any) is allowed (§1.7).
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        self.origins.allows(origin, host)
    }

    /// Whether `peer` may open one more live connection.
    pub fn under_ip_limit(&self, peer: SocketAddr) -> bool {
        let max = self.max_conns_per_ip;
        max == 0 || self.registry.connections_from(peer.ip()) < max
    }

    /// Counts a refused connection (`/metrics`).
    pub fn count_refused(&self) {
        crate::metrics::inc(&self.metrics.connections_refused);
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A refused connection; the reason has been logged where it was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection refused")]
pub struct Refused;

/// In token mode, checks a device token (for `device` when given) and returns its claims
/// (the device it was issued to, its id); `Err` refuses the connection. In open mode:
/// `Ok(None)`.
pub fn device_token(
    gate: &Gate,
    peer: SocketAddr,
    device: Option<&str>,
    token: Option<&str>,
) -> Result<Option<Claims>, Refused> {
    if gate.auth == AuthMode::Open {
        return Ok(None);
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        tracing::info!(%peer, device, "connect refused: token required");
        return Err(Refused);
    };
    match gate.keyring.check(token, device, now_unix()) {
        Ok(claims) => Ok(Some(claims)),
        Err(e) => {
            tracing::info!(%peer, device, reason = %e, "connect refused: bad token");
            Err(Refused)
        }
    }
}

/// Admission to the doors without Phoenix's connect (raw relay, Compendium): origin, the
/// per-address limit, and in token mode a valid `token` query parameter. `Ok` carries the
/// token's claims (token mode).
pub fn admit(
    gate: &Gate,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Claims>, axum::http::StatusCode> {
    use axum::http::StatusCode;
    let refuse = |reason: &str| {
        gate.count_refused();
        tracing::info!(%peer, reason, "connection refused");
        StatusCode::FORBIDDEN
    };
    if !gate.origin_allowed(headers) {
        return Err(refuse("origin not allowed"));
    }
    if !gate.under_ip_limit(peer) {
        return Err(refuse("too many connections from this address"));
    }
    let params = Params::parse(query);
    device_token(gate, peer, None, params.device_token.as_deref())
        .map_err(|Refused| refuse("token required or invalid"))
}

/// Registers an admitted connection (any door) in the registry together with the id of
/// the token it was admitted with. A token revoked after admission but before this is
/// caught here: revocation marks the keyring first and then closes the registry's
/// connections of that token, so a connection registered meanwhile sees the mark.
pub fn connect(
    gate: &Gate,
    name: Option<DeviceName>,
    door: Door,
    peer: SocketAddr,
    token_id: Option<TokenId>,
) -> (Arc<Conn>, Receiver) {
    let (conn, rx) = gate.registry.connect(name, door, peer, token_id);
    if let Some(id) = conn.token_id()
        && gate.keyring.is_revoked(id)
    {
        tracing::info!(conn = conn.id, %peer, token = id, "token revoked during admission; closing");
        conn.kill(close_code::GOING_AWAY);
    }
    (conn, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_last_wins_and_tolerate_empty_components() {
        let p = Params::parse(Some("token=a&name=dev%3A1&&vsn=2.0.0&token=b&"));
        assert_eq!(p.get("token"), Some("b"));
        assert_eq!(p.get("name"), Some("dev:1"));
        assert_eq!(p.get("vsn"), Some("2.0.0"));
        assert_eq!(p.device_token, None);
        assert!(Params::parse(None).map.is_empty());
    }

    #[test]
    fn the_device_token_survives_a_later_session_token() {
        let p = Params::parse(Some("name=d&token=hh1.abc.def&vsn=2.0.0&token=0123abcd"));
        assert_eq!(p.get("token"), Some("0123abcd"));
        assert_eq!(p.device_token.as_deref(), Some("hh1.abc.def"));
    }
}
