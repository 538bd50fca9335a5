//! Revoking a device token (issue 12, item 6): `DELETE /api/tokens/{id}` closes every
//! live connection admitted with that token, on every door (Phoenix WebSocket and
//! long-poll, raw relay, Compendium), and only those: the same device's connections
//! admitted with another token stay.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestClient, TestHub, reply_of};
use crate::security::{issue, status_of, token_hub};
use crate::support::eventually;

fn server(payload: Value) -> Value {
    json!({"target": "server", "payload": payload})
}

async fn phoenix(hub: &TestHub, name: &str, token: &str) -> TestClient {
    TestClient::connect(&hub.ws_url(&format!("vsn=2.0.0&name={name}&token={token}"))).await
}

async fn raw(hub: &TestHub, token: &str) -> TestClient {
    TestClient::connect(&format!("ws://{}/relay?token={token}", hub.addr)).await
}

async fn compendium(hub: &TestHub, token: &str) -> TestClient {
    TestClient::connect(&format!("ws://{}/compendium?token={token}", hub.addr)).await
}

/// `INIT` on a Compendium connection: its new address.
async fn init(c: &mut TestClient) -> String {
    let r = c.request(json!({"type": "INIT"})).await;
    assert_eq!(r["type"], "INITRESP", "{r}");
    r["EpheWssAddr"].as_str().expect("address").to_owned()
}

/// Revokes token `id` over the admin API.
async fn revoke(hub: &TestHub, id: &str) {
    let (status, body) = hub
        .admin(Method::DELETE, &format!("/api/tokens/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
}

/// How many live connections `/api/devices` shows with token `id`.
async fn admitted_with(hub: &TestHub, id: &str) -> usize {
    let (status, body) = hub.admin(Method::GET, "/api/devices", None).await;
    assert_eq!(status, 200, "{body}");
    body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["token_id"] == id)
        .count()
}

/// Waits until `c` is closed by the hub; its close code must be 1001.
async fn closed_going_away(c: &mut TestClient, what: &str) {
    let close = c
        .expect_close()
        .await
        .unwrap_or_else(|| panic!("{what}: no close frame"));
    assert_eq!(u16::from(close.code), 1001, "{what}");
}

#[tokio::test]
async fn revoking_a_token_closes_its_connections_on_every_websocket_door() {
    let hub = token_hub().await;
    let (t1, id1) = issue(&hub, "lamp", None).await;
    let (t2, id2) = issue(&hub, "lamp", None).await;
    let (t3, _) = issue(&hub, "porch", None).await;

    // Admitted with t1: a Phoenix socket, a raw relay device, two Compendium connections.
    let mut phx1 = phoenix(&hub, "lamp", &t1).await;
    let r = phx1.join("lock:LAMP-1", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let mut raw1 = raw(&hub, &t1).await;
    let r = raw1
        .request(server(
            json!({"command": "register", "device_name": "lamp"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}));
    let mut comp1 = compendium(&hub, &t1).await;
    init(&mut comp1).await;
    let mut comp1_idle = compendium(&hub, &t1).await;
    // Admitted with t2, the same device's other token: a raw device and a Compendium one.
    let mut raw2 = raw(&hub, &t2).await;
    let r = raw2
        .request(server(json!({"command": "get_devices"})))
        .await;
    assert_eq!(r, json!({"success": true, "response": ["lamp"]}));
    let mut comp2 = compendium(&hub, &t2).await;
    let addr2 = init(&mut comp2).await;
    // Another device.
    let mut porch = phoenix(&hub, "porch", &t3).await;
    let r = porch.join("lock:PORCH-1", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    // Each connection carries the id of the token it was admitted with.
    assert_eq!(admitted_with(&hub, &id1).await, 4);
    assert_eq!(admitted_with(&hub, &id2).await, 2);

    revoke(&hub, &id1).await;
    closed_going_away(&mut phx1, "Phoenix socket of t1").await;
    closed_going_away(&mut raw1, "raw relay device of t1").await;
    closed_going_away(&mut comp1, "Compendium connection of t1").await;
    closed_going_away(&mut comp1_idle, "idle Compendium connection of t1").await;

    // The other token's connections and the other device keep working.
    let r = raw2
        .request(server(
            json!({"command": "register", "device_name": "lamp"}),
        ))
        .await;
    assert_eq!(r, json!({"success": true}), "the name was freed");
    let r = raw2
        .request(json!({"target": "lamp", "payload": "self"}))
        .await;
    assert_eq!(r, json!({"success": true}));
    assert_eq!(
        raw2.recv().await,
        json!({"sender": "lamp", "payload": "self"})
    );
    comp2
        .send(json!({"type": "ROUTE", "EpheWssAddr": addr2, "msg": {"n": 1}}))
        .await;
    assert_eq!(
        comp2.recv().await,
        json!({"type": "DELIVER", "msg": {"n": 1}})
    );
    let r = porch
        .push("1", "2", "lock:PORCH-1", "reset", json!({}))
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    assert_eq!(admitted_with(&hub, &id2).await, 2);

    // t1 gets in nowhere any more; t2 still does.
    eventually("t1's connections are no longer listed", async || {
        (admitted_with(&hub, &id1).await == 0).then_some(())
    })
    .await;
    for url in [
        hub.ws_url(&format!("vsn=2.0.0&name=lamp&token={t1}")),
        format!("ws://{}/relay?token={t1}", hub.addr),
        format!("ws://{}/compendium?token={t1}", hub.addr),
    ] {
        assert_eq!(status_of(url.clone()).await, 403, "{url}");
    }
    assert_eq!(
        status_of(format!("ws://{}/compendium?token={t2}", hub.addr)).await,
        101
    );
}

#[tokio::test]
async fn revoking_a_token_leaves_the_same_devices_other_token_connections_open() {
    let hub = token_hub().await;
    let (t1, id1) = issue(&hub, "lamp", None).await;
    let (t2, id2) = issue(&hub, "lamp", None).await;

    // The device runs on t2: a Phoenix socket on the relay and a Compendium connection.
    let mut phx2 = phoenix(&hub, "lamp", &t2).await;
    let r = phx2.join("relay", "1", json!({})).await;
    assert_eq!(reply_of(&r), ("ok", &json!({})));
    let mut comp2 = compendium(&hub, &t2).await;
    let addr2 = init(&mut comp2).await;
    // Connections of the same device name admitted with t1.
    let mut raw1 = raw(&hub, &t1).await;
    let r = raw1
        .request(server(
            json!({"command": "register", "device_name": "lamp"}),
        ))
        .await;
    assert_eq!(r, json!({"success": false, "error_message": "name taken"}));
    let mut comp1 = compendium(&hub, &t1).await;
    assert_eq!(admitted_with(&hub, &id1).await, 2);

    revoke(&hub, &id1).await;
    // Everything of t2 stays: the Phoenix socket (still the relay's `lamp`) and Compendium.
    let r = phx2.push("1", "2", "relay", "get_devices", json!({})).await;
    assert_eq!(reply_of(&r), ("ok", &json!({"devices": ["lamp"]})));
    let r = phx2
        .push(
            "1",
            "3",
            "relay",
            "send",
            json!({"target": "LAMP", "payload": 7}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    assert_eq!(
        phx2.recv().await,
        json!(["1", null, "relay", "packet", {"sender": "lamp", "payload": 7}])
    );
    comp2
        .send(json!({"type": "ROUTE", "EpheWssAddr": addr2, "msg": {"n": 2}}))
        .await;
    assert_eq!(
        comp2.recv().await,
        json!({"type": "DELIVER", "msg": {"n": 2}})
    );
    assert_eq!(admitted_with(&hub, &id2).await, 2);
    phx2.expect_silence(200).await;
    // ...while t1's are closed.
    closed_going_away(&mut raw1, "raw relay device of t1").await;
    closed_going_away(&mut comp1, "Compendium connection of t1").await;
}

/// A long-poll client: the device token in the query, the session token appended.
struct Poller {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
}

impl Poller {
    fn new(hub: &TestHub, name: &str, device_token: &str) -> Poller {
        Poller {
            http: reqwest::Client::new(),
            url: hub.http(&format!(
                "/socket/longpoll?vsn=2.0.0&name={name}&token={device_token}"
            )),
            session: None,
        }
    }

    fn url(&self) -> String {
        match &self.session {
            Some(s) => format!("{}&token={s}", self.url),
            None => self.url.clone(),
        }
    }

    async fn get(&mut self) -> Value {
        let body: Value = self
            .http
            .get(self.url())
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON body");
        if body["status"] == 410 {
            self.session = body["token"].as_str().map(str::to_owned);
        }
        body
    }

    async fn post(&self, frame: Value) -> Value {
        self.http
            .post(self.url())
            .body(frame.to_string())
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("JSON body")
    }

    /// Polls until a frame with ref `r` arrives (bounded).
    async fn reply(&mut self, r: &str) -> Value {
        for _ in 0..20 {
            let body = self.get().await;
            for m in body["messages"].as_array().into_iter().flatten() {
                let f: Value = serde_json::from_str(m.as_str().expect("text")).expect("JSON");
                if f[1] == r {
                    return f;
                }
            }
        }
        panic!("no reply {r}");
    }
}

#[tokio::test]
async fn revoking_a_token_ends_its_long_poll_sessions_and_only_those() {
    let hub = TestHub::start_with(|c| {
        c.auth = homehub::config::AuthMode::Token;
        c.phoenix.longpoll_window = std::time::Duration::from_millis(300);
    })
    .await;
    let (t1, id1) = issue(&hub, "lamp", None).await;
    let (t2, id2) = issue(&hub, "lamp", None).await;

    // A long-poll session of `lamp` on t2, a raw device of `lamp` on t1.
    let mut lp = Poller::new(&hub, "lamp", &t2);
    assert_eq!(lp.get().await["status"], 410);
    assert_eq!(
        lp.post(json!(["1", "1", "lock:LP-1", "phx_join", {}]))
            .await,
        json!({"status": 200})
    );
    assert_eq!(reply_of(&lp.reply("1").await).0, "ok");
    let mut raw1 = raw(&hub, &t1).await;
    assert_eq!(admitted_with(&hub, &id2).await, 1);

    // Revoking t1 closes the raw device and leaves the session of t2 alone.
    revoke(&hub, &id1).await;
    assert_eq!(
        lp.post(json!(["1", "2", "lock:LP-1", "reset", {}])).await,
        json!({"status": 200})
    );
    assert_eq!(reply_of(&lp.reply("2").await).0, "ok");
    closed_going_away(&mut raw1, "raw relay device of t1").await;

    // Revoking t2 ends the session: its token is dead and a new one is refused.
    revoke(&hub, &id2).await;
    eventually("the session of t2 ends", async || {
        let r = lp
            .post(json!([null, "hb", "phoenix", "heartbeat", {}]))
            .await;
        if r == json!({"status": 410}) {
            return Some(());
        }
        assert_eq!(r, json!({"status": 200}));
        None
    })
    .await;
    assert_eq!(lp.get().await, json!({"status": 403}));
    assert_eq!(admitted_with(&hub, &id2).await, 0);
}
