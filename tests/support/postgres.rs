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

/// A PostgreSQL server of a test's own (for tests that stop and start the database): a
/// cluster in a temp directory on a free port, from the binaries `./scripts/test.sh` found
/// (`HOMEHUB_TEST_POSTGRES_BIN`, run as `HOMEHUB_TEST_POSTGRES_USER` when set). Stopped
/// when dropped.
pub struct PrivateServer {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
    user: Option<String>,
}

impl PrivateServer {
    /// Creates the cluster and starts it, with a database `homehub`.
    pub fn start() -> PrivateServer {
        let bin = std::env::var("HOMEHUB_TEST_POSTGRES_BIN").unwrap_or_else(|_| {
            panic!(
                "HOMEHUB_TEST_POSTGRES_BIN is not set: run the tests with ./scripts/test.sh, \
                 which finds PostgreSQL's binaries (docs/testing.md)"
            )
        });
        let user = std::env::var("HOMEHUB_TEST_POSTGRES_USER")
            .ok()
            .filter(|u| !u.is_empty());
        let dir = tempfile::Builder::new()
            .prefix("homehub-pg-test.")
            .tempdir()
            .expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = PrivateServer {
            dir,
            port,
            bin: bin.into(),
            user,
        };
        if let Some(user) = &server.user {
            let status = std::process::Command::new("chown")
                .arg(user)
                .arg(server.dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown {user} the test cluster's directory"
            );
        }
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "--username=homehub",
                "--encoding=UTF8",
                "--no-locale",
            ],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nmax_connections = 50\n",
            server.port,
            server.dir.path().display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{data}/postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut file, conf.as_bytes()).expect("write postgresql.conf");
        server.start_again();
        server.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-U",
                "homehub",
                "homehub",
            ],
        );
        server
    }

    /// `postgres://…/homehub` on this server.
    pub fn url(&self) -> String {
        format!("postgres://homehub@127.0.0.1:{}/homehub", self.port)
    }

    /// Stops the server (`pg_ctl stop -m fast`): clients see their connections end.
    pub fn stop(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&self) {
        let data = self.data();
        let log = format!("{}/log", self.dir.path().display());
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "30", "start"],
        );
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    /// Runs one of PostgreSQL's programs (as the unprivileged user when we are root).
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => std::process::Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => std::process::Command::new(&path),
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output();
    }
}
