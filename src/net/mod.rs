//! The network edge: bytes to HTTP and WebSocket. [`listener`] accepts (TLS, handshake
//! deadline, per-address cap), [`upgrade`] answers WebSocket upgrades to the socket paths,
//! [`ws`] drives an upgraded socket for a door's handler. It knows doors only as a
//! [`upgrade::SocketPath`] and the [`upgrade::Doors`] it is given.

pub mod listener;
pub mod upgrade;
pub mod ws;
