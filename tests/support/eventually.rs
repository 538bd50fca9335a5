//! The one way tests wait for something done in the background (a disconnect noticed, a row
//! written, a notification received): the integration suites (`tests/support`) and the
//! crate's unit tests (`store::testing`) share it.

#![allow(dead_code)]

use std::time::Duration;

/// How long [`eventually`] waits (generous: CI machines are slow).
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `probe` every 20 ms until it returns `Some`, for at most [`WAIT`]; panics naming
/// `what` otherwise. The one way the suites wait for something the hub does in the
/// background (a disconnect noticed, a row written, a slot freed).
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(WAIT, what, probe).await
}

/// [`eventually`] with its own limit, for what takes longer by design (a handler process
/// restarted after its backoff, a peer reconnecting).
pub async fn eventually_within<T>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
