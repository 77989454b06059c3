//! Test certificates (rcgen): a CA of the test's own and server certificates for
//! 127.0.0.1 / localhost signed by it, written as a `kubernetes.io/tls` Secret's files.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority that only this test trusts.
pub struct TestCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A server certificate and its key, as PEM, and the certificate's DER to compare with
/// what a client was shown.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Its own name: with rcgen's default name on both, OpenSSL (Node) takes the
        // server certificate (subject = issuer) for a self-signed one.
        params
            .distinguished_name
            .push(DnType::CommonName, "Kitsune test CA");
        let cert = params.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// The CA certificate (PEM), for a client's trust store.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server_cert(&self) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}

/// Writes `cert` as `tls.crt` and `tls.key` in `dir`, each renamed into place as a
/// rotation does; returns their paths (certificate, key).
pub fn install_tls_files(dir: &Path, cert: &ServerCert) -> Result<(PathBuf, PathBuf)> {
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    for (path, text) in [(&key, &cert.key_pem), (&crt, &cert.cert_pem)] {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok((crt, key))
}
