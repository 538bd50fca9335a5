//! Administering locks: pairing requests that wait for an offline lock, cancelling them,
//! and changing a lock's record (`PATCH /api/locks/{serial}`, `homehub lock set`).

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestClient, TestHub, reply_of};

async fn join_lock(hub: &TestHub, name: &str, serial: &str) -> (TestClient, Value) {
    let mut c = hub.client(name).await;
    let r = c.join(&format!("lock:{serial}"), "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    (c, r)
}

async fn pairing_request(hub: &TestHub, pair_id: &str) -> Value {
    let (status, all) = hub.admin(Method::GET, "/api/pairings", None).await;
    assert_eq!(status, 200);
    all["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| r["pair_id"] == pair_id)
        .cloned()
        .expect("the request is listed")
}

#[tokio::test]
async fn a_pairing_request_waits_for_an_offline_lock() {
    let hub = TestHub::start().await;
    let (lock, _) = join_lock(&hub, "pi-door", "PO-1").await;
    lock.hang_up().await;

    let (status, req) = hub
        .admin(
            Method::POST,
            "/api/locks/PO-1/pair",
            Some(json!({"name": "Cleaner's tag", "ttl_secs": 120})),
        )
        .await;
    assert_eq!(status, 201, "{req}");
    assert_eq!(req["delivered"], false);
    let pair_id = req["pair_id"].as_str().expect("pair_id").to_owned();
    let listed = pairing_request(&hub, &pair_id).await;
    assert_eq!(
        (&listed["delivered_at"], &listed["deliveries"]),
        (&Value::Null, &json!(0))
    );

    // The lock comes back: mode:pair follows the join reply, with its join_ref.
    let mut lock = hub.client("pi-door").await;
    lock.send(json!(["7", "7", "lock:PO-1", "phx_join", {}]))
        .await;
    let reply = lock.recv().await;
    assert_eq!((&reply[1], &reply[3]), (&json!("7"), &json!("phx_reply")));
    let push = lock.recv().await;
    assert_eq!(
        push,
        json!(["7", null, "lock:PO-1", "mode:pair", {
            "pair_id": pair_id, "lock": "PO-1", "name": "Cleaner's tag", "type": "tag",
            "expires_at": req["expires_at"]}])
    );
    let listed = pairing_request(&hub, &pair_id).await;
    assert!(listed["delivered_at"].is_string(), "{listed}");
    assert_eq!(listed["deliveries"], 1);

    // Once per join, until it completes.
    let r = lock.join("lock:PO-1", "8", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let again = lock.recv_event("mode:pair").await;
    assert_eq!(again[4]["pair_id"], pair_id);
    let mut done = again[4].clone();
    done["serial"] = json!("TAG-77");
    let r = lock
        .push("8", "9", "lock:PO-1", "pair:complete", done)
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    let r = lock.join("lock:PO-1", "10", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    // The rejoin ends the old instance (phx_close), and nothing else follows.
    assert_eq!(lock.recv().await[3], "phx_close");
    lock.expect_silence(200).await;
    assert_eq!(pairing_request(&hub, &pair_id).await["deliveries"], 2);
}

#[tokio::test]
async fn a_waiting_pairing_request_survives_a_restart() {
    let hub = TestHub::start().await;
    let (lock, _) = join_lock(&hub, "pi-back", "PO-2").await;
    lock.hang_up().await;
    let (status, req) = hub
        .admin(Method::POST, "/api/locks/PO-2/pair", Some(json!({})))
        .await;
    assert_eq!(status, 201);
    let hub = hub.restart().await;
    let (mut lock, _) = join_lock(&hub, "pi-back", "PO-2").await;
    let push = lock.recv_event("mode:pair").await;
    assert_eq!(push[4]["pair_id"], req["pair_id"]);
}

#[tokio::test]
async fn a_cancelled_pairing_request_is_not_pushed_and_cannot_complete() {
    let hub = TestHub::start().await;
    let (mut lock, _) = join_lock(&hub, "pi-c", "PO-3").await;
    let (_, req) = hub
        .admin(Method::POST, "/api/locks/PO-3/pair", Some(json!({})))
        .await;
    assert_eq!(req["delivered"], true);
    let pair_id = req["pair_id"].as_str().expect("pair_id").to_owned();
    let mut done = lock.recv_event("mode:pair").await[4].clone();

    let path = format!("/api/pairings/{pair_id}");
    let (status, cancelled) = hub.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert!(cancelled["cancelled_at"].is_string());
    let (status, again) = hub.admin(Method::DELETE, &path, None).await;
    assert_eq!(
        (status, &again["error"]),
        (
            409,
            &json!("pairing request already completed or cancelled")
        )
    );
    let (status, _) = hub
        .admin(Method::DELETE, "/api/pairings/no-such-request", None)
        .await;
    assert_eq!(status, 404);

    done["serial"] = json!("TAG-X");
    let r = lock
        .push("1", "2", "lock:PO-3", "pair:complete", done)
        .await;
    assert_eq!(
        reply_of(&r),
        ("error", &json!({"reason": "pairing request cancelled"}))
    );
    let r = lock.join("lock:PO-3", "3", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    assert_eq!(lock.recv().await[3], "phx_close");
    lock.expect_silence(200).await;
}

#[tokio::test]
async fn a_locks_record_is_changed_through_the_api() {
    let hub = TestHub::start().await;
    let (mut lock, _) = join_lock(&hub, "pi-rec", "PL-1").await;
    let (status, body) = hub
        .admin(
            Method::PATCH,
            "/api/locks/PL-1",
            Some(
                json!({"name": "Back door", "mode": 2, "feature_flags": ["lock", "nfc"],
                        "config": {"beep": false}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Back door");
    assert_eq!(body["takes_effect"], "next join or reset");
    // The lock reads its record in the reset (and next join) reply.
    let r = lock.push("1", "2", "lock:PL-1", "reset", json!({})).await;
    let rec = reply_of(&r).1;
    assert_eq!(
        (
            &rec["name"],
            &rec["mode"],
            &rec["feature_flags"],
            &rec["config"]
        ),
        (
            &json!("Back door"),
            &json!(2),
            &json!(["lock", "nfc"]),
            &json!({"beep": false})
        )
    );
    // Only the given fields change.
    let (status, body) = hub
        .admin(Method::PATCH, "/api/locks/PL-1", Some(json!({"mode": 1})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["mode"], &body["name"]),
        (&json!(1), &json!("Back door"))
    );
}

#[tokio::test]
async fn bad_lock_changes_are_refused_with_a_clear_message() {
    let hub = TestHub::start().await;
    let (_lock, _) = join_lock(&hub, "pi-bad", "PL-2").await;
    let cases = [
        (json!({"colour": "red"}), "unknown field"),
        (json!({"mode": "2"}), "invalid type"),
        (json!({"mode": 4}), "mode must be"),
        (json!({"mode": 0}), "mode must be"),
        (json!({"feature_flags": "lock"}), "invalid type"),
        (json!({"feature_flags": [1]}), "invalid type"),
        (json!({"config": [1]}), "invalid type"),
        (json!({"name": ""}), "name must be"),
        (json!({}), "nothing to change"),
    ];
    for (body, says) in cases {
        let (status, answer) = hub
            .admin(Method::PATCH, "/api/locks/PL-2", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} -> {answer}");
        let msg = answer["error"].as_str().expect("error message");
        assert!(msg.contains(says), "{body}: {msg:?} should say {says:?}");
    }
    let resp = reqwest::Client::new()
        .patch(hub.http("/api/locks/PL-2"))
        .bearer_auth(crate::common::TOKEN)
        .body("{not json")
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status().as_u16(), 400);
    let (status, _) = hub
        .admin(Method::PATCH, "/api/locks/NOPE", Some(json!({"mode": 2})))
        .await;
    assert_eq!(status, 404);
    // Nothing changed.
    let (_, lock) = hub.admin(Method::GET, "/api/locks/PL-2", None).await;
    assert_eq!((&lock["mode"], &lock["name"]), (&json!(1), &json!("PL-2")));
}

#[tokio::test]
async fn the_cli_sets_a_lock_and_cancels_a_pairing() {
    let hub = TestHub::start().await;
    let (lock, _) = join_lock(&hub, "pi-cli", "PL-3").await;
    lock.hang_up().await;
    let run = hub.cli_runner();
    let (code, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            run(&[
                "lock", "set", "PL-3", "--name", "Shed", "--flags", "lock,ble", "--mode", "2",
            ])
        }
    })
    .await
    .expect("cli");
    assert_eq!(code, Some(0), "{out}");
    let (_, rec) = hub.admin(Method::GET, "/api/locks/PL-3", None).await;
    assert_eq!(
        (&rec["name"], &rec["mode"], &rec["feature_flags"]),
        (&json!("Shed"), &json!(2), &json!(["lock", "ble"]))
    );
    let (code, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["pair", "PL-3", "--name", "spare"])
    })
    .await
    .expect("cli");
    assert_eq!(code, Some(0), "{out}");
    let req: Value = serde_json::from_str(&out).expect("JSON");
    let pair_id = req["pair_id"].as_str().expect("pair_id").to_owned();
    let (code, out) = tokio::task::spawn_blocking(move || run(&["pair", "--cancel", &pair_id]))
        .await
        .expect("cli");
    assert_eq!(code, Some(0), "{out}");
    let cancelled: Value = serde_json::from_str(&out).expect("JSON");
    assert!(cancelled["cancelled_at"].is_string());
}
