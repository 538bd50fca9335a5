//! The store's behaviour suite. Tests written with `on_both_stores!` run twice, against a
//! temp SQLite file and against a fresh database on the test PostgreSQL server
//! (`HOMEHUB_TEST_POSTGRES_URL`, which `./scripts/test.sh` starts); the others test what
//! only SQLite has (pragmas, `data_version`, file paths, `:memory:`).

use std::time::Duration;

use serde_json::json;

use super::testing::TestDb;
use super::{Kind, Store, StoreError};
use crate::domain::{DeviceName, ItemKind, Serial, parse_ts};

fn serial(s: &str) -> Serial {
    Serial::parse(s).expect("test serial")
}

fn device(s: &str) -> DeviceName {
    DeviceName::parse(s).expect("test device name")
}

/// One test, run on each store: `mod name { fn sqlite(); fn postgres(); }`.
macro_rules! on_both_stores {
    (async fn $name:ident($store:ident) $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let db = TestDb::new(Kind::Sqlite).await;
                let $store = db.open().await;
                $body
            }

            #[tokio::test]
            async fn postgres() {
                let db = TestDb::new(Kind::Postgres).await;
                let $store = db.open().await;
                $body
            }
        }
    };
}

async fn temp_store() -> (TestDb, Store) {
    let db = TestDb::new(Kind::Sqlite).await;
    let store = db.open().await;
    (db, store)
}

async fn count(store: &Store, sql: &str) -> i64 {
    store.scalar(sql).await
}

/// A lock join in open mode that must succeed.
async fn join(store: &Store, lock: &str, holder: &str) -> crate::domain::LockRecord {
    store
        .join_lock(&serial(lock), &device(holder))
        .await
        .expect("join")
}

/// Sleeps past the millisecond resolution of stored timestamps.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test]
async fn open_sets_pragmas_and_applies_migrations() {
    let (_dir, store) = temp_store().await;
    let pragmas = store
        .text_rows("SELECT journal_mode, CAST(foreign_keys AS TEXT) FROM pragma_journal_mode, pragma_foreign_keys")
        .await;
    assert_eq!(pragmas, [[Some("wal".to_owned()), Some("1".to_owned())]]);
    let applied = count(
        &store,
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success",
    )
    .await;
    assert_eq!(applied, migrations("sqlite"));
    store.close().await;
}

/// How many migrations `migrations/<kind>/` holds.
fn migrations(kind: &str) -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(kind);
    std::fs::read_dir(dir)
        .expect("migrations dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64
}

#[tokio::test]
async fn postgres_applies_the_same_migrations() {
    let db = TestDb::new(Kind::Postgres).await;
    let store = db.open().await;
    assert_eq!(store.kind(), Kind::Postgres);
    let applied = count(
        &store,
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success",
    )
    .await;
    assert_eq!(applied, migrations("postgres"));
    assert_eq!(
        migrations("postgres"),
        migrations("sqlite"),
        "same numbers on both"
    );
    // JSON columns are jsonb.
    let types = store
        .text_rows(
            "SELECT CAST(data_type AS TEXT) FROM information_schema.columns \
             WHERE table_name = 'locks' AND column_name IN ('feature_flags', 'config', \
             'intended_state', 'reported_state') ORDER BY column_name",
        )
        .await;
    assert_eq!(types.len(), 4);
    assert!(
        types.iter().all(|t| t[0].as_deref() == Some("jsonb")),
        "{types:?}"
    );
    store.close().await;
}

on_both_stores! {
    async fn join_creates_lock_with_defaults(store) {
    let lock = join(&store, "L-1", "pi-hall").await;
    assert_eq!(lock.serial, "L-1");
    assert_eq!(lock.name, "L-1");
    assert_eq!(lock.mode, 1);
    // The firmware starts its lock feature only with "lock" (HOMEHUB_LOCK_FEATURE_FLAGS).
    assert_eq!(lock.feature_flags, vec!["lock".to_owned()]);
    assert_eq!(lock.config, json!({}));
    assert_eq!(lock.intended_state, json!({"locked": true}));
    assert_eq!(lock.reported_state, None);
    assert_eq!(lock.reported_at, None);
    assert_eq!(lock.holder_device.as_deref(), Some("pi-hall"));
    let uuid = uuid::Uuid::parse_str(&lock.uuid).expect("uuid column is a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    assert!(parse_ts(&lock.first_seen_at).is_some());
    assert_eq!(
        lock.last_seen_at.as_deref(),
        Some(lock.first_seen_at.as_str())
    );
    assert_eq!(store.get_lock("L-1").await.unwrap(), Some(lock));
    store.close().await;
    }
}

on_both_stores! {
    async fn rejoin_keeps_uuid_and_updates_holder_and_last_seen(store) {
    let first = join(&store, "L-1", "pi-a").await;
    store
        .set_intended_state("L-1", &json!({"locked": false}), None)
        .await
        .unwrap();
    tick().await;
    let second = join(&store, "L-1", "pi-b").await;
    assert_eq!(second.uuid, first.uuid);
    assert_eq!(second.first_seen_at, first.first_seen_at);
    assert_eq!(second.holder_device.as_deref(), Some("pi-b"));
    assert!(second.last_seen_at > first.last_seen_at);
    // Re-joining does not reset anything else.
    assert_eq!(second.intended_state, json!({"locked": false}));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM locks").await, 1);
    store.close().await;
    }
}

#[tokio::test]
async fn reopening_the_file_keeps_the_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let path = path.to_str().unwrap();

    let store = Store::open(&format!("sqlite://{path}")).await.unwrap();
    let uuid = join(&store, "L-1", "pi").await.uuid;
    store.close().await;

    // The same file through each accepted spelling; migrations are not re-applied.
    for url in [
        format!("sqlite:{path}"),
        path.to_owned(),
        format!("sqlite://{path}"),
    ] {
        let store = Store::open(&url).await.unwrap();
        assert_eq!(
            store.get_lock("L-1").await.unwrap().unwrap().uuid,
            uuid,
            "{url}"
        );
        let again = join(&store, "L-1", "pi").await;
        assert_eq!(again.uuid, uuid, "{url}");
        store.close().await;
    }
}

on_both_stores! {
    async fn two_serials_get_different_uuids(store) {
    let b = join(&store, "B", "pi").await;
    let a = join(&store, "A", "pi").await;
    assert_ne!(a.uuid, b.uuid);
    let all = store.list_locks().await.unwrap();
    let serials: Vec<_> = all.iter().map(|l| l.serial.as_str()).collect();
    assert_eq!(serials, ["A", "B"]);
    store.close().await;
    }
}

on_both_stores! {
    async fn concurrent_joins_of_one_serial_agree_on_the_uuid(store) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .join_lock(&serial("L-1"), &device(&format!("pi-{i}")))
                .await
                .unwrap()
                .uuid
        }));
    }
    let mut uuids = Vec::new();
    for t in tasks {
        uuids.push(t.await.unwrap());
    }
    uuids.dedup();
    assert_eq!(uuids.len(), 1);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM locks").await, 1);
    store.close().await;
    }
}

on_both_stores! {
    async fn intended_and_reported_state(store) {
    join(&store, "L-1", "pi").await;
    let state = json!({"locked": false, "until": "2030-01-01T00:00:00Z"});
    let updated = store.set_intended_state("L-1", &state, None).await.unwrap();
    assert_eq!(updated.intended_state, state);
    let fetched = store.get_lock("L-1").await.unwrap().unwrap();
    assert_eq!(fetched.intended_state, state);

    store
        .set_reported_state(&serial("L-1"), &json!({"locked": true, "battery": 87}))
        .await
        .unwrap();
    let fetched = store.get_lock("L-1").await.unwrap().unwrap();
    assert_eq!(
        fetched.reported_state,
        Some(json!({"locked": true, "battery": 87}))
    );
    assert!(fetched.reported_at.as_deref().and_then(parse_ts).is_some());
    // The intended state is untouched by a report.
    assert_eq!(fetched.intended_state, state);
    store.close().await;
    }
}

on_both_stores! {
    async fn intended_state_versions_and_drift(store) {
    let first = join(&store, "L-1", "pi").await;
    assert_eq!((first.intended_version, first.intended_at.as_deref()), (1, None));
    let v2 = store
        .set_intended_state("L-1", &json!({"locked": false}), None)
        .await
        .unwrap();
    assert_eq!(v2.intended_version, 2);
    assert!(v2.intended_at.as_deref().and_then(parse_ts).is_some());
    // A conditional change at the current version goes through, at a stale one it does not.
    let v3 = store
        .set_intended_state("L-1", &json!({"locked": true}), Some(2))
        .await
        .unwrap();
    assert_eq!(v3.intended_version, 3);
    assert!(matches!(
        store.set_intended_state("L-1", &json!({"locked": false}), Some(2)).await,
        Err(StoreError::VersionMismatch { current: 3 })
    ));
    assert_eq!(
        store.get_lock("L-1").await.unwrap().unwrap().intended_state,
        json!({"locked": true})
    );
    // Drifting is marked only at the version it was about, and a change clears it.
    let since = crate::domain::now_rfc3339();
    store.set_drifting("L-1", Some(2), Some(&since)).await.unwrap();
    assert_eq!(store.count_drifting().await.unwrap(), 0);
    store.set_drifting("L-1", Some(3), Some(&since)).await.unwrap();
    assert_eq!(store.count_drifting().await.unwrap(), 1);
    let lock = store.get_lock("L-1").await.unwrap().unwrap();
    assert_eq!(lock.drifting_since.as_deref(), Some(since.as_str()));
    let v4 = store
        .set_intended_state("L-1", &json!({"locked": false}), None)
        .await
        .unwrap();
    assert_eq!((v4.intended_version, v4.drifting_since), (4, None));
    assert_eq!(store.count_drifting().await.unwrap(), 0);
    assert!(matches!(
        store.set_drifting("nope", None, None).await,
        Err(StoreError::LockNotFound)
    ));
    // The report comes back with the lock as it is now.
    let reported = store
        .set_reported_state(&serial("L-1"), &json!({"locked": false}))
        .await
        .unwrap();
    assert_eq!(reported.reported_state, Some(json!({"locked": false})));
    assert_eq!(reported.intended_version, 4);
    store.close().await;
    }
}

on_both_stores! {
    async fn unknown_locks(store) {
    assert_eq!(store.get_lock("nope").await.unwrap(), None);
    assert!(store.list_locks().await.unwrap().is_empty());
    assert!(matches!(
        store
            .set_intended_state("nope", &json!({"locked": false}), None)
            .await,
        Err(StoreError::LockNotFound)
    ));
    assert!(matches!(
        store.set_reported_state(&serial("nope"), &json!({})).await,
        Err(StoreError::LockNotFound)
    ));
    assert!(matches!(
        store
            .create_pairing("nope", "Alice", ItemKind::Tag, Duration::from_secs(60))
            .await,
        Err(StoreError::LockNotFound)
    ));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM locks").await, 0);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM pairing_requests").await,
        0
    );
    store.close().await;
    }
}

on_both_stores! {
    async fn pairing_create_complete_list(store) {
    join(&store, "L-1", "pi").await;

    let req = store
        .create_pairing(
            "L-1",
            "Alice",
            ItemKind::MobilePhone,
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    assert_eq!(req.lock, "L-1");
    assert_eq!(req.name, "Alice");
    assert_eq!(req.kind, ItemKind::MobilePhone);
    assert_eq!(req.completed_at, None);
    assert!(uuid::Uuid::parse_str(&req.pair_id).is_ok());
    let created = parse_ts(&req.created_at).unwrap();
    let expires = parse_ts(&req.expires_at).unwrap();
    assert_eq!(expires - created, time::Duration::seconds(300));
    assert_eq!(
        store.get_pairing(&req.pair_id).await.unwrap(),
        Some(req.clone())
    );
    assert_eq!(store.get_pairing("missing").await.unwrap(), None);

    let item = store
        .complete_pairing(&req.pair_id, "PHONE-42")
        .await
        .unwrap();
    assert_eq!(item.lock, "L-1");
    assert_eq!(item.serial, "PHONE-42");
    assert_eq!(item.name, "Alice");
    assert_eq!(item.kind, ItemKind::MobilePhone);
    assert_eq!(item.pair_id, req.pair_id);
    assert_eq!(item.revoked_at, None);

    let completed = store.get_pairing(&req.pair_id).await.unwrap().unwrap();
    assert_eq!(
        completed.completed_at.as_deref(),
        Some(item.paired_at.as_str())
    );

    // Completing twice (or an unknown id) fails and changes nothing.
    assert!(matches!(
        store.complete_pairing(&req.pair_id, "OTHER").await,
        Err(StoreError::PairingNotFound)
    ));
    assert!(matches!(
        store.complete_pairing("no-such-id", "OTHER").await,
        Err(StoreError::PairingNotFound)
    ));

    tick().await;
    let second = store
        .create_pairing("L-1", "Bob", ItemKind::Tag, Duration::from_secs(60))
        .await
        .unwrap();

    let (requests, items) = store.list_pairings().await.unwrap();
    assert_eq!(requests, vec![second.clone(), completed]);
    assert_eq!(items, vec![item]);
    store.close().await;
    }
}

on_both_stores! {
    async fn repairing_an_item_replaces_and_unrevokes_it(store) {
    join(&store, "L-1", "pi").await;
    let first = store
        .create_pairing("L-1", "Alice", ItemKind::Tag, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .complete_pairing(&first.pair_id, "TAG-1")
        .await
        .unwrap();
    store
        .execute("UPDATE paired_items SET revoked_at = '2020-01-01T00:00:00.000Z'")
        .await
        .unwrap();

    let second = store
        .create_pairing("L-1", "Carol", ItemKind::Tag, Duration::from_secs(60))
        .await
        .unwrap();
    let item = store
        .complete_pairing(&second.pair_id, "TAG-1")
        .await
        .unwrap();
    assert_eq!(item.name, "Carol");
    assert_eq!(item.pair_id, second.pair_id);
    assert_eq!(item.revoked_at, None);
    let (_, items) = store.list_pairings().await.unwrap();
    assert_eq!(items, vec![item]);
    store.close().await;
    }
}

on_both_stores! {
    async fn absurd_ttl_does_not_panic(store) {
    join(&store, "L-1", "pi").await;
    let req = store
        .create_pairing("L-1", "Alice", ItemKind::Tag, Duration::MAX)
        .await
        .unwrap();
    assert!(parse_ts(&req.expires_at).is_some());
    store.close().await;
    }
}

on_both_stores! {
    async fn decide_access_grants_only_active_pairings_and_logs_everything(store) {
    let l1 = serial("L-1");
    store.join_lock(&l1, &device("pi")).await.unwrap();
    join(&store, "L-2", "pi").await;

    // Not paired yet.
    let d = store.decide_access(&l1, "TAG-1", "pi").await.unwrap();
    assert!(!d.access);
    assert_eq!(d.user, None);

    let req = store
        .create_pairing("L-1", "Alice", ItemKind::Tag, Duration::from_secs(60))
        .await
        .unwrap();
    // A pending (not completed) request grants nothing.
    assert!(
        !store
            .decide_access(&l1, "TAG-1", "pi")
            .await
            .unwrap()
            .access
    );
    store.complete_pairing(&req.pair_id, "TAG-1").await.unwrap();

    let d = store.decide_access(&l1, "TAG-1", "pi").await.unwrap();
    assert!(d.access);
    assert_eq!(d.user.as_deref(), Some("Alice"));

    // Paired with L-1 only; unknown items and unknown locks are refused, not errors.
    assert!(
        !store
            .decide_access(&serial("L-2"), "TAG-1", "pi")
            .await
            .unwrap()
            .access
    );
    assert!(
        !store
            .decide_access(&l1, "TAG-2", "pi")
            .await
            .unwrap()
            .access
    );
    assert!(
        !store
            .decide_access(&serial("GHOST"), "TAG-1", "pi")
            .await
            .unwrap()
            .access
    );

    store
        .execute("UPDATE paired_items SET revoked_at = '2020-01-01T00:00:00.000Z'")
        .await
        .unwrap();
    let d = store.decide_access(&l1, "TAG-1", "gw-2").await.unwrap();
    assert!(!d.access);
    assert_eq!(d.user, None);

    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM access_decisions").await,
        7
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM access_decisions WHERE granted = 1"
        )
        .await,
        1
    );
    let granted = store
        .text_rows(
            "SELECT lock_serial, item, device, CAST(granted AS TEXT), user_name, decided_at \
             FROM access_decisions WHERE granted = 1",
        )
        .await;
    assert_eq!(granted.len(), 1);
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    assert_eq!(
        granted[0][..5].iter().map(text).collect::<Vec<_>>(),
        ["L-1", "TAG-1", "pi", "1", "Alice"]
    );
    assert!(parse_ts(&text(&granted[0][5])).is_some());
    let last = store
        .text_rows(
            "SELECT device, CAST(granted AS TEXT), user_name FROM access_decisions \
             ORDER BY id DESC LIMIT 1",
        )
        .await;
    assert_eq!(
        last,
        [[Some("gw-2".to_owned()), Some("0".to_owned()), None]]
    );
    store.close().await;
    }
}

on_both_stores! {
    async fn record_event_appends(store) {
    let l1 = serial("L-1");
    store.join_lock(&l1, &device("pi")).await.unwrap();
    let msg = json!({"event": "door_opened", "at": 1234, "nested": {"a": [1, 2]}});
    store.record_event(&l1, &device("pi"), &msg).await.unwrap();
    store
        .record_event(&l1, &device("pi"), &json!("plain string"))
        .await
        .unwrap();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM lock_events").await, 2);
    let rows = store
        .text_rows(
            "SELECT lock_serial, from_device, CAST(message AS TEXT), received_at \
             FROM lock_events ORDER BY id LIMIT 1",
        )
        .await;
    let row: Vec<String> = rows[0].iter().map(|v| v.clone().unwrap_or_default()).collect();
    assert_eq!((row[0].as_str(), row[1].as_str()), ("L-1", "pi"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&row[2]).unwrap(),
        msg
    );
    assert!(parse_ts(&row[3]).is_some());
    store.close().await;
    }
}

on_both_stores! {
    async fn lock_overview_view_is_queryable(store) {
    join(&store, "L-1", "pi").await;
    join(&store, "L-2", "pi").await;
    join(&store, "L-1", "pi-2").await;
    store
        .set_reported_state(&serial("L-1"), &json!({"locked": true}))
        .await
        .unwrap();
    // Exactly as an administrator would ask, on either store.
    let rows = store
        .text_rows(
            "SELECT serial, uuid, name, CAST(mode AS TEXT), CAST(intended_state AS TEXT), \
             CAST(reported_state AS TEXT), reported_at, holder_device, last_seen_at \
             FROM lock_overview ORDER BY serial",
        )
        .await;
    assert_eq!(rows.len(), 2);
    let l1 = store.get_lock("L-1").await.unwrap().unwrap();
    let get = |i: usize, col: usize| -> Option<String> { rows[i][col].clone() };
    let json = |v: Option<String>| v.map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap());
    assert_eq!(get(0, 0).as_deref(), Some("L-1"));
    assert_eq!(get(0, 1), Some(l1.uuid));
    assert_eq!(get(0, 2).as_deref(), Some("L-1"));
    assert_eq!(get(0, 3).as_deref(), Some("1"));
    assert_eq!(json(get(0, 4)), Some(json!({"locked": true})));
    assert_eq!(json(get(0, 5)), Some(json!({"locked": true})));
    assert_eq!(get(0, 6), l1.reported_at);
    assert_eq!(get(0, 7).as_deref(), Some("pi-2"));
    assert_eq!(get(0, 8), l1.last_seen_at);
    assert_eq!(get(1, 0).as_deref(), Some("L-2"));
    assert_eq!(get(1, 5), None);
    store.close().await;
    }
}

on_both_stores! {
    async fn malformed_json_is_an_error_not_a_panic(store) {
    join(&store, "L-1", "pi").await;

    // The schema refuses malformed JSON (a CHECK on SQLite, jsonb on PostgreSQL)...
    let refused = store.execute("UPDATE locks SET config = '{oops'").await;
    assert!(refused.is_err());

    // ...but valid JSON of the wrong shape gets through and must not panic.
    store
        .execute("UPDATE locks SET feature_flags = '[1, 2]'")
        .await
        .unwrap();
    let err = store.get_lock("L-1").await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err}");
    assert!(err.to_string().contains("feature_flags"), "{err}");
    assert!(
        store
            .join_lock(&serial("L-1"), &device("pi"))
            .await
            .is_err()
    );
    assert!(store.list_locks().await.is_err());

    store.close().await;
    }
}

#[tokio::test]
async fn malformed_json_text_behind_the_checks_is_an_error_not_a_panic() {
    let (_dir, store) = temp_store().await;
    join(&store, "L-1", "pi").await;
    // And with CHECKs bypassed, malformed text is an error too.
    let mut conn = store.sqlite_pool().acquire().await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE locks SET feature_flags = '[]', intended_state = '{not json'")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = OFF")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let err = store.get_lock("L-1").await.unwrap_err();
    assert!(err.to_string().contains("intended_state"), "{err}");
    store.close().await;
}

#[tokio::test]
async fn in_memory_database_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let a = join(&store, "L-1", "pi").await;
    let b = join(&store, "L-1", "pi").await;
    assert_eq!(a.uuid, b.uuid);
    store.close().await;
}

on_both_stores! {
    async fn concurrent_exclusive_joins_give_a_new_lock_to_exactly_one_device(store) {
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .join_lock_exclusive(&serial("CONTESTED"), &device(&format!("dev-{i}")))
                .await
                .expect("join")
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(lock) = t.await.expect("task") {
            winners.push(lock.holder_device.clone());
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one device holds the lock: {winners:?}"
    );
    let lock = store.get_lock("CONTESTED").await.unwrap().unwrap();
    assert_eq!(lock.holder_device, winners[0]);
    // The holder rejoins; another device is still refused.
    let holder = device(winners[0].as_deref().unwrap());
    assert!(
        store
            .join_lock_exclusive(&serial("CONTESTED"), &holder)
            .await
            .unwrap()
            .is_some()
    );
    let other = if holder.as_str() == "dev-0" {
        "dev-1"
    } else {
        "dev-0"
    };
    assert!(
        store
            .join_lock_exclusive(&serial("CONTESTED"), &device(other))
            .await
            .unwrap()
            .is_none()
    );
    }
}

/// Joins `n` locks concurrently (so the join writer batches them), lock `i` named
/// `serial_of(i)` by device `holder_of(i)`; the records in `i` order.
async fn join_all_at_once(
    store: &Store,
    n: usize,
    serial_of: fn(usize) -> String,
    holder_of: fn(usize) -> String,
) -> Vec<crate::domain::LockRecord> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .join_lock(&serial(&serial_of(i)), &device(&holder_of(i)))
                    .await
                    .expect("join")
            })
        })
        .collect();
    let mut locks = Vec::with_capacity(n);
    for t in tasks {
        locks.push(t.await.expect("task"));
    }
    locks
}

on_both_stores! {
    async fn a_batch_of_many_locks_is_written_and_answered_per_lock(store) {
    let locks = join_all_at_once(&store, 600, |i| format!("BATCH-{i}"), |i| format!("h-{i}")).await;
    for (i, lock) in locks.iter().enumerate() {
        assert_eq!(lock.serial, format!("BATCH-{i}"));
        assert_eq!(lock.name, lock.serial);
    }
    assert_eq!(count(&store, "SELECT count(*) FROM locks").await, 600);
    assert_eq!(
        count(&store, "SELECT count(DISTINCT uuid) FROM locks").await,
        600
    );
    }
}

async fn holder_in_table(store: &Store, serial: &str) -> (Option<String>, Option<String>) {
    let rows = store
        .text_rows(&format!(
            "SELECT holder_device, last_seen_at FROM locks WHERE serial = '{serial}'"
        ))
        .await;
    (rows[0][0].clone(), rows[0][1].clone())
}

on_both_stores! {
    async fn known_lock_joins_come_from_the_copy_and_are_still_written(store) {
    let first = join(&store, "L-1", "pi-a").await;
    assert_eq!(store.lock_join_known_hits(), 0, "first sight is not a hit");
    tick().await;
    let second = join(&store, "L-1", "pi-b").await;
    assert_eq!(store.lock_join_known_hits(), 1);
    assert_eq!(second.uuid, first.uuid);
    assert_eq!(second.holder_device.as_deref(), Some("pi-b"));
    assert!(second.last_seen_at > first.last_seen_at);
    // The reply went out after the row was written, not instead of writing it.
    assert_eq!(
        holder_in_table(&store, "L-1").await,
        (second.holder_device.clone(), second.last_seen_at.clone())
    );
    store.close().await;
    }
}

on_both_stores! {
    async fn many_known_locks_rejoined_at_once_are_each_answered_and_written(store) {
    for i in 0..300 {
        let s = format!("K-{i}");
        store.join_lock(&serial(&s), &device("old")).await.unwrap();
    }
    let locks = join_all_at_once(&store, 300, |i| format!("K-{i}"), |i| format!("new-{i}")).await;
    for (i, lock) in locks.iter().enumerate() {
        assert_eq!(lock.serial, format!("K-{i}"));
        let holder = format!("new-{i}");
        assert_eq!(lock.holder_device.as_deref(), Some(holder.as_str()));
    }
    assert_eq!(store.lock_join_known_hits(), 300);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM locks WHERE holder_device = 'new-' || substr(serial, 3)"
        )
        .await,
        300
    );
    store.close().await;
    }
}

#[tokio::test]
async fn a_change_by_another_connection_reaches_the_next_join_on_sqlite() {
    change_by_another_connection(Kind::Sqlite).await;
}

#[tokio::test]
async fn a_change_by_another_connection_reaches_the_next_join_on_postgres() {
    change_by_another_connection(Kind::Postgres).await;
}

/// An administrator's change (another connection: `sqlite3`, `psql`, another hub process)
/// to a lock in the known-lock copy reaches that lock's next join.
async fn change_by_another_connection(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open().await;
    let first = join(&store, "L-1", "pi").await;
    join(&store, "L-1", "pi").await;
    assert_eq!(store.lock_join_known_hits(), 1, "the lock is in the copy");

    outside_execute(
        &db,
        "UPDATE locks SET name = 'Front door', mode = 2, config = '{\"beep\":true}' \
         WHERE serial = 'L-1'",
    )
    .await;

    let after = join(&store, "L-1", "pi").await;
    assert_eq!(after.name, "Front door");
    assert_eq!(after.mode, 2);
    assert_eq!(after.config, json!({"beep": true}));
    assert_eq!(after.uuid, first.uuid);
    assert_eq!(
        store.lock_join_known_hits(),
        1,
        "the stale copy was not used"
    );
    // The copy is refilled from that join.
    let again = join(&store, "L-1", "pi").await;
    assert_eq!(again.name, "Front door");
    assert_eq!(store.lock_join_known_hits(), 2);
    // A holder change by another connection is seen too.
    outside_execute(
        &db,
        "UPDATE locks SET holder_device = 'other' WHERE serial = 'L-1'",
    )
    .await;
    let taken = store
        .join_lock_exclusive(&serial("L-1"), &device("pi"))
        .await
        .unwrap();
    assert_eq!(taken, None, "held by another device now");
    assert_eq!(store.lock_join_known_hits(), 2);
    store.close().await;
}

/// Runs `sql` on a connection of its own to the test database, as an administrator would.
async fn outside_execute(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    match Kind::of(&db.url) {
        Kind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

on_both_stores! {
    async fn changes_through_the_store_reach_the_next_known_lock_join(store) {
    join(&store, "L-1", "pi").await;
    store
        .set_intended_state("L-1", &json!({"locked": false}), None)
        .await
        .unwrap();
    let lock = join(&store, "L-1", "pi").await;
    assert_eq!(lock.intended_state, json!({"locked": false}));
    store.close().await;
    }
}

on_both_stores! {
    async fn a_known_lock_held_by_another_device_is_refused_in_token_mode(store) {
    let held = store
        .join_lock_exclusive(&serial("T-1"), &device("dev-0"))
        .await
        .unwrap();
    assert!(held.is_some());
    let refused = store
        .join_lock_exclusive(&serial("T-1"), &device("dev-9"))
        .await
        .unwrap();
    assert!(refused.is_none(), "held by dev-0: {refused:?}");
    // Forty devices at once, the holder among them: one batch, one lock in the copy.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let lock = store
                .join_lock_exclusive(&serial("T-1"), &device(&format!("dev-{i}")))
                .await
                .expect("join");
            (i, lock.is_some())
        }));
    }
    let mut granted = Vec::new();
    for t in tasks {
        let (i, ok) = t.await.expect("task");
        if ok {
            granted.push(i);
        }
    }
    assert_eq!(granted, vec![0], "only the holder gets the lock");
    assert_eq!(
        holder_in_table(&store, "T-1").await.0.as_deref(),
        Some("dev-0")
    );
    store.close().await;
    }
}

#[tokio::test]
async fn new_locks_get_the_configured_feature_flags_on_sqlite() {
    configured_feature_flags(Kind::Sqlite).await;
}

#[tokio::test]
async fn new_locks_get_the_configured_feature_flags_on_postgres() {
    configured_feature_flags(Kind::Postgres).await;
}

async fn configured_feature_flags(kind: Kind) {
    let db = TestDb::new(kind).await;
    let opts = super::StoreOptions {
        new_lock_flags: vec!["lock".into(), "nfc".into()],
    };
    let store = db.open_with(&opts).await;
    let lock = join(&store, "L-1", "pi").await;
    assert_eq!(
        lock.feature_flags,
        vec!["lock".to_owned(), "nfc".to_owned()]
    );
    // A later join does not reset flags an administrator changed.
    let patch = crate::store::LockPatch {
        feature_flags: Some(vec![]),
        ..Default::default()
    };
    store.update_lock("L-1", &patch).await.expect("update");
    let again = join(&store, "L-1", "pi").await;
    assert!(again.feature_flags.is_empty(), "{:?}", again.feature_flags);
    store.close().await;
}

on_both_stores! {
    async fn update_lock_changes_only_given_fields(store) {
    let before = join(&store, "L-1", "pi").await;
    let patch = crate::store::LockPatch {
        name: Some("Front door".into()),
        mode: Some(2),
        config: Some(
            json!({"volume": 3})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        ..Default::default()
    };
    let after = store.update_lock("L-1", &patch).await.expect("update");
    assert_eq!(after.name, "Front door");
    assert_eq!(after.mode, 2);
    assert_eq!(after.config, json!({"volume": 3}));
    assert_eq!(after.feature_flags, before.feature_flags);
    assert_eq!(after.uuid, before.uuid);
    // The join writer's known-lock copy must not answer the next join with the old record.
    let joined = join(&store, "L-1", "pi").await;
    assert_eq!(joined.name, "Front door");
    assert_eq!(joined.mode, 2);
    assert!(matches!(
        store.update_lock("nope", &patch).await,
        Err(StoreError::LockNotFound)
    ));
    store.close().await;
    }
}

on_both_stores! {
    async fn pending_pairings_are_delivered_until_completed_or_cancelled(store) {
    join(&store, "L-1", "pi").await;
    join(&store, "L-2", "pi").await;
    let a = store
        .create_pairing("L-1", "Alice", ItemKind::Tag, Duration::from_secs(60))
        .await
        .expect("pairing a");
    let b = store
        .create_pairing("L-1", "Bob", ItemKind::Tag, Duration::from_secs(60))
        .await
        .expect("pairing b");
    assert!(
        store
            .deliver_pending_pairings("L-2")
            .await
            .expect("none")
            .is_empty()
    );
    let first = store
        .deliver_pending_pairings("L-1")
        .await
        .expect("pending");
    let ids: Vec<&str> = first.iter().map(|r| r.pair_id.as_str()).collect();
    assert_eq!(ids, [a.pair_id.as_str(), b.pair_id.as_str()]);
    assert!(
        first
            .iter()
            .all(|r| r.deliveries == 1 && r.delivered_at.is_some())
    );

    store
        .complete_pairing(&a.pair_id, "TAG-1")
        .await
        .expect("complete");
    let cancelled = store.cancel_pairing(&b.pair_id).await.expect("cancel");
    assert!(cancelled.cancelled_at.is_some());
    assert!(matches!(
        store.cancel_pairing(&b.pair_id).await,
        Err(StoreError::PairingClosed)
    ));
    assert!(matches!(
        store.cancel_pairing("no-such-id").await,
        Err(StoreError::PairingNotFound)
    ));
    // A cancelled request cannot be completed.
    assert!(matches!(
        store.complete_pairing(&b.pair_id, "TAG-2").await,
        Err(StoreError::PairingNotFound)
    ));
    assert!(
        store
            .deliver_pending_pairings("L-1")
            .await
            .expect("none")
            .is_empty()
    );
    let states = store
        .text_rows("SELECT state FROM pairing_overview ORDER BY name")
        .await;
    assert_eq!(
        states,
        [[Some("completed".to_owned())], [Some("cancelled".to_owned())]]
    );
    store.close().await;
    }
}

on_both_stores! {
    async fn expired_pairings_are_not_delivered(store) {
    join(&store, "L-1", "pi").await;
    store
        .create_pairing("L-1", "Alice", ItemKind::Tag, Duration::from_secs(1))
        .await
        .expect("pairing");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        store
            .deliver_pending_pairings("L-1")
            .await
            .expect("none")
            .is_empty()
    );
    store.close().await;
    }
}

on_both_stores! {
    async fn bester_users_round_trip(store) {
        assert!(store.create_bester_user("alice", "$h1").await.unwrap());
        assert!(!store.create_bester_user("alice", "$h2").await.unwrap());
        assert_eq!(
            store.bester_password_hash("alice").await.unwrap().as_deref(),
            Some("$h1")
        );
        assert!(store.set_bester_password("alice", "$h3").await.unwrap());
        assert!(!store.set_bester_password("bob", "$h3").await.unwrap());
        assert_eq!(
            store.bester_password_hash("alice").await.unwrap().as_deref(),
            Some("$h3")
        );
        store.record_bester_login("alice").await.unwrap();
        let users = store.list_bester_users().await.unwrap();
        assert_eq!(users.len(), 1);
        assert!(users[0].last_login_at.is_some());
        assert!(store.delete_bester_user("alice").await.unwrap());
        assert!(!store.delete_bester_user("alice").await.unwrap());
        assert_eq!(store.bester_password_hash("alice").await.unwrap(), None);
        store.close().await;
    }
}

on_both_stores! {
    async fn tokens_round_trip(store) {
        let key = store.token_key().await.unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(store.token_key().await.unwrap(), key, "the key is kept");
        let t = store
            .record_token("t1", "lamp", "2999-01-01T00:00:00.000Z")
            .await
            .unwrap();
        assert_eq!(t.revoked_at, None);
        assert!(store.revoke_token("t1").await.unwrap());
        assert!(!store.revoke_token("nope").await.unwrap());
        assert_eq!(store.revoked_token_ids().await.unwrap(), ["t1"]);
        let all = store.list_tokens().await.unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].revoked_at.is_some());
        store.close().await;
    }
}

/// Two hub processes on one PostgreSQL database: a pairing request created through one is
/// delivered when the lock joins the other (the trigger's notification moves the other's
/// watermark).
#[tokio::test]
async fn a_pairing_created_by_another_process_is_delivered_on_postgres() {
    let db = TestDb::new(Kind::Postgres).await;
    let here = db.open().await;
    let there = db.open().await;
    join(&here, "L-1", "pi").await;
    assert!(
        there
            .deliver_pending_pairings("L-1")
            .await
            .unwrap()
            .is_empty()
    );
    let request = here
        .create_pairing("L-1", "Alice", ItemKind::Tag, Duration::from_secs(60))
        .await
        .unwrap();
    let delivered = super::testing::eventually("the other process sees the request", async || {
        let d = there.deliver_pending_pairings("L-1").await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(
        delivered
            .iter()
            .map(|r| r.pair_id.as_str())
            .collect::<Vec<_>>(),
        [request.pair_id.as_str()]
    );
    here.close().await;
    there.close().await;
}
