//! A fresh database on the test PostgreSQL server (`HOMEHUB_TEST_POSTGRES_URL`, started by
//! `./scripts/test.sh`; docs/testing.md), for the store's unit tests (`store::testing`) and
//! the integration suites alike. Without that server a PostgreSQL test fails and says so;
//! it is never skipped.

#![allow(dead_code)]

use std::str::FromStr;

use sqlx::Connection;

/// The test PostgreSQL server's URL.
pub fn postgres_server() -> String {
    match std::env::var("HOMEHUB_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "HOMEHUB_TEST_POSTGRES_URL is not set: run the tests with ./scripts/test.sh, which \
             starts a private PostgreSQL server, or point it at a server of your own"
        ),
    }
}

/// Creates an empty database with a unique name on the test server; its URL.
pub async fn fresh_postgres_database() -> String {
    let server = postgres_server();
    let name = format!("homehub_t_{:016x}", rand::random::<u64>());
    let options = sqlx::postgres::PgConnectOptions::from_str(&server)
        .unwrap_or_else(|e| panic!("HOMEHUB_TEST_POSTGRES_URL {server:?}: {e}"));
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL at {server}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    with_database(&server, &name)
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
