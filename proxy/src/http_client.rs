//! How the proxy's outgoing HTTP clients are built. TLS roots are loaded only where TLS
//! is used: kubo's RPC API is plain HTTP, and an image without a system CA bundle must
//! still run the proxy (reqwest's default TLS set-up fails without one).

use anyhow::Context as _;

/// A builder for plain-HTTP clients (kubo's RPC API): no proxy from the environment and
/// no TLS roots, so it builds anywhere.
pub fn plain() -> reqwest::ClientBuilder {
    without_roots(reqwest::Client::builder().no_proxy())
}

/// `builder` with no TLS roots at all: an https URL through it fails its certificate
/// check instead of loading (or needing) the system's.
pub fn without_roots(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder.tls_certs_only(std::iter::empty())
}

/// Builds an https client that trusts the system's CA certificates, saying clearly what
/// is missing when the system has none.
pub fn with_system_roots(builder: reqwest::ClientBuilder) -> anyhow::Result<reqwest::Client> {
    builder.build().context(
        "https needs CA certificates: none was given (--backends-ca-file, --backends-ca-pem) \
         and the system's could not be loaded (install a CA bundle or set SSL_CERT_FILE)",
    )
}

/// Whether `url` is an https URL (the scheme is case-insensitive).
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_told_apart_from_plain_http() {
        assert!(is_https("https://operator:8443/watch"));
        assert!(is_https("HTTPS://operator/watch"));
        assert!(!is_https("http://operator:8080/watch"));
        assert!(!is_https("http:"));
        assert!(!is_https(""));
    }
}
