//! Acknowledged writes survive `kill -9` of the hub, on the store under test (the suite
//! runs on SQLite and again on PostgreSQL): what a client was told is stored is there
//! when the hub comes back.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::common::{HubProcess, TestClient, reply_of};

async fn admin(hub_addr: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("http://{hub_addr}{path}"))
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn client(addr: &str, name: &str) -> TestClient {
    TestClient::connect(&format!(
        "ws://{addr}/socket/websocket?vsn=2.0.0&name={name}"
    ))
    .await
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    // The admin calls' HTTP client needs the crypto provider an in-process hub installs.
    homehub::net::listener::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::support::database_in(dir.path()).await;
    let url = db.clone();
    let hub = tokio::task::spawn_blocking(move || HubProcess::start_on(dir, &url))
        .await
        .expect("hub process");

    // Forty new locks join at once (their writes share group commits); each reply is the
    // acknowledgement that its UUID is stored.
    let mut locks = Vec::new();
    for i in 0..40 {
        let mut c = client(&hub.addr, &format!("pi-{i}")).await;
        c.send(json!(["1", "1", format!("lock:KILL-{i}"), "phx_join", {}]))
            .await;
        locks.push(c);
    }
    let mut uuids = HashMap::new();
    for (i, c) in locks.iter_mut().enumerate() {
        let r = c.recv_reply("1").await;
        assert_eq!(reply_of(&r).0, "ok", "{r}");
        uuids.insert(i, reply_of(&r).1["uuid"].as_str().expect("uuid").to_owned());
    }
    let (status, _) = admin(
        &hub.addr,
        reqwest::Method::PUT,
        "/api/locks/KILL-0/state",
        json!({"locked": false}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, pairing) = admin(
        &hub.addr,
        reqwest::Method::POST,
        "/api/locks/KILL-1/pair",
        json!({"name": "Alice", "type": "tag"}),
    )
    .await;
    assert_eq!(status, 201, "{pairing}");

    let dir = tokio::task::spawn_blocking(move || hub.kill_9())
        .await
        .expect("kill -9");
    drop(locks);
    let hub = tokio::task::spawn_blocking(move || HubProcess::start_on(dir, &db))
        .await
        .expect("hub process again");

    for (i, uuid) in &uuids {
        let mut c = client(&hub.addr, &format!("pi-{i}")).await;
        let r = c.join(&format!("lock:KILL-{i}"), "1", json!({})).await;
        assert_eq!(reply_of(&r).1["uuid"], uuid.as_str(), "lock {i}: {r}");
        if *i == 0 {
            assert_eq!(reply_of(&r).1["state"], json!({"locked": false}));
        }
    }
    let (status, pairings) = admin(
        &hub.addr,
        reqwest::Method::GET,
        "/api/pairings",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        pairings["requests"][0]["pair_id"], pairing["pair_id"],
        "{pairings}"
    );
}
