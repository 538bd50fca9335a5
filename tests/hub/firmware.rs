//! The lock firmware's habits, reproduced rather than trusted to our own client's tolerance:
//! its hub client (`phoenix_gen_socket_client` 3.0 on `websocket_client` 1.5) connects with
//! `vsn=2.0.0` and sends V2 arrays in binary WebSocket frames (other releases send V1
//! objects in binary frames without `vsn`), handles only `mode:pair` and `event` pushes on
//! `lock:<serial>` (anything else crashes it), and never notices a close frame (only a
//! dropped TCP connection makes it reconnect).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::common::TestHub;

/// Which serializer the firmware's client library speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wire {
    /// `vsn=2.0.0`, `[join_ref, ref, topic, event, payload]` in binary frames.
    V2Binary,
    /// No `vsn`, `{"topic", "event", "payload", "ref"}` in binary frames.
    V1Binary,
}

/// How a server-initiated end of the connection looked to the client.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// A WebSocket close frame: this firmware never notices it and stays offline.
    CloseFrame(u16),
    /// The TCP connection ended without a close frame: the firmware reconnects.
    Dropped,
}

/// A frame the hub sent, normalised to (join_ref, ref, topic, event, payload).
#[derive(Debug, Clone)]
struct In {
    ref_: Value,
    topic: String,
    event: String,
    payload: Value,
}

struct Firmware {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    wire: Wire,
    /// Every push seen on a lock topic that the firmware has no handler for.
    crashes: Vec<In>,
}

/// Events the firmware's hub client handles on `lock:<serial>` (plus the replies and the
/// channel-level closes every Phoenix client handles).
fn firmware_handles(event: &str) -> bool {
    matches!(
        event,
        "mode:pair" | "event" | "phx_reply" | "phx_close" | "phx_error"
    )
}

impl Firmware {
    async fn connect(hub: &TestHub, name: &str, wire: Wire) -> Firmware {
        let query = match wire {
            Wire::V2Binary => format!("vsn=2.0.0&name={name}"),
            Wire::V1Binary => format!("name={name}"),
        };
        let (ws, _) = connect_async(hub.ws_url(&query))
            .await
            .expect("firmware connects");
        Firmware {
            ws,
            wire,
            crashes: Vec::new(),
        }
    }

    async fn send(&mut self, join_ref: &str, ref_: &str, topic: &str, event: &str, p: Value) {
        let frame = match self.wire {
            Wire::V2Binary => json!([join_ref, ref_, topic, event, p]),
            Wire::V1Binary => json!({"topic": topic, "event": event, "payload": p, "ref": ref_}),
        };
        self.ws
            .send(Message::Binary(frame.to_string().into_bytes().into()))
            .await
            .expect("send");
    }

    fn parse(&self, text: &str) -> In {
        let v: Value = serde_json::from_str(text).expect("hub sends JSON");
        match self.wire {
            Wire::V2Binary => In {
                ref_: v[1].clone(),
                topic: v[2].as_str().expect("topic").to_owned(),
                event: v[3].as_str().expect("event").to_owned(),
                payload: v[4].clone(),
            },
            Wire::V1Binary => In {
                ref_: v["ref"].clone(),
                topic: v["topic"].as_str().expect("topic").to_owned(),
                event: v["event"].as_str().expect("event").to_owned(),
                payload: v["payload"].clone(),
            },
        }
    }

    /// The next data frame within 5 s, recorded as a crash when the firmware could not
    /// handle it.
    async fn recv(&mut self) -> In {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("socket open")
                .expect("frame ok");
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8(b.to_vec()).expect("utf-8 JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a data frame, got {other:?}"),
            };
            let frame = self.parse(&text);
            if frame.topic.starts_with("lock:") && !firmware_handles(&frame.event) {
                self.crashes.push(frame.clone());
            }
            return frame;
        }
    }

    async fn recv_reply(&mut self, ref_: &str) -> (String, Value) {
        loop {
            let f = self.recv().await;
            if f.event == "phx_reply" && f.ref_ == json!(ref_) {
                let status = f.payload["status"].as_str().expect("status").to_owned();
                return (status, f.payload["response"].clone());
            }
        }
    }

    async fn request(&mut self, ref_: &str, topic: &str, event: &str, p: Value) -> (String, Value) {
        self.send("1", ref_, topic, event, p).await;
        self.recv_reply(ref_).await
    }

    async fn recv_event(&mut self, event: &str) -> In {
        loop {
            let f = self.recv().await;
            if f.event == event {
                return f;
            }
        }
    }

    /// Reads everything that arrives for `ms` milliseconds.
    async fn drain(&mut self, ms: u64) {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, self.ws.next()).await {
            if let Message::Text(t) = msg {
                let frame = self.parse(&t);
                if frame.topic.starts_with("lock:") && !firmware_handles(&frame.event) {
                    self.crashes.push(frame);
                }
            }
        }
    }

    /// Waits for the hub to end the connection and says how it did.
    async fn ending(&mut self) -> Ending {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("the hub ends the connection within 5 s")
            {
                Some(Ok(Message::Close(frame))) => {
                    return Ending::CloseFrame(frame.map_or(1005, |f| f.code.into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ending::Dropped,
            }
        }
    }
}

/// Pairs `item` with `serial` the way the firmware does it: `mode:pair` in, the same keys
/// plus `serial` back as `pair:complete`.
async fn pair(hub: &TestHub, lock: &mut Firmware, serial: &str, name: &str, item: &str) {
    let (status, req) = hub
        .admin(
            Method::POST,
            &format!("/api/locks/{serial}/pair"),
            Some(json!({"name": name})),
        )
        .await;
    assert_eq!(status, 201, "{req}");
    let push = lock.recv_event("mode:pair").await;
    let mut back = push.payload.clone();
    back["serial"] = json!(item);
    let (status, resp) = lock
        .request("p", &format!("lock:{serial}"), "pair:complete", back)
        .await;
    assert_eq!((status.as_str(), &resp), ("ok", &json!({})));
}

async fn access_request_as_the_firmware_sends_it(wire: Wire) {
    let hub = TestHub::start().await;
    let mut lock = Firmware::connect(&hub, "frontdoor", wire).await;
    let (status, joined) = lock.request("j", "lock:FW-1", "phx_join", json!({})).await;
    assert_eq!(status, "ok", "{joined}");
    let uuid = joined["uuid"].as_str().expect("uuid").to_owned();
    pair(&hub, &mut lock, "FW-1", "Anna", "04:A2:19:7C").await;

    // {"uuid": <the door's UUID>, "device": <the presented item's serial>}
    let (status, resp) = lock
        .request(
            "a1",
            "lock:FW-1",
            "access:request",
            json!({"uuid": uuid, "device": "04:A2:19:7C"}),
        )
        .await;
    assert_eq!(
        (status.as_str(), &resp),
        ("ok", &json!({"access": true, "user": "Anna"}))
    );
    let (status, resp) = lock
        .request(
            "a2",
            "lock:FW-1",
            "access:request",
            json!({"uuid": uuid, "device": "FF:FF:FF:FF"}),
        )
        .await;
    assert_eq!(
        (status.as_str(), &resp),
        ("ok", &json!({"access": false, "user": null}))
    );
    // Another lock's UUID is never decided on this channel.
    let (status, resp) = lock
        .request(
            "a3",
            "lock:FW-1",
            "access:request",
            json!({"uuid": uuid::Uuid::new_v4().to_string(), "device": "04:A2:19:7C"}),
        )
        .await;
    assert_eq!(
        (status.as_str(), &resp),
        ("error", &json!({"reason": "wrong lock"}))
    );
    // Every decision is logged, with the item and the reader.
    let rows = hub
        .rows(
            "SELECT item, device, CAST(granted AS TEXT) FROM access_decisions \
             WHERE lock_serial = 'FW-1' ORDER BY id",
        )
        .await;
    let text = |v: &[&str]| v.iter().map(|s| Some((*s).to_owned())).collect::<Vec<_>>();
    assert_eq!(
        rows,
        vec![
            text(&["04:A2:19:7C", "frontdoor", "1"]),
            text(&["FF:FF:FF:FF", "frontdoor", "0"]),
        ]
    );
    assert!(
        lock.crashes.is_empty(),
        "unhandled pushes: {:?}",
        lock.crashes
    );
}

#[tokio::test]
async fn access_request_v2_arrays_in_binary_frames() {
    access_request_as_the_firmware_sends_it(Wire::V2Binary).await;
}

#[tokio::test]
async fn access_request_v1_objects_in_binary_frames() {
    access_request_as_the_firmware_sends_it(Wire::V1Binary).await;
}

#[tokio::test]
async fn a_lock_gets_only_the_pushes_it_handles() {
    let hub = TestHub::start().await;
    let mut lock = Firmware::connect(&hub, "fw-strict", Wire::V2Binary).await;
    let (status, _) = lock.request("j", "lock:FW-2", "phx_join", json!({})).await;
    assert_eq!(status, "ok");
    let mut watcher = hub.client("watcher").await;
    let r = watcher.join("events:FW-2", "1", json!({})).await;
    assert_eq!(r[4]["status"], "ok");

    // Four state changes in a row took the real firmware down; none may reach it.
    for locked in [false, true, false, true] {
        let (status, _) = hub
            .admin(
                Method::PUT,
                "/api/locks/FW-2/state",
                Some(json!({"locked": locked})),
            )
            .await;
        assert_eq!(status, 200);
        let seen = watcher.recv_event("state").await;
        assert_eq!(
            seen[4],
            json!({"serial": "FW-2", "state": {"locked": locked}})
        );
    }
    pair(&hub, &mut lock, "FW-2", "Ben", "TAG-B").await;
    // Watchers see the completed pairing; the lock does not get it back.
    let seen = watcher.recv_event("pair:complete").await;
    assert_eq!(seen[4]["serial"], "TAG-B");
    lock.drain(300).await;
    assert!(
        lock.crashes.is_empty(),
        "unhandled pushes: {:?}",
        lock.crashes
    );

    // It gets its intended state the way the original hub gave it: in the reset reply.
    let (status, resp) = lock.request("r", "lock:FW-2", "reset", json!({})).await;
    assert_eq!(status, "ok");
    assert_eq!(resp["state"], json!({"locked": true}));
}

#[tokio::test]
async fn a_lock_that_accepts_state_gets_state_pushes() {
    let hub = TestHub::start().await;
    let mut lock = hub.client("fw-new").await;
    let r = lock
        .join("lock:FW-3", "1", json!({"accepts": ["state"]}))
        .await;
    assert_eq!(r[4]["status"], "ok");
    let (status, _) = hub
        .admin(
            Method::PUT,
            "/api/locks/FW-3/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        lock.recv_event("state").await,
        json!(["1", null, "lock:FW-3", "state", {"locked": false}])
    );
    // A malformed accepts is refused, not guessed at.
    let mut bad = hub.client("fw-bad").await;
    let r = bad
        .join("lock:FW-4", "1", json!({"accepts": "state"}))
        .await;
    assert_eq!(
        r[4],
        json!({"status": "error", "response": {"reason": "accepts must be a list of event names"}})
    );
}

#[tokio::test]
async fn server_closes_reach_the_firmware_as_a_dropped_connection() {
    let hub = TestHub::start_with(|c| c.idle_timeout = std::time::Duration::from_secs(1)).await;
    // Admin disconnect.
    let mut lock = Firmware::connect(&hub, "fw-kick", Wire::V2Binary).await;
    lock.request("j", "lock:FW-5", "phx_join", json!({})).await;
    let (status, _) = hub
        .admin(Method::POST, "/api/devices/fw-kick/disconnect", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(lock.ending().await, Ending::Dropped);

    // Replaced by a newer connection of the same device.
    let mut old = Firmware::connect(&hub, "fw-twice", Wire::V1Binary).await;
    old.request("j", "lock:FW-6", "phx_join", json!({})).await;
    let mut new = Firmware::connect(&hub, "fw-twice", Wire::V1Binary).await;
    assert_eq!(old.ending().await, Ending::Dropped);
    new.request("j", "lock:FW-6", "phx_join", json!({})).await;

    // Idle timeout (1 s here).
    assert_eq!(new.ending().await, Ending::Dropped);

    // A client that sends text keeps getting standard close frames.
    let mut browser = hub.client("browser").await;
    browser.join("events", "1", json!({})).await;
    let (status, _) = hub
        .admin(Method::POST, "/api/devices/browser/disconnect", None)
        .await;
    assert_eq!(status, 204);
    let frame = browser.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
}

#[tokio::test]
async fn a_hub_restart_never_strands_a_lock() {
    let hub = TestHub::start().await;
    let mut lock = Firmware::connect(&hub, "fw-restart", Wire::V2Binary).await;
    lock.request("j", "lock:FW-7", "phx_join", json!({})).await;
    let mut browser = hub.client("browser").await;
    browser.join("events", "1", json!({})).await;
    let addr = hub.addr;
    let dir = hub.dir.clone();
    let stopping = tokio::spawn(hub.stop());
    assert_eq!(lock.ending().await, Ending::Dropped);
    let frame = browser.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1012);
    stopping.await.expect("stopped");
    // The lock reconnects to the restarted hub and joins again.
    let hub = TestHub::start_in(dir, addr, |_| {}).await;
    let mut lock = Firmware::connect(&hub, "fw-restart", Wire::V2Binary).await;
    let (status, _) = lock.request("j", "lock:FW-7", "phx_join", json!({})).await;
    assert_eq!(status, "ok");
}

#[tokio::test]
async fn close_frames_always_restores_standard_closes() {
    let hub =
        TestHub::start_with(|c| c.phoenix.close_frames = homehub::config::CloseFrames::Always)
            .await;
    let mut lock = Firmware::connect(&hub, "fw-std", Wire::V2Binary).await;
    lock.request("j", "lock:FW-8", "phx_join", json!({})).await;
    let (status, _) = hub
        .admin(Method::POST, "/api/devices/fw-std/disconnect", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(lock.ending().await, Ending::CloseFrame(1001));
}

#[tokio::test]
async fn a_new_lock_has_the_lock_feature_flag() {
    let hub = TestHub::start().await;
    let mut lock = Firmware::connect(&hub, "fw-new", Wire::V2Binary).await;
    let (_, joined) = lock.request("j", "lock:FW-9", "phx_join", json!({})).await;
    assert_eq!(joined["feature_flags"], json!(["lock"]));
    let hub2 =
        TestHub::start_with(|c| c.lock_feature_flags = vec!["lock".into(), "nfc".into()]).await;
    let mut lock = Firmware::connect(&hub2, "fw-new", Wire::V2Binary).await;
    let (_, joined) = lock.request("j", "lock:FW-9", "phx_join", json!({})).await;
    assert_eq!(joined["feature_flags"], json!(["lock", "nfc"]));
}

#[tokio::test]
async fn a_dropped_tcp_connection_is_logged_as_1006() {
    let hub = tokio::task::spawn_blocking(crate::common::HubProcess::start)
        .await
        .expect("hub process");
    let url = format!(
        "ws://{}/socket/websocket?vsn=2.0.0&name=fw-unplugged",
        hub.addr
    );
    let (mut ws, _) = connect_async(url).await.expect("connects");
    ws.send(Message::Binary(
        json!(["1", "1", "lock:FW-10", "phx_join", {}])
            .to_string()
            .into_bytes()
            .into(),
    ))
    .await
    .expect("join");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert!(
        reply.to_text().expect("text").contains("\"ok\""),
        "{reply:?}"
    );
    // Pull the plug: the TCP connection goes away without a close frame.
    drop(ws);
    let line = crate::common::eventually("the hub logs the disconnect", || async {
        hub.log()
            .lines()
            .find(|l| l.contains("disconnected") && l.contains("fw-unplugged"))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains("close_code=Some(1006)"), "{line}");
}
