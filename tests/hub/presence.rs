//! Presence on `presence:devices`: `presence_state` after the join, `presence_diff` as
//! devices connect, join locks or the relay, and disconnect; raw relay devices too.

use serde_json::{Map, Value, json};

use crate::common::{TestClient, TestHub, reply_of};

const TOPIC: &str = "presence:devices";

/// A heartbeat round trip: once it is answered, the hub has set up this socket (and
/// tracked its Presence).
async fn sync(c: &mut TestClient) {
    let r = c.push("hb", "hb", "phoenix", "heartbeat", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
}

/// Joins `presence:devices` with join_ref "p": checks the reply comes first, then a
/// `presence_state` push; returns the state.
async fn watch(c: &mut TestClient) -> Value {
    c.send(json!(["p", "p", TOPIC, "phx_join", {}])).await;
    assert_eq!(
        c.recv().await,
        json!(["p", "p", TOPIC, "phx_reply", {"status": "ok", "response": {}}])
    );
    let push = c.recv().await;
    assert_eq!(
        (&push[0], &push[1], &push[2], &push[3]),
        (
            &json!("p"),
            &Value::Null,
            &json!(TOPIC),
            &json!("presence_state")
        ),
        "{push}"
    );
    push[4].clone()
}

/// The next `presence_diff` (a broadcast: null join_ref and ref); returns its payload,
/// checked to hold exactly `joins` and `leaves`.
async fn next_diff(c: &mut TestClient) -> Value {
    let f = c.recv().await;
    assert_eq!(
        (&f[0], &f[1], &f[2], &f[3]),
        (
            &Value::Null,
            &Value::Null,
            &json!(TOPIC),
            &json!("presence_diff")
        ),
        "{f}"
    );
    let diff = f[4].clone();
    let keys: Vec<&String> = diff.as_object().expect("diff object").keys().collect();
    assert_eq!(keys.len(), 2, "{diff}");
    assert!(
        diff["joins"].is_object() && diff["leaves"].is_object(),
        "{diff}"
    );
    diff
}

/// The only meta of `key` in a presence map, checked for the expected shape.
fn only_meta(map: &Value, key: &str) -> Map<String, Value> {
    let metas = map[key]["metas"]
        .as_array()
        .unwrap_or_else(|| panic!("no metas for {key} in {map}"));
    assert_eq!(metas.len(), 1, "{map}");
    let meta = metas[0].as_object().expect("meta object").clone();
    assert!(meta["online_at"].is_i64(), "{map}");
    assert!(
        meta["phx_ref"].as_str().is_some_and(|r| !r.is_empty()),
        "{map}"
    );
    meta
}

/// Checks a meta's door, locks and relay flag, and that it has no other keys besides
/// `online_at`, `phx_ref` and (when `prev`) `phx_ref_prev`.
fn assert_meta(meta: &Map<String, Value>, door: &str, locks: Value, relay: bool, prev: bool) {
    assert_eq!(meta["door"], door, "{meta:?}");
    assert_eq!(meta["locks"], locks, "{meta:?}");
    assert_eq!(meta["relay"], relay, "{meta:?}");
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec!["door", "locks", "online_at", "phx_ref", "relay"];
    if prev {
        want.push("phx_ref_prev");
        want.sort();
    }
    assert_eq!(keys, want, "{meta:?}");
}

#[tokio::test]
async fn joining_gives_ok_then_presence_state_of_connected_devices() {
    let hub = TestHub::start().await;
    let mut dev = hub.client("frontdoor-pi").await;
    sync(&mut dev).await;
    let r = dev.join("lock:SN-1", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let r = dev.join("relay", "2", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let mut raw = hub.relay_ws().await;
    let r = raw
        .request(json!({"target": "server", "payload": {"device_name": "LED_Strip"}}))
        .await;
    assert_eq!(r, json!({"success": true}));
    // Compendium connections are anonymous: not listed.
    let mut comp = hub.compendium_ws().await;
    assert_eq!(
        comp.request(json!({"type": "INIT"})).await["type"],
        "INITRESP"
    );

    let mut watcher = hub.client("watcher").await;
    let state = watch(&mut watcher).await;
    let mut keys: Vec<&String> = state.as_object().expect("state object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["frontdoor-pi", "led_strip", "watcher"], "{state}");
    let front = only_meta(&state, "frontdoor-pi");
    assert_meta(&front, "phoenix", json!(["SN-1"]), true, false);
    let strip = only_meta(&state, "led_strip");
    assert_meta(&strip, "relay", json!([]), true, false);
    let me = only_meta(&state, "watcher");
    assert_meta(&me, "phoenix", json!([]), false, false);
    assert_ne!(front["phx_ref"], strip["phx_ref"]);
    assert_ne!(front["phx_ref"], me["phx_ref"]);
}

#[tokio::test]
async fn diffs_follow_a_device_through_connect_lock_relay_and_disconnect() {
    let hub = TestHub::start().await;
    let mut watcher = hub.client("watcher").await;
    watch(&mut watcher).await;

    // Connect: the device joins, nothing leaves.
    let mut dev = hub.client("newcomer").await;
    let diff = next_diff(&mut watcher).await;
    assert_eq!(diff["leaves"], json!({}), "{diff}");
    assert_eq!(diff["joins"].as_object().unwrap().len(), 1, "{diff}");
    let m0 = only_meta(&diff["joins"], "newcomer");
    assert_meta(&m0, "phoenix", json!([]), false, false);

    // Joining a lock: the key in both joins (new meta, phx_ref_prev = old ref) and
    // leaves (the old meta, unchanged).
    let r = dev.join("lock:SN-P", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let diff = next_diff(&mut watcher).await;
    assert_eq!(
        diff["leaves"],
        json!({"newcomer": {"metas": [Value::Object(m0.clone())]}}),
        "{diff}"
    );
    assert_eq!(diff["joins"].as_object().unwrap().len(), 1, "{diff}");
    let m1 = only_meta(&diff["joins"], "newcomer");
    assert_meta(&m1, "phoenix", json!(["SN-P"]), false, true);
    assert_eq!(m1["phx_ref_prev"], m0["phx_ref"]);
    assert_ne!(m1["phx_ref"], m0["phx_ref"]);
    assert_eq!(m1["online_at"], m0["online_at"]);

    // Joining the relay: relay true, locks kept.
    let r = dev.join("relay", "2", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let diff = next_diff(&mut watcher).await;
    let m2 = only_meta(&diff["joins"], "newcomer");
    assert_meta(&m2, "phoenix", json!(["SN-P"]), true, true);
    assert_eq!(m2["phx_ref_prev"], m1["phx_ref"]);
    let mut m1_plain = m1.clone();
    m1_plain.remove("phx_ref_prev");
    assert_eq!(
        diff["leaves"],
        json!({"newcomer": {"metas": [Value::Object(m1_plain)]}}),
        "{diff}"
    );

    // Leaving the lock: locks empty again.
    dev.send(json!(["1", "3", "lock:SN-P", "phx_leave", {}]))
        .await;
    let r = dev.recv_reply("3").await;
    assert_eq!(reply_of(&r).0, "ok");
    let diff = next_diff(&mut watcher).await;
    let m3 = only_meta(&diff["joins"], "newcomer");
    assert_meta(&m3, "phoenix", json!([]), true, true);
    assert_eq!(m3["phx_ref_prev"], m2["phx_ref"]);
    assert_eq!(
        only_meta(&diff["leaves"], "newcomer")["phx_ref"],
        m2["phx_ref"]
    );

    // Disconnect: the device leaves with its last meta.
    dev.hang_up().await;
    let diff = next_diff(&mut watcher).await;
    assert_eq!(diff["joins"], json!({}), "{diff}");
    let mut m3_plain = m3.clone();
    m3_plain.remove("phx_ref_prev");
    assert_eq!(
        diff["leaves"],
        json!({"newcomer": {"metas": [Value::Object(m3_plain)]}}),
        "{diff}"
    );
    watcher.expect_silence(100).await;
}

#[tokio::test]
async fn a_raw_relay_device_appears_with_door_relay_when_it_registers() {
    let hub = TestHub::start().await;
    let mut watcher = hub.client("watcher").await;
    watch(&mut watcher).await;

    // Connected but not registered: not present.
    let mut raw = hub.relay_ws().await;
    let r = raw
        .request(json!({"target": "server", "payload": {"command": "get_devices"}}))
        .await;
    assert_eq!(r["success"], true);
    watcher.expect_silence(100).await;

    let r = raw
        .request(json!({"target": "server",
                        "payload": {"command": "register", "device_name": "LED_Strip"}}))
        .await;
    assert_eq!(r, json!({"success": true}));
    let diff = next_diff(&mut watcher).await;
    assert_eq!(diff["leaves"], json!({}), "{diff}");
    let meta = only_meta(&diff["joins"], "led_strip");
    assert_meta(&meta, "relay", json!([]), true, false);

    raw.hang_up().await;
    let diff = next_diff(&mut watcher).await;
    assert_eq!(diff["joins"], json!({}), "{diff}");
    assert_eq!(
        diff["leaves"],
        json!({"led_strip": {"metas": [Value::Object(meta)]}}),
        "{diff}"
    );
}

#[tokio::test]
async fn compendium_connections_produce_no_presence() {
    let hub = TestHub::start().await;
    let mut watcher = hub.client("watcher").await;
    watch(&mut watcher).await;
    let mut comp = hub.compendium_ws().await;
    assert_eq!(
        comp.request(json!({"type": "INIT"})).await["type"],
        "INITRESP"
    );
    comp.hang_up().await;
    // The next diff is this device's: nothing came for the Compendium connection.
    let _marker = hub.client("marker").await;
    let diff = next_diff(&mut watcher).await;
    let keys: Vec<&String> = diff["joins"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["marker"], "{diff}");
    assert_eq!(diff["leaves"], json!({}));
}
