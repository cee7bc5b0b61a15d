//! libp2p's TLS 1.3 (`/tls/1.0.0`): rustls runs the handshake with our configs, then hands the
//! traffic keys to our record layer ([`super::tls_record`]), which carries the data.
//!
//! The certificate is libp2p's: a self-signed one whose extension carries the libp2p public key and
//! its signature of the certificate's key (`libp2p::tls::certificate`). The peer ID is taken from
//! the one certificate the other side presents, and the TLS handshake's own signature is checked
//! against that certificate's key.
//!
//! libp2p-tls always offers ChaCha20-Poly1305 first. Where the CPU has AES and carry-less multiply
//! instructions AES-GCM costs about a quarter as much per byte, so we offer it first there. The
//! listener takes the dialer's first choice: rustls always, Go's TLS when its CPU has AES too.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::tls::certificate;
use libp2p::{identity, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnectionData, ResolvesClientCert, UnbufferedClientConnection};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ExtractedSecrets, SignatureScheme, SupportedCipherSuite,
};

pub(crate) use super::tls_record::TlsStream;
use super::tls_record::{RecordKey, Session};

/// The ALPN protocol of libp2p's TLS handshake.
const ALPN: &[u8] = b"libp2p";

/// How long a peer may take to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most handshake bytes we hold while rustls waits for a whole message.
const MAX_HANDSHAKE_BUFFER: usize = 1 << 20;

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
        client.enable_secret_extraction = true;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(ours);
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.enable_secret_extraction = true;
        // Tickets serve resumption, which libp2p never uses.
        server.send_tls13_tickets = 0;
        Ok(TlsConfig { client: Arc::new(client), server: Arc::new(server) })
    }

    /// Runs the handshake on `socket` as the dialer (`initiator`) or the listener, and returns the
    /// peer's ID with the encrypted stream.
    pub async fn upgrade<C>(self, socket: C, initiator: bool) -> io::Result<(PeerId, TlsStream<C>)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            if initiator {
                // libp2p's TLS sends no server name: an unspecified address turns SNI off.
                let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
                let conn = UnbufferedClientConnection::new(self.client, name).map_err(invalid)?;
                secure(conn, socket, initiator).await
            } else {
                let conn = UnbufferedServerConnection::new(self.server).map_err(invalid)?;
                secure(conn, socket, initiator).await
            }
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "tls: the handshake timed out")),
        }
    }
}

/// rustls's unbuffered client and server connections, as the handshake drives them.
trait Handshake: Sized {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]>;
    fn into_session(self) -> Result<(ExtractedSecrets, Session), rustls::Error>;
}

impl Handshake for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        (**self).peer_certificates()
    }
    fn into_session(self) -> Result<(ExtractedSecrets, Session), rustls::Error> {
        let (secrets, kernel): (_, KernelConnection<ClientConnectionData>) = self.dangerous_into_kernel_connection()?;
        Ok((secrets, Session::Client(kernel)))
    }
}

impl Handshake for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        (**self).peer_certificates()
    }
    fn into_session(self) -> Result<(ExtractedSecrets, Session), rustls::Error> {
        let (secrets, kernel): (_, KernelConnection<ServerConnectionData>) = self.dangerous_into_kernel_connection()?;
        Ok((secrets, Session::Server(kernel)))
    }
}

/// Runs rustls's handshake over `socket` until we may send data, then hands the traffic keys, and
/// whatever arrived after the handshake, to our record layer.
async fn secure<T, C>(mut conn: T, mut socket: C, initiator: bool) -> io::Result<(PeerId, TlsStream<C>)>
where
    T: Handshake,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut incoming = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut outgoing = Vec::new();
    // Data the peer sent right behind its last handshake message, which rustls decrypted.
    let mut early = Vec::new();
    loop {
        let status = conn.process(&mut incoming[..filled]);
        let discard = status.discard;
        let (mut read_more, mut done) = (false, false);
        match status.state.map_err(invalid)? {
            ConnectionState::EncodeTlsData(mut data) => {
                let at = outgoing.len();
                loop {
                    match data.encode(&mut outgoing[at..]) {
                        Ok(n) => {
                            outgoing.truncate(at + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(e)) => outgoing.resize(at + e.required_size, 0),
                        Err(e) => return Err(invalid(e)),
                    }
                }
            }
            ConnectionState::TransmitTlsData(transmit) => {
                socket.write_all(&outgoing).await?;
                socket.flush().await?;
                outgoing.clear();
                transmit.done();
            }
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    early.extend_from_slice(record.map_err(invalid)?.payload);
                }
            }
            ConnectionState::BlockedHandshake => read_more = true,
            ConnectionState::WriteTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tls: the peer closed during the handshake"))
            }
            other => return Err(invalid(format!("unexpected handshake state {other:?}"))),
        }
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        if done {
            break;
        }
        if read_more {
            if filled == incoming.len() {
                if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                    return Err(invalid("a handshake message over 1 MiB"));
                }
                incoming.resize(2 * incoming.len(), 0);
            }
            let n = socket.read(&mut incoming[filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tls: the peer closed during the handshake"));
            }
            filled += n;
        }
    }
    let peer = match conn.peer_certificates() {
        Some([cert]) => certificate::parse(cert).map_err(invalid)?.peer_id(),
        _ => return Err(invalid("the peer must present exactly one certificate")),
    };
    let (secrets, session) = conn.into_session().map_err(invalid)?;
    let ((tx_seq, tx), (rx_seq, rx)) = (secrets.tx, secrets.rx);
    let stream = TlsStream::new(
        socket,
        session,
        RecordKey::new(rx_seq, rx)?,
        RecordKey::new(tx_seq, tx)?,
        &early,
        &incoming[..filled],
    );
    tracing::debug!(%peer, suite = ?stream.suite(), initiator, "tls: secured");
    Ok((peer, stream))
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
pub(crate) fn aes_in_hardware() -> bool {
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

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("tls: {why}"))
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

/// Acts out `input` as a peer on an established TLS connection (both sides ours, over an
/// in-memory connection whose reads return at most `97 * input[0] + 1` bytes), with the steps of
/// [`act_out_peer_steps`] after that; step 6 sends a `KeyUpdate`, asking us to update ours when its
/// second byte is even. Returns how many bytes our side read. For the `p2p_tls` fuzz target.
#[doc(hidden)]
pub fn serve_peer_steps(input: &[u8]) -> usize {
    use std::sync::OnceLock;

    use super::memory_pipe::{act_out_peer_steps, connection, now, End};

    static CONFIGS: OnceLock<[TlsConfig; 2]> = OnceLock::new();
    let [ours, theirs] = CONFIGS
        .get_or_init(|| {
            let config = || TlsConfig::new(&identity::Keypair::generate_ed25519()).unwrap();
            [config(), config()]
        })
        .clone();
    let Some((&chunk, input)) = input.split_first() else { return 0 };
    let (x, y) = connection(97 * usize::from(chunk) + 1);
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
    let (ours, theirs) = now(futures::future::join(
        secure(UnbufferedServerConnection::new(ours.server).unwrap(), x, false),
        secure(UnbufferedClientConnection::new(theirs.client, name).unwrap(), y, true),
    ));
    let ((_, ours), (_, peer)) = (ours.unwrap(), theirs.unwrap());
    let ask_peer_to_update = |peer: &mut TlsStream<End>, byte: u8| {
        if !peer.has_room() {
            now(peer.flush()).unwrap();
        }
        peer.update_keys(byte.is_multiple_of(2)).unwrap();
    };
    act_out_peer_steps(ours, peer, input, |s| s.socket(), ask_peer_to_update)
}

#[cfg(test)]
mod tests {
    use futures::future::join;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use libp2p::tcp::tokio::TcpStream;

    use super::super::memory_pipe::{connection, now, End};
    use super::*;

    /// The most plaintext one record carries.
    const MAX_RECORD_PLAINTEXT: usize = 1 << 14;

    /// Both ends of a TCP connection on 127.0.0.1.
    async fn connection_tcp() -> (TcpStream, TcpStream) {
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
        let (dialer, listener) = connection_tcp().await;
        let (ours, theirs) = join(
            TlsConfig::new(&a).unwrap().upgrade(dialer, true),
            TlsConfig::new(&b).unwrap().upgrade(listener, false),
        )
        .await;
        let ((seen_by_dialer, dialer), (seen_by_listener, listener)) = (ours.unwrap(), theirs.unwrap());
        assert_eq!((seen_by_dialer, seen_by_listener), (b.public().to_peer_id(), a.public().to_peer_id()));
        let suite = dialer.suite();
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
        let (dialer, listener) = connection_tcp().await;
        let (ours, theirs) = join(
            TlsConfig::new(&a).unwrap().upgrade(dialer, true),
            libp2p::tls::Config::new(&b).unwrap().upgrade_inbound(listener, "/tls/1.0.0"),
        )
        .await;
        let ((seen_by_us, ours), (seen_by_them, theirs)) = (ours.unwrap(), theirs.unwrap());
        assert_eq!((seen_by_us, seen_by_them), (b.public().to_peer_id(), a.public().to_peer_id()));
        echo_once(ours, theirs).await;
        // rust-libp2p's TLS dials us.
        let (dialer, listener) = connection_tcp().await;
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
        let (dialer, mut listener) = connection_tcp().await;
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

    /// Both sides ours, over an in-memory connection whose reads return at most `max_read` bytes.
    fn pipe_pair(max_read: usize) -> (TlsStream<End>, TlsStream<End>) {
        let (x, y) = connection(max_read);
        let (a, b) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (dialer, listener) = now(join(
            secure(UnbufferedClientConnection::new(TlsConfig::new(&a).unwrap().client, name).unwrap(), x, true),
            secure(UnbufferedServerConnection::new(TlsConfig::new(&b).unwrap().server).unwrap(), y, false),
        ));
        (dialer.unwrap().1, listener.unwrap().1)
    }

    #[test]
    fn records_cross_intact_through_small_reads_key_updates_and_close() {
        // Reads of 3 bytes open every record where it lies; of 64 KiB, straight into the reader's
        // buffer; of 777 bytes, some each way.
        for (max_read, read_len) in [(usize::MAX, 777), (1000, 777), (usize::MAX, 3), (usize::MAX, 1 << 16)] {
            let (mut dialer, mut listener) = pipe_pair(max_read);
            let large: Vec<u8> = (0..3 * MAX_RECORD_PLAINTEXT + 12345).map(|i| (i * 31 % 251) as u8).collect();
            now(dialer.write_all(&large)).unwrap();
            // The dialer asks for new keys both ways, then sends more under its new key.
            dialer.update_keys(true).unwrap();
            for piece in [&b"abc"[..], b"", b"defg"] {
                now(dialer.write_all(piece)).unwrap();
            }
            now(dialer.close()).unwrap();
            let mut got = Vec::new();
            let mut chunk = vec![0u8; read_len];
            loop {
                let n = now(listener.read(&mut chunk)).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(got[..large.len()] == large[..], "bytes changed on the way");
            assert_eq!(&got[large.len()..], b"abcdefg");
            // The listener owes a key update, sent before its reply.
            now(listener.write_all(b"reply")).unwrap();
            now(listener.flush()).unwrap();
            let mut reply = [0u8; 5];
            now(dialer.read_exact(&mut reply)).unwrap();
            assert_eq!(&reply, b"reply");
        }
    }

    #[test]
    fn a_flipped_bit_is_invalid_data_and_a_cut_record_is_unexpected_eof() {
        let (mut dialer, mut listener) = pipe_pair(usize::MAX);
        now(dialer.write_all(b"hello")).unwrap();
        now(dialer.flush()).unwrap();
        listener.socket().rx.lock().unwrap().bytes[7] ^= 1;
        let mut buf = [0u8; 16];
        assert_eq!(now(listener.read(&mut buf)).unwrap_err().kind(), io::ErrorKind::InvalidData);

        let (mut dialer, mut listener) = pipe_pair(usize::MAX);
        now(dialer.write_all(b"hello")).unwrap();
        now(dialer.flush()).unwrap();
        {
            let mut pipe = dialer.socket().tx.lock().unwrap();
            let keep = pipe.bytes.len() - 3;
            pipe.bytes.truncate(keep);
            pipe.closed = true;
        }
        assert_eq!(now(listener.read(&mut buf)).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_fuzz_peer_runs_every_kind_of_step() {
        // Writes flushed and not, a key update asked and not, reads, our writes, then a tamper.
        let steps: &[[u8; 3]] = &[
            [0, 200, 0],
            [1, 10, 0],
            [6, 0, 0],
            [4, 255, 3],
            [5, 50, 0],
            [6, 1, 0],
            [0, 100, 100],
            [4, 1, 0],
            [2, 9, 0],
        ];
        let input: Vec<u8> = std::iter::once(3).chain(steps.iter().flatten().copied()).collect();
        assert!(serve_peer_steps(&input) > 0);
        // Untouched, everything arrives (the hook asserts it).
        let input: Vec<u8> = std::iter::once(0).chain(steps[..8].iter().flatten().copied()).collect();
        assert_eq!(serve_peer_steps(&input), 2 * (200 + 10 + 25700));
    }

    #[tokio::test]
    async fn data_sent_right_behind_the_handshake_is_not_lost() {
        let (a, b) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let (dialer, listener) = connection_tcp().await;
        let dial_and_send = async {
            let (_, mut stream) = TlsConfig::new(&a).unwrap().upgrade(dialer, true).await.unwrap();
            stream.write_all(b"first words").await.unwrap();
            stream.flush().await.unwrap();
            stream
        };
        let (_dialer, theirs) = join(dial_and_send, TlsConfig::new(&b).unwrap().upgrade(listener, false)).await;
        let (_, mut listener) = theirs.unwrap();
        let mut got = [0u8; 11];
        listener.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first words");
    }

    #[tokio::test]
    async fn rustls_key_updates_are_followed_and_ours_are_understood() {
        let (a, b) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let (dialer, listener) = connection_tcp().await;
        let (ours, theirs) = join(
            TlsConfig::new(&a).unwrap().upgrade(dialer, true),
            libp2p::tls::Config::new(&b).unwrap().upgrade_inbound(listener, "/tls/1.0.0"),
        )
        .await;
        let ((_, mut ours), (_, mut theirs)) = (ours.unwrap(), theirs.unwrap());
        // Ours updates its sending key every two records; theirs asks for an update.
        ours.key_update_every = 2;
        let futures_rustls::TlsStream::Server(theirs_inner) = &mut theirs else { panic!("a server stream") };
        theirs_inner.get_mut().1.refresh_traffic_keys().unwrap();
        for round in 0..3u8 {
            let message = vec![round; 3 * MAX_RECORD_PLAINTEXT];
            theirs.write_all(&message).await.unwrap();
            theirs.flush().await.unwrap();
            let mut got = vec![0u8; message.len()];
            ours.read_exact(&mut got).await.unwrap();
            assert!(got == message);
            ours.write_all(&message).await.unwrap();
            ours.flush().await.unwrap();
            theirs.read_exact(&mut got).await.unwrap();
            assert!(got == message);
        }
    }
}
