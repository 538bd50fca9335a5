//! The Phoenix socket protocol: the "server MUST" checklist of
//! `shared/docs/phoenix-protocol.md` §11, item by item where it applies, plus bad input.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::common::{TestClient, TestHub, reply_of};

async fn upgrade_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

#[tokio::test]
async fn non_get_on_websocket_path_is_400() {
    let hub = TestHub::start().await;
    let resp = reqwest::Client::new()
        .post(hub.http("/socket/websocket?name=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A plain GET that is not an upgrade is a bad request too.
    let resp = reqwest::get(hub.http("/socket/websocket?name=a&vsn=2.0.0"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn vsn_selects_serializer_or_refuses() {
    let hub = TestHub::start().await;
    for bad in ["2.1.0", "3.0.0", "abc"] {
        assert_eq!(
            upgrade_status(&hub.ws_url(&format!("vsn={bad}&name=d"))).await,
            403,
            "{bad}"
        );
    }
    // V2: arrays.
    let mut c = TestClient::connect(&hub.ws_url("vsn=2.0.1&name=d2")).await;
    c.send(json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        c.recv().await,
        json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // V1 with vsn=1.0.0 and without vsn: objects with exactly four keys, no join_ref.
    for q in ["vsn=1.0.0&name=d1", "name=d0"] {
        let mut c = TestClient::connect(&hub.ws_url(q)).await;
        c.send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7", "join_ref": "3"})).await;
        let f = c.recv().await;
        assert_eq!(
            f,
            json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "7"})
        );
    }
}

#[tokio::test]
async fn connect_refused_without_valid_name() {
    let hub = TestHub::start().await;
    for q in [
        "vsn=2.0.0",
        "vsn=2.0.0&name=",
        "vsn=1.0.0",
        "vsn=2.0.0&name=has%20space",
        &format!("vsn=2.0.0&name={}", "x".repeat(65)),
    ] {
        assert_eq!(upgrade_status(&hub.ws_url(q)).await, 403, "{q}");
    }
    // Duplicate keys: last wins; a trailing & is tolerated.
    assert_eq!(
        upgrade_status(&hub.ws_url("name=&vsn=2.0.0&name=ok&")).await,
        101
    );
}

#[tokio::test]
async fn subprotocols_are_negotiated() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let hub = TestHub::start().await;
    let mut req = hub
        .ws_url("vsn=2.0.0&name=sp")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "phoenix, base64url.bearer.phx.dG9r".parse().unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade with token entry");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "phoenix");
    let mut req = hub
        .ws_url("vsn=2.0.0&name=sp2")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn heartbeat_needs_no_join_and_ignores_join_ref_and_payload() {
    let hub = TestHub::start().await;
    let mut c = hub.client("hb").await;
    c.send(json!(["9", "12", "phoenix", "heartbeat", {"x": 1}]))
        .await;
    assert_eq!(
        c.recv().await,
        json!([null, "12", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // Refs are echoed verbatim, whatever their JSON type.
    c.send(json!([null, 12, "phoenix", "heartbeat", null]))
        .await;
    assert_eq!(c.recv().await[1], json!(12));
}

#[tokio::test]
async fn extra_array_elements_and_any_payload_are_accepted() {
    let hub = TestHub::start().await;
    let mut c = hub.client("extra").await;
    c.send(json!([
        null,
        "1",
        "phoenix",
        "heartbeat",
        [1, 2],
        "extra",
        3
    ]))
    .await;
    assert_eq!(reply_of(&c.recv().await).0, "ok");
}

#[tokio::test]
async fn join_leave_and_unmatched_topics() {
    let hub = TestHub::start().await;
    let mut c = hub.client("jl").await;
    // Unmatched topic: null join_ref.
    let r = c.join("nope:1", "1", json!({})).await;
    assert_eq!(
        r,
        json!([null, "1", "nope:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    // Push to a routed but unjoined topic.
    let r = c.push("5", "6", "lock:XYZ", "reset", json!({})).await;
    assert_eq!(
        r,
        json!([null, "6", "lock:XYZ", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    // Leave of a never-joined topic: ok with the request's join_ref, no phx_close.
    c.send(json!(["7", "8", "lock:ZZZ", "phx_leave", {}])).await;
    assert_eq!(
        c.recv().await,
        json!(["7", "8", "lock:ZZZ", "phx_reply", {"status": "ok", "response": {}}])
    );
    // Join, leave: ok reply then phx_close with the join_ref in both ref slots.
    let r = c.join("lock:ABC", "10", json!({})).await;
    assert_eq!(r[0], "10");
    assert_eq!(reply_of(&r).0, "ok");
    c.send(json!(["10", "11", "lock:ABC", "phx_leave", {}]))
        .await;
    assert_eq!(
        c.recv().await,
        json!(["10", "11", "lock:ABC", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        c.recv().await,
        json!(["10", "10", "lock:ABC", "phx_close", {}])
    );
    // After the leave the topic is unmatched again.
    let r = c.push("10", "12", "lock:ABC", "reset", json!({})).await;
    assert_eq!(r[4]["response"]["reason"], "unmatched topic");
    c.expect_silence(100).await;
}

#[tokio::test]
async fn duplicate_join_closes_the_old_instance_once() {
    let hub = TestHub::start().await;
    let mut c = hub.client("dup").await;
    c.join("lock:D1", "1", json!({})).await;
    c.send(json!(["3", "3", "lock:D1", "phx_join", {}])).await;
    let reply = c.recv().await;
    assert_eq!(
        (reply[0].clone(), reply[1].clone(), reply[3].clone()),
        (json!("3"), json!("3"), json!("phx_reply"))
    );
    assert_eq!(
        c.recv().await,
        json!(["1", "1", "lock:D1", "phx_close", {}])
    );
    c.expect_silence(100).await;
    // Later replies carry the new join_ref.
    let r = c.push("3", "4", "lock:D1", "reset", json!({})).await;
    assert_eq!(r[0], "3");
}

#[tokio::test]
async fn stale_join_ref_is_dropped_and_null_join_ref_delivered() {
    let hub = TestHub::start().await;
    let mut c = hub.client("stale").await;
    c.join("lock:S1", "1", json!({})).await;
    c.send(json!(["99", "2", "lock:S1", "reset", {}])).await;
    c.expect_silence(200).await;
    let r = c.push_null("3", "lock:S1", "reset").await;
    assert_eq!(r[0], "1", "reply carries the channel's join_ref");
    assert_eq!(reply_of(&r).0, "ok");
}

impl TestClient {
    async fn push_null(&mut self, r: &str, topic: &str, event: &str) -> Value {
        self.send(json!([null, r, topic, event, {}])).await;
        self.recv_reply(r).await
    }
}

#[tokio::test]
async fn join_with_null_join_ref_uses_ref_for_pushes() {
    let hub = TestHub::start().await;
    let mut c = hub.client("nulljr").await;
    c.send(json!([null, "4", "lock:N1", "phx_join", {}])).await;
    let r = c.recv().await;
    assert_eq!(r[0], "4");
    assert_eq!(reply_of(&r).0, "ok");
    c.send(json!([null, "5", "lock:N1", "phx_leave", {}])).await;
    assert_eq!(c.recv().await[3], "phx_reply");
    assert_eq!(
        c.recv().await,
        json!([null, null, "lock:N1", "phx_close", {}])
    );
}

#[tokio::test]
async fn too_many_channels() {
    let hub = TestHub::start_with(|c| c.phoenix.max_channels = 3).await;
    let mut c = hub.client("many").await;
    for i in 0..3 {
        let r = c
            .join(&format!("events:L{i}"), &i.to_string(), json!({}))
            .await;
        assert_eq!(reply_of(&r).0, "ok");
    }
    let r = c.join("events:L9", "9", json!({})).await;
    assert_eq!(
        r,
        json!(["9", "9", "events:L9", "phx_reply", {"status": "error", "response": {"reason": "too many channels joined"}}])
    );
    // Rejoining a joined topic is not a new channel.
    let r = c.join("events:L0", "10", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
}

#[tokio::test]
async fn malformed_frames_get_errors_and_harm_nobody_else() {
    let hub = TestHub::start().await;
    let mut bystander = hub.client("bystander").await;
    bystander.join("lock:B1", "1", json!({})).await;

    // Topic and ref recoverable: error reply, socket stays.
    let mut c = hub.client("bad1").await;
    c.send(json!(["1", "1", "lock:ABC"])).await;
    let r = c.recv().await;
    assert_eq!(
        (r[1].clone(), r[2].clone(), r[4]["status"].clone()),
        (json!("1"), json!("lock:ABC"), json!("error"))
    );
    c.send(json!(["1", "2", "lock:ABC", 5, {}])).await;
    assert_eq!(c.recv().await[4]["status"], "error");
    c.send(json!([null, "3", "phoenix", "heartbeat", {}])).await;
    assert_eq!(reply_of(&c.recv().await).0, "ok");

    // Not JSON / not an array: closed with 1003.
    for bad in ["not json", "{\"a\":1}", "[1,2]", "[1,2,3,4,5"] {
        let mut c = hub.client("bad2").await;
        c.send_raw(Message::Text(bad.into())).await;
        let close = c.expect_close().await.expect("close frame");
        assert_eq!(u16::from(close.code), 1003, "{bad}");
    }

    // V1 object missing everything: 1003; V1 with a wrong-typed event: error reply.
    let mut c = TestClient::connect(&hub.ws_url("vsn=1.0.0&name=bad3")).await;
    c.send(json!({"topic": "lock:A", "event": 1, "payload": {}, "ref": "1"}))
        .await;
    assert_eq!(c.recv().await["payload"]["status"], "error");

    // Invalid UTF-8 in a text frame: 1007.
    let mut c = hub.client("bad4").await;
    let frame = Frame::message(vec![0x5b, 0xff, 0xfe, 0x5d], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1007);

    // Binary V2 frame with an unknown kind: 1003.
    let mut c = hub.client("bad5").await;
    c.send_raw(Message::Binary(vec![9u8, 0, 0, 0, 0].into()))
        .await;
    assert_eq!(u16::from(c.expect_close().await.expect("close").code), 1003);

    // The bystander is untouched.
    let r = bystander
        .push("1", "2", "lock:B1", "reset", json!({}))
        .await;
    assert_eq!(reply_of(&r).0, "ok");
}

#[tokio::test]
async fn oversize_frame_closes_with_1009() {
    let hub = TestHub::start_with(|c| c.max_frame_bytes = 4096).await;
    let mut c = hub.client("big").await;
    let big = "x".repeat(10_000);
    c.send(json!([null, "1", "phoenix", "heartbeat", {"pad": big}]))
        .await;
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1009);
    let mut ok = hub.client("small").await;
    ok.send(json!([null, "1", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(reply_of(&ok.recv().await).0, "ok");
}

#[tokio::test]
async fn v1_json_in_binary_frames_is_answered_in_text() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub.ws_url("name=firmware")).await;
    let join = json!({"topic": "lock:FW1", "event": "phx_join", "payload": {}, "ref": "1"});
    c.send_raw(Message::Binary(join.to_string().into_bytes().into()))
        .await;
    let f = c.recv().await;
    assert_eq!(f["event"], "phx_reply");
    assert_eq!(f["ref"], "1");
    assert_eq!(f["payload"]["status"], "ok");
    assert!(f["payload"]["response"]["uuid"].is_string());
    assert!(f.get("join_ref").is_none());
}

#[tokio::test]
async fn idle_socket_is_closed_with_1001_and_heartbeats_keep_it_open() {
    let hub = TestHub::start_with(|c| c.idle_timeout = std::time::Duration::from_secs(1)).await;
    let mut alive = hub.client("alive").await;
    let mut idle = hub.client("idle").await;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        alive
            .send(json!([null, i.to_string(), "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(reply_of(&alive.recv().await).0, "ok");
    }
    let close = idle.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    alive
        .send(json!([null, "x", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(reply_of(&alive.recv().await).0, "ok");
}

#[tokio::test]
async fn same_name_replaces_older_connection() {
    let hub = TestHub::start().await;
    let mut old = hub.client("twin").await;
    let mut new = hub.client("twin").await;
    let close = old.expect_close().await.expect("old socket closed");
    assert_eq!(u16::from(close.code), 1001);
    new.send(json!([null, "1", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(reply_of(&new.recv().await).0, "ok");
}

#[tokio::test]
async fn disconnect_by_socket_id_closes_with_1001_without_frames() {
    let hub = TestHub::start().await;
    let mut c = hub.client("kickme").await;
    c.join("lock:K1", "1", json!({})).await;
    let (status, _) = hub
        .admin(
            reqwest::Method::POST,
            "/api/devices/kickme/disconnect",
            None,
        )
        .await;
    assert_eq!(status, 204);
    match c.recv_msg().await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected a close frame first, got {other:?}"),
    }
    let (status, _) = hub
        .admin(
            reqwest::Method::POST,
            "/api/devices/kickme/disconnect",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let hub = TestHub::start().await;
    let mut c = hub.client("bye").await;
    c.join("lock:Z1", "1", json!({})).await;
    let stopping = tokio::spawn(hub.stop());
    let close = c.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1012);
    stopping.await.unwrap();
}

/// Names of the connected devices, from the admin API.
async fn device_names(hub: &TestHub) -> Vec<String> {
    let (_, devices) = hub.admin(reqwest::Method::GET, "/api/devices", None).await;
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `lock` (joined to `topic`) reports event `n` padded with `pad`; `fast`, a subscriber
/// that keeps reading, receives it.
async fn event_reaches_fast_reader(
    lock: &mut TestClient,
    fast: &mut TestClient,
    topic: &str,
    n: usize,
    pad: &str,
) {
    let r = lock
        .push(
            "1",
            &format!("e{n}"),
            topic,
            "event",
            json!({"n": n, "pad": pad}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    assert_eq!(fast.recv_event("event").await[4]["message"]["n"], n);
}

/// A subscriber that stops reading while its queue stays short: its backlog sits in kernel
/// buffers, where the queue policy cannot see it. The send timeout (`TCP_USER_TIMEOUT`)
/// drops it once its receive window has been closed for that long.
#[tokio::test]
async fn a_reader_with_a_closed_window_is_dropped_by_the_send_timeout() {
    let hub = TestHub::start_with(|c| {
        c.send_timeout = std::time::Duration::from_secs(1);
        // The queue policy must not be what drops it.
        c.outbound_queue = 10_000;
        c.rate_limit = 0;
    })
    .await;
    // A tiny receive buffer, so a few KiB close the stalled reader's window.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(hub.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        hub.ws_url("vsn=2.0.0&name=stalled"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut stalled = TestClient { ws };
    stalled.join("events", "1", json!({})).await;
    let mut fast = hub.client("fast").await;
    fast.join("events", "1", json!({})).await;
    let mut lock = hub.client("lockdev").await;
    lock.join("lock:W1", "1", json!({})).await;
    assert_eq!(
        hub.metric("homehub_slow_consumers_closed_total").await,
        Some(0.0)
    );

    // 8 events of 32 KiB: far more than the stalled window, far less than the queue.
    let pad = "w".repeat(32 * 1024);
    for i in 0..8 {
        event_reaches_fast_reader(&mut lock, &mut fast, "lock:W1", i, &pad).await;
    }

    let names = crate::support::eventually_within(
        Duration::from_secs(20),
        "the stalled reader is dropped",
        || async {
            let names = device_names(&hub).await;
            (!names.iter().any(|n| n == "stalled")).then_some(names)
        },
    )
    .await;
    assert!(
        names.iter().any(|n| n == "fast") && names.iter().any(|n| n == "lockdev"),
        "{names:?}"
    );
    assert_eq!(
        hub.metric("homehub_slow_consumers_closed_total").await,
        Some(1.0)
    );
    // Everyone else is unharmed.
    let r = lock
        .push("1", "after", "lock:W1", "event", json!({"n": 99}))
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    assert_eq!(fast.recv_event("event").await[4]["message"]["n"], 99);
}

#[tokio::test]
async fn slow_reader_is_dropped_and_others_keep_receiving() {
    let hub = TestHub::start_with(|c| {
        c.outbound_queue = 8;
        c.rate_limit = 0;
    })
    .await;
    let mut slow = hub.client("slow").await;
    slow.join("events", "1", json!({})).await;
    let mut fast = hub.client("fast").await;
    fast.join("events", "1", json!({})).await;
    let mut lock = hub.client("lockdev").await;
    lock.join("lock:F1", "1", json!({})).await;
    // The slow client stops reading; the lock reports big events until the hub gives up
    // on the slow one (its queue and socket buffers fill).
    let pad = "p".repeat(60_000);
    let mut gone = false;
    for i in 0..400 {
        event_reaches_fast_reader(&mut lock, &mut fast, "lock:F1", i, &pad).await;
        if !device_names(&hub).await.iter().any(|n| n == "slow") {
            gone = true;
            break;
        }
    }
    assert!(gone, "slow reader was never disconnected");
    // The slow socket finds a policy close at the end of its backlog.
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), slow.ws.next()).await {
        if let Message::Close(f) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert!(matches!(code, Some(1008) | None), "got {code:?}");
}

/// Upgrades are normally answered by the listener on a fresh connection; one that arrives on
/// a connection already used for an HTTP request (a kept-alive client) goes through hyper
/// and must work the same way.
#[tokio::test]
async fn an_upgrade_on_a_kept_alive_connection_works() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start().await;
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    // A plain GET first: answered 400 and the connection kept open.
    tcp.write_all(b"GET /socket/websocket?vsn=2.0.0&name=kept HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("a response")
            .unwrap();
        assert_eq!(n, 1, "connection kept open after the 400");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 0"),
        "{head}"
    );

    let url = hub.ws_url("vsn=2.0.0&name=kept");
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "phoenix".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
        .await
        .expect("upgrade on the same connection");
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "phoenix");
    let mut c = TestClient { ws };
    c.send(json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        c.recv().await,
        json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    let joined = c.join("lock:kept-1", "2", json!({})).await;
    assert_eq!(reply_of(&joined).0, "ok", "{joined}");

    // The same refusals apply on that path.
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    tcp.write_all(b"GET /relay HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 400"));
    let bad = hub.ws_url("vsn=9.9.9&name=kept2");
    let (status, _) =
        match tokio_tungstenite::client_async(bad.as_str(), MaybeTlsStream::Plain(tcp)).await {
            Ok(_) => panic!("a bad vsn must be refused"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), ()),
            Err(e) => panic!("{e}"),
        };
    assert_eq!(status, 403);
}

/// A client may send its first frame right behind the upgrade request, in the same packet;
/// the listener read both and the frame must not be lost.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start().await;
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let payload = br#"[null,"1","phoenix","heartbeat",{}]"#;
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut bytes = b"GET /socket/websocket?vsn=2.0.0&name=eager HTTP/1.1\r\nHost: x\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    // A masked text frame, as clients must send.
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&bytes).await.unwrap();

    let mut got = Vec::new();
    let want = br#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#;
    while !got.windows(want.len()).any(|w| w == want) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the heartbeat's reply")
            .unwrap();
        assert!(
            n > 0,
            "closed before the reply: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 "));
}
