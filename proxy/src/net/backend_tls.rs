//! The libp2p TLS handshake on the backend leg, offering AES-GCM first.
//!
//! Why not `libp2p::tls` as it comes: it offers ChaCha20-Poly1305 first, and Go's TLS
//! server (kubo) then picks ChaCha20 even on CPUs with AES instructions, where
//! AES-128-GCM costs a fraction of it per byte (the bench's floor line measures both).
//! The proxy decrypts everything kubo sends it, so on the throughput benchmark this
//! suite order alone took about a tenth off the proxy's CPU per GiB (and some of kubo's).
//! Clients choose their own suites; this is only for the connections the proxy dials.
//!
//! Reads come through a 64 KiB buffer below TLS: rustls asks its socket for 4 KiB at a
//! time, so a 256 KiB block from kubo took some 64 receive syscalls; through the buffer
//! it takes four or five, at the price of one copy of what arrives. Backend connections
//! are few, so the buffer is held for the connection's life.
//!
//! What is not ours: the certificate (generated, parsed and checked by
//! `libp2p::tls::certificate`, per the libp2p TLS spec) and the handshake (rustls,
//! TLS 1.3 only). This module only assembles the client configuration around them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::io::BufReader;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::{TlsStream, UpgradeError, certificate};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN of the libp2p TLS handshake.
const ALPN: &[u8] = b"libp2p";

/// The read buffer below TLS: a few 16 KiB records per receive syscall.
const READ_BUFFER: usize = 64 * 1024;

/// A backend connection's socket, reads buffered (see the module's doc).
type Socket<C> = BufReader<C>;

fn buffered<C: AsyncRead>(socket: C) -> Socket<C> {
    BufReader::with_capacity(READ_BUFFER, socket)
}

/// The security upgrade for the backend host: ours when dialing, libp2p's when
/// listening (the backend host never listens, but a transport upgrade is both).
#[derive(Clone)]
pub struct Config {
    client: Arc<rustls::ClientConfig>,
    inbound: Listening,
}

impl Config {
    pub fn new(key: &Keypair) -> Result<Self, certificate::GenError> {
        let (cert, private_key) = certificate::generate(key)?;
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let signer = provider
            .key_provider
            .load_private_key(private_key)
            .expect("the generated certificate's key is ECDSA P-256, which ring loads");
        // Through a resolver, not `with_client_auth_cert`: that one checks the
        // certificate with webpki, which refuses the libp2p extension (marked critical).
        let own = OwnCertificate(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            signer,
        )));
        let mut client = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 with these suites is a valid configuration")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Libp2pCertificate))
            .with_client_cert_resolver(Arc::new(own));
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            client: Arc::new(client),
            inbound: Listening::new(key)?,
        })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/tls/1.0.0")
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<Socket<C>>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec forbids SNI: an unspecified IP address sends none.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, buffered(socket))
                .await
                .map_err(UpgradeError::ClientUpgrade)?;
            let state = stream.get_ref().1;
            let [cert] = state.peer_certificates().unwrap_or_default() else {
                return Err(UpgradeError::ClientUpgrade(std::io::Error::other(
                    "libp2p TLS needs exactly one certificate",
                )));
            };
            let peer = certificate::parse(cert)?.peer_id();
            let suite = state.negotiated_cipher_suite().map(|s| s.suite());
            tracing::debug!(%peer, ?suite, "backend TLS");
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// libp2p's own, as it comes.
type Listening = libp2p::tls::Config;

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead,
    Listening: InboundConnectionUpgrade<Socket<C>, Info = Self::Info>,
{
    type Output = <Listening as InboundConnectionUpgrade<Socket<C>>>::Output;
    type Error = <Listening as InboundConnectionUpgrade<Socket<C>>>::Error;
    type Future = <Listening as InboundConnectionUpgrade<Socket<C>>>::Future;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.inbound.upgrade_inbound(buffered(socket), info)
    }
}

/// Presents the proxy's libp2p certificate when the server asks for one (libp2p TLS
/// authenticates both sides).
#[derive(Debug)]
struct OwnCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts exactly a libp2p certificate: one self-signed certificate whose extension
/// carries the peer's public key and its signature over the certificate's key
/// (`certificate::parse` checks both). Which peer it must be is the swarm's check: it
/// compares the peer ID returned by the upgrade with the one dialed.
#[derive(Debug)]
struct Libp2pCertificate;

impl ServerCertVerifier for Libp2pCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p TLS needs exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered; a server answering 1.2 is refused here too.
        Err(rustls::Error::General("only TLS 1.3 is offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)?.verify_signature(dss.scheme, message, dss.signature())?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // The schemes a libp2p certificate's key can sign with (the spec's list).
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tcp_pair;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_libp2p_tls_server_is_reached_with_aes_gcm_and_its_peer_id() {
        let (ours, theirs) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (dialed, accepted) = tcp_pair().await;
        let server = libp2p::tls::Config::new(&theirs).unwrap();
        let client = Config::new(&ours).unwrap();
        let (out, inb) = tokio::join!(
            client.upgrade_outbound(dialed, "/tls/1.0.0"),
            server.upgrade_inbound(accepted, "/tls/1.0.0"),
        );
        let ((server_id, mut out), (client_id, mut inb)) = (out.unwrap(), inb.unwrap());
        assert_eq!(server_id, theirs.public().to_peer_id());
        assert_eq!(client_id, ours.public().to_peer_id());
        let TlsStream::Client(c) = &out else {
            panic!("the dialer's stream is a client stream")
        };
        // rustls servers follow the client's order, as Go's do on AES hardware.
        let suite = c.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);

        out.write_all(b"want").await.unwrap();
        out.flush().await.unwrap();
        let mut got = [0u8; 4];
        inb.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"want");
    }

    #[tokio::test]
    async fn a_server_without_a_libp2p_certificate_is_refused() {
        let (dialed, accepted) = tcp_pair().await;
        // A valid TLS 1.3 server whose self-signed certificate has no libp2p extension.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        server.alpn_protocols = vec![ALPN.to_vec()];
        let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(server));

        let client = Config::new(&Keypair::generate_ed25519()).unwrap();
        let (out, _) = tokio::join!(
            client.upgrade_outbound(dialed, "/tls/1.0.0"),
            acceptor.accept(accepted),
        );
        let Err(err) = out else {
            panic!("the handshake must fail")
        };
        let err = format!("{err:?}");
        assert!(err.contains("InvalidCertificate"), "{err}");
    }
}
