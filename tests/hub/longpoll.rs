//! The long-poll transport (`/socket/longpoll`, protocol reference §7), driven over real
//! HTTP with reqwest, and interoperating with WebSocket clients on the same hub.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestHub, json_body, reply_of};

/// A long-poll client: one session token, GET to poll, POST to publish.
struct Poller {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Poller {
    fn new(hub: &TestHub, query: &str) -> Poller {
        Poller {
            http: reqwest::Client::new(),
            url: hub.http(&format!("/socket/longpoll?{query}")),
            token: None,
        }
    }

    fn with_token(&self) -> String {
        match &self.token {
            Some(t) => format!("{}&token={t}", self.url),
            None => self.url.clone(),
        }
    }

    async fn get(&mut self) -> Value {
        let resp = self.http.get(self.with_token()).send().await.expect("GET");
        assert_eq!(
            resp.status().as_u16(),
            200,
            "long-poll answers are always HTTP 200"
        );
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.expect("JSON body");
        if body["status"] == 410 {
            self.token = body["token"].as_str().map(str::to_owned);
        }
        body
    }

    async fn post(&self, body: &str, ndjson: bool) -> Value {
        let mut req = self.http.post(self.with_token()).body(body.to_owned());
        if ndjson {
            req = req.header("content-type", "application/x-ndjson");
        }
        let resp = req.send().await.expect("POST");
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.expect("JSON body")
    }

    /// Polls until `n` frames have arrived (bounded), returning them decoded.
    async fn frames(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let body = self.get().await;
            if let Some(messages) = body["messages"].as_array() {
                for m in messages {
                    out.push(
                        serde_json::from_str(m.as_str().expect("string frames"))
                            .expect("frame JSON"),
                    );
                }
            }
            if out.len() >= n {
                return out;
            }
        }
        panic!("expected {n} frames, got {out:?}");
    }
}

async fn hub() -> TestHub {
    TestHub::start_with(|c| c.phoenix.longpoll_window = std::time::Duration::from_millis(400)).await
}

#[tokio::test]
async fn session_lifecycle_join_push_reply_and_server_push() {
    let hub = hub().await;
    let mut refused = Poller::new(&hub, "vsn=2.0.0");
    assert_eq!(refused.get().await, json!({"status": 403}));
    let mut bad_vsn = Poller::new(&hub, "vsn=3.0.0&name=lp");
    assert_eq!(bad_vsn.get().await, json!({"status": 403}));

    let mut p = Poller::new(&hub, "vsn=2.0.0&name=lp-lock&");
    let opened = p.get().await;
    assert_eq!(opened["status"], 410);
    assert_eq!(opened["messages"], json!([]));
    assert!(p.token.is_some());

    // Replies never come in the POST answer, only through GETs.
    let r = p
        .post(
            r#"["1","1","lock:LP1","phx_join",{"accepts":["state"]}]"#,
            false,
        )
        .await;
    assert_eq!(r, json!({"status": 200}));
    let frames = p.frames(1).await;
    assert_eq!(
        (frames[0][0].clone(), frames[0][3].clone()),
        (json!("1"), json!("phx_reply"))
    );
    assert!(reply_of(&frames[0]).1["uuid"].is_string());

    // An ndjson batch is processed in order.
    let batch =
        "[\"1\",\"2\",\"lock:LP1\",\"reset\",{}]\n[null,\"3\",\"phoenix\",\"heartbeat\",{}]\n";
    assert_eq!(p.post(batch, true).await, json!({"status": 200}));
    let frames = p.frames(2).await;
    assert_eq!(frames[0][1], "2");
    assert_eq!(
        frames[1],
        json!([null, "3", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );

    // A hub push reaches a parked GET.
    let admin = {
        let hub_addr = hub.addr;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reqwest::Client::new()
                .put(format!("http://{hub_addr}/api/locks/LP1/state"))
                .bearer_auth(crate::common::TOKEN)
                .json(&json!({"locked": false}))
                .send()
                .await
                .expect("admin")
                .status()
        })
    };
    let frames = p.frames(1).await;
    assert_eq!(
        frames[0],
        json!(["1", null, "lock:LP1", "state", {"locked": false}])
    );
    assert_eq!(admin.await.unwrap().as_u16(), 200);

    // Nothing queued: 204 after the window.
    let idle = p.get().await;
    assert_eq!(idle["status"], 204);
    assert_eq!(idle["token"].as_str(), p.token.as_deref());
}

#[tokio::test]
async fn bad_or_missing_tokens() {
    let hub = hub().await;
    let http = reqwest::Client::new();
    let r: Value = json_body(
        http.post(hub.http("/socket/longpoll?vsn=2.0.0&name=x&token=bogus"))
            .body(r#"[null,"9","phoenix","heartbeat",{}]"#),
    )
    .await;
    assert_eq!(r, json!({"status": 410}));
    // An unverifiable token on GET just opens a new session.
    let r: Value =
        json_body(http.get(hub.http("/socket/longpoll?vsn=2.0.0&name=x&token=bogus"))).await;
    assert_eq!(r["status"], 410);
    let token = r["token"].as_str().unwrap().to_owned();
    // The header carries the session token as well as the query.
    let posted = json_body(
        http.post(hub.http("/socket/longpoll?vsn=2.0.0&name=x"))
            .header("x-phoenix-longpoll-token", &token)
            .body(r#"[null,"9","phoenix","heartbeat",{}]"#),
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let r: Value = json_body(
        http.get(hub.http("/socket/longpoll?vsn=2.0.0&name=x"))
            .header("x-phoenix-longpoll-token", &token),
    )
    .await;
    assert_eq!(r["status"], 200);
    assert_eq!(
        r["messages"][0],
        r#"[null,"9","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
}

#[tokio::test]
async fn options_preflight_and_other_methods() {
    let hub = hub().await;
    let http = reqwest::Client::new();
    let resp = http
        .request(Method::OPTIONS, hub.http("/socket/longpoll"))
        .header(
            "access-control-request-headers",
            "x-phoenix-longpoll-token, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("post")
    );
    assert_eq!(
        h["access-control-allow-headers"],
        "x-phoenix-longpoll-token, content-type"
    );
    let resp = http.put(hub.http("/socket/longpoll")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn long_poll_and_websocket_clients_share_topics_and_the_relay() {
    let hub = hub().await;
    let mut p = Poller::new(&hub, "vsn=2.0.0&name=lp-relay");
    p.get().await;
    p.post(r#"["1","1","relay","phx_join",{}]"#, false).await;
    assert_eq!(reply_of(&p.frames(1).await[0]).0, "ok");
    let mut ws = hub.client("ws-relay").await;
    ws.join("relay", "1", json!({})).await;
    let r = ws
        .push(
            "1",
            "2",
            "relay",
            "send",
            json!({"target": "lp-relay", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    let frames = p.frames(1).await;
    assert_eq!(
        frames[0],
        json!(["1", null, "relay", "packet", {"sender": "ws-relay", "payload": {"n": 1}}])
    );
    p.post(
        r#"["1","2","relay","send",{"target":"ws-relay","payload":"hi"}]"#,
        false,
    )
    .await;
    assert_eq!(
        ws.recv_event("packet").await[4],
        json!({"sender": "lp-relay", "payload": "hi"})
    );
}

#[tokio::test]
async fn unpolled_sessions_expire_and_free_their_device() {
    let hub = hub().await;
    let mut p = Poller::new(&hub, "vsn=2.0.0&name=lp-gone");
    p.get().await;
    let old = p.token.clone();
    p.post(r#"["1","1","lock:LPX","phx_join",{}]"#, false).await;
    let listed = |devices: &Value| {
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "lp-gone")
    };
    let (_, devices) = hub.admin(Method::GET, "/api/devices", None).await;
    assert!(listed(&devices));
    // Two windows without a GET destroy the session and its channels.
    crate::common::eventually("the expired session is no longer listed", || async {
        let (_, devices) = hub.admin(Method::GET, "/api/devices", None).await;
        (!listed(&devices)).then_some(())
    })
    .await;
    let again = p.get().await;
    assert_eq!(
        again["status"], 410,
        "a dead session's token opens a new session"
    );
    assert_ne!(p.token, old);
}

#[tokio::test]
async fn base64_lines_are_binary_frames_and_bad_frames_are_contained() {
    let hub = hub().await;
    let mut p = Poller::new(&hub, "vsn=2.0.0&name=lp-bin");
    p.get().await;
    p.post(r#"["1","1","lock:LPB","phx_join",{}]"#, false).await;
    p.frames(1).await;
    // kind 0, join_ref "1", ref "2", topic "lock:LPB", event "report", bytes 01 02
    use base64::Engine as _;
    let mut bin = vec![0u8, 1, 1, 8, 6];
    bin.extend_from_slice(b"12lock:LPBreport\x01\x02");
    let line = base64::engine::general_purpose::STANDARD.encode(&bin);
    assert_eq!(
        p.post(&format!("{line}\n"), true).await,
        json!({"status": 200})
    );
    let frames = p.frames(1).await;
    assert_eq!(
        (frames[0][1].clone(), reply_of(&frames[0]).0),
        (json!("2"), "error")
    );
    // A malformed frame with a recoverable topic gets an error reply; the session lives.
    p.post(r#"["1","3","lock:LPB"]"#, false).await;
    assert_eq!(reply_of(&p.frames(1).await[0]).0, "error");
    p.post(r#"[null,"4","phoenix","heartbeat",{}]"#, false)
        .await;
    assert_eq!(reply_of(&p.frames(1).await[0]).0, "ok");
}
