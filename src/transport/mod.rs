//! Transports: the edges where bytes become typed messages.
//!
//! `websocket` serves the Phoenix socket at `/socket/websocket`, `relay` the raw device
//! relay at `/relay`, `compendium` the Compendium relay at `/compendium`. All three run on
//! the shared driver in `ws`; each decodes its own protocol once, at the edge.

pub mod compendium;
pub mod relay;
pub mod websocket;
pub mod ws;

use axum::extract::ws::WebSocketUpgrade;

/// Applies the hub's WebSocket limits: small read chunks, a write buffer flushed per batch,
/// and the maximum message size (1009 past it).
pub fn configure(ws: WebSocketUpgrade, max_frame_bytes: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(ws::READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(max_frame_bytes)
        .max_frame_size(max_frame_bytes)
}

use std::collections::HashMap;

/// Query-string parameters as Phoenix (Plug) reads them: percent-decoded, duplicate keys
/// resolved last-wins, empty components (a trailing `&`) tolerated (§1.3).
pub fn query_params(raw: Option<&str>) -> HashMap<String, String> {
    let mut params = HashMap::new();
    if let Some(raw) = raw {
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if !k.is_empty() {
                params.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_last_wins_and_tolerate_empty_components() {
        let p = query_params(Some("token=a&name=dev%3A1&&vsn=2.0.0&token=b&"));
        assert_eq!(p["token"], "b");
        assert_eq!(p["name"], "dev:1");
        assert_eq!(p["vsn"], "2.0.0");
        assert!(query_params(None).is_empty());
    }
}
