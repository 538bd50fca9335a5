//! Each channel (`lock:<serial>`, `events`, `relay`, `presence:devices`) through the
//! session, without a socket: frames in, frames out, on a hub with a temp SQLite file.

use serde_json::{Value, json};

use super::session_tests::{Client, reply};
use crate::services::testing::TestHub;

fn status(frame: &Value) -> &str {
    frame[4]["status"].as_str().unwrap_or("<none>")
}

// ---- lock:<serial> ----

#[tokio::test]
async fn a_lock_join_creates_the_lock_and_replies_with_it() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "frontdoor");
    let answer = c.one(json!(["1", "1", "lock:A1", "phx_join", {}])).await;
    assert_eq!(status(&answer), "ok", "{answer}");
    let lock = &answer[4]["response"];
    assert_eq!(lock["serial"], "A1");
    assert_eq!(lock["feature_flags"], json!(["lock"]));
    let uuid = lock["uuid"].as_str().expect("uuid").to_owned();
    // The row is in the store, held by this device.
    let stored = hub.store.get_lock("A1").await.expect("store").expect("row");
    assert_eq!(stored.uuid, uuid);
    // `reset` answers the same lock again.
    let again = c.one(json!(["1", "2", "lock:A1", "reset", {}])).await;
    assert_eq!(again[4]["response"]["uuid"], uuid.as_str());
}

#[tokio::test]
async fn a_lock_join_with_an_invalid_serial_is_refused() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "frontdoor");
    let answer = c
        .one(json!(["1", "1", "lock:bad serial", "phx_join", {}]))
        .await;
    let reason = json!({ "reason": "invalid serial" });
    assert_eq!(
        answer,
        reply(json!("1"), "1", "lock:bad serial", "error", reason)
    );
}

#[tokio::test]
async fn a_lock_event_is_recorded_and_announced_on_events() {
    let hub = TestHub::new().await;
    let mut lock = Client::new(&hub, "frontdoor");
    let mut admin = Client::new(&hub, "admin-ui");
    admin.one(json!(["1", "1", "events", "phx_join", {}])).await;
    admin
        .one(json!(["2", "2", "events:A1", "phx_join", {}]))
        .await;
    lock.one(json!(["1", "1", "lock:A1", "phx_join", {}])).await;
    let answer = lock
        .one(json!(["1", "2", "lock:A1", "event", { "kind": "opened" }]))
        .await;
    assert_eq!(answer, reply(json!("1"), "2", "lock:A1", "ok", json!({})));
    let body = json!({ "from": "frontdoor", "message": { "kind": "opened" } });
    let mut seen = admin.queued();
    seen.sort_by_key(|f| f[2].to_string());
    assert_eq!(
        seen,
        [
            json!([null, null, "events", "event", body]),
            json!([null, null, "events:A1", "event", body]),
        ]
    );
}

#[tokio::test]
async fn a_lock_refuses_access_requests_for_another_lock_and_unknown_events() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "frontdoor");
    c.one(json!(["1", "1", "lock:A1", "phx_join", {}])).await;
    let wrong = c
        .one(json!(["1", "2", "lock:A1", "access:request", { "uuid": "other", "device": "tag1" }]))
        .await;
    assert_eq!(wrong[4]["response"], json!({ "reason": "wrong lock" }));
    let unknown = c.one(json!(["1", "3", "lock:A1", "dance", {}])).await;
    assert_eq!(unknown[4]["response"], json!({ "reason": "unknown event" }));
    let binary_only = c.one(json!(["1", "4", "lock:A1", "report", "text"])).await;
    assert_eq!(status(&binary_only), "error");
}

// ---- events ----

#[tokio::test]
async fn events_is_read_only() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "admin-ui");
    let joined = c.one(json!(["1", "1", "events", "phx_join", {}])).await;
    assert_eq!(joined, reply(json!("1"), "1", "events", "ok", json!({})));
    let push = c.one(json!(["1", "2", "events", "event", {}])).await;
    let reason = json!({ "reason": "unknown event" });
    assert_eq!(push, reply(json!("1"), "2", "events", "error", reason));
    let bad = c
        .one(json!(["3", "3", "events:bad serial", "phx_join", {}]))
        .await;
    assert_eq!(bad[4]["response"], json!({ "reason": "invalid serial" }));
}

// ---- relay ----

#[tokio::test]
async fn relay_devices_find_each_other_and_exchange_packets() {
    let hub = TestHub::new().await;
    let mut a = Client::new(&hub, "alpha");
    let mut b = Client::new(&hub, "beta");
    a.one(json!(["1", "1", "relay", "phx_join", { "description": "a" }]))
        .await;
    b.one(json!(["7", "7", "relay", "phx_join", {}])).await;
    let devices = a.one(json!(["1", "2", "relay", "get_devices", {}])).await;
    assert_eq!(
        devices[4]["response"],
        json!({ "devices": ["alpha", "beta"] })
    );
    let info = b
        .one(json!(["7", "8", "relay", "get_device_info", { "device_name": "ALPHA" }]))
        .await;
    assert_eq!(info[4]["response"]["name"], "alpha");
    assert_eq!(info[4]["response"]["description"], "a");
    let sent = a
        .one(json!(["1", "3", "relay", "send", { "target": "beta", "payload": { "x": 1 } }]))
        .await;
    assert_eq!(sent, reply(json!("1"), "3", "relay", "ok", json!({})));
    assert_eq!(
        b.queued(),
        [json!(["7", null, "relay", "packet", { "sender": "alpha", "payload": { "x": 1 } }])]
    );
    // Leaving the relay takes the device off it.
    b.send(json!(["7", "9", "relay", "phx_leave", {}])).await;
    let gone = a
        .one(json!(["1", "4", "relay", "send", { "target": "beta", "payload": 1 }]))
        .await;
    assert_eq!(status(&gone), "error");
    assert_eq!(hub.registry.relay.names(), ["alpha"]);
}

#[tokio::test]
async fn relay_register_only_for_oneself_and_unregister() {
    let hub = TestHub::new().await;
    let mut a = Client::new(&hub, "alpha");
    a.one(json!(["1", "1", "relay", "phx_join", {}])).await;
    let other = a
        .one(json!(["1", "2", "relay", "register", { "device_name": "gamma" }]))
        .await;
    assert_eq!(
        other[4]["response"],
        json!({ "reason": "a device may only register itself" })
    );
    let off = a.one(json!(["1", "3", "relay", "unregister", {}])).await;
    assert_eq!(status(&off), "ok");
    assert!(hub.registry.relay.names().is_empty());
    let send = a
        .one(json!(["1", "4", "relay", "send", { "target": "alpha", "payload": 1 }]))
        .await;
    assert_eq!(send[4]["response"], json!({ "reason": "not registered" }));
    let back = a.one(json!(["1", "5", "relay", "register", {}])).await;
    assert_eq!(status(&back), "ok");
    assert_eq!(hub.registry.relay.names(), ["alpha"]);
}

#[tokio::test]
async fn a_relay_name_taken_over_by_force_ends_the_old_channel() {
    let hub = TestHub::new().await;
    let mut old = Client::new(&hub, "alpha");
    old.one(json!(["1", "1", "relay", "phx_join", {}])).await;
    // Another socket of the same name replaces the first (the device reconnected).
    let mut new = Client::new(&hub, "alpha");
    let refused = new.one(json!(["2", "2", "relay", "phx_join", {}])).await;
    assert_eq!(refused[4]["response"], json!({ "reason": "name taken" }));
    let taken = new
        .one(json!(["3", "3", "relay", "phx_join", { "force": true }]))
        .await;
    assert_eq!(status(&taken), "ok");
    assert_eq!(old.queued(), [json!(["1", "1", "relay", "phx_close", {}])]);
}

// ---- presence:devices ----

#[tokio::test]
async fn presence_pushes_its_state_after_the_join_then_diffs() {
    let hub = TestHub::new().await;
    let mut watcher = Client::new(&hub, "watcher");
    let answers = watcher
        .send(json!(["1", "1", "presence:devices", "phx_join", {}]))
        .await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(
        answers[0],
        reply(json!("1"), "1", "presence:devices", "ok", json!({}))
    );
    let state = &answers[1];
    assert_eq!(
        state.as_array().expect("a frame")[..4],
        [
            json!("1"),
            Value::Null,
            json!("presence:devices"),
            json!("presence_state")
        ]
    );
    assert_eq!(state[4]["watcher"]["metas"][0]["door"], "phoenix");
    // A device that comes online and joins a lock shows up as diffs.
    let mut lock = Client::new(&hub, "frontdoor");
    lock.one(json!(["1", "1", "lock:A1", "phx_join", {}])).await;
    let diffs = watcher.queued();
    assert!(!diffs.is_empty());
    assert!(diffs.iter().all(|d| d[3] == "presence_diff"), "{diffs:?}");
    let last = diffs.last().expect("a diff");
    assert_eq!(
        last[4]["joins"]["frontdoor"]["metas"][0]["locks"],
        json!(["A1"])
    );
    // It goes offline: a diff with the leave.
    drop(lock);
    let gone = watcher.queued();
    assert!(
        gone.iter()
            .any(|d| d[4]["leaves"].get("frontdoor").is_some()),
        "{gone:?}"
    );
    let push = watcher
        .one(json!(["1", "2", "presence:devices", "x", {}]))
        .await;
    assert_eq!(status(&push), "error");
}
