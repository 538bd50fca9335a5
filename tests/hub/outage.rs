//! The database going away (PostgreSQL stopped and started again, on a server of the test's
//! own): joins and admin writes get an error reply, live sockets stay up, and the hub
//! recovers by itself.

use std::sync::Arc;

use reqwest::Method;
use serde_json::json;

use crate::common::{TestHub, eventually, reply_of};
use crate::support::postgres::PrivateServer;

#[tokio::test]
async fn postgres_down_at_start_is_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://homehub@127.0.0.1:{port}/homehub");
    let config = homehub::config::Config::default_for("127.0.0.1:0".parse().unwrap(), &url);
    let err = homehub::app::Server::bind(config)
        .await
        .err()
        .expect("no hub without its database");
    let text = format!("{err:#}");
    assert!(text.contains("opening database"), "{text}");
    assert!(text.contains(&port.to_string()), "{text}");
}

#[tokio::test]
async fn postgres_going_away_is_an_error_reply_and_the_hub_recovers() {
    let pg = Arc::new(
        tokio::task::spawn_blocking(PrivateServer::start)
            .await
            .expect("start PostgreSQL"),
    );
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    std::fs::write(dir.path().join("database_url"), pg.url()).expect("keep the URL");
    let hub = TestHub::start_in(dir, "127.0.0.1:0".parse().unwrap(), |_| {}).await;
    let mut lock = hub.client("door-1").await;
    let r = lock
        .join("lock:OUT-1", "1", json!({"accepts": ["state"]}))
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let mut watcher = hub.client("watcher").await;
    let r = watcher.join("events", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");

    let stopping = pg.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .expect("stop PostgreSQL");

    // A join needs the store: it is refused with the protocol's error shape.
    let mut other = hub.client("door-2").await;
    let r = other.join("lock:OUT-2", "1", json!({})).await;
    assert_eq!(
        r,
        json!(["1", "1", "lock:OUT-2", "phx_reply",
               {"status": "error", "response": {"reason": "store unavailable"}}])
    );
    // An admin write gets 503.
    let (status, body) = hub
        .admin(
            Method::PUT,
            "/api/locks/OUT-1/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(
        (status, &body),
        (503, &json!({"error": "store unavailable"}))
    );
    // Live sockets stay up and answer.
    lock.send(json!([null, "h1", "phoenix", "heartbeat", {}]))
        .await;
    let r = lock.recv_reply("h1").await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");

    let starting = pg.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .expect("start PostgreSQL again");

    // The hub reconnects by itself: the lock's retried join gets in.
    let mut attempt = 0;
    eventually("a join once the database is back", async || {
        attempt += 1;
        let jr = format!("j{attempt}");
        let r = other.join("lock:OUT-2", &jr, json!({})).await;
        (reply_of(&r).0 == "ok").then_some(())
    })
    .await;
    let (status, _) = hub
        .admin(
            Method::PUT,
            "/api/locks/OUT-1/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(lock.recv_event("state").await[4], json!({"locked": false}));
    hub.stop().await;
}
