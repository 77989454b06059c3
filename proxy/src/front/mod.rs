//! The shared port: HTTP and the libp2p WebSocket listener on one TCP port, plain or
//! TLS (`-p/--preload-port` or `--http-port`).
//!
//! How a connection is told apart:
//! 1. Its first byte: `0x16` (a TLS handshake record) is TLS when a certificate is
//!    configured; anything else is plaintext. After TLS termination the rest is the same.
//! 2. With ALPN `h2`, it is HTTP/2 at once. Otherwise the first request head is read
//!    (bounded in size and time): a WebSocket upgrade is spliced, bytes untouched, to
//!    the libp2p WebSocket listener on a loopback port; anything else, HTTP/2 with prior
//!    knowledge (h2c) included, is HTTP, served by hyper's HTTP/1.1 + HTTP/2 server
//!    with the axum app assembled in `lib.rs`.
//!
//! One port for both is what lets several replicas share one peer ID behind a
//! Kubernetes Service with `sessionAffinity: ClientIP`: the browser's WebSocket and its
//! HTTP calls reach the same pod. The production preload nodes shared port 443 the
//! same way.
//!
//! The splice also tells the engine who a spliced libp2p connection really is: libp2p
//! sees `127.0.0.1:<ephemeral port>`, and [`Splices`] maps that port back to the
//! client's address (resolved through `X-Forwarded-For` from trusted proxies, exactly
//! as for HTTP), so both are matched alike.

pub mod head;
pub mod per_ip;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::preload::client_ip::{Cidr, client_ip};
use head::{HEAD_TIMEOUT, MAX_HEAD};
use per_ip::PerIp;

/// HTTP/2 streams open at once on one connection (hyper's default is 200).
const MAX_H2_STREAMS: u32 = 100;
/// An HTTP/2 connection that answers no ping in this long is closed.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The TCP peer of an HTTP request on the shared port (before `X-Forwarded-For`).
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
    /// The HTTP app: the routes of the features that are on, 404 for the rest.
    pub app: axum::Router,
    /// The libp2p WebSocket listener to splice upgrades to, once it is listening.
    pub ws_target: watch::Receiver<Option<SocketAddr>>,
    pub splices: Splices,
    pub trusted: Arc<Vec<Cidr>>,
    /// Connections open at once on the port; past it, new ones are closed at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (trusted proxies exempt).
    pub max_per_ip: u32,
    /// How client addresses are grouped for `max_per_ip`.
    pub address_key: crate::net::ip_limit::AddressKey,
    /// TLS, when a certificate is configured: the port then serves TLS and plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The 404 of every path no feature serves.
pub async fn not_found() -> (axum::http::StatusCode, &'static str) {
    (axum::http::StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, front: Front) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(front.max_connections));
    let per_ip = PerIp::new(front.max_per_ip, front.address_key);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, "shared port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "shared port: too many connections; closing one");
            continue;
        };
        // A trusted proxy carries many clients: its connections are not capped per
        // address (the clients behind it are, on the libp2p side, by X-Forwarded-For).
        let ip_slot = if front.trusted.iter().any(|c| c.contains(peer.ip())) {
            None
        } else {
            match per_ip.try_acquire(peer.ip()) {
                Some(s) => Some(s),
                None => {
                    tracing::debug!(%peer, "shared port: too many connections from one address");
                    continue;
                }
            }
        };
        let front = front.clone();
        tokio::spawn(async move {
            let _slots = (slot, ip_slot);
            if let Err(e) = connection(stream, peer, front).await {
                tracing::debug!(%peer, error = %e, "shared port connection ended");
            }
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, front: Front) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(0)) | Err(_) => return Ok(()), // closed, or idle: drop it
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
    }
    let Some(config) = front
        .tls
        .clone()
        .filter(|_| first[0] == tls::HANDSHAKE_RECORD)
    else {
        return plaintext(stream, peer, front).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "shared port: TLS handshake failed");
            return Ok(());
        }
        Err(_) => return Ok(()), // slow handshake: drop it
    };
    if stream.get_ref().1.alpn_protocol() == Some(tls::H2) {
        // HTTP/2 has no WebSocket upgrade (RFC 8441 is not offered): HTTP at once.
        return http(stream, peer, front).await;
    }
    plaintext(stream, peer, front).await
}

/// After TLS, if any: the first request head decides between splice and HTTP.
async fn plaintext<S>(mut stream: S, peer: SocketAddr, front: Front) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head, parsed) = match tokio::time::timeout(HEAD_TIMEOUT, head::read(&mut stream)).await {
        Ok(Ok(head::Read::Head(bytes, parsed))) => (bytes, parsed),
        Ok(Ok(head::Read::Gone)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()), // slow or idle: drop it
    };
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
        let io = Prefixed {
            prefix: head,
            inner: stream,
        };
        http(io, peer, front).await
    }
}

/// Serves HTTP/1.1, or HTTP/2 (told by its preface), with the front's app.
async fn http<S>(io: S, peer: SocketAddr, front: Front) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = front.app.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(PeerAddr(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    builder
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(io::Error::other)
}

async fn splice<S>(mut stream: S, head: Bytes, client: SocketAddr, front: Front) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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

/// A stream that yields `prefix` before the rest of `inner`.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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
