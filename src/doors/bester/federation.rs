//! Server-to-server messages (`scope: "server"`).
//!
//! Each peer is configured on both sides with a name and one shared secret. A hub sending to
//! a peer opens a connection to the peer's Bester listener and sends one message whose
//! header carries `scope: "server"` and `authentication: {"username": <its own name>,
//! "password": <the shared secret>}`; the peer checks both against its configuration
//! (constant-time), dispatches the payload like a client's, answers with a status
//! response, and the sender closes. An unknown name or a wrong secret gets
//! `authentication_failed` and the connection is closed.

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::auth::constant_time_eq;
use super::codec::codec;
use super::protocol::{self, Credentials};
use super::settings::{PeerSpec, Settings};

/// The peer that `creds` authenticate, if any.
pub fn authenticate<'a>(settings: &'a Settings, creds: &Credentials) -> Option<&'a PeerSpec> {
    // Compare against every peer's secret (not just the named one) so timing says nothing
    // about which names exist.
    let mut found = None;
    for peer in settings.peers.values() {
        let secret_ok = constant_time_eq(creds.password.as_bytes(), peer.secret.as_bytes());
        if secret_ok && peer.name == creds.username {
            found = Some(peer);
        }
    }
    found
}

/// Sends one message to `peer` and waits for its status; `Err` says why it was not
/// accepted (`authentication_failed`, `unknown_type`, "unreachable: ...", ...).
pub async fn send(
    settings: &Settings,
    peer: &PeerSpec,
    hops: usize,
    kind: &str,
    data: &RawValue,
) -> Result<(), String> {
    let Some(address) = peer.address.as_deref() else {
        return Err("no address configured".to_owned());
    };
    let frame = protocol::server_frame(&settings.name, &peer.secret, hops, kind, data);
    if frame.len() > settings.max_frame {
        return Err("too_large".to_owned());
    }
    let exchange = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, codec(settings.max_frame));
        framed
            .send(frame)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let answer = match framed.next().await {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => return Err(format!("no answer: {e}")),
            None => return Err("closed without answering".to_owned()),
        };
        let _ = SinkExt::<bytes::Bytes>::close(&mut framed).await;
        match protocol::response_status(&answer) {
            Some(status) if status == protocol::Status::Ok.as_str() => Ok(()),
            Some(status) => Err(status),
            None => Err("invalid answer".to_owned()),
        }
    };
    // The peer may itself wait up to a handler timeout before it answers.
    tokio::time::timeout(settings.handler_timeout * 2, exchange)
        .await
        .unwrap_or_else(|_| Err("timeout".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn peers_need_the_right_name_and_secret() {
        let config = Config::default_for("127.0.0.1:0".parse().unwrap(), "sqlite::memory:");
        let mut settings = Settings::load(&config, false).unwrap();
        settings.peers.insert(
            "b".into(),
            PeerSpec {
                name: "b".into(),
                address: None,
                secret: "0123456789abcdef".into(),
            },
        );
        let creds = |u: &str, p: &str| Credentials {
            username: u.into(),
            password: p.into(),
        };
        assert!(authenticate(&settings, &creds("b", "0123456789abcdef")).is_some());
        assert!(authenticate(&settings, &creds("b", "0123456789abcdeF")).is_none());
        assert!(authenticate(&settings, &creds("c", "0123456789abcdef")).is_none());
    }
}
