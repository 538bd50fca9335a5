//! WebSocket close codes the hub uses (RFC 6455 §7.4.1), for every door.

/// Going away: idle timeout, kicked by `disconnect`, replaced by a newer connection.
pub const GOING_AWAY: u16 = 1001;
/// Unsupported data: a frame that is not a Phoenix message at all.
pub const UNSUPPORTED: u16 = 1003;
/// Invalid frame payload data: text that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// Policy violation: the outbound queue overflowed (slow reader).
pub const POLICY: u16 = 1008;
/// Message too big.
pub const TOO_BIG: u16 = 1009;
/// Internal error.
pub const INTERNAL: u16 = 1011;
/// Service restart: graceful shutdown (§6, drain).
pub const RESTART: u16 = 1012;
