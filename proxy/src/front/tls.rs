//! TLS on the shared port: the certificate from PEM files, re-read when they change
//! ([`kitsune_common::tls`], as the operator's watch channel), and ALPN for HTTP/2 and
//! HTTP/1.1 (a WebSocket client asks for `http/1.1` or for nothing).

use std::sync::Arc;
use std::time::Duration;

use kitsune_common::tls::{ReloadingCert, TlsFiles};

/// Time a client gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake: every ClientHello starts so,
/// and no HTTP/1 method or HTTP/2 preface does.
pub const HANDSHAKE_RECORD: u8 = 0x16;
/// The ALPN name of HTTP/2.
pub const H2: &[u8] = b"h2";

/// A rustls server configuration (ring; TLS 1.2 and 1.3) whose certificate follows
/// `files`. Fails, naming the file, when they cannot be used now.
pub fn server_config(files: TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ReloadingCert::new(files, provider.clone())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
