//! The Phoenix `connect` (§1.3): the serializer from `vsn`, the socket's `name`, the device
//! token, on the admission every device door shares ([`crate::doors::admission`]).

use std::net::SocketAddr;

use super::Vsn;
use crate::auth::TokenId;
use crate::domain::DeviceName;
use crate::doors::admission::{Gate, Params, Refused, device_token};

/// A Phoenix connect that [`authorize_connect`] let in.
#[derive(Debug)]
pub struct Connect {
    pub name: DeviceName,
    pub vsn: Vsn,
    /// Token mode: the id of the token it was admitted with.
    pub token_id: Option<TokenId>,
}

/// The Phoenix `connect`: serializer from `vsn`, a valid `name`, the device token in token
/// mode, and the per-address limit. `Err` is a refusal (HTTP 403, long-poll 403); the
/// reason is logged here.
pub fn authorize_connect(
    gate: &Gate,
    peer: SocketAddr,
    params: &Params,
    auth_token: Option<&str>,
) -> Result<Connect, Refused> {
    let refuse = |reason: &str| {
        gate.count_refused();
        tracing::info!(%peer, reason, "connect refused");
    };
    let Some(vsn) = Vsn::negotiate(params.get("vsn")) else {
        refuse("unsupported vsn");
        return Err(Refused);
    };
    let Some(name) = params.get("name").and_then(DeviceName::parse) else {
        refuse("missing or invalid name");
        return Err(Refused);
    };
    // The `authToken` (header or subprotocol) first, else a device-token `token` param.
    let token = auth_token.or(params.device_token.as_deref());
    let Ok(claims) = device_token(gate, peer, Some(name.as_str()), token) else {
        gate.count_refused();
        return Err(Refused);
    };
    if !gate.under_ip_limit(peer) {
        refuse("too many connections from this address");
        return Err(Refused);
    }
    Ok(Connect {
        name,
        vsn,
        token_id: claims.map(|c| c.jti.into_boxed_str()),
    })
}
