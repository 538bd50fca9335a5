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
    hub: Arc<Hub>,
    phoenix: Arc<phoenix::Ctx>,
    relay: relay::Ctx,
    compendium: compendium::Ctx,
}

impl SocketDoors {
    pub fn new(hub: Arc<Hub>) -> SocketDoors {
        let phoenix = phoenix::Ctx::new(&hub);
        let relay = relay::Ctx::new(&hub);
        let compendium = compendium::Ctx::new(&hub);
        SocketDoors {
            hub,
            phoenix,
            relay,
            compendium,
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
        let hub = &self.hub;
        let max_frame = hub.config.max_frame_bytes;
        Ok(match path {
            SocketPath::Phoenix => {
                let (admitted, protocol) = phoenix::websocket::admit(hub, peer, query, headers)?;
                let hub = hub.clone();
                let ctx = self.phoenix.clone();
                Accepted {
                    run: Box::new(move |ws, peer| {
                        let phoenix::websocket::Admitted {
                            name,
                            vsn,
                            token_id,
                        } = admitted;
                        let conn =
                            admission::connect(&hub, Some(name), Door::Phoenix, peer, token_id);
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
                } = relay::admit(hub, peer, query, headers)?;
                let hub = hub.clone();
                let ctx = self.relay.clone();
                Accepted {
                    run: Box::new(move |ws, peer| {
                        let conn = admission::connect(&hub, None, Door::Relay, peer, token_id);
                        Box::pin(relay::run(ws, ctx, only_name, conn, peer))
                    }),
                    protocol: None,
                    max_frame,
                }
            }
            SocketPath::Compendium => {
                let compendium::Admitted { token_id } =
                    compendium::admit(hub, peer, query, headers)?;
                // Messages up to the hub's frame limit reach the handler, which answers
                // ERR 413 past the Compendium cap; only beyond HOMEHUB_MAX_FRAME_BYTES is
                // the socket closed (1009).
                let max_frame = max_frame.max(hub.config.compendium.max_bytes);
                let hub = hub.clone();
                let ctx = self.compendium.clone();
                Accepted {
                    run: Box::new(move |ws, peer| {
                        let conn = admission::connect(&hub, None, Door::Compendium, peer, token_id);
                        Box::pin(compendium::run(ws, ctx, conn, peer))
                    }),
                    protocol: None,
                    max_frame,
                }
            }
        })
    }
}
