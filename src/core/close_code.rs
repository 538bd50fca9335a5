//! WebSocket close codes the hub uses (RFC 6455 §7.4.1), for every door: tungstenite's
//! [`CloseCode`], named for what the hub means by each.

pub use tungstenite::protocol::frame::coding::CloseCode;

/// Going away: idle timeout, kicked by `disconnect`, replaced by a newer connection.
pub const GOING_AWAY: CloseCode = CloseCode::Away;
/// Protocol error: the WebSocket framing itself was violated.
pub const PROTOCOL: CloseCode = CloseCode::Protocol;
/// Unsupported data: a frame that is not a Phoenix message at all.
pub const UNSUPPORTED: CloseCode = CloseCode::Unsupported;
/// Invalid frame payload data: text that is not UTF-8.
pub const INVALID_DATA: CloseCode = CloseCode::Invalid;
/// Policy violation: the outbound queue overflowed (slow reader).
pub const POLICY: CloseCode = CloseCode::Policy;
/// Message too big.
pub const TOO_BIG: CloseCode = CloseCode::Size;
/// Internal error.
pub const INTERNAL: CloseCode = CloseCode::Error;
/// Service restart: graceful shutdown (§6, drain).
pub const RESTART: CloseCode = CloseCode::Restart;
/// No status received: the client's close frame carried no code (logged, never sent).
pub const NO_STATUS: CloseCode = CloseCode::Status;
/// Abnormal closure: the connection ended without a close frame (logged, never sent).
pub const ABNORMAL: CloseCode = CloseCode::Abnormal;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_rfc_numbers() {
        let codes = [
            GOING_AWAY,
            PROTOCOL,
            UNSUPPORTED,
            INVALID_DATA,
            POLICY,
            TOO_BIG,
            INTERNAL,
            RESTART,
            NO_STATUS,
            ABNORMAL,
        ];
        assert_eq!(
            codes.map(u16::from),
            [1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1005, 1006]
        );
    }
}
