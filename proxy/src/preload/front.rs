//! The preload port: `/api/v0/refs` and the libp2p WebSocket listener on one TCP port.
//!
//! Each connection's first request head is read. A WebSocket upgrade is spliced, bytes
//! untouched, to the libp2p WebSocket listener on a loopback port; anything else is
//! HTTP, served by axum. One port for both is what lets several replicas share one
//! peer ID behind a Kubernetes Service with `sessionAffinity: ClientIP`: the browser's
//! WebSocket and its refs call reach the same pod. The production preload nodes shared
//! port 443 the same way.
//!
//! The splice also tells the engine who a spliced libp2p connection really is: libp2p
//! sees `127.0.0.1:<ephemeral port>`, and [`Splices`] maps that port back to the
//! client's address (resolved through `X-Forwarded-For` from trusted proxies, exactly
//! as for the refs call), so both sides of a preload are matched alike.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use super::client_ip::{Cidr, client_ip};

/// The longest request head accepted (kubo's Go server allows 1 MiB; browsers send ~1 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// Time to send the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP peer of an HTTP request on the preload port (before `X-Forwarded-For`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Live splices: the address libp2p sees for a spliced connection → the client's.
#[derive(Debug, Clone, Default)]
pub struct Splices(Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>);

impl Splices {
    /// The client behind the libp2p-side address `seen`, if it is a live splice.
    pub fn client_of(&self, seen: &SocketAddr) -> Option<SocketAddr> {
        self.0.lock().expect("not poisoned").get(seen).copied()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, seen: SocketAddr, client: SocketAddr) -> SpliceGuard {
        self.0.lock().expect("not poisoned").insert(seen, client);
        SpliceGuard {
            splices: self.clone(),
            seen,
        }
    }
}

/// For the per-IP connection cap: a spliced connection is its client's.
impl crate::net::ip_limit::RealClient for Splices {
    fn ip_behind(&self, remote: &libp2p::Multiaddr) -> Option<IpAddr> {
        socket_addr_of(remote)
            .and_then(|seen| self.client_of(&seen))
            .map(|client| client.ip())
    }
}

struct SpliceGuard {
    splices: Splices,
    seen: SocketAddr,
}

impl Drop for SpliceGuard {
    fn drop(&mut self) {
        self.splices
            .0
            .lock()
            .expect("not poisoned")
            .remove(&self.seen);
    }
}

/// What the front needs.
#[derive(Clone)]
pub struct Front {
    /// The refs endpoint (and 404 for everything else).
    pub app: axum::Router,
    /// The libp2p WebSocket listener to splice upgrades to, once it is listening.
    pub ws_target: watch::Receiver<Option<SocketAddr>>,
    pub splices: Splices,
    pub trusted: Arc<Vec<Cidr>>,
    /// Connections open at once on the port; past it, new ones are closed at once.
    pub max_connections: usize,
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, front: Front) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(front.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, "preload port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "preload port: too many connections; closing one");
            continue;
        };
        let front = front.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(stream, peer, front).await {
                tracing::debug!(%peer, error = %e, "preload port connection ended");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, front: Front) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()), // slow or idle: drop it
    };
    let parsed = Head::parse(&head);
    if parsed.websocket {
        let client = SocketAddr::new(
            client_ip(
                peer.ip(),
                parsed.forwarded_for.iter().map(String::as_str),
                &front.trusted,
            ),
            peer.port(),
        );
        splice(stream, head, client, front).await
    } else {
        let io = TokioIo::new(Prefixed {
            prefix: head,
            inner: stream,
        });
        let app = front.app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(PeerAddr(peer));
            app.clone().oneshot(req)
        });
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .keep_alive(true)
            .serve_connection(io, service)
            .await
            .map_err(io::Error::other)
    }
}

async fn splice(
    mut stream: TcpStream,
    head: Bytes,
    client: SocketAddr,
    front: Front,
) -> io::Result<()> {
    let mut target = front.ws_target.clone();
    let addr = match tokio::time::timeout(HEAD_TIMEOUT, target.wait_for(Option::is_some)).await {
        Ok(Ok(a)) => a.expect("waited for Some"),
        _ => return Err(io::Error::other("the WebSocket listener is not up")),
    };
    // Registered before connecting, so libp2p knows who it is from its first look at
    // the connection (the per-IP limit runs at accept).
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    socket.bind(SocketAddr::new(addr.ip(), 0))?;
    let _guard = front.splices.insert(socket.local_addr()?, client);
    let mut inner = socket.connect(addr).await?;
    inner.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut stream, &mut inner).await?;
    Ok(())
}

/// Reads until the end of the request head; `None` if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if buf.len() >= MAX_HEAD {
            stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(None);
        }
        let start = buf.len().saturating_sub(3);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        if buf[start..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf.freeze()));
        }
    }
}

/// The parts of a request head the front decides on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub websocket: bool,
    pub forwarded_for: Vec<String>,
}

impl Head {
    /// Parses leniently: whatever is not a clean WebSocket upgrade goes to the HTTP
    /// server, which gives malformed requests their proper error.
    pub fn parse(head: &[u8]) -> Self {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let is_get = lines.next().is_some_and(|l| l.starts_with("GET "));
        let (mut upgrade_ws, mut connection_upgrade) = (false, false);
        let mut forwarded_for = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            let has = |token: &str| {
                value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            };
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade_ws |= has("websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                connection_upgrade |= has("upgrade");
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for.push(value.to_owned());
            }
        }
        Self {
            websocket: is_get && upgrade_ws && connection_upgrade,
            forwarded_for,
        }
    }
}

/// A stream that yields `prefix` before the rest of `inner`.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The IP and port in a `/ip4|ip6/…/tcp/…` multiaddr.
pub fn socket_addr_of(addr: &libp2p::Multiaddr) -> Option<SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(v4) => ip = Some(IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(IpAddr::V6(v6)),
            Protocol::Tcp(port) => return ip.map(|ip| SocketAddr::new(ip, port)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_upgrades_are_told_from_http() {
        let ws = b"GET /p2p HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\n\r\n";
        let h = Head::parse(ws);
        assert!(h.websocket);
        assert_eq!(h.forwarded_for, vec!["1.2.3.4", "5.6.7.8"]);
        let post = b"POST /api/v0/refs?arg=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert!(!Head::parse(post).websocket, "only GET upgrades");
        let plain = b"GET /api/v0/refs HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!Head::parse(plain).websocket);
        assert!(!Head::parse(b"\xff\xfe garbage\r\n\r\n").websocket);
    }

    #[test]
    fn splices_map_and_forget() {
        let s = Splices::default();
        let seen: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let client: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
        {
            let _g = s.insert(seen, client);
            assert_eq!(s.client_of(&seen), Some(client));
        }
        assert_eq!(s.client_of(&seen), None);
        assert!(s.is_empty());
    }

    #[test]
    fn socket_addrs_from_multiaddrs() {
        let a: libp2p::Multiaddr = "/ip6/::1/tcp/4001/ws".parse().unwrap();
        assert_eq!(socket_addr_of(&a), Some("[::1]:4001".parse().unwrap()));
        let q: libp2p::Multiaddr = "/ip4/1.2.3.4/udp/1/quic-v1".parse().unwrap();
        assert_eq!(socket_addr_of(&q), None);
    }
}
