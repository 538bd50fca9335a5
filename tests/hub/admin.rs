//! The admin API: token, routes, pushes, and the CLI against a running hub.

use reqwest::Method;
use serde_json::json;

use crate::common::{TestHub, reply_of};

#[tokio::test]
async fn token_is_required() {
    let hub = TestHub::start().await;
    let client = reqwest::Client::new();
    let resp = client.get(hub.http("/api/locks")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .get(hub.http("/api/locks"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].is_string());
    let (status, locks) = hub.admin(Method::GET, "/api/locks", None).await;
    assert_eq!((status, locks), (200, json!([])));
}

#[tokio::test]
async fn without_a_token_loopback_is_allowed() {
    let hub = TestHub::start_with(|c| c.admin_token = None).await;
    let resp = reqwest::get(hub.http("/api/locks")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn routes_answer_with_json_errors() {
    let hub = TestHub::start().await;
    let (s, b) = hub.admin(Method::GET, "/api/locks/NOPE", None).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("lock not found")));
    let (s, _) = hub
        .admin(
            Method::PUT,
            "/api/locks/NOPE/state",
            Some(json!({"locked": true})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = hub
        .admin(Method::POST, "/api/locks/NOPE/pair", Some(json!({})))
        .await;
    assert_eq!(s, 404);
    let mut c = hub.client("d").await;
    c.join("lock:L1", "1", json!({})).await;
    let (s, _) = hub
        .admin(Method::PUT, "/api/locks/L1/state", Some(json!([1])))
        .await;
    assert_eq!(s, 400);
    let (s, _) = hub
        .admin(
            Method::POST,
            "/api/locks/L1/pair",
            Some(json!({"type": "car"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = hub
        .admin(
            Method::POST,
            "/api/locks/L1/pair",
            Some(json!({"ttl_secs": 0})),
        )
        .await;
    assert_eq!(s, 400);
    let resp = reqwest::Client::new()
        .put(hub.http("/api/locks/L1/state"))
        .bearer_auth(crate::common::TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Nothing was changed by the bad requests.
    let r = c.push("1", "2", "lock:L1", "reset", json!({})).await;
    assert_eq!(reply_of(&r).1["state"], json!({"locked": true}));
}

#[tokio::test]
async fn lists_locks_pairings_and_devices() {
    let hub = TestHub::start().await;
    let mut c = hub.client("hall-pi").await;
    c.join("lock:H1", "1", json!({})).await;
    c.join("events", "2", json!({})).await;
    let (_, locks) = hub.admin(Method::GET, "/api/locks", None).await;
    assert_eq!(locks[0]["serial"], "H1");
    assert_eq!(locks[0]["online"], true);
    let (s, req) = hub
        .admin(Method::POST, "/api/locks/H1/pair", Some(json!({})))
        .await;
    assert_eq!(s, 201);
    assert_eq!(req["type"], "tag");
    assert_eq!(req["delivered"], true);
    let (_, pairings) = hub.admin(Method::GET, "/api/pairings", None).await;
    assert_eq!(pairings["requests"][0]["pair_id"], req["pair_id"]);
    let (_, devices) = hub.admin(Method::GET, "/api/devices", None).await;
    let d = &devices["devices"][0];
    assert_eq!(d["name"], "hall-pi");
    assert_eq!(d["door"], "phoenix");
    assert_eq!(d["topics"], json!(["events", "lock:H1"]));
    drop(c);
    // The device disappears once its socket is gone.
    crate::common::eventually(
        "the device is no longer listed after disconnect",
        || async {
            let (_, devices) = hub.admin(Method::GET, "/api/devices", None).await;
            (devices["devices"] == json!([])).then_some(())
        },
    )
    .await;
    let (_, locks) = hub.admin(Method::GET, "/api/locks", None).await;
    assert_eq!(locks[0]["online"], false);
}

#[tokio::test]
async fn cli_wraps_the_api() {
    let hub = TestHub::start().await;
    let mut c = hub.client("cli-lock").await;
    c.join("lock:C1", "1", json!({"accepts": ["state"]})).await;
    let run = hub.cli_runner();
    let (code, out) = tokio::task::spawn_blocking(move || {
        let a = run(&["locks"]);
        let b = run(&["lock", "set-state", "C1", r#"{"locked":false}"#]);
        let c = run(&["pair", "C1", "--name", "blue tag", "--ttl", "30"]);
        let d = run(&["lock", "show", "NOPE"]);
        let e = run(&["devices"]);
        let f = run(&["pairings"]);
        (
            vec![a.0, b.0, c.0, d.0, e.0, f.0],
            vec![a.1, b.1, c.1, e.1, f.1],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        code,
        vec![Some(0), Some(0), Some(0), Some(1), Some(0), Some(0)]
    );
    let locks: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(locks[0]["serial"], "C1");
    let pair: serde_json::Value = serde_json::from_str(&out[2]).unwrap();
    assert_eq!(pair["name"], "blue tag");
    assert!(out[3].contains("cli-lock"));
    assert_eq!(c.recv_event("state").await[4], json!({"locked": false}));
    assert_eq!(c.recv_event("mode:pair").await[4]["name"], "blue tag");
}

#[tokio::test]
async fn metrics_are_exposed_behind_admin_auth() {
    let hub = TestHub::start().await;
    let mut c = hub.client("metered").await;
    c.join("lock:M1", "1", json!({})).await;
    // A second join of the now known lock is answered from the store's copy.
    let mut again = hub.client("metered-2").await;
    again.join("lock:M1", "1", json!({})).await;
    let resp = reqwest::get(hub.http("/metrics")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let text = reqwest::Client::new()
        .get(hub.http("/metrics"))
        .bearer_auth(crate::common::TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("homehub_connections 2\n"), "{text}");
    assert!(text.contains("homehub_joins_total 2\n"), "{text}");
    assert!(
        text.contains("homehub_lock_joins_known_total 1\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE homehub_frames_in_total counter"));
}
