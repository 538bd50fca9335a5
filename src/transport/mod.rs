//! Transports: the edges where bytes become [`crate::protocol::Message`]s.
//!
//! `websocket` serves the Phoenix socket at `/socket/websocket`. Every transport hands
//! decoded messages to the same [`crate::socket::Session`].

pub mod websocket;

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
