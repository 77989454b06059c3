//! A TLS server certificate from PEM files mounted from a `kubernetes.io/tls` Secret
//! (keys `tls.crt`, full chain, and `tls.key`, as cert-manager writes them), re-read
//! when the files change. The operator's watch channel and the proxy's shared port both
//! serve with it.
//!
//! - The files are checked at most every [`RELOAD_CHECK`], on a new handshake, so a
//!   rotation needs no restart and no file watcher. A failed reload (a half-written
//!   rotation) keeps serving the previous certificate and says why.
//! - Key material is never logged; errors name the file, not its contents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often, at most, the files are looked at again.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The serving certificate chain and its private key, as files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads and checks a PEM certificate chain and a PEM private key.
pub fn load(
    files: &TlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("a malformed certificate in {}", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in {}",
        files.cert.display()
    );
    // The error of a bad key file says which file, never what was in it.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|_| anyhow::anyhow!("no usable PEM private key in {}", files.key.display()))?;
    let ck = CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "the key in {} does not fit the certificate in {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(ck)
}

fn modified(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// The current certificate, re-read when the files' modification times change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    modified: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

impl ReloadingCert {
    /// Fails when the files cannot be used now: a start-up error, not a server that
    /// fails every handshake.
    pub fn new(
        files: TlsFiles,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let modified = modified(&files);
        let current = Arc::new(load(&files, &provider)?);
        Ok(Self {
            files,
            provider,
            state: Mutex::new(State {
                current,
                modified,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut st = self.state.lock().expect("not poisoned");
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let now = modified(&self.files);
            if now.is_some() && now != st.modified {
                match load(&self.files, &self.provider) {
                    Ok(ck) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        st.current = Arc::new(ck);
                        st.modified = now;
                    }
                    // Half-written files during a rotation land here; the next check
                    // (the times differ still) tries again.
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "cannot reload the TLS certificate; keeping the previous one"
                    ),
                }
            }
        }
        Some(st.current.clone())
    }
}

/// A rustls server configuration (ring; TLS 1.2 and 1.3) whose certificate follows
/// `files`, offering `alpn` in order. Fails, naming the file, when they cannot be
/// used now.
pub fn server_config(files: TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ReloadingCert::new(files, provider.clone())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
