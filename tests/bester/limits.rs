//! Login limits (issue 12 item 5): the failed-login throttle by address and by username,
//! and the per-address connection cap on the TCP listener and the Unix socket. The flood
//! through the hashing slots is in `flood.rs`.

use std::time::Duration;

use serde_json::json;

use crate::common::{BesterClient, HubBuilder, PASSWORD, status};
use crate::support::eventually;

/// Fails `n` logins as `user` from `ip`, each on its own connection.
async fn fail_logins(hub: &crate::common::TestHub, ip: &str, user: &str, n: usize) {
    for i in 0..n {
        let mut c = hub.connect_from(ip).await;
        let r = c.authenticate(user, "wrong password").await;
        assert_eq!(status(&r), "authentication_failed", "attempt {i}: {r}");
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_throttled_and_others_are_not() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    hub.add_user("bob", PASSWORD).await;
    // Five free failures, each for another username so only the address adds up.
    for i in 0..5 {
        fail_logins(&hub, "127.0.0.3", &format!("nobody{i}"), 1).await;
    }
    // The sixth attempt is refused without checking, even with the right password.
    let mut c = hub.connect_from("127.0.0.3").await;
    let r = c.authenticate("alice", PASSWORD).await;
    assert_eq!(status(&r), "throttled", "{r}");
    assert_eq!(r["payload"]["type"], "authenticate");
    let retry = r["payload"]["data"]["retry_after_ms"].as_u64().unwrap_or(0);
    assert!(retry > 0 && retry <= 60_000, "{r}");
    assert!(
        r["payload"]["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("address")),
        "{r}"
    );
    c.expect_closed().await;
    // Another address is not affected; neither is alice's name.
    let mut c = hub.connect_from("127.0.0.4").await;
    assert_eq!(status(&c.authenticate("alice", PASSWORD).await), "ok");
    assert_eq!(hub.metric("homehub_bester_logins_failed_total").await, 5.0);
    assert_eq!(
        hub.metric("homehub_bester_logins_throttled_total").await,
        1.0
    );
    // A throttled re-authentication on a logged-in connection closes it too.
    let mut c = hub.connect_from("127.0.0.5").await;
    assert_eq!(status(&c.authenticate("bob", PASSWORD).await), "ok");
    fail_logins(&hub, "127.0.0.5", "nobody", 5).await;
    let r = c
        .call(
            "authenticate",
            json!({"username": "bob", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status(&r), "throttled", "{r}");
    c.expect_closed().await;
}

#[tokio::test]
async fn a_username_that_keeps_failing_is_throttled_from_every_address() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    hub.add_user("bob", PASSWORD).await;
    for i in 0..5 {
        fail_logins(&hub, &format!("127.0.1.{}", i + 1), "alice", 1).await;
    }
    let mut c = hub.connect_from("127.0.1.9").await;
    let r = c.authenticate("alice", PASSWORD).await;
    assert_eq!(status(&r), "throttled", "{r}");
    assert!(
        r["payload"]["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("username")),
        "{r}"
    );
    c.expect_closed().await;
    // From that same address another user logs in.
    let mut c = hub.connect_from("127.0.1.9").await;
    assert_eq!(status(&c.authenticate("bob", PASSWORD).await), "ok");
}

/// Concurrent attempts from one address count before they have failed: a burst cannot
/// buy more hashes than the free failures.
#[tokio::test]
async fn a_burst_from_one_address_gets_only_the_free_attempts() {
    let hub = HubBuilder::new().start().await;
    let addr = hub.bester();
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(async move {
            let mut c = BesterClient::connect_from(addr, "127.0.2.1".parse().unwrap()).await;
            let r = c
                .authenticate(&format!("nobody{i}"), "wrong password")
                .await;
            status(&r).to_owned()
        }));
    }
    let mut failed = 0;
    let mut throttled = 0;
    for t in tasks {
        match t.await.unwrap().as_str() {
            "authentication_failed" => failed += 1,
            "throttled" => throttled += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    // Five are free; a sixth may pass if the burst lasted past the first delay (1 s).
    assert!(
        (5..=6).contains(&failed),
        "{failed} failed, {throttled} throttled"
    );
    assert_eq!(failed + throttled, 40);
}

#[tokio::test]
async fn the_per_address_cap_applies_to_bester_connections() {
    let hub = HubBuilder::new()
        .config(|c| c.max_conns_per_ip = 3)
        .start()
        .await;
    hub.add_user("alice", PASSWORD).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hub.connect_from("127.0.3.1").await);
    }
    // Live connections are counted once the hub has accepted them.
    let mut c = hub.connect_from("127.0.3.1").await;
    let r = c.recv().await;
    assert_eq!(status(&r), "busy", "{r}");
    assert!(
        r["payload"]["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many connections")),
        "{r}"
    );
    c.expect_closed().await;
    assert_eq!(
        hub.metric("homehub_bester_connections_refused_total").await,
        1.0
    );
    // Another address has its own count.
    let mut other = hub.connect_from("127.0.3.2").await;
    assert_eq!(status(&other.authenticate("alice", PASSWORD).await), "ok");
    // Closing one makes room again (once the hub has noticed).
    drop(held.pop());
    eventually("room again after a close", async || {
        let mut c = hub.connect_from("127.0.3.1").await;
        // A refused connection hears `busy` without asking; an accepted one hears nothing.
        let mut byte = [0u8; 1];
        let refused =
            tokio::time::timeout(Duration::from_millis(200), c.stream.peek(&mut byte)).await;
        let r = if refused.is_err() {
            c.authenticate("alice", PASSWORD).await
        } else {
            c.recv().await
        };
        if status(&r) == "ok" {
            return Some(());
        }
        assert_eq!(status(&r), "busy", "{r}");
        None
    })
    .await;
}

#[tokio::test]
async fn the_unix_socket_counts_as_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bester.sock");
    let socket = path.clone();
    let hub = HubBuilder::new()
        .config(move |c| {
            c.max_conns_per_ip = 2;
            c.bester.socket = Some(socket);
        })
        .start()
        .await;
    let a = tokio::net::UnixStream::connect(&path).await.unwrap();
    let b = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut prefix = [0u8; 4];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut c, &mut prefix),
    )
    .await
    .expect("a refusal in time")
    .expect("a frame");
    let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
    tokio::io::AsyncReadExt::read_exact(&mut c, &mut body)
        .await
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status(&r), "busy", "{r}");
    // TCP connections are counted by their own address.
    let mut t = hub.connect_from("127.0.3.9").await;
    assert_eq!(
        status(&t.authenticate("x", "wrong password").await),
        "authentication_failed"
    );
    drop((a, b));
    hub.stop().await;
}
