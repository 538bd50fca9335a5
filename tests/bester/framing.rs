//! Bad input on the wire: each gets an error and/or a close, and nobody else notices.

use std::time::Duration;

use serde_json::json;

use crate::common::{BesterClient, HubBuilder, PASSWORD, TestHub, status};

const MAX: usize = 4096;

async fn hub() -> (TestHub, BesterClient) {
    let hub = HubBuilder::new()
        .config(|c| c.bester.max_frame_bytes = MAX)
        .start()
        .await;
    hub.add_user("alice", PASSWORD).await;
    hub.add_user("bob", PASSWORD).await;
    let bob = hub.login("bob").await;
    (hub, bob)
}

/// The bystander and a fresh login are unaffected.
async fn others_are_fine(hub: &TestHub, bob: &mut BesterClient) {
    let r = bob.call("list_clients", json!(null)).await;
    assert_eq!(status(&r), "ok");
    assert!(
        r["payload"]["data"]["clients"]
            .as_array()
            .unwrap()
            .contains(&json!("bob"))
    );
    let mut again = hub.login("alice").await;
    assert_eq!(status(&again.call("list_clients", json!(null)).await), "ok");
}

fn error_of(frame: &serde_json::Value) -> &str {
    frame["payload"]["data"]["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_length_prefix_over_the_cap_is_refused_and_closed() {
    let (hub, mut bob) = hub().await;
    let mut alice = hub.login("alice").await;
    alice.send_raw(&((MAX + 1) as u32).to_le_bytes()).await;
    alice.send_raw(b"{\"payload\":").await;
    let r = alice.recv().await;
    assert_eq!(status(&r), "too_large");
    assert!(error_of(&r).contains("4096"), "{r}");
    alice.expect_closed().await;

    // Before authentication, and absurdly large: no allocation, just a refusal.
    let mut c = hub.connect().await;
    c.send_raw(&u32::MAX.to_le_bytes()).await;
    assert_eq!(status(&c.recv().await), "too_large");
    c.expect_closed().await;

    // Exactly the cap is fine (a valid message padded with spaces).
    let mut alice = hub.login("alice").await;
    let mut body = json!({"payload": {"type": "list_clients", "id": "max"}}).to_string();
    body.push_str(&" ".repeat(MAX - body.len()));
    alice.send_body(body.as_bytes()).await;
    assert_eq!(status(&alice.recv().await), "ok");
    others_are_fine(&hub, &mut bob).await;
}

#[tokio::test]
async fn a_zero_length_frame_is_malformed() {
    let (hub, mut bob) = hub().await;
    let mut alice = hub.login("alice").await;
    alice.send_raw(&0u32.to_le_bytes()).await;
    let r = alice.recv().await;
    assert_eq!(status(&r), "malformed");
    assert_eq!(error_of(&r), "empty message");
    alice.expect_closed().await;
    others_are_fine(&hub, &mut bob).await;
}

#[tokio::test]
async fn a_truncated_frame_is_malformed() {
    let (hub, mut bob) = hub().await;
    let mut alice = hub.login("alice").await;
    alice.send_raw(&100u32.to_le_bytes()).await;
    alice.send_raw(b"{\"payload\"").await;
    alice.stream.shutdown().await.unwrap();
    let r = alice.recv().await;
    assert_eq!(status(&r), "malformed");
    assert_eq!(error_of(&r), "truncated message");
    alice.expect_closed().await;

    // A prefix cut short counts as well.
    let mut c = hub.connect().await;
    c.send_raw(&[5, 0]).await;
    c.stream.shutdown().await.unwrap();
    assert_eq!(status(&c.recv().await), "malformed");
    c.expect_closed().await;
    others_are_fine(&hub, &mut bob).await;
}

#[tokio::test]
async fn invalid_utf8_is_malformed() {
    let (hub, mut bob) = hub().await;
    let mut alice = hub.login("alice").await;
    alice.send_body(b"{\"payload\": \"\xff\xfe\"}").await;
    let r = alice.recv().await;
    assert_eq!(status(&r), "malformed");
    assert_eq!(error_of(&r), "not UTF-8");
    alice.expect_closed().await;
    others_are_fine(&hub, &mut bob).await;
}

#[tokio::test]
async fn invalid_json_is_malformed() {
    let (hub, mut bob) = hub().await;
    let mut alice = hub.login("alice").await;
    alice.send_body(b"{\"payload\": {\"type\": ").await;
    let r = alice.recv().await;
    assert_eq!(status(&r), "malformed");
    assert_eq!(error_of(&r), "not JSON");
    alice.expect_closed().await;

    // Not JSON as the very first message.
    let mut c = hub.connect().await;
    c.send_body(b"hello").await;
    assert_eq!(status(&c.recv().await), "malformed");
    c.expect_closed().await;
    others_are_fine(&hub, &mut bob).await;
}

#[tokio::test]
async fn json_that_is_not_a_message() {
    let (hub, mut bob) = hub().await;
    // Before authentication: refused and closed.
    let mut c = hub.connect().await;
    c.send_body(b"[1, 2, 3]").await;
    assert_eq!(status(&c.recv().await), "bad_request");
    c.expect_closed().await;
    // After: refused, the connection stays.
    let mut alice = hub.login("alice").await;
    alice.send_body(b"42").await;
    assert_eq!(status(&alice.recv().await), "bad_request");
    assert_eq!(status(&alice.call("list_clients", json!(null)).await), "ok");
    others_are_fine(&hub, &mut bob).await;
}

#[tokio::test]
async fn frames_split_across_writes_and_back_to_back() {
    let (hub, mut bob) = hub().await;
    let mut c = hub.connect().await;
    let body = json!({"header": {"authentication": {"username": "alice", "password": PASSWORD}, "scope": "client"},
                      "payload": {"type": "authenticate"}})
    .to_string();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    for chunk in frame.chunks(7) {
        c.send_raw(chunk).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(status(&c.recv().await), "ok");

    // Three messages in one write: three responses, in order.
    let mut bytes = Vec::new();
    for id in 1..=3 {
        let body = json!({"payload": {"type": "list_clients", "id": id}}).to_string();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body.as_bytes());
    }
    c.send_raw(&bytes).await;
    for id in 1..=3 {
        assert_eq!(c.recv().await["payload"]["id"], id);
    }
    others_are_fine(&hub, &mut bob).await;
}

use tokio::io::AsyncWriteExt;
