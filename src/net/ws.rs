//! The WebSocket connection driver shared by every WebSocket door (Phoenix, raw relay,
//! Compendium): one task per socket running one `select!` over the connection's kill
//! switch, inbound frames and its bounded outbound queue (idle deadlines are the
//! registry's shared sweep). Doors plug in a [`Handler`] that turns inbound frames and
//! queued items into outbound messages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message as WsMessage;
use tungstenite::protocol::CloseFrame;

use crate::core::close_code::{self, CloseCode};
use crate::core::outbox::Receiver;
use crate::core::{Conn, Outbound};
use crate::metrics::{self, Metrics};
use crate::net::listener::Io;

/// A WebSocket on one of the hub's connections.
pub type WsStream = WebSocketStream<Io>;

/// Read chunk size of a socket: small, since device traffic is tiny and memory per idle
/// connection matters more than the syscall count of rare large frames.
pub const READ_BUFFER: usize = 1024;
/// Queued items written per flush, so one busy connection yields to others.
const WRITE_BATCH: usize = 64;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Close the connection with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: &'static str,
}

/// A door's protocol on top of the driver.
pub trait Handler: Send {
    /// Handles one data frame (`binary` says which frame type carried it), appending what
    /// to send to `out`; `Err` closes the connection.
    fn on_frame(
        &mut self,
        data: &[u8],
        binary: bool,
        out: &mut Vec<WsMessage>,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// Renders an item from the connection's queue into `out` (or drops it); `Err` closes
    /// the connection after `out` is written.
    fn on_outbound(&mut self, item: Outbound, out: &mut Vec<WsMessage>) -> Result<(), Close>;

    /// Whether a close the hub initiates is announced with a close frame. `false` ends the
    /// TCP connection without one, for a client known to miss close frames (its close is
    /// then noticed as a dropped connection, which it recovers from).
    fn wants_close_frame(&self) -> bool {
        true
    }
}

/// How a connection ended, as the log shows it.
enum End {
    /// The hub closes: send this close frame (if the handler wants one).
    Close(Close),
    /// The connection was killed ([`Conn::kill`], the idle sweep, shutdown).
    Killed,
    /// The client sent a close frame with this code (1005: none given).
    ByClient(CloseCode),
    /// The connection dropped without a close frame (1006, never sent on the wire).
    Dropped,
}

/// What a read error means: 1009 too big, 1007 bad UTF-8, 1002 protocol violation (each
/// answered with a close frame), or a connection that is simply gone (TCP closed or reset
/// without a close frame: 1006).
fn classify(err: tungstenite::Error) -> End {
    use tungstenite::error::ProtocolError;
    match err {
        tungstenite::Error::Capacity(_) => End::Close(Close {
            code: close_code::TOO_BIG,
            reason: "frame too big",
        }),
        tungstenite::Error::Utf8(_) => End::Close(Close {
            code: close_code::INVALID_DATA,
            reason: "invalid utf-8",
        }),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Dropped,
        tungstenite::Error::Protocol(_) => End::Close(Close {
            code: close_code::PROTOCOL,
            reason: "protocol error",
        }),
        _ => End::Dropped,
    }
}

/// Counts and logs a connection the kernel dropped because its peer took no data for
/// `HOMEHUB_SEND_TIMEOUT_SECS` (`TCP_USER_TIMEOUT`, set by the listener): a slow consumer
/// whose backlog sat in kernel buffers, or a peer that vanished.
fn note_send_timeout(err: &tungstenite::Error, conn: &Conn, metrics: &Metrics) {
    if let tungstenite::Error::Io(io) = err
        && io.kind() == std::io::ErrorKind::TimedOut
    {
        metrics::inc(&metrics.slow_consumers_closed);
        tracing::warn!(
            conn = conn.id,
            device = %conn.name,
            "peer took no data within the send timeout; connection dropped"
        );
    }
}

/// Sends `msgs` and flushes, unless the connection is killed meanwhile (a peer that does
/// not read must not hold its task hostage). `Err(None)`: killed; `Err(Some(e))`: the
/// socket failed.
async fn write_all(
    socket: &mut WsStream,
    conn: &Conn,
    msgs: &mut Vec<WsMessage>,
) -> Result<(), Option<tungstenite::Error>> {
    if msgs.is_empty() {
        return Ok(());
    }
    let write = async {
        for m in msgs.drain(..) {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = write => r.map_err(Some),
        _ = conn.killed() => Err(None),
    }
}

/// Runs a connection until it ends; returns the close code of the end (the hub's, even when
/// [`Handler::wants_close_frame`] kept it off the wire; the client's; or 1006 for a
/// connection that dropped without a close frame) and the handler
/// (for the door's cleanup).
///
/// Takes everything by value so a door can build this future before its task's own state
/// machine exists: the socket is then stored once per connection, not once per async
/// layer. Idle connections are closed by the registry's shared sweep
/// ([`crate::core::Registry::sweep_idle`]), not by a timer per socket; with `ping`
/// the sweep also asks for a WebSocket ping at half the idle time (for protocols without
/// a heartbeat of their own; clients answer pings automatically).
#[allow(clippy::manual_async_fn)] // on purpose, see the comment in the body
pub fn drive<H: Handler>(
    mut socket: WsStream,
    conn: Arc<Conn>,
    mut rx: Receiver,
    mut handler: H,
    metrics: Arc<Metrics>,
    ping: bool,
) -> impl Future<Output = (Option<CloseCode>, H)> + Send {
    // An `async` block, not an `async fn`: an async fn's state machine keeps its arguments
    // twice (rust-lang/rust#62958), which would cost every idle socket another copy of its
    // WebSocket and handler.
    async move {
        conn.watch_idle(ping);
        let mut out: Vec<WsMessage> = Vec::new();

        let end: End = loop {
            tokio::select! {
                biased;
                _ = conn.killed() => break End::Killed,
                inbound = socket.next() => {
                    let msg = match inbound {
                        None => break End::Dropped,
                        Some(Err(e)) => {
                            note_send_timeout(&e, &conn, &metrics);
                            break classify(e);
                        }
                        Some(Ok(m)) => m,
                    };
                    conn.touch();
                    metrics::inc(&metrics.frames_in);
                    // Boxed: the handler's future (channel work, store queries) is large and
                    // short-lived; kept inline it would be part of every idle socket's task.
                    let handled = match &msg {
                        WsMessage::Text(t) => Box::pin(handler.on_frame(t.as_bytes(), false, &mut out)).await,
                        WsMessage::Binary(b) => Box::pin(handler.on_frame(b, true, &mut out)).await,
                        WsMessage::Close(frame) => {
                            break End::ByClient(frame.as_ref().map_or(close_code::NO_STATUS, |f| f.code))
                        }
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(()),
                    };
                    if let Err(close) = handled {
                        // Whatever was produced before the fatal frame still goes out first.
                        let _ = write_all(&mut socket, &conn, &mut out).await;
                        break End::Close(close);
                    }
                }
                item = rx.recv() => {
                    let mut handled = outbound(&mut handler, item, &mut out);
                    while handled.is_ok() && out.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Some(item) => handled = outbound(&mut handler, item, &mut out),
                            None => break,
                        }
                    }
                    if let Err(close) = handled {
                        let _ = write_all(&mut socket, &conn, &mut out).await;
                        break End::Close(close);
                    }
                }
            }
            metrics::add(&metrics.frames_out, out.len() as u64);
            if let Err(failed) = write_all(&mut socket, &conn, &mut out).await {
                if let Some(e) = failed {
                    note_send_timeout(&e, &conn, &metrics);
                }
                break if conn.is_killed() {
                    End::Killed
                } else {
                    End::Dropped
                };
            }
        };

        let close = match end {
            End::Close(close) => close,
            End::Killed if conn.idled_out() => Close {
                code: close_code::GOING_AWAY,
                reason: "idle timeout",
            },
            End::Killed => Close {
                code: conn.close_code(),
                reason: "closed by the hub",
            },
            End::ByClient(code) => return (Some(code), handler),
            End::Dropped => return (Some(close_code::ABNORMAL), handler),
        };
        if !handler.wants_close_frame() {
            // Dropping the socket ends the TCP connection (FIN) without a close frame.
            return (Some(close.code), handler);
        }
        let frame = CloseFrame {
            code: close.code,
            reason: close.reason.into(),
        };
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT, socket.send(WsMessage::Close(Some(frame)))).await;
        (Some(close.code), handler)
    }
}

/// Renders a queued item: pings are the driver's own, everything else the door's.
fn outbound<H: Handler>(
    handler: &mut H,
    item: Outbound,
    out: &mut Vec<WsMessage>,
) -> Result<(), Close> {
    match item {
        Outbound::Ping => {
            out.push(WsMessage::Ping(Default::default()));
            Ok(())
        }
        item => handler.on_outbound(item, out),
    }
}
