//! `homehub db copy`: a real home made through the hub on SQLite, copied by the real binary
//! to PostgreSQL, and a hub on PostgreSQL that sees the same home (the locks' UUIDs, the
//! paired tag's access, the Bester user, the issued tokens, still valid). A second copy is
//! refused without `--replace`; a missing SQLite source is a clear error.

use std::path::Path;
use std::sync::Arc;

use homehub::config::AuthMode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestClient, TestHub, reply_of};
use crate::support::{eventually, text_rows};

/// Runs `homehub db copy ARGS` (the real binary, in `cwd` so no `.env` applies); its exit
/// code, stdout and stderr.
async fn db_copy(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_homehub"))
            .args(["db", "copy"])
            .args(&args)
            .current_dir(&cwd)
            .env_remove("DATABASE_URL")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run homehub db copy");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("the copy's thread")
}

/// A temp directory whose hub uses `url` (kept in `dir/database_url`).
fn dir_for(url: &str) -> Arc<tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("database_url"), url).expect("keep the database URL");
    Arc::new(dir)
}

/// A SQLite file in `dir`, as a URL.
fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("home.db").display())
}

/// What an administrator sees of a home, the same SQL on both stores (non-text columns
/// cast to text), with the indexes of the JSON columns: their text differs between SQLite
/// and `jsonb` (`{"a":1}` vs `{"a": 1}`), so they are compared parsed.
const VIEWS: &[(&str, &[usize])] = &[
    (
        "SELECT serial, uuid, name, CAST(mode AS TEXT), CAST(intended_state AS TEXT), \
         CAST(reported_state AS TEXT), reported_at, holder_device, last_seen_at \
         FROM lock_overview ORDER BY serial",
        &[4, 5],
    ),
    (
        "SELECT pair_id, lock_serial, name, item_type, state, created_at, expires_at, \
         delivered_at, CAST(deliveries AS TEXT), completed_at, cancelled_at \
         FROM pairing_overview ORDER BY created_at DESC, pair_id",
        &[],
    ),
    (
        "SELECT name, door, description, version, interface, first_seen_at, last_seen_at, \
         CAST(packets_sent AS TEXT), CAST(packets_received AS TEXT) \
         FROM device_overview ORDER BY name",
        &[],
    ),
    (
        "SELECT username, created_at, password_changed_at, last_login_at \
         FROM bester_user_overview ORDER BY username",
        &[],
    ),
];

/// Every copied table in full (ids, hashes, the key), JSON columns as in [`VIEWS`].
const TABLES: &[(&str, &[usize])] = &[
    (
        "SELECT serial, uuid, name, CAST(mode AS TEXT), CAST(feature_flags AS TEXT), \
         CAST(config AS TEXT), CAST(intended_state AS TEXT), CAST(reported_state AS TEXT), \
         reported_at, holder_device, first_seen_at, last_seen_at FROM locks ORDER BY serial",
        &[4, 5, 6, 7],
    ),
    (
        "SELECT pair_id, lock_serial, name, item_type, created_at, expires_at, completed_at, \
         delivered_at, CAST(deliveries AS TEXT), cancelled_at \
         FROM pairing_requests ORDER BY pair_id",
        &[],
    ),
    (
        "SELECT CAST(id AS TEXT), lock_serial, item_serial, name, item_type, pair_id, \
         paired_at, revoked_at FROM paired_items ORDER BY id",
        &[],
    ),
    (
        "SELECT CAST(id AS TEXT), lock_serial, item, device, CAST(granted AS TEXT), \
         user_name, decided_at FROM access_decisions ORDER BY id",
        &[],
    ),
    (
        "SELECT CAST(id AS TEXT), lock_serial, from_device, CAST(message AS TEXT), \
         received_at FROM lock_events ORDER BY id",
        &[3],
    ),
    (
        "SELECT name, door, description, version, interface, first_seen_at, registered_at, \
         last_seen_at, CAST(packets_sent AS TEXT), CAST(packets_received AS TEXT) \
         FROM devices ORDER BY name",
        &[],
    ),
    (
        "SELECT username, password_hash, created_at, password_changed_at, last_login_at \
         FROM bester_users ORDER BY username",
        &[],
    ),
    ("SELECT key, value FROM hub_settings ORDER BY key", &[]),
    (
        "SELECT id, device, issued_at, expires_at, revoked_at FROM device_tokens ORDER BY id",
        &[],
    ),
];

const TABLE_NAMES: [&str; 9] = [
    "locks",
    "pairing_requests",
    "paired_items",
    "access_decisions",
    "lock_events",
    "devices",
    "bester_users",
    "hub_settings",
    "device_tokens",
];

/// The rows of each query in `queries` on the database at `url`, JSON columns parsed.
async fn snapshot(url: &str, queries: &[(&str, &[usize])]) -> Vec<Vec<Vec<Option<Value>>>> {
    let mut out = Vec::new();
    for (sql, json_columns) in queries {
        let rows = text_rows(url, sql).await;
        out.push(
            rows.into_iter()
                .map(|row| {
                    row.into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.map(|v| {
                                if json_columns.contains(&i) {
                                    serde_json::from_str(&v)
                                        .unwrap_or_else(|e| panic!("{sql}: column {i}: {e}"))
                                } else {
                                    Value::String(v)
                                }
                            })
                        })
                        .collect()
                })
                .collect(),
        );
    }
    out
}

/// The `table count` lines of the report for the row counts of the database at `url`.
async fn expected_report(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLE_NAMES {
        let n = text_rows(url, &format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}")).await;
        let n = n[0][0].clone().expect("a count");
        out.push(format!("{table} {n}"));
    }
    out
}

/// The `error: …` line of the copy's stderr (log lines may come before it).
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

/// The report lines of the copy's stdout (after its first line).
fn report_lines(stdout: &str) -> Vec<String> {
    stdout.lines().skip(1).map(str::to_owned).collect()
}

/// What the test needs to recognise the home after the copy.
struct Home {
    front_uuid: String,
    back_uuid: String,
    front_token: String,
    back_token: String,
    token_ids: Vec<String>,
}

/// A lock `serial` joined by `device`; its UUID.
async fn join_lock(lock: &mut TestClient, serial: &str, payload: Value) -> String {
    let r = lock.join(&format!("lock:{serial}"), "1", payload).await;
    let (status, resp) = reply_of(&r);
    assert_eq!(status, "ok", "{r}");
    resp["uuid"].as_str().expect("uuid").to_owned()
}

/// Pushes `access:request` for `item` on `serial`; whether access was granted.
async fn access(lock: &mut TestClient, r: &str, serial: &str, uuid: &str, item: &str) -> bool {
    let f = lock
        .push(
            "1",
            r,
            &format!("lock:{serial}"),
            "access:request",
            json!({"uuid": uuid, "device": item}),
        )
        .await;
    reply_of(&f).1["access"]
        .as_bool()
        .unwrap_or_else(|| panic!("access reply {f}"))
}

/// Issues a device token over the admin API; (token, id).
async fn issue(hub: &TestHub, device: &str) -> (String, String) {
    let (status, t) = hub
        .admin(Method::POST, "/api/tokens", Some(json!({"device": device})))
        .await;
    assert_eq!(status, 201, "{t}");
    (
        t["token"].as_str().expect("token").to_owned(),
        t["id"].as_str().expect("token id").to_owned(),
    )
}

/// Makes a home through a real hub on `dir`'s database: two locks (one with an intended
/// and a reported state), a tag paired through the lock channel, a pending pairing, access
/// granted and refused, a lock event, a relay device, a Bester user, two device tokens.
async fn make_home(dir: Arc<tempfile::TempDir>) -> Home {
    let hub = TestHub::start_in(dir, "127.0.0.1:0".parse().unwrap(), |_| {}).await;
    let mut front = hub.client("frontdoor-pi").await;
    let front_uuid = join_lock(&mut front, "SN-FRONT", json!({"accepts": ["state"]})).await;
    let mut back = hub.client("backdoor-pi").await;
    let back_uuid = join_lock(&mut back, "SN-BACK", json!({})).await;

    let (status, view) = hub
        .admin(
            Method::PUT,
            "/api/locks/SN-FRONT/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    front.recv_event("state").await;
    let r = front
        .push(
            "1",
            "2",
            "lock:SN-FRONT",
            "report",
            json!({"locked": false, "battery": 87}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");

    // Pairing completed through the lock channel.
    let (status, pairing) = hub
        .admin(
            Method::POST,
            "/api/locks/SN-FRONT/pair",
            Some(json!({"name": "Alice", "type": "tag"})),
        )
        .await;
    assert_eq!(status, 201, "{pairing}");
    let mode_pair = front.recv_event("mode:pair").await;
    let mut complete = mode_pair[4].clone();
    complete["serial"] = json!("TAG-1");
    let r = front
        .push("1", "3", "lock:SN-FRONT", "pair:complete", complete)
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    // A pending one for the other lock.
    let (status, pairing) = hub
        .admin(
            Method::POST,
            "/api/locks/SN-BACK/pair",
            Some(json!({"name": "Bob", "type": "mobile_phone", "ttl_secs": 86400})),
        )
        .await;
    assert_eq!(status, 201, "{pairing}");

    assert!(access(&mut front, "4", "SN-FRONT", &front_uuid, "TAG-1").await);
    assert!(!access(&mut front, "5", "SN-FRONT", &front_uuid, "TAG-2").await);
    let r = front
        .push(
            "1",
            "6",
            "lock:SN-FRONT",
            "event",
            json!({"event": "door_opened", "by": "TAG-1"}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");

    // A relay device.
    let mut lamp = hub.client("kitchen-lamp").await;
    let r = lamp
        .join(
            "relay",
            "1",
            json!({"description": "Lamp", "version": "2.1", "interface": "https://x/if"}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    eventually("the lamp's devices row", async || {
        (hub.rows("SELECT name FROM devices").await.len() == 1).then_some(())
    })
    .await;

    // A Bester user and two device tokens.
    let (status, user) = hub
        .admin(
            Method::POST,
            "/api/bester/users",
            Some(json!({"username": "alice", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let (front_token, front_id) = issue(&hub, "frontdoor-pi").await;
    let (back_token, back_id) = issue(&hub, "backdoor-pi").await;

    for c in [front, back, lamp] {
        c.hang_up().await;
    }
    hub.stop().await;
    Home {
        front_uuid,
        back_uuid,
        front_token,
        back_token,
        token_ids: vec![front_id, back_id],
    }
}

#[tokio::test]
async fn a_home_moves_from_sqlite_to_postgres() {
    let work = tempfile::tempdir().expect("tempdir");
    let from = sqlite_url(work.path());
    let home = make_home(dir_for(&from)).await;
    let views_before = snapshot(&from, VIEWS).await;
    let tables_before = snapshot(&from, TABLES).await;
    let report = expected_report(&from).await;
    assert_eq!(
        &report[..7],
        [
            "locks 2",
            "pairing_requests 2",
            "paired_items 1",
            "access_decisions 2",
            "lock_events 1",
            "devices 1",
            "bester_users 1",
        ]
    );
    assert_eq!(report[8], "device_tokens 2");

    let to = crate::support::postgres::fresh_postgres_database().await;
    let (code, stdout, stderr) = db_copy(work.path(), &["--from", &from, "--to", &to]).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("copied "), "{stdout}");
    assert_eq!(report_lines(&stdout), report, "{stdout}");
    assert_eq!(expected_report(&to).await, report);

    // What administrators see, and every table in full, are the same on PostgreSQL.
    assert_eq!(snapshot(&to, VIEWS).await, views_before);
    assert_eq!(snapshot(&to, TABLES).await, tables_before);

    // A hub on PostgreSQL, in token mode: the tokens the SQLite hub issued still admit
    // their devices (the signing key came along), the locks keep their UUIDs and state,
    // the paired tag still opens the door.
    let hub = TestHub::start_in(dir_for(&to), "127.0.0.1:0".parse().unwrap(), |c| {
        c.auth = AuthMode::Token
    })
    .await;
    assert!(hub.database_url.starts_with("postgres://"));
    let mut front = TestClient::connect(&hub.ws_url(&format!(
        "vsn=2.0.0&name=frontdoor-pi&token={}",
        home.front_token
    )))
    .await;
    let r = front.join("lock:SN-FRONT", "1", json!({})).await;
    let (status, resp) = reply_of(&r);
    assert_eq!(status, "ok", "{r}");
    assert_eq!(resp["uuid"], home.front_uuid.as_str(), "{r}");
    assert_eq!(resp["state"], json!({"locked": false}), "{r}");
    let mut back = TestClient::connect(&hub.ws_url(&format!(
        "vsn=2.0.0&name=backdoor-pi&token={}",
        home.back_token
    )))
    .await;
    assert_eq!(
        join_lock(&mut back, "SN-BACK", json!({})).await,
        home.back_uuid
    );
    assert!(access(&mut front, "2", "SN-FRONT", &home.front_uuid, "TAG-1").await);
    assert!(!access(&mut front, "3", "SN-FRONT", &home.front_uuid, "TAG-2").await);
    // New log rows are numbered after the copied ones.
    assert_eq!(
        hub.rows("SELECT CAST(id AS TEXT) FROM access_decisions ORDER BY id")
            .await,
        ["1", "2", "3", "4"].map(|id| vec![Some(id.to_owned())])
    );

    let (status, users) = hub.admin(Method::GET, "/api/bester/users", None).await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(users[0]["username"], "alice", "{users}");
    let (status, tokens) = hub.admin(Method::GET, "/api/tokens", None).await;
    assert_eq!(status, 200, "{tokens}");
    let mut listed: Vec<String> = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    listed.sort();
    let mut issued = home.token_ids.clone();
    issued.sort();
    assert_eq!(listed, issued);

    for c in [front, back] {
        c.hang_up().await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_second_copy_needs_replace() {
    let work = tempfile::tempdir().expect("tempdir");
    let from = sqlite_url(work.path());
    let source = dir_for(&from);
    make_home(source.clone()).await;
    let to = crate::support::postgres::fresh_postgres_database().await;
    let (code, stdout, stderr) = db_copy(work.path(), &["--from", &from, "--to", &to]).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let copied = snapshot(&to, TABLES).await;

    // The home changes on SQLite (a new lock), and is copied again.
    let hub = TestHub::start_in(source, "127.0.0.1:0".parse().unwrap(), |_| {}).await;
    let mut garage = hub.client("garage-pi").await;
    join_lock(&mut garage, "SN-GARAGE", json!({})).await;
    garage.hang_up().await;
    hub.stop().await;

    let (code, stdout, stderr) = db_copy(work.path(), &["--from", &from, "--to", &to]).await;
    assert_ne!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let error = error_line(&stderr);
    assert!(error.contains("not empty"), "{error}");
    assert!(error.contains("--replace"), "{error}");
    assert!(error.contains("locks 2"), "{error}");
    assert_eq!(stdout, "");
    assert_eq!(
        snapshot(&to, TABLES).await,
        copied,
        "the target is untouched"
    );

    let (code, stdout, stderr) =
        db_copy(work.path(), &["--from", &from, "--to", &to, "--replace"]).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let report = expected_report(&from).await;
    assert_eq!(report[0], "locks 3");
    assert_eq!(report_lines(&stdout), report, "{stdout}");
    assert_eq!(expected_report(&to).await, report);
    assert_eq!(snapshot(&to, TABLES).await, snapshot(&from, TABLES).await);
    assert_eq!(snapshot(&to, VIEWS).await, snapshot(&from, VIEWS).await);
}

#[tokio::test]
async fn a_missing_sqlite_source_is_an_error() {
    let work = tempfile::tempdir().expect("tempdir");
    let missing = work.path().join("no-such-home.db");
    let from = format!("sqlite://{}", missing.display());
    let target = work.path().join("target.db");
    let to = format!("sqlite://{}", target.display());
    let (code, stdout, stderr) = db_copy(work.path(), &["--from", &from, "--to", &to]).await;
    assert_ne!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(code, Some(1));
    let error = error_line(&stderr);
    assert!(error.contains("does not exist"), "{error}");
    assert!(error.contains("no-such-home.db"), "{error}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stdout, "");
    assert!(!missing.exists(), "the source is not created");
    assert!(!target.exists(), "nothing is written");
}
