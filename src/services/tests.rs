//! The services' rules, driven without sockets on a temp-SQLite hub: what each call stores,
//! whom it reaches through the fabric, and what it refuses.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::testing::TestHub;
use crate::config::AuthMode;
use crate::core::message::OutPayload;
use crate::core::outbox::Receiver;
use crate::core::{Conn, Door, Outbound};
use crate::domain::{DeviceName, ItemKind, Serial};

fn json_of(payload: &OutPayload) -> Value {
    match payload {
        OutPayload::Json(text) => serde_json::from_str(text.get()).expect("JSON payload"),
        other => panic!("a JSON payload expected, got {other:?}"),
    }
}

/// Everything queued for a connection, as (topic, event, payload).
fn drain(rx: &mut Receiver) -> Vec<(String, String, Value)> {
    let mut got = Vec::new();
    while let Some(item) = rx.try_recv() {
        match item {
            Outbound::Broadcast(shared) => {
                let f = &shared.frame;
                got.push((f.topic.clone(), f.event.to_string(), json_of(&f.payload)));
            }
            Outbound::Push(f) => {
                got.push((f.topic.clone(), f.event.to_string(), json_of(&f.payload)));
            }
            Outbound::EndChannel(topic) => {
                got.push((topic.to_string(), "end".to_owned(), Value::Null));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// A connection named `name` joined to `topics`.
fn joined(hub: &TestHub, name: &str, topics: &[&str]) -> (Arc<Conn>, Receiver) {
    let (conn, rx) = hub.connect(Some(name), Door::Phoenix);
    for t in topics {
        let topic = crate::core::Topic::parse(t).expect("a hub topic");
        hub.registry.subscribe(&topic, &conn);
    }
    (conn, rx)
}

async fn a_lock(hub: &TestHub, serial: &str, holder: &str) {
    let serial = Serial::parse(serial).expect("serial");
    let holder = DeviceName::parse(holder).expect("name");
    hub.store.join_lock(&serial, &holder).await.expect("join");
}

#[tokio::test]
async fn set_state_stores_it_pushes_it_to_the_lock_and_tells_watchers() {
    let hub = TestHub::new().await;
    a_lock(&hub, "L1", "door").await;
    let (_lock, mut lock_rx) = joined(&hub, "door", &["lock:L1"]);
    let (_all, mut all_rx) = joined(&hub, "watcher", &["events"]);
    let (_one, mut one_rx) = joined(&hub, "watcher2", &["events:L1"]);
    let (_other, mut other_rx) = joined(&hub, "watcher3", &["events:L2"]);

    let state = json!({"locked": false});
    let (record, delivered) = hub.locks.set_state("L1", &state, None).await.expect("set");
    assert_eq!(delivered, 1);
    assert_eq!(record.intended_state, state);
    let stored = hub.store.get_lock("L1").await.expect("read").expect("lock");
    assert_eq!(stored.intended_state, state);

    assert_eq!(
        drain(&mut lock_rx),
        [("lock:L1".into(), "state".into(), state.clone())]
    );
    let announced = json!({"serial": "L1", "state": state});
    assert_eq!(
        drain(&mut all_rx),
        [("events".into(), "state".into(), announced.clone())]
    );
    assert_eq!(
        drain(&mut one_rx),
        [("events:L1".into(), "state".into(), announced)]
    );
    assert!(
        drain(&mut other_rx).is_empty(),
        "another lock's watchers hear nothing"
    );
}

#[tokio::test]
async fn set_state_of_an_unknown_lock_is_a_store_error_and_pushes_nothing() {
    let hub = TestHub::new().await;
    let (_w, mut rx) = joined(&hub, "watcher", &["events", "lock:NOPE"]);
    let result = hub.locks.set_state("NOPE", &json!({}), None).await;
    assert!(
        matches!(result, Err(super::ServiceError::Store(_))),
        "{result:?}"
    );
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn pairing_is_pushed_to_a_connected_lock_and_its_delivery_recorded() {
    let hub = TestHub::new().await;
    a_lock(&hub, "L1", "door").await;
    let (_lock, mut rx) = joined(&hub, "door", &["lock:L1"]);
    let (request, delivered) = hub
        .locks
        .start_pairing("L1", "Alice's card", ItemKind::Tag, Duration::from_secs(60))
        .await
        .expect("pairing");
    assert!(delivered);
    assert_eq!(request.deliveries, 1);
    assert!(request.delivered_at.is_some());
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "mode:pair");
    assert_eq!(got[0].2, request.mode_pair_payload());

    let cancelled = hub
        .locks
        .cancel_pairing(&request.pair_id)
        .await
        .expect("cancel");
    assert_eq!(cancelled.pair_id, request.pair_id);
}

#[tokio::test]
async fn pairing_a_lock_that_is_not_connected_is_stored_undelivered() {
    let hub = TestHub::new().await;
    a_lock(&hub, "L1", "door").await;
    let (request, delivered) = hub
        .locks
        .start_pairing("L1", "fob", ItemKind::Tag, Duration::from_secs(60))
        .await
        .expect("pairing");
    assert!(!delivered);
    assert_eq!(request.deliveries, 0);
    assert!(request.delivered_at.is_none());
}

#[tokio::test]
async fn in_token_mode_a_new_holder_ends_every_other_devices_lock_channel() {
    let hub = TestHub::with(|c| c.auth = AuthMode::Token).await;
    a_lock(&hub, "L1", "old").await;
    let (_old, mut old_rx) = joined(&hub, "old", &["lock:L1"]);
    let (_new, mut new_rx) = joined(&hub, "new", &["lock:L1"]);
    let new = DeviceName::parse("new").expect("name");
    let record = hub
        .locks
        .set_holder("L1", Some(&new))
        .await
        .expect("holder");
    assert_eq!(record.holder_device.as_deref(), Some("new"));
    assert_eq!(
        drain(&mut old_rx),
        [("lock:L1".into(), "end".into(), Value::Null)]
    );
    assert!(
        drain(&mut new_rx).is_empty(),
        "the holder keeps its channel"
    );
}

#[tokio::test]
async fn in_open_mode_a_new_holder_ends_no_channel() {
    let hub = TestHub::new().await;
    a_lock(&hub, "L1", "old").await;
    let (_old, mut old_rx) = joined(&hub, "old", &["lock:L1"]);
    hub.locks.set_holder("L1", None).await.expect("holder");
    assert!(drain(&mut old_rx).is_empty());
}

#[tokio::test]
async fn a_revoked_token_is_marked_and_its_connections_are_closed() {
    let hub = TestHub::with(|c| c.auth = AuthMode::Token).await;
    let device = DeviceName::parse("door").expect("name");
    let (token, record) = hub.tokens.issue(&device, 3600).await.expect("issue");
    let claims = hub
        .keyring
        .check(&token, Some("door"), 0)
        .expect("a valid token");
    assert_eq!(claims.jti, record.id);
    let (with_token, _rx) = hub.registry.connect(
        Some(device.clone()),
        Door::Phoenix,
        super::testing::peer(),
        Some(record.id.clone().into()),
    );
    let (without, _rx2) = hub.connect(Some("door"), Door::Phoenix);

    let (revoked, closed) = hub
        .tokens
        .revoke(&record.id)
        .await
        .expect("revoke")
        .expect("the token exists");
    assert_eq!(revoked.id, record.id);
    assert_eq!(closed, 1);
    assert!(hub.keyring.is_revoked(&record.id));
    assert!(with_token.is_killed());
    assert!(!without.is_killed());
    assert!(
        hub.tokens
            .revoke("no-such-token")
            .await
            .expect("revoke")
            .is_none()
    );
}
