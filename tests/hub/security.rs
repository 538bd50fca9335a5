//! Securing the hub (issue 5): device tokens, token mode's lock holders, the open-mode
//! guard, origins, per-address limits, rate limits, the handshake deadline, TLS, and
//! binary relay packets.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use homehub::config::AuthMode;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{TestClient, TestHub, json_body, reply_of};

pub(crate) async fn token_hub() -> TestHub {
    TestHub::start_with(|c| c.auth = AuthMode::Token).await
}

pub(crate) async fn issue(hub: &TestHub, device: &str, ttl: Option<u64>) -> (String, String) {
    let mut body = json!({ "device": device });
    if let Some(t) = ttl {
        body["ttl_secs"] = json!(t);
    }
    let (status, t) = hub.admin(Method::POST, "/api/tokens", Some(body)).await;
    assert_eq!(status, 201, "{t}");
    (
        t["token"].as_str().unwrap().to_owned(),
        t["id"].as_str().unwrap().to_owned(),
    )
}

pub(crate) async fn status_of(url: String) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

#[tokio::test]
async fn token_mode_accepts_valid_tokens_only() {
    let hub = token_hub().await;
    let (token, _) = issue(&hub, "door-1", None).await;
    assert_eq!(
        status_of(hub.ws_url("vsn=2.0.0&name=door-1")).await,
        403,
        "no token"
    );
    let ok = hub.ws_url(&format!("vsn=2.0.0&name=door-1&token={token}"));
    assert_eq!(status_of(ok.clone()).await, 101);
    // A token names its device: another name is refused.
    assert_eq!(
        status_of(hub.ws_url(&format!("vsn=2.0.0&name=door-2&token={token}"))).await,
        403
    );
    // A forged token: the payload changed, the signature kept.
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut forged_head = head.to_owned();
    forged_head.push('A');
    let forged = format!("{forged_head}.{sig}");
    assert_eq!(
        status_of(hub.ws_url(&format!("vsn=2.0.0&name=door-1&token={forged}"))).await,
        403
    );
    assert_eq!(
        status_of(hub.ws_url("vsn=2.0.0&name=door-1&token=garbage")).await,
        403
    );
    // An expired token.
    let (short, _) = issue(&hub, "door-3", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        status_of(hub.ws_url(&format!("vsn=2.0.0&name=door-3&token={short}"))).await,
        403
    );
    // Phoenix 1.8's authToken travels as a subprotocol entry.
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&token)
    };
    let mut req = hub
        .ws_url("vsn=2.0.0&name=door-1")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("phoenix, base64url.bearer.phx.{b64}")
            .parse()
            .unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("authToken accepted");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "phoenix");
}

#[tokio::test]
async fn revoked_tokens_disconnect_and_are_refused() {
    let hub = token_hub().await;
    let (token, id) = issue(&hub, "door-r", None).await;
    let url = hub.ws_url(&format!("vsn=2.0.0&name=door-r&token={token}"));
    let mut c = TestClient::connect(&url).await;
    c.join("lock:R1", "1", json!({})).await;
    let (status, _) = hub
        .admin(Method::DELETE, &format!("/api/tokens/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(status_of(url).await, 403);
    let (_, list) = hub.admin(Method::GET, "/api/tokens", None).await;
    assert!(list["tokens"][0]["revoked_at"].is_string());
    assert!(
        list["tokens"][0].get("token").is_none(),
        "tokens are never listed"
    );
    let (status, _) = hub.admin(Method::DELETE, "/api/tokens/nope", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn token_mode_locks_are_joined_only_by_their_holder() {
    let hub = token_hub().await;
    let (ta, _) = issue(&hub, "dev-a", None).await;
    let (tb, _) = issue(&hub, "dev-b", None).await;
    let mut a = TestClient::connect(&hub.ws_url(&format!("vsn=2.0.0&name=dev-a&token={ta}"))).await;
    let r = a.join("lock:HELD", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let mut b = TestClient::connect(&hub.ws_url(&format!("vsn=2.0.0&name=dev-b&token={tb}"))).await;
    let r = b.join("lock:HELD", "1", json!({})).await;
    assert_eq!(
        reply_of(&r),
        ("error", &json!({"reason": "lock held by another device"}))
    );
    // The holder did not change.
    let (_, lock) = hub.admin(Method::GET, "/api/locks/HELD", None).await;
    assert_eq!(lock["holder_device"], "dev-a");
    // An administrator reassigns it.
    let (status, lock) = hub
        .admin(
            Method::PUT,
            "/api/locks/HELD/holder",
            Some(json!({"device": "dev-b"})),
        )
        .await;
    assert_eq!(
        (status, lock["holder_device"].clone()),
        (200, json!("dev-b"))
    );
    // The former holder's channel ends (phx_close: it must not rejoin into the lock).
    let close = a.recv_event("phx_close").await;
    assert_eq!(close, json!(["1", "1", "lock:HELD", "phx_close", {}]));
    let r = b.join("lock:HELD", "2", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let r = a.join("lock:HELD", "3", json!({})).await;
    assert_eq!(reply_of(&r).0, "error");
}

#[tokio::test]
async fn open_mode_refuses_a_network_address_unless_told() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = format!("sqlite://{}", dir.path().join("h.db").display());
    let mut config = homehub::config::Config::default_for("0.0.0.0:0".parse().unwrap(), &db);
    let refused = homehub::app::Server::bind(config.clone()).await;
    assert!(refused.is_err());
    assert!(format!("{:#}", refused.err().unwrap()).contains("HOMEHUB_ALLOW_OPEN_NETWORK"));
    config.allow_open_network = true;
    assert!(homehub::app::Server::bind(config.clone()).await.is_ok());
    config.allow_open_network = false;
    config.auth = AuthMode::Token;
    assert!(homehub::app::Server::bind(config).await.is_ok());
}

async fn status_with_origin(hub: &TestHub, path_query: &str, origin: &str) -> u16 {
    let mut req = format!("ws://{}{path_query}", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn origins_are_checked_for_browsers() {
    let hub = TestHub::start().await;
    let ws = "/socket/websocket?vsn=2.0.0&name=browser";
    assert_eq!(
        status_with_origin(&hub, ws, "https://evil.example").await,
        403
    );
    assert_eq!(
        status_with_origin(&hub, ws, "http://127.0.0.1:9999").await,
        101,
        "same host"
    );
    assert_eq!(
        status_with_origin(&hub, "/relay", "https://evil.example").await,
        403
    );
    assert_eq!(
        status_with_origin(&hub, "/compendium", "https://evil.example").await,
        403
    );
    let lp: Value = json_body(
        reqwest::Client::new()
            .get(hub.http("/socket/longpoll?vsn=2.0.0&name=browser"))
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(lp, json!({"status": 403}));
    let listed =
        TestHub::start_with(|c| c.allowed_origins = "https://app.example.com, *.home.lan".into())
            .await;
    assert_eq!(
        status_with_origin(&listed, ws, "https://app.example.com").await,
        101
    );
    assert_eq!(
        status_with_origin(&listed, ws, "https://ui.home.lan").await,
        101
    );
    assert_eq!(
        status_with_origin(&listed, ws, "http://127.0.0.1:9999").await,
        403
    );
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let hub = TestHub::start_with(|c| c.max_conns_per_ip = 2).await;
    let a = hub.client("cap-a").await;
    let _b = hub.client("cap-b").await;
    assert_eq!(status_of(hub.ws_url("vsn=2.0.0&name=cap-c")).await, 403);
    drop(a);
    crate::common::eventually("a freed slot is reusable", || async {
        (status_of(hub.ws_url("vsn=2.0.0&name=cap-c")).await == 101).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pushes_are_rate_limited_and_recover() {
    let hub = TestHub::start_with(|c| {
        c.rate_limit = 5;
        c.rate_burst = 5;
    })
    .await;
    let mut c = hub.client("chatty").await;
    c.join("lock:RL", "1", json!({})).await; // one token
    for i in 0..4 {
        let r = c
            .push("1", &format!("r{i}"), "lock:RL", "reset", json!({}))
            .await;
        assert_eq!(reply_of(&r).0, "ok");
    }
    let r = c.push("1", "over", "lock:RL", "reset", json!({})).await;
    assert_eq!(
        r,
        json!(["1", "over", "lock:RL", "phx_reply", {"status": "error", "response": {"reason": "rate limited"}}])
    );
    // Heartbeats are never limited.
    c.send(json!([null, "hb", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(reply_of(&c.recv().await).0, "ok");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.push("1", "later", "lock:RL", "reset", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "recovered after a second");
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_dropped() {
    let hub =
        TestHub::start_with(|c| c.handshake_timeout = std::time::Duration::from_secs(1)).await;
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the hub closes the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // A half-sent request is dropped too.
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"GET /socket/websocket HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(closed.is_ok(), "still open after the deadline");
}

#[tokio::test]
async fn tls_serves_wss_to_a_real_client() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (cp, kp) = (cert_path.clone(), key_path.clone());
    let hub = TestHub::start_with(move |c| {
        c.tls_cert = Some(cp);
        c.tls_key = Some(kp);
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let url = format!(
        "wss://localhost:{}/socket/websocket?vsn=2.0.0&name=tls-dev",
        hub.addr.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss upgrade");
    ws.send(Message::Text(
        json!(["1", "1", "lock:TLS", "phx_join", {}])
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(reply_of(&reply).0, "ok");
    // Plain HTTP to a TLS hub gets nowhere.
    assert!(
        tokio_tungstenite::connect_async(hub.ws_url("vsn=2.0.0&name=plain"))
            .await
            .is_err()
    );
    // The CLI reaches the admin API over https with --ca-cert.
    let bin = env!("CARGO_BIN_EXE_homehub");
    let out = tokio::process::Command::new(bin)
        .args(["locks", "--ca-cert"])
        .arg(&cert_path)
        .env(
            "HOMEHUB_URL",
            format!("https://localhost:{}", hub.addr.port()),
        )
        .env("HOMEHUB_ADMIN_TOKEN", crate::common::TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("TLS"));
}

#[tokio::test]
async fn binary_packets_round_trip_between_v2_devices() {
    let hub = TestHub::start().await;
    let mut a = hub.client("bin-a").await;
    a.join("relay", "1", json!({})).await;
    let mut b = hub.client("bin-b").await;
    b.join("relay", "7", json!({})).await;
    // kind 0, join_ref "1", ref "2", topic "relay", event "send:bin-b", bytes de ad be ef
    let mut frame = vec![0u8, 1, 1, 5, 10];
    frame.extend_from_slice(b"12relaysend:bin-b\xde\xad\xbe\xef");
    a.send_raw(Message::Binary(frame.into())).await;
    assert_eq!(reply_of(&a.recv_reply("2").await).0, "ok");
    // The target gets a binary push (kind 0, its own join_ref, no ref).
    let got = match b.recv_msg().await {
        Some(Message::Binary(bytes)) => bytes,
        other => panic!("expected a binary push, got {other:?}"),
    };
    let mut expected = vec![0u8, 1, 5, 12];
    expected.extend_from_slice(b"7relaypacket:bin-a\xde\xad\xbe\xef");
    assert_eq!(&got[..], &expected[..]);
    // A V1 device cannot receive binary: the sender is told.
    let mut v1 = TestClient::connect(&hub.ws_url("vsn=1.0.0&name=bin-v1")).await;
    v1.send(json!({"topic": "relay", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    assert_eq!(v1.recv().await["payload"]["status"], "ok");
    let mut frame = vec![0u8, 1, 1, 5, 11];
    frame.extend_from_slice(b"13relaysend:bin-v1\x01");
    a.send_raw(Message::Binary(frame.into())).await;
    let r = a.recv_reply("3").await;
    assert_eq!(
        reply_of(&r),
        (
            "error",
            &json!({"reason": "target cannot receive binary packets"})
        )
    );
}

#[tokio::test]
async fn token_mode_guards_the_raw_relay_and_compendium() {
    let hub = token_hub().await;
    let relay = format!("ws://{}/relay", hub.addr);
    let comp = format!("ws://{}/compendium", hub.addr);
    assert_eq!(status_of(relay.clone()).await, 403);
    assert_eq!(status_of(comp.clone()).await, 403);
    let (token, _) = issue(&hub, "Lamp", None).await;
    assert_eq!(status_of(format!("{comp}?token={token}")).await, 101);
    let mut raw = TestClient::connect(&format!("{relay}?token={token}")).await;
    raw.send(
        json!({"target": "server", "payload": {"command": "register", "device_name": "other"}}),
    )
    .await;
    assert_eq!(
        raw.recv().await,
        json!({"success": false, "error_message": "token issued to another device"})
    );
    raw.send(
        json!({"target": "server", "payload": {"command": "register", "device_name": "lamp"}}),
    )
    .await;
    assert_eq!(raw.recv().await, json!({"success": true}));
}
