//! One owner of live connections (issue 13 item 3): a Bester connection and a Phoenix
//! long-poll session are registry connections like any WebSocket, so `/api/devices` and
//! the `/metrics` connection gauges list them from the one registry, and forget them when
//! they end (the Bester client hangs up; the long-poll session is not polled for two
//! windows and the registry's idle sweep closes it).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::bester_common::{HubBuilder, PASSWORD, TestHub};
use crate::support::eventually;

const WINDOW: Duration = Duration::from_millis(300);

async fn devices(hub: &TestHub) -> Vec<Value> {
    let (code, body) = hub.admin(Method::GET, "/api/devices", None).await;
    assert_eq!(code, 200, "{body}");
    body["devices"].as_array().cloned().unwrap_or_default()
}

/// (all, phoenix, bester) connection gauges.
async fn gauges(hub: &TestHub) -> (f64, f64, f64) {
    (
        hub.metric("homehub_connections").await,
        hub.metric(r#"homehub_door_connections{door="phoenix"}"#)
            .await,
        hub.metric(r#"homehub_door_connections{door="bester"}"#)
            .await,
    )
}

#[tokio::test]
async fn bester_and_long_poll_connections_are_listed_and_counted_until_they_end() {
    let hub = HubBuilder::new()
        .config(|c| c.phoenix.longpoll_window = WINDOW)
        .start()
        .await;
    hub.add_user("alice", PASSWORD).await;
    assert!(devices(&hub).await.is_empty());
    assert_eq!(gauges(&hub).await, (0.0, 0.0, 0.0));

    let alice = hub.login("alice").await;
    let http = reqwest::Client::new();
    let url = hub.http("/socket/longpoll?vsn=2.0.0&name=lp-owner");
    let opened: Value = http
        .get(&url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(opened["status"], 410, "{opened}");
    let token = opened["token"]
        .as_str()
        .expect("a session token")
        .to_owned();

    let listed = devices(&hub).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let b = listed
        .iter()
        .find(|d| d["door"] == "bester")
        .unwrap_or_else(|| panic!("the Bester connection is listed: {listed:?}"));
    assert_eq!((&b["name"], &b["user"]), (&"alice".into(), &"alice".into()));
    let lp = listed
        .iter()
        .find(|d| d["name"] == "lp-owner")
        .unwrap_or_else(|| panic!("the long-poll session is listed: {listed:?}"));
    assert_eq!(
        (&lp["door"], &lp["transport"]),
        (&"phoenix".into(), &"longpoll".into())
    );
    assert_eq!(gauges(&hub).await, (2.0, 1.0, 1.0));

    // Polling keeps the session alive past two windows.
    for _ in 0..3 {
        let polled: Value = http
            .get(format!("{url}&token={token}"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        assert_eq!(polled["status"], 204, "{polled}");
    }
    assert!(devices(&hub).await.iter().any(|d| d["name"] == "lp-owner"));

    // The Bester client hangs up; nobody polls the session any more.
    drop(alice);
    eventually("both connections are forgotten", || async {
        let (listed, counted) = (devices(&hub).await, gauges(&hub).await);
        (listed.is_empty() && counted == (0.0, 0.0, 0.0)).then_some(())
    })
    .await;
}
