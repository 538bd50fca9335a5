//! `sendServers` between two hubs, peer authentication, hop limits.

use serde_json::json;

use crate::common::{HubBuilder, PASSWORD, TestHub, status};

const SECRET: &str = "a long shared secret";

/// Hub B: knows peer `hub-a` by secret; bob is connected to it.
async fn hub_b() -> TestHub {
    let b = HubBuilder::new()
        .name("hub-b")
        .example_handler("upper")
        .peer("hub-a", None, SECRET)
        .start()
        .await;
    b.add_user("bob", PASSWORD).await;
    b
}

/// Hub A, sending to B with `secret`.
async fn hub_a(b: &TestHub, secret: &str) -> TestHub {
    let a = HubBuilder::new()
        .name("hub-a")
        .example_handler("upper")
        .peer("hub-b", Some(b.bester()), secret)
        .start()
        .await;
    a.add_user("alice", PASSWORD).await;
    a
}

#[tokio::test]
async fn send_servers_reaches_a_client_of_the_peer() {
    let b = hub_b().await;
    let a = hub_a(&b, SECRET).await;
    let mut bob = b.login("bob").await;
    let mut alice = a.login("alice").await;
    let target = b.bester().to_string();

    let r = alice
        .call(
            "upper",
            json!({"text": "hello from a", "to": ["bob"], "servers": [target]}),
        )
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    assert_eq!(r["payload"]["data"]["delivered"], json!([target]));
    let d = bob.recv_delivery().await;
    assert_eq!(
        d,
        json!({"header": {"status": "ok", "from": "server:hub-a"},
               "payload": {"type": "upper", "data": {"text": "HELLO FROM A"}}})
    );

    // By the peer's name too.
    let r = alice
        .call(
            "upper",
            json!({"text": "again", "to": ["bob"], "servers": ["hub-b"]}),
        )
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    assert_eq!(
        bob.recv_delivery().await["payload"]["data"]["text"],
        "AGAIN"
    );

    // What B answered about its own delivery comes back: bob2 is not on B.
    let r = alice
        .call(
            "upper",
            json!({"text": "x", "to": ["bob2"], "servers": ["hub-b"]}),
        )
        .await;
    assert_eq!(status(&r), "undelivered");
    assert_eq!(
        r["payload"]["data"]["undelivered"],
        json!({"hub-b": "undelivered"})
    );

    // A target that is not a configured peer is not contacted.
    let r = alice
        .call(
            "upper",
            json!({"text": "x", "to": ["bob"], "servers": ["10.255.255.1:2222"]}),
        )
        .await;
    assert_eq!(status(&r), "undelivered");
    assert_eq!(
        r["payload"]["data"]["undelivered"],
        json!({"10.255.255.1:2222": "unknown peer"})
    );
    bob.expect_silence(200).await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_peer() {
    let b = hub_b().await;
    let a = hub_a(&b, "not the shared secret").await;
    let mut bob = b.login("bob").await;
    let mut alice = a.login("alice").await;
    let target = b.bester().to_string();

    let r = alice
        .call(
            "upper",
            json!({"text": "hi", "to": ["bob"], "servers": [target]}),
        )
        .await;
    assert_eq!(status(&r), "undelivered", "{r}");
    assert_eq!(
        r["payload"]["data"]["undelivered"],
        json!({ target: "authentication_failed" })
    );
    bob.expect_silence(300).await;
    // B is fine.
    assert_eq!(status(&bob.call("list_clients", json!(null)).await), "ok");
}

#[tokio::test]
async fn a_peer_connection_speaks_the_protocol_directly() {
    let b = hub_b().await;
    let mut bob = b.login("bob").await;

    // A hand-written peer: the first message authenticates it and is dispatched.
    let mut peer = b.connect().await;
    peer.send(&json!({
        "header": {"scope": "server", "authentication": {"username": "hub-a", "password": SECRET}},
        "payload": {"type": "upper", "data": {"text": "direct", "to": ["bob"]}, "id": 1}
    }))
    .await;
    let r = peer.recv().await;
    assert_eq!(status(&r), "ok", "{r}");
    assert_eq!(r["payload"]["id"], 1);
    assert_eq!(bob.recv_delivery().await["header"]["from"], "server:hub-a");
    // Later messages on the same connection need no authentication.
    let r = peer.call("list_clients", json!(null)).await;
    assert_eq!(r["payload"]["data"]["clients"], json!(["bob"]));
    // A peer is not a user.
    assert_eq!(
        status(&peer.call("logout", json!(null)).await),
        "bad_request"
    );

    // Hop limit: a message that has already travelled too far is refused.
    let mut peer = b.connect().await;
    peer.send(&json!({
        "header": {"scope": "server", "hops": 99, "authentication": {"username": "hub-a", "password": SECRET}},
        "payload": {"type": "upper", "data": {"text": "loop", "to": ["bob"]}, "id": 2}
    }))
    .await;
    assert_eq!(status(&peer.recv().await), "chain_too_deep");

    // A wrong secret: refused and closed.
    let mut peer = b.connect().await;
    peer.send(&json!({
        "header": {"scope": "server", "authentication": {"username": "hub-a", "password": "guess"}},
        "payload": {"type": "upper", "data": {"text": "x", "to": ["bob"]}}
    }))
    .await;
    assert_eq!(status(&peer.recv().await), "authentication_failed");
    peer.expect_closed().await;
    bob.expect_silence(200).await;
}
