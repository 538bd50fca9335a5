//! A lock's intended state against its reported state (issue 16, part A): versions,
//! `If-Match`, re-pushes on a growing pause to a lock that does not report, and drift shown
//! in the API, `lock_overview` and `/metrics`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TOKEN, TestClient, TestHub, reply_of};
use crate::support::eventually;

/// A hub whose locks drift after 300 ms, with pushes again after 300, 600, 1,200 ms (cap).
async fn hub() -> TestHub {
    TestHub::start_with(|c| {
        c.state_drift = Duration::from_millis(300);
        c.state_retry_max = Duration::from_millis(1_200);
    })
    .await
}

/// A lock joined to `lock:<serial>` (`{"accepts": ["state"]}` when `accepts`).
async fn lock(hub: &TestHub, name: &str, serial: &str, accepts: bool) -> TestClient {
    let mut c = hub.client(name).await;
    let payload = if accepts {
        json!({"accepts": ["state"]})
    } else {
        json!({})
    };
    let r = c.join(&format!("lock:{serial}"), "1", payload).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    c
}

/// `PUT /api/locks/{serial}/state` with an optional `If-Match`: status, body, ETag.
async fn put_state(
    hub: &TestHub,
    serial: &str,
    state: Value,
    if_match: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new()
        .put(hub.http(&format!("/api/locks/{serial}/state")))
        .bearer_auth(TOKEN)
        .json(&state);
    if let Some(tag) = if_match {
        req = req.header("If-Match", tag);
    }
    let res = req.send().await.expect("PUT state");
    let status = res.status().as_u16();
    let etag = res
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, res.json().await.unwrap_or(Value::Null), etag)
}

async fn get_lock(hub: &TestHub, serial: &str) -> Value {
    let (status, body) = hub
        .admin(Method::GET, &format!("/api/locks/{serial}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn report(c: &mut TestClient, serial: &str, r: &str, state: Value) {
    let f = c
        .push("1", r, &format!("lock:{serial}"), "report", state)
        .await;
    assert_eq!(reply_of(&f).0, "ok", "{f}");
}

#[tokio::test]
async fn the_intended_state_has_a_version_and_if_match_guards_it() {
    let hub = hub().await;
    let mut c = lock(&hub, "sh-v", "SH-V", true).await;
    let first = get_lock(&hub, "SH-V").await;
    assert_eq!(first["intended_version"], 1, "{first}");
    assert_eq!(first["agrees"], false, "never reported: {first}");
    assert_eq!(first["drifting"], false, "{first}");

    let (status, body, etag) = put_state(&hub, "SH-V", json!({"locked": false}), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["intended_version"], 2);
    assert!(body["intended_at"].is_string(), "{body}");
    assert_eq!(etag.as_deref(), Some("\"2\""));
    c.recv_event("state").await;

    // If-Match at the current version: applied; at a stale one: 409 with the version.
    let (status, body, etag) =
        put_state(&hub, "SH-V", json!({"locked": true}), Some("\"2\"")).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"3\"")), "{body}");
    let (status, body, _) = put_state(&hub, "SH-V", json!({"locked": false}), Some("2")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["intended_version"], 3, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains('3')),
        "{body}"
    );
    let (status, body, _) = put_state(&hub, "SH-V", json!({}), Some("three")).await;
    assert_eq!(status, 400, "{body}");
    let now = get_lock(&hub, "SH-V").await;
    assert_eq!(now["intended_state"], json!({"locked": true}), "{now}");

    // GET carries the same ETag; a report of the intended state agrees.
    let res = reqwest::Client::new()
        .get(hub.http("/api/locks/SH-V"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        res.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some("\"3\"")
    );
    report(&mut c, "SH-V", "r1", json!({"locked": true})).await;
    let now = get_lock(&hub, "SH-V").await;
    assert_eq!(
        (&now["agrees"], &now["drifting"]),
        (&json!(true), &json!(false))
    );
    assert!(now["reported_at"].is_string(), "{now}");
    let (status, _, _) = put_state(&hub, "NO-SUCH", json!({}), Some("1")).await;
    assert_eq!(status, 404);
}

/// `lock_overview`'s `drifting` and `in_agreement` of `serial`, as text.
async fn overview_flags(hub: &TestHub, serial: &str) -> (String, String) {
    let rows = hub
        .rows(&format!(
            "SELECT CAST(drifting AS TEXT), CAST(in_agreement AS TEXT) FROM lock_overview \
             WHERE serial = '{serial}'"
        ))
        .await;
    match rows.as_slice() {
        [row] => (
            row[0].clone().unwrap_or_default(),
            row[1].clone().unwrap_or_default(),
        ),
        other => panic!("lock_overview rows for {serial}: {other:?}"),
    }
}

/// Receives `state` pushes until `n` arrived; their arrival times.
async fn state_pushes(c: &mut TestClient, n: usize, expect: &Value) -> Vec<Instant> {
    let mut at = Vec::new();
    while at.len() < n {
        let f = c.recv_event("state").await;
        assert_eq!(&f[4], expect, "{f}");
        at.push(Instant::now());
    }
    at
}

#[tokio::test]
async fn a_lock_that_does_not_report_is_pushed_again_and_shown_drifting_until_it_does() {
    let hub = hub().await;
    let mut c = lock(&hub, "sh-d", "SH-D", true).await;
    let state = json!({"locked": false});
    let (status, _, _) = put_state(&hub, "SH-D", state.clone(), None).await;
    assert_eq!(status, 200);
    // The push, then again after the drift time, then after twice as long, and so on.
    let at = state_pushes(&mut c, 4, &state).await;
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(250), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(500), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(1_000), "{gaps:?}");
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "the pause grows: {gaps:?}"
    );

    let now = get_lock(&hub, "SH-D").await;
    assert_eq!(now["drifting"], true, "{now}");
    assert!(now["drifting_since"].is_string(), "{now}");
    assert_eq!(overview_flags(&hub, "SH-D").await, ("1".into(), "0".into()));
    assert_eq!(hub.metric("homehub_locks_drifting").await, Some(1.0));

    // A report of another state changes nothing; of the intended state, it ends the drift.
    report(&mut c, "SH-D", "r1", json!({"locked": true})).await;
    assert_eq!(get_lock(&hub, "SH-D").await["drifting"], true);
    report(&mut c, "SH-D", "r2", state.clone()).await;
    let now = get_lock(&hub, "SH-D").await;
    assert_eq!(
        (&now["drifting"], &now["agrees"]),
        (&json!(false), &json!(true)),
        "{now}"
    );
    assert_eq!(hub.metric("homehub_locks_drifting").await, Some(0.0));
    assert_eq!(overview_flags(&hub, "SH-D").await, ("0".into(), "1".into()));
    // And it is not pushed again.
    c.expect_silence(1_500).await;
}

#[tokio::test]
async fn a_lock_that_reports_in_time_never_drifts_and_others_get_the_state_at_their_join() {
    let hub = hub().await;
    let mut quick = lock(&hub, "sh-q", "SH-Q", true).await;
    let (status, _, _) = put_state(&hub, "SH-Q", json!({"locked": false}), None).await;
    assert_eq!(status, 200);
    quick.recv_event("state").await;
    report(&mut quick, "SH-Q", "r1", json!({"locked": false})).await;
    quick.expect_silence(800).await;
    assert_eq!(get_lock(&hub, "SH-Q").await["drifting"], false);

    // A lock that does not accept `state` is never sent one; it drifts, and reads its
    // intended state in its `reset` reply, as the shipped firmware does.
    let mut old = lock(&hub, "sh-o", "SH-O", false).await;
    let (status, _, _) = put_state(&hub, "SH-O", json!({"locked": false}), None).await;
    assert_eq!(status, 200);
    old.expect_silence(800).await;
    eventually("the silent lock is shown drifting", async || {
        (get_lock(&hub, "SH-O").await["drifting"] == true).then_some(())
    })
    .await;
    let r = old.push("1", "2", "lock:SH-O", "reset", json!({})).await;
    assert_eq!(reply_of(&r).1["state"], json!({"locked": false}), "{r}");
    report(&mut old, "SH-O", "r3", json!({"locked": false})).await;
    assert_eq!(get_lock(&hub, "SH-O").await["drifting"], false);
}

#[tokio::test]
async fn the_cli_sets_the_state_only_at_the_version_it_names() {
    let hub = hub().await;
    let _c = lock(&hub, "sh-cli", "SH-CLI", false).await;
    let run = hub.cli_runner();
    let (stale, fresh) = tokio::task::spawn_blocking(move || {
        let stale = run(&[
            "lock",
            "set-state",
            "SH-CLI",
            r#"{"locked":false}"#,
            "--if-match",
            "7",
        ]);
        let fresh = run(&[
            "lock",
            "set-state",
            "SH-CLI",
            r#"{"locked":false}"#,
            "--if-match",
            "1",
        ]);
        (stale, fresh)
    })
    .await
    .expect("cli");
    assert_eq!(stale.0, Some(1), "{}", stale.1);
    let shown: Value = serde_json::from_str(&fresh.1).expect("JSON");
    assert_eq!((fresh.0, &shown["intended_version"]), (Some(0), &json!(2)));
    assert_eq!(
        get_lock(&hub, "SH-CLI").await["intended_state"],
        json!({"locked": false})
    );
}

#[tokio::test]
async fn a_change_not_reported_before_a_restart_is_still_pushed_after_it() {
    let tweak = |c: &mut homehub::config::Config| {
        c.state_drift = Duration::from_millis(300);
        c.state_retry_max = Duration::from_millis(1_200);
    };
    let hub = TestHub::start_with(tweak).await;
    let mut c = lock(&hub, "sh-r", "SH-R", true).await;
    let (status, _, _) = put_state(&hub, "SH-R", json!({"locked": false}), None).await;
    assert_eq!(status, 200);
    c.recv_event("state").await;
    drop(c);
    let (dir, addr) = (hub.dir.clone(), hub.addr);
    hub.stop().await;

    // The lock comes back to the restarted hub, which nobody told anything since.
    let hub = TestHub::start_in(dir, addr, tweak).await;
    let mut c = lock(&hub, "sh-r", "SH-R", true).await;
    let f = c.recv_event("state").await;
    assert_eq!(f[4], json!({"locked": false}), "{f}");
    eventually("shown drifting after the restart", async || {
        (get_lock(&hub, "SH-R").await["drifting"] == true).then_some(())
    })
    .await;
    report(&mut c, "SH-R", "r1", json!({"locked": false})).await;
    assert_eq!(get_lock(&hub, "SH-R").await["drifting"], false);
}
