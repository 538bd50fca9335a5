//! The HTTP listener: our own accept loop (instead of `axum::serve`) so the hub can put a
//! deadline on handshakes, cap connections per remote address, speak TLS, and take
//! WebSocket upgrades without a detour through the HTTP stack.
//!
//! - A TCP connection that does not complete its TLS handshake or send a full request
//!   head within `handshake_timeout` is dropped (real Phoenix keeps such connections
//!   forever).
//! - At most `max_per_ip` connections per remote address are open at once, counted by the
//!   registry's per-address count with the live WebSockets and Bester connections (one
//!   count, one cap); more are refused at accept (a plain 403, or just closed under TLS).
//!   An upgrade is decided with the HTTP connection's own count given back, so it is
//!   capped by the same rule as at admission.
//! - With a certificate and key configured, every connection is TLS (`wss://`,
//!   `https://`), through rustls.
//! - The first request head of a connection is read here. A WebSocket upgrade to one of
//!   the hub's socket paths is recognised here ([`crate::net::upgrade::Sniffer`]) and
//!   answered by tungstenite's handshake over the bytes already read ([`Rewind`]); anything else goes to hyper and the axum router with the
//!   bytes already read put back in front ([`Rewind`]). A device's connection is almost
//!   always exactly one upgrade, and the join-storm profile had hyper's request and
//!   upgrade machinery at ≈ 15 % of the hub (bench/README.md).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::upgrade::{Edge, Sniffer, Upgrade};
use crate::core::Registry;

/// How connections are accepted.
#[derive(Clone)]
pub struct ListenOptions {
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Duration,
    /// 0 = unlimited.
    pub max_per_ip: usize,
    /// `TCP_USER_TIMEOUT` of accepted sockets (zero: the kernel's default).
    pub send_timeout: Duration,
}

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`). tokio's default
/// (1024) overflows in reconnect storms, and an overflow costs the client a 1 s SYN retry.
const BACKLOG: u32 = 4096;

/// Whether accepted sockets inherit the listening socket's `TCP_NODELAY` and
/// `TCP_USER_TIMEOUT` (Linux: an accepted socket is a copy of the listener's; tested below).
/// Where they do, [`bind`] sets both once instead of two syscalls per connection.
const INHERITS_OPTIONS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Binds the HTTP listener with a long accept queue; accepted sockets get `TCP_NODELAY`
/// and the send timeout (see [`set_send_timeout`]).
pub fn bind(addr: SocketAddr, send_timeout: Duration) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if INHERITS_OPTIONS {
        socket.set_nodelay(true)?;
        set_send_timeout(&socket, send_timeout);
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Makes ring the process's rustls crypto provider (the TLS listener and the CLI's HTTPS
/// client both use it). Idempotent.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is fine.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection's place in the registry's per-address count, given back when it is dropped
/// (or handed on: an upgrade gives it back before it is decided, and the WebSocket is
/// counted as a registry connection).
struct IpSlot {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(registry: &Arc<Registry>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        registry.admit_ip(ip, max).then(|| IpSlot {
            registry: registry.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.registry.release_ip(self.ip);
    }
}

/// Marks a request whose connection holds an [`IpSlot`] (every connection the listener
/// serves), so an upgrade through hyper can set it aside while it is decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted;

/// Refuses a connection over the per-address cap at accept: a plain connection is told
/// 403 without being read (as the Bester door says `busy`), a TLS one is just closed (no
/// handshake is spent on it).
fn refuse(stream: &TcpStream, tls: bool) {
    if tls {
        return;
    }
    let mut answer = Vec::new();
    let refusal = super::upgrade::refusal(axum::http::StatusCode::FORBIDDEN);
    if tungstenite::handshake::server::write_response(&mut answer, &refusal).is_ok() {
        let _ = stream.try_write(&answer);
    }
}

/// Accepts connections until `shutdown` is cancelled; each is served on `tracker`.
pub async fn serve(listener: TcpListener, app: Router, edge: Edge, opts: ListenOptions) {
    let shutdown = edge.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = IpSlot::take(&edge.registry, peer.ip(), opts.max_per_ip) else {
            tracing::warn!(%peer, "connection refused: too many connections from this address");
            refuse(&stream, opts.tls.is_some());
            continue;
        };
        if !INHERITS_OPTIONS {
            let _ = stream.set_nodelay(true);
            set_send_timeout(&stream, opts.send_timeout);
        }
        edge.tracker.spawn(connection(
            stream,
            peer,
            app.clone(),
            edge.clone(),
            opts.clone(),
            slot,
        ));
    }
}

/// Makes the kernel drop the connection when the peer's receive window stays closed, or sent
/// data stays unacknowledged, for `timeout`. A reader that stopped reading shows up here
/// long before its queue fills: the kernel send buffer (up to 4 MiB) absorbs its backlog
/// first. The hub's next read of the socket then fails with `TimedOut`. Zero leaves the
/// kernel's default. Used by every TCP door (on the HTTP listener's listening socket where
/// accepted sockets inherit it, on each Bester connection).
pub(crate) fn set_send_timeout<S>(stream: &S, timeout: Duration)
where
    for<'a> socket2::SockRef<'a>: From<&'a S>,
{
    if timeout.is_zero() {
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, timeout);
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    edge: Edge,
    opts: ListenOptions,
    slot: IpSlot,
) {
    let mut io = match &opts.tls {
        None => Io::Plain(stream),
        Some(acceptor) => {
            match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Io::Tls(Box::new(tls)),
                Ok(Err(e)) => return tracing::info!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
            }
        }
    };
    let shutdown = edge.shutdown.clone();
    let mut buf = Vec::new();
    let head = tokio::select! {
        _ = shutdown.cancelled() => return,
        read = tokio::time::timeout(opts.handshake_timeout, read_head(&mut io, &mut buf)) => match read {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "connection ended before its request"),
            Err(_) => return tracing::debug!(%peer, "request head timed out"),
        },
    };
    if let Some(upgrade) = head {
        // Admission counts the address's live connections without this one; once accepted,
        // the WebSocket is counted as a registry connection.
        drop(slot);
        return super::upgrade::serve(io, buf, upgrade, &edge, peer).await;
    }
    // Boxed: hyper's connection state is large, and this future is short-lived.
    let http = http(
        TokioIo::new(Rewind::new(buf, io)),
        peer,
        app,
        &opts,
        shutdown,
    );
    Box::pin(http).await;
    drop(slot);
}

/// Largest request head read before the listener gives up on recognising an upgrade and
/// lets hyper (with its own limits) read the rest.
const MAX_HEAD: usize = 16 * 1024;
/// First read of a request head: a device's upgrade request is a few hundred bytes.
const HEAD_CHUNK: usize = 1024;

/// Reads until `buf` holds a complete request head, or it is clear the request is not for
/// this fast path: `Some` is a WebSocket upgrade to a door; `None` is anything else
/// (another request, a head too long or malformed, a peer that closed): hyper's to answer.
async fn read_head(io: &mut Io, buf: &mut Vec<u8>) -> io::Result<Option<Upgrade>> {
    let mut sniffer = Sniffer::default();
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                return Ok(None);
            }
            buf.reserve(HEAD_CHUNK.max(buf.len()));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
        match sniffer.feed(buf) {
            Ok(Some(upgrade)) => return Ok(Some(upgrade)),
            Ok(None) => continue,
            Err(super::upgrade::NotUpgrade) => return Ok(None),
        }
    }
}

/// A connection's byte stream: plain TCP, TLS, or (for an upgrade that arrived on a
/// connection hyper was already serving) hyper's upgraded stream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Boxed: rare, and larger than the other two (every socket pays for the largest).
    Upgraded(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

macro_rules! on_io {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
            Io::Upgraded($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
            Io::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_shutdown(cx))
    }
}

impl Io {
    /// Writes a whole response (the handshake's 101 or refusal).
    pub async fn write_response(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// A stream with bytes already read from it put back in front: hyper, or tungstenite's
/// handshake, reads the request head the listener looked at, then the stream itself.
pub struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    io: Io,
}

impl Rewind {
    pub(crate) fn new(prefix: Vec<u8>, io: Io) -> Rewind {
        Rewind { prefix, at: 0, io }
    }

    /// The bytes put back that were not read yet, and the stream.
    pub(crate) fn into_parts(mut self) -> (Vec<u8>, Io) {
        let unread = if self.at == 0 {
            self.prefix
        } else {
            self.prefix.split_off(self.at)
        };
        (unread, self.io)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    opts: &ListenOptions,
    shutdown: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(Counted);
        app.clone().oneshot(req)
    });
    // HTTP/1.1 only: WebSockets and long-poll are HTTP/1.1, and hyper's HTTP/1 server times
    // the request head from the first byte it waits for, so a silent connection is dropped.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.handshake_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_stream_is_no_larger_than_a_tcp_stream_and_a_tag() {
        // Every idle socket holds one.
        assert!(std::mem::size_of::<Io>() <= std::mem::size_of::<TcpStream>() + 8);
    }

    /// A head sent a byte at a time, and with bare LFs, still reaches the door or hyper.
    #[tokio::test]
    async fn a_head_in_single_bytes_is_read_whole() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), Duration::ZERO).unwrap();
        let addr = listener.local_addr().unwrap();
        let head = "GET /socket/websocket?vsn=2.0.0&name=a HTTP/1.1\nHost: x\n\
            Connection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n";
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            for b in head.as_bytes() {
                tcp.write_all(std::slice::from_ref(b)).await.unwrap();
                tcp.flush().await.unwrap();
            }
            tcp
        });
        let (accepted, _) = listener.accept().await.unwrap();
        let mut io = Io::Plain(accepted);
        let mut buf = Vec::new();
        let upgrade = read_head(&mut io, &mut buf).await.unwrap();
        assert_eq!(upgrade.map(|u| u.head_len), Some(head.len()));
        drop(client.await.unwrap());
        // Not an upgrade: handed over (to hyper) as soon as the head is complete.
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tcp
        });
        let (accepted, _) = listener.accept().await.unwrap();
        let mut io = Io::Plain(accepted);
        let mut buf = Vec::new();
        assert!(read_head(&mut io, &mut buf).await.unwrap().is_none());
        assert!(buf.starts_with(b"GET /api/health"));
        drop(client.await.unwrap());
    }

    /// `bind` relies on accepted sockets inheriting these options on Linux.
    #[tokio::test]
    async fn accepted_sockets_get_nodelay_and_the_send_timeout() {
        let timeout = Duration::from_secs(7);
        let listener = bind("127.0.0.1:0".parse().unwrap(), timeout).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if INHERITS_OPTIONS {
            assert!(accepted.nodelay().unwrap(), "TCP_NODELAY inherited");
            let sock = socket2::SockRef::from(&accepted);
            assert_eq!(sock.tcp_user_timeout().unwrap(), Some(timeout));
        }
        drop(client);
    }
}
