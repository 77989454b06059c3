//! TLS on the shared port: the certificate from PEM files, re-read when they change
//! ([`kitsune_common::tls`], as the operator's watch channel), and ALPN for HTTP/2 and
//! HTTP/1.1 (a WebSocket client asks for `http/1.1` or for nothing).

use std::sync::Arc;
use std::time::Duration;

use kitsune_common::tls::TlsFiles;

/// Time a client gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake: every ClientHello starts so,
/// and no HTTP/1 method or HTTP/2 preface does.
pub const HANDSHAKE_RECORD: u8 = 0x16;
/// The ALPN name of HTTP/2.
pub const H2: &[u8] = b"h2";

/// The shared port's rustls configuration: ALPN offers HTTP/2, then HTTP/1.1.
pub fn server_config(files: TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    kitsune_common::tls::server_config(files, &[H2, b"http/1.1"])
}
