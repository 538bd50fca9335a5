//! The Phoenix session rules (§3–§5 of `shared/docs/phoenix-protocol.md`) without a
//! socket: a [`Session`] on a hub with a temp SQLite file ([`TestHub`]) and a registry
//! connection, fed V2 frames through the codec, its answers encoded back to wire JSON.
//! Everything is asserted as frames in and frames out, so the tests hold whatever types
//! the session uses inside.

use serde_json::{Value, json};

use super::session::Session;
use super::{Vsn, WireFrame};
use crate::config::Config;
use crate::core::Door;
use crate::core::outbox::Receiver;
use crate::services::testing::TestHub;

/// One Phoenix client of a unit-test hub: its session and its outbound queue.
pub struct Client {
    pub session: Session,
    rx: Receiver,
}

/// A topic the hub serves.
pub fn topic(name: &str) -> crate::core::Topic {
    crate::core::Topic::parse(name).expect("a hub topic")
}

/// Encodes a frame as the V2 serializer puts it on the wire.
fn wire(frame: Option<WireFrame>) -> Option<Value> {
    match frame? {
        WireFrame::Text(t) => Some(serde_json::from_str(t.as_str()).expect("JSON on the wire")),
        WireFrame::Binary(_) => panic!("unexpected binary frame"),
    }
}

impl Client {
    /// A V2 socket named `name` on `hub`.
    pub fn new(hub: &TestHub, name: &str) -> Client {
        let (conn, rx) = hub.connect(Some(name), Door::Phoenix);
        Client {
            session: Session::new(crate::doors::phoenix::Ctx::new(hub), conn, Vsn::V2),
            rx,
        }
    }

    /// Sends one V2 frame; returns the frames the session answers with, in order.
    pub async fn send(&mut self, frame: Value) -> Vec<Value> {
        let text = frame.to_string();
        let msg = Vsn::V2
            .decode(text.as_bytes(), false)
            .expect("a well-formed frame");
        let mut out = Vec::new();
        self.session.handle(msg, &mut out).await;
        out.iter().filter_map(|f| wire(Vsn::V2.encode(f))).collect()
    }

    /// Sends one frame that must be answered by exactly one frame; returns it.
    pub async fn one(&mut self, frame: Value) -> Value {
        let mut out = self.send(frame).await;
        assert_eq!(out.len(), 1, "one answer expected: {out:?}");
        out.remove(0)
    }

    /// What the hub queued for this socket (broadcasts, pushes, relay packets), as the
    /// session writes it.
    pub fn queued(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(item) = self.rx.try_recv() {
            frames.extend(wire(self.session.outbound(item)));
        }
        frames
    }
}

/// `[join_ref, ref, topic, "phx_reply", {"status", "response"}]`.
pub fn reply(jr: Value, r: &str, topic: &str, status: &str, response: Value) -> Value {
    json!([jr, r, topic, "phx_reply", { "status": status, "response": response }])
}

fn unmatched(r: &str, topic: &str) -> Value {
    reply(
        Value::Null,
        r,
        topic,
        "error",
        json!({ "reason": "unmatched topic" }),
    )
}

#[tokio::test]
async fn heartbeat_is_answered_by_the_socket_with_a_null_join_ref() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    let answer = c
        .one(json!(["ignored", "12", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(answer, reply(Value::Null, "12", "phoenix", "ok", json!({})));
}

#[tokio::test]
async fn join_replies_ok_with_the_clients_join_ref() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    let answer = c.one(json!(["3", "3", "events", "phx_join", {}])).await;
    assert_eq!(answer, reply(json!("3"), "3", "events", "ok", json!({})));
    // join_ref and ref may differ: the reply carries the join_ref field (§3.1).
    let answer = c.one(json!(["0", "5", "events:A1", "phx_join", {}])).await;
    assert_eq!(answer, reply(json!("0"), "5", "events:A1", "ok", json!({})));
    // Refs are echoed as the JSON the client sent, numbers included.
    let answer = c.one(json!([7, 8, "relay", "phx_join", {}])).await;
    assert_eq!(
        answer.as_array().expect("a frame")[..2],
        [json!(7), json!(8)]
    );
}

#[tokio::test]
async fn a_join_without_join_ref_uses_its_ref_for_the_instance() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    let answer = c.one(json!([null, "4", "events", "phx_join", {}])).await;
    assert_eq!(answer, reply(json!("4"), "4", "events", "ok", json!({})));
    // Its replies carry the join's ref; phx_close carries the (null) join_ref.
    let left = c.send(json!([null, "9", "events", "phx_leave", {}])).await;
    assert_eq!(
        left,
        [
            reply(Value::Null, "9", "events", "ok", json!({})),
            json!([null, null, "events", "phx_close", {}]),
        ]
    );
}

#[tokio::test]
async fn a_second_join_of_a_joined_topic_closes_the_old_instance_once() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["3", "3", "events", "phx_join", {}])).await;
    // §3.6: the new join's reply, then exactly one phx_close with the old join_ref.
    let answers = c.send(json!(["11", "11", "events", "phx_join", {}])).await;
    assert_eq!(
        answers,
        [
            reply(json!("11"), "11", "events", "ok", json!({})),
            json!(["3", "3", "events", "phx_close", {}]),
        ]
    );
    // The old join_ref is stale now: its messages are dropped without a reply (§3.3).
    assert_eq!(
        c.send(json!(["3", "12", "events", "x", {}])).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn a_refused_second_join_still_closes_the_old_instance() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["3", "3", "relay", "phx_join", {}])).await;
    let answers = c
        .send(json!(["4", "4", "relay", "phx_join", "not an object"]))
        .await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0][4]["status"], "error");
    assert_eq!(
        answers[0].as_array().expect("a frame")[..2],
        [json!("4"), json!("4")]
    );
    assert_eq!(answers[1], json!(["3", "3", "relay", "phx_close", {}]));
}

#[tokio::test]
async fn leave_replies_then_closes_and_the_topic_is_unmatched_afterwards() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["3", "3", "events", "phx_join", {}])).await;
    let answers = c.send(json!(["3", "9", "events", "phx_leave", {}])).await;
    assert_eq!(
        answers,
        [
            reply(json!("3"), "9", "events", "ok", json!({})),
            json!(["3", "3", "events", "phx_close", {}]),
        ]
    );
    // §3.4 / checklist 32: after a leave, the topic answers "unmatched topic".
    let answer = c.one(json!(["3", "10", "events", "x", {}])).await;
    assert_eq!(answer, unmatched("10", "events"));
}

#[tokio::test]
async fn leave_of_a_topic_not_joined_is_only_acknowledged() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    let answer = c.one(json!(["5", "6", "events", "phx_leave", {}])).await;
    assert_eq!(answer, reply(json!("5"), "6", "events", "ok", json!({})));
    // A leave with a stale join_ref of a joined topic is ignored.
    c.one(json!(["3", "3", "events", "phx_join", {}])).await;
    assert_eq!(
        c.send(json!(["2", "7", "events", "phx_leave", {}])).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn unknown_topics_and_unjoined_topics_are_unmatched() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    // No route (§3.2): null join_ref.
    let answer = c.one(json!(["6", "6", "nowhere", "phx_join", {}])).await;
    assert_eq!(answer, unmatched("6", "nowhere"));
    // A route exists but the topic is not joined here (§3.3, checklist 27).
    let answer = c.one(json!(["3", "8", "events", "new_msg", {}])).await;
    assert_eq!(answer, unmatched("8", "events"));
    let answer = c.one(json!([null, "9", "lock:A1", "event", {}])).await;
    assert_eq!(answer, unmatched("9", "lock:A1"));
}

#[tokio::test]
async fn a_socket_may_hold_only_so_many_channels() {
    let hub = TestHub::with(|c: &mut Config| c.phoenix.max_channels = 1).await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["1", "1", "events", "phx_join", {}])).await;
    let answer = c.one(json!(["2", "2", "events:A1", "phx_join", {}])).await;
    let refused = json!({ "reason": "too many channels joined" });
    assert_eq!(
        answer,
        reply(json!("2"), "2", "events:A1", "error", refused)
    );
    // Rejoining a joined topic is not one more.
    let answers = c.send(json!(["3", "3", "events", "phx_join", {}])).await;
    assert_eq!(
        answers[0],
        reply(json!("3"), "3", "events", "ok", json!({}))
    );
}

#[tokio::test]
async fn pushes_past_the_rate_limit_are_refused_and_heartbeats_are_not() {
    let hub = TestHub::with(|c: &mut Config| {
        c.rate_limit = 1;
        c.rate_burst = 2;
    })
    .await;
    let mut c = Client::new(&hub, "lamp");
    // The store is open; from here on nothing waits for it, so time can stand still.
    tokio::time::pause();
    c.one(json!(["1", "1", "events", "phx_join", {}])).await;
    c.one(json!(["1", "2", "events", "x", {}])).await;
    let limited = c.one(json!(["1", "3", "events", "x", {}])).await;
    let reason = json!({ "reason": "rate limited" });
    assert_eq!(limited, reply(json!("1"), "3", "events", "error", reason));
    let beat = c.one(json!([null, "4", "phoenix", "heartbeat", {}])).await;
    assert_eq!(beat[4]["status"], "ok");
    // One token a second.
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    let answer = c.one(json!(["1", "5", "events", "x", {}])).await;
    assert_eq!(answer[4]["response"], json!({ "reason": "unknown event" }));
}

#[tokio::test]
async fn broadcasts_reach_joined_topics_only_until_they_are_left() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["3", "3", "events", "phx_join", {}])).await;
    let body = || crate::core::message::OutPayload::json(&json!({"n": 1}));
    hub.registry
        .broadcast(&topic("events"), "state", body(), None);
    hub.registry
        .broadcast(&topic("events:A1"), "state", body(), None);
    assert_eq!(
        c.queued(),
        [json!([null, null, "events", "state", { "n": 1 }])]
    );
    // Pushes to a topic carry the instance's join_ref.
    hub.registry.push_topic(&topic("events"), "state", body());
    assert_eq!(
        c.queued(),
        [json!(["3", null, "events", "state", { "n": 1 }])]
    );
    c.send(json!(["3", "4", "events", "phx_leave", {}])).await;
    hub.registry
        .broadcast(&topic("events"), "state", body(), None);
    assert_eq!(c.queued(), Vec::<Value>::new());
}

#[tokio::test]
async fn a_hub_ended_channel_is_closed_with_phx_close() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["3", "3", "events", "phx_join", {}])).await;
    let conn = c.session.conn().clone();
    conn.send(crate::core::Outbound::EndChannel(std::sync::Arc::new(
        topic("events"),
    )))
    .expect("queued");
    assert_eq!(c.queued(), [json!(["3", "3", "events", "phx_close", {}])]);
    let answer = c.one(json!(["3", "5", "events", "x", {}])).await;
    assert_eq!(answer, unmatched("5", "events"));
}

#[tokio::test]
async fn a_closed_session_leaves_nothing_in_the_registry() {
    let hub = TestHub::new().await;
    let mut c = Client::new(&hub, "lamp");
    c.one(json!(["1", "1", "events", "phx_join", {}])).await;
    c.one(json!(["2", "2", "relay", "phx_join", {}])).await;
    assert_eq!(hub.registry.connection_count(), 1);
    assert!(hub.registry.has_subscribers(&topic("events")));
    assert_eq!(hub.registry.relay.names(), ["lamp"]);
    drop(c);
    assert_eq!(hub.registry.connection_count(), 0);
    assert!(!hub.registry.has_subscribers(&topic("events")));
    assert!(hub.registry.relay.names().is_empty());
}
