//! Message handlers: external processes reached over Unix sockets with the Bester framing.
//!
//! Per message the hub connects to the handler's socket, sends `payload.data` as one frame
//! and waits for one reply frame, all within the handler timeout; then it closes the
//! connection (as the original server did). A handler with a `command` is started by the
//! hub, restarted when it exits (with a growing pause, so a crashing handler cannot spin),
//! and killed at shutdown.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{FrameError, codec};
use super::reply::{self, HandlerReply};
use super::settings::HandlerSpec;

/// Why a handler call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nobody listens on the socket, or the handler closed without replying.
    #[error("handler unavailable: {0}")]
    Unavailable(String),
    #[error("handler did not reply in time")]
    Timeout,
    #[error("invalid handler reply: {0}")]
    InvalidReply(String),
}

/// Sends `data` to the handler and returns its decoded reply.
pub async fn call(
    spec: &HandlerSpec,
    data: &RawValue,
    timeout: Duration,
    max_frame: usize,
) -> Result<HandlerReply, CallError> {
    let exchange = async {
        let stream = UnixStream::connect(&spec.socket)
            .await
            .map_err(|e| CallError::Unavailable(format!("cannot connect: {e}")))?;
        let mut framed = Framed::new(stream, codec(max_frame));
        framed
            .send(Bytes::copy_from_slice(data.get().as_bytes()))
            .await
            .map_err(|e| CallError::Unavailable(format!("cannot send: {e}")))?;
        match framed.next().await {
            Some(Ok(frame)) => reply::decode(&frame).map_err(CallError::InvalidReply),
            Some(Err(e)) => Err(match FrameError::classify(&e) {
                FrameError::TooLarge => {
                    CallError::InvalidReply(format!("reply longer than {max_frame} bytes"))
                }
                FrameError::Truncated => CallError::InvalidReply("truncated reply".to_owned()),
                FrameError::Io => CallError::Unavailable(format!("read failed: {e}")),
            }),
            None => Err(CallError::Unavailable(
                "closed the connection without replying".to_owned(),
            )),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(CallError::Timeout))
}

/// First pause before restarting a handler that exited.
const RESTART_MIN: Duration = Duration::from_millis(200);
/// Longest pause between restarts.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A handler that ran this long before exiting is restarted after the shortest pause.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the handler's command until `shutdown`, restarting it whenever it exits. The
/// process gets `BESTER_SOCKET` (where to listen) and `BESTER_TYPE` in its environment.
pub async fn supervise(spec: HandlerSpec, shutdown: CancellationToken) {
    let Some(argv) = spec.command.clone() else {
        return;
    };
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let mut pause = RESTART_MIN;
    loop {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&spec.workdir)
            .env("BESTER_SOCKET", &spec.socket)
            .env("BESTER_TYPE", &spec.kind)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = Instant::now();
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(handler = %spec.kind, pid = child.id(), "bester handler started");
                tokio::select! {
                    status = child.wait() => {
                        match status {
                            Ok(s) => tracing::warn!(handler = %spec.kind, status = %s, "bester handler exited; restarting"),
                            Err(e) => tracing::warn!(handler = %spec.kind, error = %e, "bester handler lost; restarting"),
                        }
                    }
                    _ = shutdown.cancelled() => {
                        let _ = child.start_kill();
                        let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                        tracing::info!(handler = %spec.kind, "bester handler stopped");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(handler = %spec.kind, program = %program, error = %e, "cannot start bester handler");
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            pause = RESTART_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(RESTART_MAX);
    }
}
