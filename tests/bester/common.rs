//! Test harness for the Bester door: a real hub (`homehub::app::Server`) on port 0 with a
//! temp SQLite file and the Bester listener on 127.0.0.1:0, message handlers started by the
//! hub from a real configuration file, and a small Bester client over a real TCP socket.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{Running, config_in, eventually_within};
use homehub::config::Config;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub const TOKEN: &str = "bester-test-token";
pub const WAIT: Duration = Duration::from_secs(5);
pub const PASSWORD: &str = "correct horse";

/// The example handler the docs describe (`examples/bester_upper.py`).
pub fn example_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bester_upper.py").to_owned()
}

fn fixture_script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/bester/fixtures/misbehave.py"
    )
    .to_owned()
}

/// A change to the hub's settings.
type Tweak = Box<dyn FnOnce(&mut Config) + Send>;

/// Builds a hub: its Bester configuration file and settings.
pub struct HubBuilder {
    dir: Arc<tempfile::TempDir>,
    name: Option<String>,
    handlers: Map<String, Value>,
    peers: Map<String, Value>,
    /// Sockets of handlers the hub starts, awaited before the hub is handed out.
    managed: Vec<PathBuf>,
    tweaks: Vec<Tweak>,
}

impl HubBuilder {
    pub fn new() -> HubBuilder {
        HubBuilder {
            dir: Arc::new(tempfile::tempdir().expect("tempdir")),
            name: None,
            handlers: Map::new(),
            peers: Map::new(),
            managed: Vec::new(),
            tweaks: Vec::new(),
        }
    }

    fn socket(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("{kind}.sock"))
    }

    /// This hub's name towards peers.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// A handler of type `kind` running the example script, started by the hub.
    pub fn example_handler(mut self, kind: &str) -> Self {
        let socket = self.socket(kind);
        self.handlers.insert(
            kind.into(),
            json!({ "socket": socket, "command": ["python3", example_script()] }),
        );
        self.managed.push(socket);
        self
    }

    /// A handler of type `kind` that misbehaves as `mode` says (fixtures/misbehave.py).
    pub fn fixture_handler(mut self, kind: &str, mode: &str) -> Self {
        let socket = self.socket(kind);
        self.handlers.insert(
            kind.into(),
            json!({ "socket": socket, "command": ["python3", fixture_script(), mode] }),
        );
        self.managed.push(socket);
        self
    }

    /// A handler of type `kind` whose socket nobody listens on.
    pub fn absent_handler(mut self, kind: &str) -> Self {
        let socket = self.socket(kind);
        self.handlers
            .insert(kind.into(), json!({ "socket": socket }));
        self
    }

    pub fn peer(mut self, name: &str, address: Option<SocketAddr>, secret: &str) -> Self {
        let mut p = json!({ "secret": secret });
        if let Some(a) = address {
            p["address"] = json!(a.to_string());
        }
        self.peers.insert(name.into(), p);
        self
    }

    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweaks.push(Box::new(f));
        self
    }

    pub async fn start(self) -> TestHub {
        let mut file = json!({ "handlers": self.handlers, "peers": self.peers });
        if let Some(name) = &self.name {
            file["name"] = json!(name);
        }
        let config_path = self.dir.path().join("bester.json");
        std::fs::write(&config_path, file.to_string()).expect("write bester.json");
        let mut config = config_in(self.dir.path(), "127.0.0.1:0".parse().unwrap(), TOKEN);
        config.database_url = crate::support::database_in(self.dir.path()).await;
        config.bester.bind = Some("127.0.0.1:0".parse().unwrap());
        config.bester.config = Some(config_path);
        config.bester.handler_timeout = std::time::Duration::from_millis(3_000);
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let server = Running::start(config).await;
        for socket in &self.managed {
            wait_for_socket(socket).await;
        }
        TestHub {
            addr: server.addr,
            bester_addr: server.bester_addr,
            dir: self.dir,
            server,
        }
    }
}

/// Waits until something accepts connections on `path` (a handler the hub started).
pub async fn wait_for_socket(path: &std::path::Path) {
    let what = format!("handler socket {} comes up", path.display());
    eventually_within(Duration::from_secs(15), &what, async || {
        UnixStream::connect(path).await.ok().map(drop)
    })
    .await
}

/// A running hub (`support::Running`) with its temp directory.
pub struct TestHub {
    pub addr: SocketAddr,
    pub bester_addr: Option<SocketAddr>,
    pub dir: Arc<tempfile::TempDir>,
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
    pub fn bester(&self) -> SocketAddr {
        self.bester_addr.expect("bester listener enabled")
    }

    /// Graceful shutdown (as on SIGTERM), waiting for it to finish.
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// Adds a Bester user through the admin API.
    pub async fn add_user(&self, name: &str, password: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/api/bester/users",
                Some(json!({ "username": name, "password": password })),
            )
            .await;
        assert_eq!(status, 201, "add user {name}: {body}");
    }

    /// A raw, unauthenticated connection.
    pub async fn connect(&self) -> BesterClient {
        BesterClient::connect(self.bester()).await
    }

    /// A raw connection from another loopback address (e.g. 127.0.0.2).
    pub async fn connect_from(&self, ip: &str) -> BesterClient {
        BesterClient::connect_from(self.bester(), ip.parse().expect("an IP address")).await
    }

    /// A value of `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.server.metric(name).await.unwrap_or(0.0)
    }

    /// A connection authenticated as `name` (password [`PASSWORD`]).
    pub async fn login(&self, name: &str) -> BesterClient {
        let mut c = self.connect().await;
        let r = c.authenticate(name, PASSWORD).await;
        assert_eq!(status(&r), "ok", "login {name}: {r}");
        c
    }
}

/// `header.status` of a frame.
pub fn status(frame: &Value) -> &str {
    frame["header"]["status"].as_str().unwrap_or("<none>")
}

/// A TCP connection to `addr` from the local address `ip`.
pub async fn tcp_from(addr: SocketAddr, ip: IpAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// The length-prefixed frame of a first message that logs in as `username`.
pub fn login_frame(username: &str, password: &str) -> Vec<u8> {
    let body = json!({
        "header": {
            "authentication": { "username": username, "password": password },
            "scope": "client"
        },
        "payload": { "type": "authenticate", "data": null }
    })
    .to_string();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    frame
}

/// A Bester client over TCP: length-prefixed JSON frames.
pub struct BesterClient {
    pub stream: TcpStream,
    /// Frames received while waiting for something else.
    pending: VecDeque<Value>,
    next_id: u64,
}

impl BesterClient {
    pub async fn connect(addr: SocketAddr) -> BesterClient {
        Self::over(TcpStream::connect(addr).await.expect("connect to bester"))
    }

    /// A client whose socket is bound to `ip` (any 127.x address on Linux) before it
    /// connects, so the hub sees another remote address.
    pub async fn connect_from(addr: SocketAddr, ip: IpAddr) -> BesterClient {
        Self::over(tcp_from(addr, ip).await.expect("connect to bester"))
    }

    /// A client on an already connected stream (e.g. one with socket options set).
    pub fn over(stream: TcpStream) -> BesterClient {
        BesterClient {
            stream,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Sends one frame with this body.
    pub async fn send_body(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_raw(&frame).await;
    }

    pub async fn send(&mut self, message: &Value) {
        self.send_body(message.to_string().as_bytes()).await;
    }

    /// The next frame's body, or `None` at end of stream; panics after 5 s.
    pub async fn recv_body(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(WAIT, async {
            let mut prefix = [0u8; 4];
            if self.stream.read_exact(&mut prefix).await.is_err() {
                return None;
            }
            let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(body)
        })
        .await
        .expect("a frame (or the end) within 5 s")
    }

    /// The next frame, parsed; panics at end of stream or after 5 s.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        let body = self.recv_body().await.expect("connection open");
        serde_json::from_slice(&body).expect("the hub sent JSON")
    }

    /// The next delivered message (a frame with `header.from`), keeping others pending.
    pub async fn recv_delivery(&mut self) -> Value {
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f["header"].get("from").is_some())
        {
            return self.pending.remove(i).unwrap_or(Value::Null);
        }
        loop {
            let body = self.recv_body().await.expect("connection open");
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            if v["header"].get("from").is_some() {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Sends `message` with a fresh `payload.id` and returns the status response with that
    /// id (frames arriving meanwhile stay pending).
    pub async fn request(&mut self, mut message: Value) -> Value {
        self.next_id += 1;
        let id = json!(format!("r{}", self.next_id));
        message["payload"]["id"] = id.clone();
        self.send(&message).await;
        loop {
            let body = self.recv_body().await.expect("connection open");
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            if v["payload"]["id"] == id {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// A handler message (or built-in) without a header.
    pub async fn call(&mut self, kind: &str, data: Value) -> Value {
        self.request(json!({ "payload": { "type": kind, "data": data } }))
            .await
    }

    /// The seed's first message: credentials in the header, then `authenticate`.
    pub async fn authenticate(&mut self, username: &str, password: &str) -> Value {
        self.send(&json!({
            "header": {
                "authentication": { "username": username, "password": password },
                "scope": "client"
            },
            "payload": { "type": "authenticate", "data": null }
        }))
        .await;
        self.recv().await
    }

    /// Asserts the hub closes the connection (after any frames it still sends).
    pub async fn expect_closed(&mut self) {
        while let Some(body) = self.recv_body().await {
            let _ = body;
        }
    }

    /// Asserts nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        assert!(
            self.pending.is_empty(),
            "pending frames: {:?}",
            self.pending
        );
        let mut byte = [0u8; 1];
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(ms), self.stream.peek(&mut byte)).await
        {
            panic!("expected silence, got {r:?}");
        }
    }
}
