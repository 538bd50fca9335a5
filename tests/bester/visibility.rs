//! Bester connections in `GET /api/devices` and `/metrics` (issue 12 item 6).

use std::time::Duration;

use serde_json::Value;

use crate::common::{HubBuilder, PASSWORD, TestHub};
use crate::support::metric_value;

async fn bester_devices(hub: &TestHub) -> Vec<Value> {
    let (code, body) = hub.admin(reqwest::Method::GET, "/api/devices", None).await;
    assert_eq!(code, 200, "{body}");
    body["devices"]
        .as_array()
        .expect("a device list")
        .iter()
        .filter(|d| d["door"] == "bester")
        .cloned()
        .collect()
}

async fn gauge(hub: &TestHub) -> f64 {
    let text = reqwest::Client::new()
        .get(hub.http("/metrics"))
        .bearer_auth(crate::common::TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE homehub_bester_connections gauge"),
        "{text}"
    );
    metric_value(&text, "homehub_bester_connections").expect("the gauge")
}

#[tokio::test]
async fn logged_in_users_are_listed_and_counted_until_they_leave() {
    let hub = HubBuilder::new().start().await;
    hub.add_user("alice", PASSWORD).await;
    assert!(bester_devices(&hub).await.is_empty());
    assert_eq!(gauge(&hub).await, 0.0);

    let mut alice = hub.connect_from("127.0.0.7").await;
    let local = alice.stream.local_addr().unwrap();
    let r = alice.authenticate("alice", PASSWORD).await;
    assert_eq!(crate::common::status(&r), "ok");
    // A connection that has not logged in yet is listed too, without a user.
    let anonymous = hub.connect().await;

    let devices = bester_devices(&hub).await;
    assert_eq!(devices.len(), 2, "{devices:?}");
    let a = devices
        .iter()
        .find(|d| d["user"] == "alice")
        .unwrap_or_else(|| panic!("alice listed: {devices:?}"));
    assert_eq!(a["name"], "alice");
    assert_eq!(a["remote"], local.to_string());
    let since = a["connected_at"].as_str().expect("connected_at");
    assert!(since.ends_with('Z') && since.contains('T'), "{since}");
    let other = devices.iter().find(|d| d["user"].is_null()).unwrap();
    assert!(
        other["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("bester-")),
        "{other}"
    );
    assert_eq!(gauge(&hub).await, 2.0);

    drop(alice);
    drop(anonymous);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !bester_devices(&hub).await.is_empty() || gauge(&hub).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed after disconnect: {:?}",
            bester_devices(&hub).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
