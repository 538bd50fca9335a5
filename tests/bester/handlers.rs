//! Message handlers: the example handler process, misbehaving handlers, `sendHandler`
//! chains, the relay bridge, slow clients.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::{BesterClient, HubBuilder, PASSWORD, TestHub, status};
use crate::support::{eventually, eventually_within};

async fn with_users(hub: &TestHub, names: &[&str]) {
    for n in names {
        hub.add_user(n, PASSWORD).await;
    }
}

/// alice → upper handler → bob, checked end to end.
async fn assert_routes(
    hub: &TestHub,
    from: &mut crate::common::BesterClient,
    to: &mut crate::common::BesterClient,
    to_name: &str,
) {
    let r = from
        .call("upper", json!({"text": "still here", "to": [to_name]}))
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    let d = to.recv_delivery().await;
    assert_eq!(d["payload"]["data"]["text"], "STILL HERE");
    let _ = hub;
}

#[tokio::test]
async fn a_message_goes_through_the_example_handler_to_another_client() {
    let hub = HubBuilder::new().example_handler("upper").start().await;
    with_users(&hub, &["alice", "bob"]).await;
    let mut alice = hub.login("alice").await;
    let mut bob = hub.login("bob").await;

    alice
        .send(&json!({"payload": {"type": "upper", "data": {"text": "hello bob", "to": ["bob"]}, "id": "m1"}}))
        .await;
    let d = bob.recv().await;
    assert_eq!(
        d,
        json!({"header": {"status": "ok", "from": "alice"},
               "payload": {"type": "upper", "data": {"text": "HELLO BOB"}}})
    );
    let r = alice.recv().await;
    assert_eq!(
        r,
        json!({"header": {"status": "ok"},
               "payload": {"type": "upper", "id": "m1", "data": {"delivered": ["bob"]}}})
    );

    // Every connection of a user receives it, the sender included when named.
    let mut bob2 = hub.login("bob").await;
    let r = alice
        .call(
            "upper",
            json!({"text": "all", "to": ["bob", "alice", "nobody"]}),
        )
        .await;
    assert_eq!(status(&r), "undelivered");
    assert_eq!(r["payload"]["data"]["delivered"], json!(["bob", "alice"]));
    assert_eq!(
        r["payload"]["data"]["undelivered"],
        json!({"nobody": "not connected"})
    );
    assert_eq!(bob.recv_delivery().await["payload"]["data"]["text"], "ALL");
    assert_eq!(bob2.recv_delivery().await["payload"]["data"]["text"], "ALL");
    assert_eq!(alice.recv_delivery().await["header"]["from"], "alice");

    // A failure status from the handler itself.
    let r = alice.call("upper", json!("not an object")).await;
    assert_eq!(status(&r), "handler_error");
    assert_eq!(r["payload"]["data"]["status"], "1");
}

#[tokio::test]
async fn unknown_type() {
    let hub = HubBuilder::new().start().await;
    with_users(&hub, &["alice"]).await;
    let mut alice = hub.login("alice").await;
    let r = alice.call("nothing-handles-this", json!({})).await;
    assert_eq!(status(&r), "unknown_type");
    assert_eq!(r["payload"]["type"], "nothing-handles-this");
    assert_eq!(status(&alice.call("list_clients", json!(null)).await), "ok");
}

#[tokio::test]
async fn a_handler_that_is_down_gives_an_error_and_others_carry_on() {
    let hub = HubBuilder::new()
        .example_handler("upper")
        .absent_handler("down")
        .start()
        .await;
    with_users(&hub, &["alice", "bob", "carol"]).await;
    let mut alice = hub.login("alice").await;
    let mut bob = hub.login("bob").await;
    let mut carol = hub.login("carol").await;

    let started = std::time::Instant::now();
    let r = alice.call("down", json!({"to": ["bob"]})).await;
    assert_eq!(status(&r), "handler_unavailable", "{r}");
    assert_eq!(r["payload"]["data"]["handler"], "down");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no waiting on a dead socket"
    );

    assert_routes(&hub, &mut carol, &mut bob, "bob").await;
    // alice's connection is fine too.
    assert_routes(&hub, &mut alice, &mut bob, "bob").await;
}

#[tokio::test]
async fn a_slow_handler_times_out_while_others_carry_on() {
    let hub = HubBuilder::new()
        .example_handler("upper")
        .fixture_handler("slow", "slow")
        .config(|c| c.bester.handler_timeout = std::time::Duration::from_millis(1_500))
        .start()
        .await;
    with_users(&hub, &["alice", "bob", "carol"]).await;
    let mut alice = hub.login("alice").await;
    let mut bob = hub.login("bob").await;
    let mut carol = hub.login("carol").await;

    let started = std::time::Instant::now();
    alice
        .send(&json!({"payload": {"type": "slow", "data": {}, "id": "s"}}))
        .await;
    // While alice waits, carol's message goes through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_routes(&hub, &mut carol, &mut bob, "bob").await;
    assert!(started.elapsed() < Duration::from_millis(1_400));

    let r = alice.recv().await;
    assert_eq!(status(&r), "handler_timeout");
    assert_eq!(r["payload"]["id"], "s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_400) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_routes(&hub, &mut alice, &mut bob, "bob").await;
}

#[tokio::test]
async fn malformed_replies_give_an_error_and_others_carry_on() {
    let hub = HubBuilder::new()
        .example_handler("upper")
        .fixture_handler("garbage", "garbage")
        .fixture_handler("badshape", "badshape")
        .fixture_handler("huge", "huge")
        .fixture_handler("fail", "fail")
        .start()
        .await;
    with_users(&hub, &["alice", "bob"]).await;
    let mut alice = hub.login("alice").await;
    let mut bob = hub.login("bob").await;

    for kind in ["garbage", "badshape", "huge"] {
        let r = alice.call(kind, json!({"to": ["bob"]})).await;
        assert_eq!(status(&r), "handler_invalid_reply", "{kind}: {r}");
        assert_eq!(r["payload"]["type"], kind);
        assert_routes(&hub, &mut alice, &mut bob, "bob").await;
    }
    let r = alice.call("fail", json!({})).await;
    assert_eq!(status(&r), "handler_error");
    assert_eq!(r["payload"]["data"]["status"], "7");
    assert_eq!(r["payload"]["data"]["data"], json!({"why": "no"}));
    bob.expect_silence(200).await;
}

#[tokio::test]
async fn replies_in_the_original_servers_shape_are_accepted() {
    let hub = HubBuilder::new()
        .fixture_handler("orig", "original")
        .start()
        .await;
    with_users(&hub, &["alice", "bob"]).await;
    let mut alice = hub.login("alice").await;
    let mut bob = hub.login("bob").await;
    let r = alice.call("orig", json!({"to": ["bob"], "n": 1})).await;
    assert_eq!(status(&r), "ok", "{r}");
    let d = bob.recv_delivery().await;
    assert_eq!(d["payload"]["type"], "orig");
    assert_eq!(d["payload"]["data"], json!({"to": ["bob"], "n": 1}));
}

#[tokio::test]
async fn a_crashing_handler_is_restarted_by_the_hub() {
    let hub = HubBuilder::new()
        .fixture_handler("crash", "crash")
        .start()
        .await;
    with_users(&hub, &["alice"]).await;
    let mut alice = hub.login("alice").await;
    let r = alice.call("crash", json!({})).await;
    assert_eq!(status(&r), "handler_unavailable");
    assert!(
        r["payload"]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("without replying"),
        "{r}"
    );
    // The hub starts it again: the process accepts once more (and crashes once more).
    eventually("the crashed handler is started again", async || {
        let r = alice.call("crash", json!({})).await;
        assert_eq!(status(&r), "handler_unavailable");
        let error = r["payload"]["data"]["error"].as_str().unwrap_or_default();
        error.contains("without replying").then_some(())
    })
    .await;
}

#[tokio::test]
async fn send_handler_chains_are_followed_up_to_the_limit() {
    let hub = HubBuilder::new()
        .example_handler("upper")
        .example_handler("shout")
        .config(|c| c.bester.max_chain = 3)
        .start()
        .await;
    with_users(&hub, &["alice", "bob"]).await;
    let mut alice = hub.login("alice").await;
    let mut bob = hub.login("bob").await;

    // upper → shout → upper: three handlers, the limit.
    let r = alice
        .call(
            "upper",
            json!({"text": "chained", "to": ["bob"], "chain": ["shout", "upper"]}),
        )
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    let d = bob.recv_delivery().await;
    assert_eq!(d["payload"]["data"]["text"], "CHAINED");
    assert_eq!(d["payload"]["type"], "upper");

    let r = alice
        .call(
            "shout",
            json!({"text": "x", "to": ["bob"], "chain": ["upper"]}),
        )
        .await;
    assert_eq!(status(&r), "ok");
    assert_eq!(bob.recv_delivery().await["payload"]["type"], "upper");

    // Four: refused, nothing delivered.
    let r = alice
        .call(
            "upper",
            json!({"text": "too deep", "to": ["bob"], "chain": ["shout", "upper", "shout"]}),
        )
        .await;
    assert_eq!(status(&r), "chain_too_deep", "{r}");
    // A chain to a type nobody handles.
    let r = alice
        .call(
            "upper",
            json!({"text": "x", "to": ["bob"], "chain": ["nope"]}),
        )
        .await;
    assert_eq!(status(&r), "unknown_type");
    bob.expect_silence(200).await;
}

#[tokio::test]
async fn send_clients_reaches_a_relay_device() {
    let hub = HubBuilder::new().example_handler("upper").start().await;
    with_users(&hub, &["alice"]).await;
    let mut alice = hub.login("alice").await;

    let (mut lamp, _) = tokio_tungstenite::connect_async(format!("ws://{}/relay", hub.addr))
        .await
        .unwrap();
    lamp.send(WsMessage::Text(
        json!({"target": "server", "payload": {"command": "register", "device_name": "lamp"}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ack = lamp.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("true"), "{ack:?}");

    let r = alice
        .call("upper", json!({"text": "lights on", "to": ["lamp"]}))
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    let packet = tokio::time::timeout(Duration::from_secs(5), lamp.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let packet: Value = serde_json::from_str(packet.to_text().unwrap()).unwrap();
    assert_eq!(
        packet,
        json!({"sender": "bester:alice", "payload": {"type": "upper", "data": {"text": "LIGHTS ON"}}})
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_cannot_stall_the_others() {
    let hub = HubBuilder::new()
        .example_handler("upper")
        .config(|c| c.outbound_queue = 4)
        .start()
        .await;
    with_users(&hub, &["alice", "bob", "carol"]).await;
    let mut alice = hub.login("alice").await;
    let _bob = hub.login("bob").await; // never reads again
    let mut carol = hub.login("carol").await;

    let text = "x".repeat(200_000);
    let mut dropped = false;
    for _ in 0..200 {
        let r = alice
            .call("upper", json!({"text": text, "to": ["bob"]}))
            .await;
        if status(&r) == "undelivered" {
            dropped = true;
            break;
        }
        assert_eq!(
            status(&r),
            "ok",
            "{}",
            &r.to_string()[..200.min(r.to_string().len())]
        );
    }
    assert!(dropped, "the slow reader was never cut off");
    let clients = carol.call("list_clients", json!(null)).await;
    assert_eq!(
        clients["payload"]["data"]["clients"],
        json!(["alice", "carol"])
    );
    let r = alice
        .call("upper", json!({"text": "hi", "to": ["carol"]}))
        .await;
    assert_eq!(status(&r), "ok");
    assert_eq!(carol.recv_delivery().await["payload"]["data"]["text"], "HI");
}

/// A client that stops reading is dropped by the send timeout (`TCP_USER_TIMEOUT`), not
/// kept while its backlog sits in kernel buffers; the sender is unharmed.
#[tokio::test]
async fn a_reader_with_a_closed_window_is_dropped_by_the_send_timeout() {
    let hub = HubBuilder::new()
        .example_handler("upper")
        .config(|c| {
            c.send_timeout = std::time::Duration::from_secs(1);
            // The queue policy must not be what drops it.
            c.outbound_queue = 10_000;
        })
        .start()
        .await;
    with_users(&hub, &["alice", "bob"]).await;
    let mut alice = hub.login("alice").await;
    // A tiny receive buffer, so a few KiB close the stalled reader's window.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut bob = BesterClient::over(sock.connect(hub.bester()).await.unwrap());
    let r = bob.authenticate("bob", PASSWORD).await;
    assert_eq!(status(&r), "ok", "{r}");

    // bob reads nothing from here on: 16 messages of 16 KiB.
    let text = "w".repeat(16 * 1024);
    for _ in 0..16 {
        let r = alice
            .call("upper", json!({"text": text, "to": ["bob"]}))
            .await;
        assert!(matches!(status(&r), "ok" | "undelivered"), "{r}");
    }
    let what = "the stalled reader is dropped";
    eventually_within(Duration::from_secs(20), what, async || {
        let r = alice
            .call("upper", json!({"text": "still there?", "to": ["bob"]}))
            .await;
        (status(&r) == "undelivered").then_some(())
    })
    .await;
    let r = alice
        .call("upper", json!({"text": "me", "to": ["alice"]}))
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    assert_eq!(alice.recv_delivery().await["payload"]["data"]["text"], "ME");
}
