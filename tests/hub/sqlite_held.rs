//! An administrator's `sqlite3` holding the database's write lock (a `BEGIN` left open)
//! does not take the locks down: a lock the hub knows joins at once, a new lock is told
//! `store unavailable`, the log names the process, and everything resumes when the
//! transaction ends. With a real `sqlite3` process, on a real hub process.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::common::{HubProcess, TestClient, eventually, reply_of};

async fn client(addr: &str, name: &str) -> TestClient {
    TestClient::connect(&format!(
        "ws://{addr}/socket/websocket?vsn=2.0.0&name={name}"
    ))
    .await
}

/// `sqlite3 <db>` with a write transaction open (an `UPDATE` inside `BEGIN`), until its
/// stdin gets `COMMIT`.
fn hold(db: &std::path::Path) -> Child {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sqlite3 (the test command installs it)");
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin
        .write_all(
            // `.timeout`: wait (as an administrator's sqlite3 would be told to) for a write
            // the hub may be finishing, rather than fail at once with "database is locked"
            // and hold nothing.
            b".timeout 10000\nBEGIN IMMEDIATE;\nUPDATE locks SET name = 'Hall door' WHERE serial = 'HELD-1';\n",
        )
        .expect("write to sqlite3");
    stdin.flush().expect("flush");
    child
}

/// Whether another connection holds the write lock: `BEGIN IMMEDIATE` with no wait fails.
async fn write_lock_taken(db: &std::path::Path) -> bool {
    use sqlx::Connection;
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut conn)
        .await
        .expect("pragma");
    let taken = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .is_err();
    if !taken {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    }
    let _ = conn.close().await;
    taken
}

#[tokio::test]
async fn an_open_sqlite3_transaction_does_not_take_the_locks_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("homehub.db");
    let url = format!("sqlite://{}", db.display());
    let hub = tokio::task::spawn_blocking(move || HubProcess::start_on(dir, &url))
        .await
        .expect("hub process");
    let mut first = client(&hub.addr, "hall-pi").await;
    let r = first.join("lock:HELD-1", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let uuid = reply_of(&r).1["uuid"].clone();
    drop(first);

    let mut admin = hold(&db);
    let pid = admin.id();
    eventually("sqlite3 holds the write lock", async || {
        write_lock_taken(&db).await.then_some(())
    })
    .await;

    // A lock the hub knows joins with its UUID and intended state, as committed.
    let mut known = client(&hub.addr, "hall-pi-2").await;
    let r = known.join("lock:HELD-1", "1", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    assert_eq!(reply_of(&r).1["uuid"], uuid);
    assert_eq!(
        reply_of(&r).1["name"],
        "HELD-1",
        "the open transaction is not committed"
    );
    assert_eq!(reply_of(&r).1["state"], json!({"locked": true}));
    // A lock seen for the first time cannot be stored now.
    let mut new = client(&hub.addr, "porch-pi").await;
    let r = new.join("lock:HELD-2", "1", json!({})).await;
    assert_eq!(
        r,
        json!(["1", "1", "lock:HELD-2", "phx_reply",
               {"status": "error", "response": {"reason": "store unavailable"}}])
    );
    // The log names the process holding the database.
    let line = eventually("the log names sqlite3", async || {
        hub.log()
            .lines()
            .find(|l| l.contains("held by another process"))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains(&format!("pid={pid}")), "{line}");
    assert!(line.contains("sqlite3"), "{line}");

    // The administrator commits: everything resumes.
    admin
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"COMMIT;\n.quit\n")
        .expect("commit");
    tokio::task::spawn_blocking(move || admin.wait())
        .await
        .expect("join")
        .expect("sqlite3 ends");
    let mut attempt = 0;
    eventually(
        "the new lock gets in once the database is free",
        async || {
            attempt += 1;
            let r = new
                .join("lock:HELD-2", &format!("j{attempt}"), json!({}))
                .await;
            (reply_of(&r).0 == "ok").then_some(())
        },
    )
    .await;
    // The known lock's bookkeeping, kept during the outage, was written; and its next join
    // sees the administrator's committed change.
    let holder = crate::support::text_rows(
        &format!("sqlite://{}", db.display()),
        "SELECT holder_device FROM locks WHERE serial = 'HELD-1'",
    )
    .await;
    assert_eq!(holder, [[Some("hall-pi-2".to_owned())]]);
    let mut again = client(&hub.addr, "hall-pi-3").await;
    let r = again.join("lock:HELD-1", "1", json!({})).await;
    assert_eq!(reply_of(&r).1["name"], "Hall door", "{r}");
}
