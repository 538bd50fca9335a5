//! The whole hub on PostgreSQL (`DATABASE_URL=postgres://…`) whatever the store under test
//! is (the rest of the suite runs on PostgreSQL too with `HOMEHUB_TEST_STORE=postgres`): a
//! lock's life through the Phoenix door and the admin API, with the same replies as on
//! SQLite.

use reqwest::Method;
use serde_json::json;

use crate::common::{TestHub, reply_of};

#[tokio::test]
async fn a_lock_lives_its_whole_life_on_postgres() {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let url = crate::support::postgres::fresh_postgres_database().await;
    std::fs::write(dir.path().join("database_url"), &url).expect("keep the URL");
    let hub = TestHub::start_in(dir, "127.0.0.1:0".parse().unwrap(), |_| {}).await;
    assert!(hub.database_url.starts_with("postgres://"));
    let mut lock = hub.client("frontdoor-pi").await;
    let r = lock
        .join("lock:SN-PG", "1", json!({"accepts": ["state"]}))
        .await;
    let (status, resp) = reply_of(&r);
    assert_eq!(status, "ok", "{r}");
    let uuid = resp["uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(
        resp,
        &json!({"uuid": uuid, "serial": "SN-PG", "name": "SN-PG", "mode": 1,
                "feature_flags": ["lock"], "config": {}, "state": {"locked": true}})
    );

    // An admin write reaches the lock and the table.
    let (status, view) = hub
        .admin(
            Method::PUT,
            "/api/locks/SN-PG/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["online"], true);
    let push = lock.recv_event("state").await;
    assert_eq!(push[4], json!({"locked": false}));

    // Pairing, then access for the paired tag only.
    let (status, pairing) = hub
        .admin(
            Method::POST,
            "/api/locks/SN-PG/pair",
            Some(json!({"name": "Alice", "type": "tag"})),
        )
        .await;
    assert_eq!(status, 201, "{pairing}");
    let mode_pair = lock.recv_event("mode:pair").await;
    let mut complete = mode_pair[4].clone();
    complete["serial"] = json!("TAG-1");
    let r = lock
        .push("1", "2", "lock:SN-PG", "pair:complete", complete)
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let r = lock
        .push(
            "1",
            "3",
            "lock:SN-PG",
            "access:request",
            json!({"uuid": uuid, "device": "TAG-1"}),
        )
        .await;
    assert_eq!(reply_of(&r).1["access"], true, "{r}");
    let r = lock
        .push(
            "1",
            "4",
            "lock:SN-PG",
            "access:request",
            json!({"uuid": uuid, "device": "TAG-2"}),
        )
        .await;
    assert_eq!(reply_of(&r).1["access"], false, "{r}");
    let r = lock
        .push(
            "1",
            "5",
            "lock:SN-PG",
            "event",
            json!({"event": "door_opened"}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");

    // A restart on the same database keeps the UUID and the intended state.
    drop(lock);
    let hub = hub.restart().await;
    let mut lock = hub.client("frontdoor-pi").await;
    let r = lock.join("lock:SN-PG", "1", json!({})).await;
    assert_eq!(reply_of(&r).1["uuid"], uuid.as_str(), "{r}");
    assert_eq!(reply_of(&r).1["state"], json!({"locked": false}));
    let (status, locks) = hub.admin(Method::GET, "/api/locks", None).await;
    assert_eq!(status, 200);
    assert_eq!(locks.as_array().map(Vec::len), Some(1));
    hub.stop().await;
}
