//! The doors: each owns one device protocol end to end, on the core's registry and the
//! hub's services.
//!
//! * [`phoenix`] — Phoenix Channels over WebSocket and long-poll: codec, session, channels.
//! * [`relay`] — the raw `/relay` WebSocket.
//! * [`compendium`] — the Compendium relay (`/compendium`, ephemeral hex addresses).
//! * [`bester`] — length-prefixed JSON over TCP: users, message handlers, federation.
//! * [`admission`] — what every device door checks before a connection is accepted.

pub mod admission;
pub mod bester;
pub mod compendium;
pub mod phoenix;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};

use crate::core::Door;
use crate::net::upgrade::{Accepted, Doors, SocketPath};
use crate::services::Hub;

/// The WebSocket doors behind the socket paths, for the edge ([`crate::net::upgrade`]).
pub struct SocketDoors {
    gate: Arc<admission::Gate>,
    phoenix: Arc<phoenix::Ctx>,
    relay: relay::Ctx,
    compendium: compendium::Ctx,
    /// `HOMEHUB_MAX_FRAME_BYTES`.
    max_frame: usize,
}

impl SocketDoors {
    /// The doors' contexts, built from the hub once; `gate` is shared with long-poll.
    pub fn new(hub: &Hub, gate: Arc<admission::Gate>) -> SocketDoors {
        SocketDoors {
            gate,
            phoenix: phoenix::Ctx::new(hub),
            relay: relay::Ctx::new(hub),
            compendium: compendium::Ctx::new(hub),
            max_frame: hub.config.max_frame_bytes,
        }
    }
}

impl Doors for SocketDoors {
    fn decide(
        &self,
        path: SocketPath,
        peer: SocketAddr,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Accepted, StatusCode> {
        let gate = &self.gate;
        let max_frame = self.max_frame;
        Ok(match path {
            SocketPath::Phoenix => {
                let (admitted, protocol) = phoenix::websocket::admit(gate, peer, query, headers)?;
                let gate = gate.clone();
                let ctx = self.phoenix.clone();
                Accepted {
                    run: Box::new(move |ws, peer| {
                        let phoenix::websocket::Admitted {
                            name,
                            vsn,
                            token_id,
                        } = admitted;
                        let conn =
                            admission::connect(&gate, Some(name), Door::Phoenix, peer, token_id);
                        Box::pin(phoenix::websocket::run(ws, ctx, vsn, conn, peer))
                    }),
                    protocol,
                    max_frame,
                }
            }
            SocketPath::Relay => {
                let relay::Admitted {
                    only_name,
                    token_id,
                } = relay::admit(gate, peer, query, headers)?;
                let gate = gate.clone();
                let ctx = self.relay.clone();
                Accepted {
                    run: Box::new(move |ws, peer| {
                        let conn = admission::connect(&gate, None, Door::Relay, peer, token_id);
                        Box::pin(relay::run(ws, ctx, only_name, conn, peer))
                    }),
                    protocol: None,
                    max_frame,
                }
            }
            SocketPath::Compendium => {
                let compendium::Admitted { token_id } =
                    compendium::admit(gate, peer, query, headers)?;
                // Messages up to the hub's frame limit reach the handler, which answers
                // ERR 413 past the Compendium cap; only beyond HOMEHUB_MAX_FRAME_BYTES is
                // the socket closed (1009).
                let max_frame = max_frame.max(self.compendium.max_bytes);
                let gate = gate.clone();
                let ctx = self.compendium.clone();
                Accepted {
                    run: Box::new(move |ws, peer| {
                        let conn =
                            admission::connect(&gate, None, Door::Compendium, peer, token_id);
                        Box::pin(compendium::run(ws, ctx, conn, peer))
                    }),
                    protocol: None,
                    max_frame,
                }
            }
        })
    }
}
