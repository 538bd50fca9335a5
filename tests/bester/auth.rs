//! Authentication, built-ins, `payload.id` echo, password changes.

use std::time::Duration;

use serde_json::json;

use crate::common::{HubBuilder, PASSWORD, status};

#[tokio::test]
async fn disabled_by_default() {
    let config =
        homehub::config::Config::default_for("127.0.0.1:0".parse().unwrap(), "sqlite::memory:");
    let server = homehub::app::Server::bind(config).await.unwrap();
    assert_eq!(server.bester_addr(), None);
}

#[tokio::test]
async fn login_succeeds_with_the_right_password() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    let mut c = hub.connect().await;
    let r = c.authenticate("alice", PASSWORD).await;
    assert_eq!(
        r,
        json!({"header": {"status": "ok"}, "payload": {"type": "authenticate", "data": {"username": "alice"}}})
    );
    // Later messages need no authentication block.
    let r = c.call("list_clients", json!(null)).await;
    assert_eq!(status(&r), "ok");
    assert_eq!(r["payload"]["data"]["clients"], json!(["alice"]));
    assert_eq!(r["payload"]["type"], "list_clients");
}

#[tokio::test]
async fn the_first_message_may_carry_a_request_too() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    let mut c = hub.connect().await;
    c.send(&json!({
        "header": {"authentication": {"username": "alice", "password": PASSWORD}, "scope": "client"},
        "payload": {"type": "list_clients", "data": null, "id": 7}
    }))
    .await;
    let r = c.recv().await;
    assert_eq!(status(&r), "ok");
    assert_eq!(r["payload"]["id"], 7);
    assert_eq!(r["payload"]["data"]["clients"], json!(["alice"]));
}

#[tokio::test]
async fn wrong_password_unknown_user_and_missing_credentials_close() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;

    let mut c = hub.connect().await;
    let r = c.authenticate("alice", "wrong password").await;
    assert_eq!(status(&r), "authentication_failed");
    c.expect_closed().await;

    let mut c = hub.connect().await;
    let r = c.authenticate("mallory", PASSWORD).await;
    assert_eq!(status(&r), "authentication_failed");
    c.expect_closed().await;

    // No authentication block at all.
    let mut c = hub.connect().await;
    c.send(&json!({"payload": {"type": "list_clients", "data": null, "id": "x"}}))
        .await;
    let r = c.recv().await;
    assert_eq!(status(&r), "authentication_required");
    assert_eq!(r["payload"]["id"], "x");
    c.expect_closed().await;

    // An authentication block with the wrong types counts as missing.
    let mut c = hub.connect().await;
    c.send(
        &json!({"header": {"authentication": {"username": 1}, "scope": "client"},
                   "payload": {"type": "list_clients"}}),
    )
    .await;
    assert_eq!(status(&c.recv().await), "authentication_required");
    c.expect_closed().await;

    // An unknown scope.
    let mut c = hub.connect().await;
    c.send(&json!({"header": {"authentication": {"username": "alice", "password": PASSWORD}, "scope": "admin"},
                   "payload": {"type": "list_clients"}}))
        .await;
    assert_eq!(status(&c.recv().await), "authentication_required");
    c.expect_closed().await;

    // The failures harmed nobody: alice still logs in.
    let mut c = hub.login("alice").await;
    assert_eq!(status(&c.call("list_clients", json!(null)).await), "ok");
}

#[tokio::test]
async fn server_scope_from_an_unknown_peer_is_refused() {
    let hub = HubBuilder::new()
        .peer("hub-b", None, "the shared secret 123")
        .start()
        .await;
    let mut c = hub.connect().await;
    c.send(&json!({"header": {"scope": "server"}, "payload": {"type": "list_clients"}}))
        .await;
    assert_eq!(status(&c.recv().await), "authentication_failed");
    c.expect_closed().await;

    let mut c = hub.connect().await;
    c.send(&json!({"header": {"scope": "server", "authentication": {"username": "hub-x", "password": "the shared secret 123"}},
                   "payload": {"type": "list_clients"}}))
        .await;
    assert_eq!(status(&c.recv().await), "authentication_failed");
    c.expect_closed().await;
}

#[tokio::test]
async fn ids_are_echoed_and_builtins_work_in_both_shapes() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    let mut c = hub.login("alice").await;

    c.send(&json!({"payload": {"type": "list_clients", "id": 42}}))
        .await;
    let r = c.recv().await;
    assert_eq!(r["payload"]["id"], 42);

    // The original server's `builtin` shape.
    c.send(&json!({"payload": {"type": "builtin", "id": "b1",
                               "data": {"command": {"type": "list_clients", "args": null}}}}))
        .await;
    let r = c.recv().await;
    assert_eq!(status(&r), "ok");
    assert_eq!(r["payload"]["id"], "b1");
    assert_eq!(r["payload"]["type"], "builtin");
    assert_eq!(r["payload"]["data"]["clients"], json!(["alice"]));

    // Without an id the response has none.
    c.send(&json!({"payload": {"type": "list_clients"}})).await;
    let r = c.recv().await;
    assert!(r["payload"].get("id").is_none(), "{r}");

    // A request the hub cannot read: bad_request, and the connection stays open.
    c.send(&json!({"payload": {"type": "change_password", "data": {"new": 1}, "id": 3}}))
        .await;
    let r = c.recv().await;
    assert_eq!(status(&r), "bad_request");
    assert_eq!(r["payload"]["id"], 3);
    c.send(&json!({"payload": {"data": 1}})).await;
    assert_eq!(status(&c.recv().await), "bad_request");
    c.send(&json!({"header": {}})).await;
    assert_eq!(status(&c.recv().await), "bad_request");

    // `close`: answered, then closed.
    c.send(&json!({"payload": {"type": "builtin", "data": {"command": "close"}, "id": "bye"}}))
        .await;
    let r = c.recv().await;
    assert_eq!((status(&r), &r["payload"]["id"]), ("ok", &json!("bye")));
    c.expect_closed().await;
}

#[tokio::test]
async fn logout_then_authenticate_again() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    hub.add_user("bob", PASSWORD).await;
    let mut c = hub.login("alice").await;
    let mut watcher = hub.login("bob").await;

    assert_eq!(status(&c.call("logout", json!(null)).await), "ok");
    let r = watcher.call("list_clients", json!(null)).await;
    assert_eq!(r["payload"]["data"]["clients"], json!(["bob"]));

    // Logged out: the next message must authenticate again; the `authenticate` built-in
    // with arguments does.
    let r = c
        .call(
            "authenticate",
            json!({"username": "bob", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status(&r), "ok");
    assert_eq!(r["payload"]["data"]["username"], "bob");
    assert_eq!(
        c.call("authenticate", json!(null)).await["payload"]["data"]["username"],
        "bob"
    );

    assert_eq!(status(&c.call("logout", json!(null)).await), "ok");
    let r = c.call("list_clients", json!(null)).await;
    assert_eq!(status(&r), "authentication_required");
    c.expect_closed().await;
}

#[tokio::test]
async fn a_password_change_takes_effect_at_the_next_login() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    let mut c = hub.login("alice").await;

    let r = c
        .call(
            "change_password",
            json!({"old_password": "not it at all", "new_password": "new password 1"}),
        )
        .await;
    assert_eq!(status(&r), "wrong_password");
    let r = c
        .call(
            "change_password",
            json!({"old_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_eq!(status(&r), "bad_request");
    let r = c
        .call(
            "change_password",
            json!({"old_password": PASSWORD, "new_password": "new password 1"}),
        )
        .await;
    assert_eq!(status(&r), "ok", "{r}");
    // The session goes on.
    assert_eq!(status(&c.call("list_clients", json!(null)).await), "ok");

    let mut old = hub.connect().await;
    assert_eq!(
        status(&old.authenticate("alice", PASSWORD).await),
        "authentication_failed"
    );
    old.expect_closed().await;
    let mut new = hub.connect().await;
    assert_eq!(
        status(&new.authenticate("alice", "new password 1").await),
        "ok"
    );

    // Set by an administrator: also at the next login.
    let (code, _) = hub
        .admin(
            reqwest::Method::PUT,
            "/api/bester/users/alice/password",
            Some(json!({"password": "admin set this"})),
        )
        .await;
    assert_eq!(code, 204);
    assert_eq!(status(&new.call("list_clients", json!(null)).await), "ok");
    let mut again = hub.connect().await;
    assert_eq!(
        status(&again.authenticate("alice", "new password 1").await),
        "authentication_failed"
    );
    let mut again = hub.connect().await;
    assert_eq!(
        status(&again.authenticate("alice", "admin set this").await),
        "ok"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_login_timeout() {
    let hub = HubBuilder::new()
        .config(|c| c.bester.login_timeout = std::time::Duration::from_secs(1))
        .start()
        .await;
    let mut c = hub.connect().await;
    let started = std::time::Instant::now();
    let r = c.recv().await;
    assert_eq!(status(&r), "authentication_required");
    c.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn unix_socket_listener_speaks_the_same_protocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bester.sock");
    let p = path.clone();
    let hub = HubBuilder::new()
        .config(move |c| c.bester.socket = Some(p))
        .start()
        .await;
    hub.add_user("alice", PASSWORD).await;
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let body = json!({"header": {"authentication": {"username": "alice", "password": PASSWORD}, "scope": "client"},
                      "payload": {"type": "list_clients"}})
    .to_string();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    s.write_all(&frame).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["payload"]["data"]["clients"], json!(["alice"]));
    drop(s);
    hub.stop().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[tokio::test]
async fn shutdown_closes_bester_connections() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    let mut c = hub.login("alice").await;
    hub.stop().await;
    c.expect_closed().await;
}
