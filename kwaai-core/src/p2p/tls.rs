//! libp2p's TLS 1.3 (`/tls/1.0.0`) with our own rustls configs, so that the cipher follows the CPU.
//!
//! The certificate is libp2p's: a self-signed one whose extension carries the libp2p public key and
//! its signature of the certificate's key (`libp2p::tls::certificate`). The peer ID is taken from
//! the one certificate the other side presents, and the TLS handshake's own signature is checked
//! against that certificate's key.
//!
//! libp2p-tls always offers ChaCha20-Poly1305 first. Where the CPU has AES and carry-less multiply
//! instructions, AES-GCM is three to four times cheaper per byte, so we offer it first there; the
//! listener takes the dialer's order (rustls as Go's TLS does when its CPU has AES too).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use libp2p::tls::certificate;
use libp2p::{identity, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedCipherSuite};

/// The ALPN protocol of libp2p's TLS handshake.
const ALPN: &[u8] = b"libp2p";

/// How long a peer may take to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// How many bytes of records rustls may hold encrypted and unsent (its default is 64 KiB): one
/// write of the muxer's queue then leaves in fewer, larger socket writes.
const SEND_BUFFER: usize = 256 * 1024;

/// Both sides' rustls configs for one identity.
#[derive(Clone)]
pub(crate) struct TlsConfig {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl TlsConfig {
    /// A certificate for `keypair` and the configs that present it.
    pub fn new(keypair: &identity::Keypair) -> io::Result<Self> {
        let (cert, key) = certificate::generate(keypair).map_err(io::Error::other)?;
        let provider = Arc::new(provider());
        let signing_key = provider.key_provider.load_private_key(key).map_err(io::Error::other)?;
        // A resolver rather than `with_single_cert`: rustls's own checks of a certificate refuse
        // libp2p's critical extension.
        let ours = Arc::new(OurCert(Arc::new(CertifiedKey::new(vec![cert], signing_key))));
        let verifier = Arc::new(PeerCertVerifier);
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(ours.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(ours);
        server.alpn_protocols = vec![ALPN.to_vec()];
        Ok(TlsConfig { client: Arc::new(client), server: Arc::new(server) })
    }

    /// Runs the handshake on `socket` as the dialer (`initiator`) or the listener, and returns the
    /// peer's ID with the encrypted stream.
    pub async fn upgrade<C>(self, socket: C, initiator: bool) -> io::Result<(PeerId, TlsStream<C>)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let mut stream: futures_rustls::TlsStream<C> = if initiator {
                // libp2p's TLS sends no server name: an unspecified address turns SNI off.
                let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
                TlsConnector::from(self.client).connect(name, socket).await?.into()
            } else {
                TlsAcceptor::from(self.server).accept(socket).await?.into()
            };
            let session = stream.get_ref().1;
            let peer = match session.peer_certificates() {
                Some([cert]) => certificate::parse(cert).map_err(invalid)?.peer_id(),
                _ => return Err(invalid("tls: the peer must present exactly one certificate")),
            };
            let suite = session.negotiated_cipher_suite().map(|s| s.suite());
            tracing::debug!(%peer, ?suite, initiator, "tls: secured");
            match &mut stream {
                futures_rustls::TlsStream::Client(s) => s.get_mut().1.set_buffer_limit(Some(SEND_BUFFER)),
                futures_rustls::TlsStream::Server(s) => s.get_mut().1.set_buffer_limit(Some(SEND_BUFFER)),
            }
            Ok((peer, TlsStream(stream)))
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "tls: the handshake timed out")),
        }
    }
}

/// An authenticated TLS connection. A read gathers every record that has already arrived, as many as
/// fit: rustls alone returns one record (at most 16 KiB) per read, and the muxer above would then
/// handle, and wake its readers for, every record of a large message.
pub(crate) struct TlsStream<C>(futures_rustls::TlsStream<C>);

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<C> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut filled = 0;
        while filled < buf.len() {
            match Pin::new(&mut self.0).poll_read(cx, &mut buf[filled..]) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => filled += n,
                // What was read goes up first; the error comes again with the next read.
                Poll::Ready(Err(_)) | Poll::Pending if filled > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(filled))
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<C> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// aws-lc's provider (as libp2p-tls uses) with TLS 1.3's suites in the order this CPU runs fastest.
fn provider() -> CryptoProvider {
    use aws_lc_rs::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    let suites: [SupportedCipherSuite; 3] = if aes_in_hardware() {
        [TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        [TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]
    };
    CryptoProvider { cipher_suites: suites.to_vec(), ..aws_lc_rs::default_provider() }
}

/// Whether this CPU has the instructions that make AES-GCM fast (AES rounds and carry-less multiply).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Presents our certificate, whatever the peer asks for.
#[derive(Debug)]
struct OurCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OurCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for OurCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Accepts exactly one libp2p certificate and checks TLS 1.3 signatures with its key. The peer ID it
/// carries is read after the handshake; libp2p's TLS has no certificate authority.
#[derive(Debug)]
struct PeerCertVerifier;

impl PeerCertVerifier {
    fn check_chain(end_entity: &CertificateDer, intermediates: &[CertificateDer]) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General("libp2p's TLS takes exactly one certificate".into()));
        }
        certificate::parse(end_entity).map(|_| ()).map_err(bad_certificate)
    }

    fn check_signature(
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let cert = certificate::parse(cert).map_err(bad_certificate)?;
        match cert.verify_signature(dss.scheme, message, dss.signature()) {
            Ok(()) => Ok(HandshakeSignatureValid::assertion()),
            Err(_) => Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)),
        }
    }

    fn schemes() -> Vec<SignatureScheme> {
        use SignatureScheme::*;
        vec![
            ECDSA_NISTP384_SHA384,
            ECDSA_NISTP256_SHA256,
            ED25519,
            RSA_PSS_SHA512,
            RSA_PSS_SHA384,
            RSA_PSS_SHA256,
            RSA_PKCS1_SHA512,
            RSA_PKCS1_SHA384,
            RSA_PKCS1_SHA256,
        ]
    }

    fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("libp2p's TLS is TLS 1.3 only".into()))
    }
}

fn bad_certificate(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check_chain(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check_chain(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use futures::future::join;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use libp2p::tcp::tokio::TcpStream;

    use super::*;

    /// Both ends of a TCP connection on 127.0.0.1.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialer, accepted) = join(tokio::net::TcpStream::connect(addr), listener.accept()).await;
        (TcpStream(dialer.unwrap()), TcpStream(accepted.unwrap().0))
    }

    async fn echo_once<A, B>(mut a: A, mut b: B)
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let large: Vec<u8> = (0..200_000).map(|i| (i * 31 % 251) as u8).collect();
        let send = async {
            a.write_all(&large).await.unwrap();
            a.flush().await.unwrap();
            let mut back = vec![0u8; large.len()];
            a.read_exact(&mut back).await.unwrap();
            back
        };
        let echo = async {
            let mut got = vec![0u8; large.len()];
            b.read_exact(&mut got).await.unwrap();
            b.write_all(&got).await.unwrap();
            b.flush().await.unwrap();
        };
        let (back, ()) = join(send, echo).await;
        assert!(back == large, "bytes changed on the way");
    }

    #[tokio::test]
    async fn each_side_learns_the_other_peer_and_the_cipher_follows_the_cpu() {
        let (a, b) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let (dialer, listener) = connection().await;
        let (ours, theirs) = join(
            TlsConfig::new(&a).unwrap().upgrade(dialer, true),
            TlsConfig::new(&b).unwrap().upgrade(listener, false),
        )
        .await;
        let ((seen_by_dialer, dialer), (seen_by_listener, listener)) = (ours.unwrap(), theirs.unwrap());
        assert_eq!((seen_by_dialer, seen_by_listener), (b.public().to_peer_id(), a.public().to_peer_id()));
        let suite = dialer.0.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        let expected = if aes_in_hardware() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(suite, expected);
        echo_once(dialer, listener).await;
    }

    #[tokio::test]
    async fn ours_and_rust_libp2p_tls_understand_each_other_both_ways() {
        // An RSA key as hivemind makes them, so that both certificate signature families are covered.
        let a = crate::identity::Identity::generate_rsa().unwrap().keypair().clone();
        let b = identity::Keypair::generate_ed25519();
        // We dial rust-libp2p's TLS.
        let (dialer, listener) = connection().await;
        let (ours, theirs) = join(
            TlsConfig::new(&a).unwrap().upgrade(dialer, true),
            libp2p::tls::Config::new(&b).unwrap().upgrade_inbound(listener, "/tls/1.0.0"),
        )
        .await;
        let ((seen_by_us, ours), (seen_by_them, theirs)) = (ours.unwrap(), theirs.unwrap());
        assert_eq!((seen_by_us, seen_by_them), (b.public().to_peer_id(), a.public().to_peer_id()));
        echo_once(ours, theirs).await;
        // rust-libp2p's TLS dials us.
        let (dialer, listener) = connection().await;
        let (theirs, ours) = join(
            libp2p::tls::Config::new(&b).unwrap().upgrade_outbound(dialer, "/tls/1.0.0"),
            TlsConfig::new(&a).unwrap().upgrade(listener, false),
        )
        .await;
        let ((seen_by_them, theirs), (seen_by_us, ours)) = (theirs.unwrap(), ours.unwrap());
        assert_eq!((seen_by_us, seen_by_them), (b.public().to_peer_id(), a.public().to_peer_id()));
        echo_once(theirs, ours).await;
    }

    #[tokio::test]
    async fn a_peer_that_is_not_speaking_tls_is_an_error_not_a_hang() {
        let (dialer, mut listener) = connection().await;
        let garbage = async {
            listener.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff, 1, 2, 3]).await.unwrap();
            listener.flush().await.unwrap();
            let mut sink = Vec::new();
            let _ = listener.read_to_end(&mut sink).await;
        };
        let keypair = identity::Keypair::generate_ed25519();
        let (result, ()) = join(TlsConfig::new(&keypair).unwrap().upgrade(dialer, true), garbage).await;
        assert!(result.is_err());
    }
}
