//! The registry's idle sweep on tokio's clock, paused and advanced by hand: connections
//! are closed after the idle time without a frame, and those that asked for pings are
//! pinged at half of it first. Only the public surface (`connect`, `watch_idle`, `touch`,
//! `sweep_idle`, the outbound queue).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::advance;
use tokio_util::sync::CancellationToken;

use super::outbox::Receiver;
use super::{Conn, Door, Outbound, Registry};
use crate::metrics::Metrics;

const IDLE: Duration = Duration::from_secs(60);
// Margins of a few seconds around each deadline: the registry's clock has one epoch per
// process, and another test's runtime may have set it a moment after this one started.
const MARGIN: Duration = Duration::from_secs(3);

fn registry() -> Registry {
    Registry::new(CancellationToken::new(), 16, Arc::new(Metrics::default()))
}

fn watched(r: &Registry, ping: bool) -> (Arc<Conn>, Receiver) {
    let at: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let (conn, rx) = r.connect(None, Door::Relay, at, None);
    conn.watch_idle(ping);
    (conn, rx)
}

fn pings(rx: &mut Receiver) -> usize {
    std::iter::from_fn(|| rx.try_recv())
        .filter(|o| matches!(o, Outbound::Ping))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_the_idle_time() {
    let r = registry();
    let (quiet, _rx) = watched(&r, false);
    let (busy, _rx2) = watched(&r, false);
    advance(IDLE - MARGIN).await;
    r.sweep_idle(IDLE);
    assert!(!quiet.is_killed(), "closed before its idle time");
    busy.touch();
    advance(2 * MARGIN).await;
    r.sweep_idle(IDLE);
    assert!(quiet.is_killed() && quiet.idled_out());
    assert_eq!(quiet.close_code(), crate::core::close_code::GOING_AWAY);
    assert!(!busy.is_killed(), "a frame moved its deadline");
    advance(IDLE).await;
    r.sweep_idle(IDLE);
    assert!(busy.is_killed() && busy.idled_out());
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_wants_pings_is_pinged_once_before_it_is_closed() {
    let r = registry();
    let (conn, mut rx) = watched(&r, true);
    let (unpinged, mut rx2) = watched(&r, false);
    advance(IDLE / 2 - MARGIN).await;
    r.sweep_idle(IDLE);
    assert_eq!(pings(&mut rx), 0, "pinged before half the idle time");
    advance(2 * MARGIN).await;
    r.sweep_idle(IDLE);
    r.sweep_idle(IDLE);
    assert_eq!(pings(&mut rx), 1, "one ping at half the idle time");
    assert_eq!(pings(&mut rx2), 0, "a connection without pings gets none");
    assert!(!conn.is_killed());
    // No answer: closed at the idle time all the same.
    advance(IDLE / 2).await;
    r.sweep_idle(IDLE);
    assert!(conn.is_killed() && conn.idled_out());
    assert!(unpinged.is_killed());
}

#[tokio::test(start_paused = true)]
async fn an_unwatched_connection_is_never_idled_out() {
    let r = registry();
    let at: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let (conn, _rx) = r.connect(None, Door::Phoenix, at, None);
    advance(IDLE * 10).await;
    assert_eq!(r.sweep_idle(IDLE), Duration::MAX);
    assert!(!conn.is_killed());
}
