//! `lock:<serial>`: join, reset, pairing, access, events, reports, hub pushes.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{TestClient, TestHub, reply_of};

async fn joined(hub: &TestHub, name: &str, serial: &str) -> (TestClient, Value) {
    let mut c = hub.client(name).await;
    let r = c.join(&format!("lock:{serial}"), "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let resp = reply_of(&r).1.clone();
    (c, resp)
}

#[tokio::test]
async fn first_join_creates_the_lock_with_defaults() {
    let hub = TestHub::start().await;
    let (_c, resp) = joined(&hub, "frontdoor-pi", "SN-1").await;
    let uuid = resp["uuid"].as_str().expect("uuid").to_owned();
    assert!(uuid::Uuid::parse_str(&uuid).is_ok());
    assert_eq!(
        resp,
        json!({"uuid": uuid, "serial": "SN-1", "name": "SN-1", "mode": 1,
               "feature_flags": ["lock"], "config": {}, "state": {"locked": true}})
    );
    let (status, lock) = hub.admin(Method::GET, "/api/locks/SN-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(lock["holder_device"], "frontdoor-pi");
    assert_eq!(lock["online"], true);
    assert!(lock["last_seen_at"].is_string());
}

#[tokio::test]
async fn invalid_serial_is_refused() {
    let hub = TestHub::start().await;
    let mut c = hub.client("d").await;
    let r = c.join("lock:bad serial!", "1", json!({})).await;
    assert_eq!(
        r,
        json!(["1", "1", "lock:bad serial!", "phx_reply", {"status": "error", "response": {"reason": "invalid serial"}}])
    );
    let r = c
        .join(&format!("lock:{}", "s".repeat(65)), "2", json!({}))
        .await;
    assert_eq!(r[4]["response"]["reason"], "invalid serial");
}

#[tokio::test]
async fn uuid_is_stable_across_restart_and_distinct_per_serial() {
    let hub = TestHub::start().await;
    let (c, a) = joined(&hub, "dev", "AAA").await;
    let (_c2, b) = joined(&hub, "dev2", "BBB").await;
    assert_ne!(a["uuid"], b["uuid"]);
    drop(c);
    let hub = hub.restart().await;
    let (_c, again) = joined(&hub, "dev", "AAA").await;
    assert_eq!(again["uuid"], a["uuid"]);
}

#[tokio::test]
async fn reset_replies_with_fresh_state_and_unknown_event_keeps_channel() {
    let hub = TestHub::start().await;
    let mut c = hub.client("r1").await;
    let r = c.join("lock:RST", "1", json!({"accepts": ["state"]})).await;
    let joined_resp = reply_of(&r).1.clone();
    let r = c.push("1", "2", "lock:RST", "reset", json!({})).await;
    assert_eq!(reply_of(&r), ("ok", &joined_resp));
    let r = c.push("1", "3", "lock:RST", "bogus", json!({})).await;
    assert_eq!(
        r,
        json!(["1", "3", "lock:RST", "phx_reply", {"status": "error", "response": {"reason": "unknown event"}}])
    );
    let (status, _) = hub
        .admin(
            Method::PUT,
            "/api/locks/RST/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200);
    let push = c.recv_event("state").await;
    assert_eq!(
        push,
        json!(["1", null, "lock:RST", "state", {"locked": false}])
    );
    let r = c.push("1", "4", "lock:RST", "reset", json!({})).await;
    assert_eq!(reply_of(&r).1["state"], json!({"locked": false}));
}

#[tokio::test]
async fn binary_payload_to_lock_is_refused_with_error_reply() {
    let hub = TestHub::start().await;
    let (mut c, _) = joined(&hub, "bin", "BIN").await;
    // kind 0, join_ref "1", ref "2", topic "lock:BIN", event "report"
    let mut frame = vec![0u8, 1, 1, 8, 6];
    frame.extend_from_slice(b"12lock:BINreport\x01\x02");
    c.send_raw(Message::Binary(frame.into())).await;
    let r = c.recv_reply("2").await;
    assert_eq!(reply_of(&r).0, "error");
}

async fn start_pairing(hub: &TestHub, serial: &str, body: Value) -> Value {
    let (status, req) = hub
        .admin(
            Method::POST,
            &format!("/api/locks/{serial}/pair"),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{req}");
    req
}

#[tokio::test]
async fn pairing_round_trip_then_access() {
    let hub = TestHub::start().await;
    let (mut lock, pr1) = joined(&hub, "lockpi", "PR1").await;
    let mut watcher = hub.client("admin-view").await;
    watcher.join("events:PR1", "1", json!({})).await;

    let req = start_pairing(
        &hub,
        "PR1",
        json!({"name": "Anna's tag", "type": "tag", "ttl_secs": 60}),
    )
    .await;
    let push = lock.recv_event("mode:pair").await;
    assert_eq!(
        (&push[0], &push[1]),
        (&json!("1"), &Value::Null),
        "a push carries the join_ref"
    );
    let sent = push[4].clone();
    assert_eq!(sent["pair_id"], req["pair_id"]);
    assert_eq!(sent["expires_at"], req["expires_at"]);
    assert_eq!(
        sent,
        json!({"pair_id": req["pair_id"], "lock": "PR1", "name": "Anna's tag", "type": "tag", "expires_at": req["expires_at"]})
    );

    let mut complete = sent.clone();
    complete["serial"] = json!("TAG-0042");
    complete["extra"] = json!("ignored");
    let r = lock
        .push("1", "5", "lock:PR1", "pair:complete", complete.clone())
        .await;
    assert_eq!(reply_of(&r), ("ok", &json!({})));
    let seen = watcher.recv_event("pair:complete").await;
    assert_eq!(seen[4]["serial"], "TAG-0042");
    assert_eq!(seen[4]["pair_id"], req["pair_id"]);
    assert!(seen[4].get("extra").is_none());

    // The same request cannot complete twice.
    let r = lock
        .push("1", "6", "lock:PR1", "pair:complete", complete)
        .await;
    assert_eq!(reply_of(&r).0, "error");

    let (_, pairings) = hub.admin(Method::GET, "/api/pairings", None).await;
    let items = pairings["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["serial"], "TAG-0042");
    assert_eq!(items[0]["lock"], "PR1");
    assert!(pairings["requests"][0]["completed_at"].is_string());

    let r = lock
        .push(
            "1",
            "7",
            "lock:PR1",
            "access:request",
            json!({"uuid": pr1["uuid"], "device": "TAG-0042"}),
        )
        .await;
    assert_eq!(
        reply_of(&r),
        ("ok", &json!({"access": true, "user": "Anna's tag"}))
    );
    let r = lock
        .push(
            "1",
            "8",
            "lock:PR1",
            "access:request",
            json!({"uuid": pr1["uuid"], "device": "TAG-9999"}),
        )
        .await;
    assert_eq!(
        reply_of(&r),
        ("ok", &json!({"access": false, "user": null}))
    );
    // Paired with PR1 only: another lock refuses it.
    let (mut other, pr2) = joined(&hub, "otherpi", "PR2").await;
    let r = other
        .push(
            "1",
            "2",
            "lock:PR2",
            "access:request",
            json!({"uuid": pr2["uuid"], "device": "TAG-0042"}),
        )
        .await;
    assert_eq!(
        reply_of(&r),
        ("ok", &json!({"access": false, "user": null}))
    );
    // And it can never ask on PR1's behalf.
    let r = other
        .push(
            "1",
            "2b",
            "lock:PR2",
            "access:request",
            json!({"uuid": pr1["uuid"], "device": "TAG-0042"}),
        )
        .await;
    assert_eq!(reply_of(&r), ("error", &json!({"reason": "wrong lock"})));
    let r = other
        .push(
            "1",
            "3",
            "lock:PR2",
            "access:request",
            json!({"device": "nfc"}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "error");
}

#[tokio::test]
async fn tampered_or_unknown_pairings_are_refused() {
    let hub = TestHub::start().await;
    let (mut lock, _) = joined(&hub, "lockpi2", "PT1").await;
    start_pairing(
        &hub,
        "PT1",
        json!({"name": "phone", "type": "mobile_phone"}),
    )
    .await;
    let sent = lock.recv_event("mode:pair").await[4].clone();
    let cases = [
        ("name", json!("evil")),
        ("lock", json!("OTHER")),
        ("type", json!("tag")),
        ("expires_at", json!("2999-01-01T00:00:00.000Z")),
        ("pair_id", json!("00000000-0000-0000-0000-000000000000")),
    ];
    for (i, (key, value)) in cases.iter().enumerate() {
        let mut body = sent.clone();
        body["serial"] = json!("PHONE-1");
        body[*key] = value.clone();
        let r = lock
            .push("1", &format!("t{i}"), "lock:PT1", "pair:complete", body)
            .await;
        assert_eq!(reply_of(&r).0, "error", "altered {key}");
        assert!(reply_of(&r).1["reason"].is_string());
    }
    let mut missing = sent.clone();
    missing.as_object_mut().unwrap().remove("name");
    missing["serial"] = json!("PHONE-1");
    let r = lock
        .push("1", "m1", "lock:PT1", "pair:complete", missing)
        .await;
    assert_eq!(reply_of(&r).0, "error");
    let r = lock
        .push("1", "m2", "lock:PT1", "pair:complete", sent.clone())
        .await;
    assert_eq!(reply_of(&r).1["reason"], "missing serial");
    let r = lock
        .push("1", "m3", "lock:PT1", "pair:complete", json!("nope"))
        .await;
    assert_eq!(reply_of(&r).0, "error");
    // Another lock cannot complete this lock's request.
    let (mut other, _) = joined(&hub, "intruder", "PT2").await;
    let mut body = sent.clone();
    body["serial"] = json!("PHONE-1");
    let r = other
        .push("1", "x", "lock:PT2", "pair:complete", body.clone())
        .await;
    assert_eq!(reply_of(&r).0, "error");
    // Nothing was paired; the genuine completion still works.
    let (_, pairings) = hub.admin(Method::GET, "/api/pairings", None).await;
    assert_eq!(pairings["items"], json!([]));
    let r = lock
        .push("1", "ok", "lock:PT1", "pair:complete", body)
        .await;
    assert_eq!(reply_of(&r).0, "ok");
}

#[tokio::test]
async fn expired_pairing_is_refused() {
    let hub = TestHub::start().await;
    let (mut lock, _) = joined(&hub, "lockpi3", "PE1").await;
    start_pairing(&hub, "PE1", json!({"ttl_secs": 1})).await;
    let mut body = lock.recv_event("mode:pair").await[4].clone();
    body["serial"] = json!("TAG-1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = lock.push("1", "2", "lock:PE1", "pair:complete", body).await;
    assert_eq!(
        reply_of(&r),
        ("error", &json!({"reason": "pairing request expired"}))
    );
}

#[tokio::test]
async fn events_are_stored_and_broadcast_to_watchers() {
    let hub = TestHub::start().await;
    let (mut lock, _) = joined(&hub, "ev-lock", "EV1").await;
    let mut all = hub.client("watch-all").await;
    all.join("events", "1", json!({})).await;
    let mut one = hub.client("watch-one").await;
    one.join("events:EV1", "1", json!({})).await;
    let mut other = hub.client("watch-other").await;
    other.join("events:EV2", "1", json!({})).await;

    let r = lock
        .push(
            "1",
            "2",
            "lock:EV1",
            "event",
            json!({"kind": "opened", "by": "TAG-1"}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    let expected = json!({"from": "ev-lock", "message": {"kind": "opened", "by": "TAG-1"}});
    assert_eq!(
        all.recv_event("event").await,
        json!([null, null, "events", "event", expected])
    );
    assert_eq!(
        one.recv_event("event").await,
        json!([null, null, "events:EV1", "event", expected])
    );
    other.expect_silence(150).await;

    let n = hub
        .rows("select cast(count(*) as text) from lock_events where lock_serial = 'EV1'")
        .await;
    assert_eq!(n, [[Some("1".to_owned())]]);
}

#[tokio::test]
async fn report_is_stored_as_reported_state() {
    let hub = TestHub::start().await;
    let (mut lock, _) = joined(&hub, "rp-lock", "RP1").await;
    let r = lock
        .push(
            "1",
            "2",
            "lock:RP1",
            "report",
            json!({"locked": false, "battery": 87}),
        )
        .await;
    assert_eq!(reply_of(&r), ("ok", &json!({})));
    let (_, l) = hub.admin(Method::GET, "/api/locks/RP1", None).await;
    assert_eq!(l["reported_state"], json!({"locked": false, "battery": 87}));
    assert!(l["reported_at"].is_string());
    let r = lock
        .push("1", "3", "lock:RP1", "report", json!([1, 2]))
        .await;
    assert_eq!(reply_of(&r).0, "error");
}
