//! One Phoenix V2 client connection: TCP from a chosen loopback source address, the
//! WebSocket upgrade with small buffers, refs from a per-socket counter, joins.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::wire;

/// Where the generator connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved address of the hub.
    pub addr: SocketAddr,
    /// `host:port` for the request line and Host header.
    pub host: String,
    /// Path of the WebSocket endpoint, e.g. `/socket/websocket`.
    pub path: String,
    /// Loopback source addresses to spread connections over (empty: let the kernel pick).
    pub sources: Vec<Ipv4Addr>,
}

impl Target {
    /// The Phoenix connect URL of a device, as the JS client builds it.
    pub fn url(&self, name: &str) -> String {
        format!("ws://{}{}?name={}&vsn=2.0.0", self.host, self.path, name)
    }

    pub fn source(&self, i: usize) -> Option<Ipv4Addr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
}

/// Why a connection or join failed.
#[derive(Debug)]
pub enum ConnErr {
    Connect(std::io::Error),
    Upgrade(tungstenite::Error),
    Refused(String),
    Closed,
    Timeout,
}

impl fmt::Display for ConnErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnErr::Connect(e) => write!(f, "connect: {:?}", e.kind()),
            ConnErr::Upgrade(tungstenite::Error::Http(r)) => {
                write!(f, "upgrade: HTTP {}", r.status().as_u16())
            }
            ConnErr::Upgrade(tungstenite::Error::Io(e)) => write!(f, "upgrade: {:?}", e.kind()),
            ConnErr::Upgrade(e) => write!(f, "upgrade: {e}"),
            ConnErr::Refused(r) => write!(f, "join refused: {r}"),
            ConnErr::Closed => f.write_str("closed before the join reply"),
            ConnErr::Timeout => f.write_str("timeout (connect or join)"),
        }
    }
}

/// Small client buffers: devices send and receive tiny frames, and one generator process
/// must hold 19,000 of them.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A TCP connection from `source` (bound before connecting, port chosen at connect time so
/// ports in TIME_WAIT can be reused on loopback) with Nagle off, as browsers and Node do.
pub async fn tcp_connect(
    target: &Target,
    source: Option<Ipv4Addr>,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let sock = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the stated size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    }
    if let Some(size) = rcvbuf {
        sock.set_recv_buffer_size(size)?;
    }
    sock.set_nodelay(true)?;
    sock.connect(target.addr).await
}

/// The reply to a join.
pub struct JoinReply {
    pub join_ref: u64,
    pub ok: bool,
    /// The reply payload (`{"status":…,"response":…}`) as sent.
    pub payload: String,
}

impl JoinReply {
    pub fn uuid(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.payload).ok()?;
        v.pointer("/response/uuid")?.as_str().map(str::to_owned)
    }
}

/// A connected Phoenix V2 socket.
pub struct Client {
    pub ws: WebSocketStream<TcpStream>,
    refs: u64,
}

impl Client {
    pub async fn connect(
        target: &Target,
        source: Option<Ipv4Addr>,
        name: &str,
        rcvbuf: Option<u32>,
    ) -> Result<Client, ConnErr> {
        let stream = tcp_connect(target, source, rcvbuf)
            .await
            .map_err(ConnErr::Connect)?;
        let req = target
            .url(name)
            .into_client_request()
            .map_err(ConnErr::Upgrade)?;
        let (ws, _resp) = client_async_with_config(req, stream, Some(ws_config()))
            .await
            .map_err(ConnErr::Upgrade)?;
        Ok(Client { ws, refs: 0 })
    }

    /// The next ref of this socket (the JS client starts at "1").
    pub fn make_ref(&mut self) -> u64 {
        self.refs += 1;
        self.refs
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::Text(text.into())).await
    }

    /// Pushes `event` on `topic`; returns the ref used.
    pub async fn push(
        &mut self,
        join_ref: Option<u64>,
        topic: &str,
        event: &str,
        payload: &str,
    ) -> Result<u64, tungstenite::Error> {
        let r = self.make_ref();
        self.send_text(wire::frame(join_ref, r, topic, event, payload))
            .await?;
        Ok(r)
    }

    /// `phx_join` with join_ref == ref, then waits for its reply (other frames are skipped).
    pub async fn join(
        &mut self,
        topic: &str,
        payload: &str,
        timeout: Duration,
    ) -> Result<JoinReply, ConnErr> {
        let r = self.make_ref();
        let text = wire::frame(Some(r), r, topic, "phx_join", payload);
        let wait = async {
            self.send_text(text).await.map_err(ConnErr::Upgrade)?;
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let s = t.as_str();
                        let owned;
                        let head = match wire::parse_head(s) {
                            Some(h) => h,
                            None => {
                                owned = wire::OwnedHead::parse(s);
                                match &owned {
                                    Some(o) => o.head(),
                                    None => continue,
                                }
                            }
                        };
                        if head.event == "phx_reply" && head.ref_num() == Some(r) {
                            let ok = wire::reply_ok(head.payload);
                            return Ok(JoinReply {
                                join_ref: r,
                                ok,
                                payload: head.payload.to_owned(),
                            });
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return Err(ConnErr::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ConnErr::Upgrade(e)),
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ConnErr::Timeout),
        }
    }
}

/// The official JS client's reconnect schedule: 10, 50, 100, 150, 200, 250, 500, 1000,
/// 2000 ms, then every 5 s (`tries` counts from 1; it resets when a connection opens).
pub fn js_backoff(tries: u32) -> Duration {
    const STEPS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
    let ms = STEPS
        .get(tries.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(5000);
    Duration::from_millis(ms)
}
