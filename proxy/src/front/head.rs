//! The first request head on a shared-port connection: read within bounds, and parsed
//! (by `httparse`) only as far as the front decides: is it a WebSocket upgrade, and
//! whom does it say it is for (`X-Forwarded-For`).

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest request head accepted (kubo's Go server allows 1 MiB; browsers send ~1 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// Time to send the request head (and, for TLS, the handshake: separately).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers looked at; a head with more is not a WebSocket upgrade we splice, and
/// goes to the HTTP server, which has its own limit.
const MAX_HEADERS: usize = 64;

/// The parts of a request head the front decides on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub websocket: bool,
    pub forwarded_for: Vec<String>,
}

/// What reading the first head gave.
#[derive(Debug)]
pub enum Read {
    /// The peer closed (or sent too much and was answered 431) before a whole head.
    Gone,
    /// The bytes read so far (the whole head, perhaps more), and what they say.
    Head(Bytes, Head),
}

/// Reads until `httparse` has a whole HTTP/1 request head, or knows that the bytes are
/// not one (an HTTP/2 preface, garbage: the HTTP server answers those).
pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<Read> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if buf.len() >= MAX_HEAD {
            stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(Read::Gone);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(Read::Gone);
        }
        if let Some(head) = Head::parse(&buf) {
            return Ok(Read::Head(buf.freeze(), head));
        }
    }
}

impl Head {
    /// `None` while the head is incomplete. Whatever is not a clean WebSocket upgrade
    /// is HTTP, and the HTTP server gives a malformed request its proper error.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(bytes) {
            Ok(httparse::Status::Partial) => None,
            Err(_) => Some(Self::default()),
            Ok(httparse::Status::Complete(_)) => {
                let (mut upgrade_ws, mut connection_upgrade) = (false, false);
                let mut forwarded_for = Vec::new();
                for h in req.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    let has = |token: &str| {
                        value
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case(token))
                    };
                    if h.name.eq_ignore_ascii_case("upgrade") {
                        upgrade_ws |= has("websocket");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        connection_upgrade |= has("upgrade");
                    } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                        forwarded_for.push(value.trim().to_owned());
                    }
                }
                Some(Self {
                    websocket: req.method == Some("GET") && upgrade_ws && connection_upgrade,
                    forwarded_for,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_upgrades_are_told_from_http() {
        let ws = b"GET /p2p HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\n\r\n";
        let h = Head::parse(ws).unwrap();
        assert!(h.websocket);
        assert_eq!(h.forwarded_for, vec!["1.2.3.4", "5.6.7.8"]);
        let post = b"POST /api/v0/refs?arg=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert!(!Head::parse(post).unwrap().websocket, "only GET upgrades");
        let plain = b"GET /api/v0/refs HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!Head::parse(plain).unwrap().websocket);
        assert!(!Head::parse(b"\xff\xfe garbage\r\n\r\n").unwrap().websocket);
    }

    #[test]
    fn incomplete_heads_wait_and_other_protocols_go_to_http_at_once() {
        assert_eq!(
            Head::parse(b"GET /p2p HTTP/1.1\r\nUpgrade: websocket\r\n"),
            None
        );
        assert_eq!(Head::parse(b"GE"), None);
        // HTTP/2 with prior knowledge (h2c) is not an HTTP/1 head: no waiting for more.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(Head::parse(preface), Some(Head::default()));
        // A TLS ClientHello on a port without TLS: HTTP answers it (400).
        assert_eq!(Head::parse(b"\x16\x03\x01\x02\x00"), Some(Head::default()));
    }

    #[tokio::test]
    async fn an_oversized_head_is_answered_431_and_dropped() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        client.write_all(&big).await.unwrap();
        assert!(matches!(read(&mut server).await.unwrap(), Read::Gone));
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }
}
