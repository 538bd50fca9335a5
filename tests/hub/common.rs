//! Test harness: a real hub on port 0 on the store under test (a temp SQLite file, or with
//! `HOMEHUB_TEST_STORE=postgres` a fresh database on the test PostgreSQL server), and a
//! small Phoenix client over tokio-tungstenite.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use homehub::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub use crate::support::eventually;
use crate::support::{Running, config_in};

pub const TOKEN: &str = "test-admin-token";
const WAIT: Duration = Duration::from_secs(5);

/// A running hub (`support::Running`) with its temp directory.
pub struct TestHub {
    pub addr: SocketAddr,
    pub dir: std::sync::Arc<tempfile::TempDir>,
    /// The hub's database (`support::database_in(dir)`).
    pub database_url: String,
    server: Running,
}

/// `http`, `admin`, `metric`: the shared harness's.
impl std::ops::Deref for TestHub {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.server
    }
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestHub {
        let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, "127.0.0.1:0".parse().unwrap(), tweak).await
    }

    /// Starts a hub on the database of `dir` (the store under test; the same database
    /// again for the same `dir`).
    pub async fn start_in(
        dir: std::sync::Arc<tempfile::TempDir>,
        bind: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> TestHub {
        let mut config = config_in(dir.path(), bind, TOKEN);
        config.database_url = crate::support::database_in(dir.path()).await;
        tweak(&mut config);
        let database_url = config.database_url.clone();
        let server = Running::start(config).await;
        TestHub {
            addr: server.addr,
            dir,
            database_url,
            server,
        }
    }

    /// Graceful shutdown (as on SIGTERM), waiting for it to finish.
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// Stops this hub and starts a new one on the same database file and port.
    pub async fn restart(self) -> TestHub {
        let dir = self.dir.clone();
        let addr = self.addr;
        self.stop().await;
        TestHub::start_in(dir, addr, |_| {}).await
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{query}", self.addr)
    }

    /// Runs the `homehub` admin CLI against this hub (blocking: call it from
    /// `spawn_blocking`); returns its exit code and stdout.
    pub fn cli_runner(&self) -> impl Fn(&[&str]) -> (Option<i32>, String) + Clone + Send + 'static {
        let url = format!("http://{}", self.addr);
        move |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_homehub"))
                .args(args)
                .env("HOMEHUB_URL", &url)
                .env("HOMEHUB_ADMIN_TOKEN", TOKEN)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run the homehub CLI");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    }

    /// Rows of `sql` on the hub's database, every column read as text (write
    /// `CAST(x AS TEXT)` for other columns: it reads the same on both stores).
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        crate::support::text_rows(&self.database_url, sql).await
    }

    /// V2 client named `name`.
    pub async fn client(&self, name: &str) -> TestClient {
        TestClient::connect(&self.ws_url(&format!("vsn=2.0.0&name={name}"))).await
    }
}

/// Sends `req` and returns its body parsed as JSON (panics on transport or JSON errors).
pub async fn json_body(req: reqwest::RequestBuilder) -> Value {
    req.send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON body")
}

pub struct TestClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl TestClient {
    pub async fn connect(url: &str) -> TestClient {
        let (ws, _) = connect_async(url).await.expect("websocket connects");
        TestClient { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Next data frame (text parsed as JSON); panics after 5 s.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("socket open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Next frame of any kind.
    pub async fn recv_msg(&mut self) -> Option<Message> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within 5 s")
            {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Receives frames until one whose event is `event`, returning it.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f[3] == event {
                return f;
            }
        }
    }

    /// Asserts nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await {
            panic!("expected silence, got {m:?}");
        }
    }

    /// Waits for the server's close frame; returns it.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within 5 s")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Joins `topic` with join_ref = ref = `jr`; returns the reply frame.
    pub async fn join(&mut self, topic: &str, jr: &str, payload: Value) -> Value {
        self.send(json!([jr, jr, topic, "phx_join", payload])).await;
        self.recv_reply(jr).await
    }

    /// Pushes an event; returns its reply frame.
    pub async fn push(
        &mut self,
        jr: &str,
        r: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Value {
        self.send(json!([jr, r, topic, event, payload])).await;
        self.recv_reply(r).await
    }

    /// Receives until the phx_reply with ref `r`.
    pub async fn recv_reply(&mut self, r: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f[3] == "phx_reply" && f[1] == r {
                return f;
            }
        }
    }
}

/// Status and response of a V2 reply frame.
pub fn reply_of(frame: &Value) -> (&str, &Value) {
    (
        frame[4]["status"].as_str().expect("reply status"),
        &frame[4]["response"],
    )
}

// ---- Plain JSON-text WebSocket clients: the raw `/relay` and `/compendium` doors ----

impl TestHub {
    /// A plain JSON-text WebSocket client on the raw relay door (`GET /relay`).
    pub async fn relay_ws(&self) -> TestClient {
        TestClient::connect(&format!("ws://{}/relay", self.addr)).await
    }

    /// A plain JSON-text WebSocket client on the Compendium door (`GET /compendium`).
    pub async fn compendium_ws(&self) -> TestClient {
        TestClient::connect(&format!("ws://{}/compendium", self.addr)).await
    }
}

impl TestClient {
    /// Sends `text` verbatim as one text frame (for input that is not valid JSON).
    pub async fn send_plain(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// Sends `frame` as one JSON text frame and returns the next text frame, parsed.
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Closes the socket from the client side and waits (bounded) until it has ended.
    pub async fn hang_up(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// The hub as a process, for what only its log shows.
pub struct HubProcess {
    child: std::process::Child,
    pub addr: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl HubProcess {
    /// The hub on a temp SQLite file.
    pub fn start() -> HubProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = format!("sqlite://{}", dir.path().join("homehub.db").display());
        HubProcess::start_on(dir, &db)
    }

    /// The hub on `db`, its files in `dir` (kept until the process is dropped).
    pub fn start_on(dir: tempfile::TempDir, db: &str) -> HubProcess {
        HubProcess::start_with(dir, db, &[])
    }

    /// [`HubProcess::start_on`] with `env` set for the process (a cluster node's
    /// `HOMEHUB_CLUSTER`, `HOMEHUB_NODE`, …).
    pub fn start_with(dir: tempfile::TempDir, db: &str, env: &[(&str, &str)]) -> HubProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_homehub"))
            // Bester on an ephemeral port: several hub processes run at once.
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--bester-bind",
                "127.0.0.1:0",
            ])
            .args(["--database-url", db])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the hub");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let Some(addr) = line.trim().strip_prefix("homehub listening on http://") else {
            // The hub did not start: say why.
            let _ = child.kill();
            let out = child.wait_with_output().expect("hub output");
            panic!(
                "the hub did not start (first line {line:?}, {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let addr = addr.to_owned();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        HubProcess {
            child,
            addr,
            stderr,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl HubProcess {
    /// SIGTERM, and waits for the hub to exit (it stops what it started, such as Bester
    /// handler processes); SIGKILL (on drop) after 10 s.
    #[allow(dead_code)] // the cluster suite's
    pub fn terminate(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the process ends at once, with nothing flushed or closed.
    pub fn kill_9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self._dir, dir)
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
