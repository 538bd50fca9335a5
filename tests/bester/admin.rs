//! Bester users through the admin API and the `homehub users` CLI.

use std::process::Stdio;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::{HubBuilder, PASSWORD, TOKEN, TestHub, status};

#[tokio::test]
async fn admin_api_manages_users() {
    let hub = HubBuilder::new().start().await;
    let users = "/api/bester/users";
    let post = |body| hub.admin(reqwest::Method::POST, users, Some(body));

    assert_eq!(
        post(json!({"username": "alice", "password": PASSWORD}))
            .await
            .0,
        201
    );
    let (code, body) = post(json!({"username": "alice", "password": PASSWORD})).await;
    assert_eq!((code, body), (409, json!({"error": "user already exists"})));
    assert_eq!(
        post(json!({"username": "bad name", "password": PASSWORD}))
            .await
            .0,
        400
    );
    assert_eq!(
        post(json!({"username": "bob", "password": "short"}))
            .await
            .0,
        400
    );
    assert_eq!(post(json!({"username": "bob"})).await.0, 400);

    let mut alice = hub.login("alice").await;
    let (code, list) = hub.admin(reqwest::Method::GET, users, None).await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["username"], "alice");
    assert_eq!(list[0]["connections"], 1);
    assert!(list[0]["last_login_at"].is_string() || list[0]["last_login_at"].is_null());
    assert!(
        !list.to_string().contains("argon2"),
        "hashes never leave the store"
    );

    // The database holds a salted argon2id hash, not the password.
    let db = crate::support::database_in(hub.dir.path()).await;
    let store = homehub::store::Store::open(&db).await.unwrap();
    let hash = store.bester_password_hash("alice").await.unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    store.close().await;

    let (code, _) = hub
        .admin(
            reqwest::Method::PUT,
            "/api/bester/users/nobody/password",
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(code, 404);

    // Removing a user closes its connections.
    let (code, _) = hub
        .admin(reqwest::Method::DELETE, "/api/bester/users/alice", None)
        .await;
    assert_eq!(code, 204);
    alice.expect_closed().await;
    let (code, _) = hub
        .admin(reqwest::Method::DELETE, "/api/bester/users/alice", None)
        .await;
    assert_eq!(code, 404);
    let mut c = hub.connect().await;
    assert_eq!(
        status(&c.authenticate("alice", PASSWORD).await),
        "authentication_failed"
    );

    // The token is required.
    let resp = reqwest::Client::new()
        .get(hub.http(users))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// Runs `homehub users ...` against the hub with `stdin` piped in.
async fn cli(hub: &TestHub, args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_homehub"))
        .arg("users")
        .args(args)
        .arg("--url")
        .arg(format!("http://{}", hub.addr))
        .env("HOMEHUB_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run homehub");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn cli_manages_users() {
    let hub = HubBuilder::new().start().await;
    let (code, out) = cli(&hub, &["add", "carol"], "carol's password\n").await;
    assert_eq!(code, 0, "{out}");
    let mut c = hub.connect().await;
    assert_eq!(
        status(&c.authenticate("carol", "carol's password").await),
        "ok"
    );

    let (code, out) = cli(&hub, &["add", "carol"], "carol's password\n").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already exists"), "{out}");
    let (code, out) = cli(&hub, &["add", "dave"], "short\n").await;
    assert_ne!(code, 0, "{out}");

    let (code, out) = cli(&hub, &["passwd", "carol"], "another password\r\n").await;
    assert_eq!(code, 0, "{out}");
    let mut c = hub.connect().await;
    assert_eq!(
        status(&c.authenticate("carol", "another password").await),
        "ok"
    );

    let (code, out) = cli(&hub, &["list"], "").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"carol\""), "{out}");

    let (code, out) = cli(&hub, &["remove", "carol"], "").await;
    assert_eq!(code, 0, "{out}");
    let (code, _) = cli(&hub, &["remove", "carol"], "").await;
    assert_eq!(code, 1);
    let mut c = hub.connect().await;
    assert_eq!(
        status(&c.authenticate("carol", "another password").await),
        "authentication_failed"
    );
}
