//! libp2p's Noise security (`/noise`), as p2pd speaks it: the `Noise_XX_25519_ChaChaPoly_SHA256`
//! handshake, whose payloads carry each side's libp2p public key and its signature over the Noise
//! static key, then ChaCha20-Poly1305 transport messages, each behind a 2-byte big-endian length.
//!
//! The handshake and ciphers are `snow`'s (ring's ChaCha20-Poly1305 and SHA-256); the framing is
//! ours, so that bulk data moves with few copies and system calls: a socket read takes in as many
//! messages as have arrived, each is decrypted straight into the reader's buffer when it fits, a
//! large write is encrypted straight from the writer's buffer, and several messages leave in one
//! socket write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{identity, PeerId};
use prost::Message;
use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};

use super::memory_pipe::{act_out_peer_steps, connection, now};
use super::outbound::Outbound;

/// The Noise protocol name libp2p fixes.
const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// What an identity key signs, followed by the Noise static public key.
const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";
/// The largest Noise message, tag included.
const MAX_MESSAGE: usize = 65535;
/// ChaCha20-Poly1305's tag.
const TAG_LEN: usize = 16;
/// The most plaintext one transport message carries.
pub(crate) const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG_LEN;
/// A length prefix and the largest message.
const MAX_FRAME: usize = 2 + MAX_MESSAGE;
/// Room for the encrypted bytes of several messages: one socket read takes in up to this much,
/// and up to this much waits for one socket write.
const BUFFER: usize = 2 * MAX_FRAME;
/// A peer that has not finished the handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// `NoiseHandshakePayload` of libp2p's noise spec (the peer's `extensions`, field 4, are ignored).
#[derive(Clone, PartialEq, Message)]
struct HandshakePayload {
    /// The libp2p public key, protobuf-encoded.
    #[prost(bytes = "vec", tag = "1")]
    identity_key: Vec<u8>,
    /// The identity key's signature of [`STATIC_KEY_DOMAIN`] and the Noise static public key.
    #[prost(bytes = "vec", tag = "2")]
    identity_sig: Vec<u8>,
}

/// A node's Noise static key and its signed handshake payload, made once per node.
#[derive(Clone)]
pub(crate) struct NoiseConfig {
    static_secret: Arc<Vec<u8>>,
    payload: Arc<Vec<u8>>,
}

fn builder() -> snow::Builder<'static> {
    let params = PATTERN.parse().expect("a valid Noise pattern");
    // ring for ChaCha20-Poly1305, SHA-256 and randomness; snow's own X25519.
    let resolver = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    snow::Builder::with_resolver(params, Box::new(resolver))
}

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("noise: {why}"))
}

impl NoiseConfig {
    /// A fresh static key, signed by `identity`.
    pub fn new(identity: &identity::Keypair) -> io::Result<Self> {
        let static_key = builder().generate_keypair().map_err(invalid)?;
        let signed = [STATIC_KEY_DOMAIN, &static_key.public].concat();
        let identity_sig = identity.sign(&signed).map_err(invalid)?;
        let payload = HandshakePayload { identity_key: identity.public().encode_protobuf(), identity_sig };
        Ok(NoiseConfig { static_secret: Arc::new(static_key.private), payload: Arc::new(payload.encode_to_vec()) })
    }

    /// Runs the handshake on `socket` (as the dialer when `initiator`) and returns the peer's ID,
    /// checked against the key it signed, and the encrypted stream.
    pub async fn upgrade<C>(self, socket: C, initiator: bool) -> io::Result<(PeerId, NoiseStream<C>)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(socket, initiator)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "noise: the handshake timed out")),
        }
    }

    async fn handshake<C>(self, mut socket: C, initiator: bool) -> io::Result<(PeerId, NoiseStream<C>)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let builder = builder().local_private_key(&self.static_secret).map_err(invalid)?;
        let mut state =
            if initiator { builder.build_initiator() } else { builder.build_responder() }.map_err(invalid)?;
        // XX: -> e; <- e, ee, s, es + the responder's payload; -> s, se + the initiator's.
        let remote = if initiator {
            send(&mut socket, &mut state, &[]).await?;
            let remote = receive(&mut socket, &mut state).await?;
            send(&mut socket, &mut state, &self.payload).await?;
            remote
        } else {
            receive(&mut socket, &mut state).await?;
            send(&mut socket, &mut state, &self.payload).await?;
            receive(&mut socket, &mut state).await?
        };
        let remote_static = state.get_remote_static().ok_or_else(|| invalid("no static key from the peer"))?;
        let peer = verify(&remote, remote_static)?;
        let state = state.into_transport_mode().map_err(invalid)?;
        Ok((peer, NoiseStream::new(socket, state)))
    }
}

/// Writes one handshake message carrying `payload`.
async fn send<C: AsyncWrite + Unpin>(
    socket: &mut C,
    state: &mut snow::HandshakeState,
    payload: &[u8],
) -> io::Result<()> {
    let mut frame = vec![0u8; MAX_FRAME];
    let n = state.write_message(payload, &mut frame[2..]).map_err(invalid)?;
    frame[..2].copy_from_slice(&(n as u16).to_be_bytes());
    socket.write_all(&frame[..2 + n]).await?;
    socket.flush().await
}

/// Reads one handshake message and returns its payload.
async fn receive<C: AsyncRead + Unpin>(socket: &mut C, state: &mut snow::HandshakeState) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 2];
    socket.read_exact(&mut prefix).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    socket.read_exact(&mut message).await?;
    let mut payload = vec![0u8; message.len()];
    let n = state.read_message(&message, &mut payload).map_err(invalid)?;
    payload.truncate(n);
    Ok(payload)
}

/// The peer ID of a handshake payload whose key signed `remote_static`.
fn verify(payload: &[u8], remote_static: &[u8]) -> io::Result<PeerId> {
    let payload = HandshakePayload::decode(payload).map_err(invalid)?;
    let key = identity::PublicKey::try_decode_protobuf(&payload.identity_key).map_err(invalid)?;
    if !key.verify(&[STATIC_KEY_DOMAIN, remote_static].concat(), &payload.identity_sig) {
        return Err(invalid("the peer's signature of its static key does not verify"));
    }
    Ok(key.to_peer_id())
}

/// An established Noise channel over `C`.
pub(crate) struct NoiseStream<C> {
    socket: C,
    state: snow::TransportState,
    /// Encrypted bytes read and not yet decrypted: `inbound[in_start..in_end]`.
    inbound: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// A decrypted message the reader's buffer had no room for: `plain[plain_start..]`.
    plain: Vec<u8>,
    plain_start: usize,
    /// Plaintext written but not yet sealed (small writes share a message).
    pending: Vec<u8>,
    /// Sealed messages not yet handed to the socket.
    outbound: Outbound,
}

impl<C> NoiseStream<C> {
    fn new(socket: C, state: snow::TransportState) -> Self {
        NoiseStream {
            socket,
            state,
            inbound: vec![0u8; BUFFER].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            plain: Vec::new(),
            plain_start: 0,
            pending: Vec::with_capacity(MAX_PLAINTEXT),
            outbound: Outbound::new(BUFFER),
        }
    }

    /// The length of the next whole message in `inbound`, if it has all arrived.
    fn next_message(&self) -> Option<usize> {
        let buffered = &self.inbound[self.in_start..self.in_end];
        let len = usize::from(u16::from_be_bytes([*buffered.first()?, *buffered.get(1)?]));
        (buffered.len() >= 2 + len).then_some(len)
    }

    /// Decrypts the next message (of `len` bytes, all buffered) into `out`, which has room for
    /// it, tag included; returns the plaintext's length.
    fn open(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let message = &self.inbound[self.in_start + 2..self.in_start + 2 + len];
        let n = self.state.read_message(message, out).map_err(|e| invalid(format!("a transport message: {e}")))?;
        self.in_start += 2 + len;
        Ok(n)
    }

    /// Encrypts `plain` (at most [`MAX_PLAINTEXT`] bytes) into `outbound`, which has room.
    fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        let spare = self.outbound.spare();
        let n = self.state.write_message(plain, &mut spare[2..]).map_err(invalid)?;
        spare[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.outbound.commit(2 + n);
        Ok(())
    }

    fn seal_pending(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let sealed = self.seal(&pending);
        self.pending = pending;
        self.pending.clear();
        sealed
    }

    fn has_room(&self) -> bool {
        self.outbound.room() >= MAX_FRAME
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for NoiseStream<C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.plain_start < this.plain.len() {
                let n = buf.len().min(this.plain.len() - this.plain_start);
                buf[..n].copy_from_slice(&this.plain[this.plain_start..this.plain_start + n]);
                this.plain_start += n;
                return Poll::Ready(Ok(n));
            }
            // Whole messages go straight into `buf` while they fit; the first that does not goes
            // to `plain` when nothing else was read.
            let mut filled = 0;
            while let Some(len) = this.next_message() {
                if buf.len() - filled >= len {
                    filled += this.open(len, &mut buf[filled..])?;
                } else if filled > 0 {
                    break;
                } else {
                    let mut plain = std::mem::take(&mut this.plain);
                    plain.resize(len, 0);
                    let n = this.open(len, &mut plain)?;
                    plain.truncate(n);
                    this.plain = plain;
                    this.plain_start = 0;
                    break;
                }
            }
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
            if this.plain_start < this.plain.len() {
                continue;
            }
            // Nothing for the reader yet (or only empty messages): read more, keeping room for a
            // whole message after the start of the partial one.
            if this.in_start == this.in_end {
                this.in_start = 0;
                this.in_end = 0;
            } else if this.inbound.len() - this.in_start < MAX_FRAME {
                this.inbound.copy_within(this.in_start..this.in_end, 0);
                this.in_end -= this.in_start;
                this.in_start = 0;
            }
            if this.next_message().is_some() {
                continue;
            }
            let n = ready!(Pin::new(&mut this.socket).poll_read(cx, &mut this.inbound[this.in_end..]))?;
            if n == 0 {
                if this.in_start == this.in_end {
                    return Poll::Ready(Ok(0));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "noise: the connection closed inside a message",
                )));
            }
            this.in_end += n;
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for NoiseStream<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.has_room() {
            // Pending only while the socket cannot take the bytes that leave no room.
            if this.outbound.poll_send(&mut this.socket, cx)?.is_pending() && !this.has_room() {
                return Poll::Pending;
            }
        }
        if this.pending.is_empty() && buf.len() >= MAX_PLAINTEXT {
            this.seal(&buf[..MAX_PLAINTEXT])?;
            return Poll::Ready(Ok(MAX_PLAINTEXT));
        }
        let n = buf.len().min(MAX_PLAINTEXT - this.pending.len());
        this.pending.extend_from_slice(&buf[..n]);
        if this.pending.len() == MAX_PLAINTEXT {
            this.seal_pending()?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            if !this.has_room() {
                ready!(this.outbound.poll_send(&mut this.socket, cx))?;
            }
            this.seal_pending()?;
        }
        ready!(this.outbound.poll_send(&mut this.socket, cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().socket).poll_close(cx)
    }
}

/// Acts out `input` as a peer on an established Noise connection whose socket reads return at
/// most `97 * input[0] + 1` bytes, with the steps of [`act_out_peer_steps`] after that (step 6
/// does nothing here). Returns how many bytes our side read. For the `p2p_noise` fuzz target.
#[doc(hidden)]
pub fn serve_peer_steps(input: &[u8]) -> usize {
    let keys = [identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519()];
    let Some((&chunk, input)) = input.split_first() else { return 0 };
    let (x, y) = connection(97 * usize::from(chunk) + 1);
    let configs = [NoiseConfig::new(&keys[0]).unwrap(), NoiseConfig::new(&keys[1]).unwrap()];
    let [ours, theirs] = configs;
    let (ours, theirs) = now(futures::future::join(ours.handshake(x, false), theirs.handshake(y, true)));
    let ((_, ours), (_, peer)) = (ours.unwrap(), theirs.unwrap());
    act_out_peer_steps(ours, peer, input, |s| &s.socket, |_, _| {})
}

#[cfg(test)]
mod tests {
    use futures::future::join;

    use super::super::memory_pipe::End;

    use super::*;

    type Pair = ((PeerId, NoiseStream<End>), (PeerId, NoiseStream<End>));

    async fn handshake(max_read: usize) -> (Pair, PeerId, PeerId) {
        let (a, b) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let (dialer, listener) = connection(max_read);
        let (ours, theirs) = join(
            NoiseConfig::new(&a).unwrap().upgrade(dialer, true),
            NoiseConfig::new(&b).unwrap().upgrade(listener, false),
        )
        .await;
        ((ours.unwrap(), theirs.unwrap()), a.public().to_peer_id(), b.public().to_peer_id())
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn each_side_learns_the_other_peer_and_bytes_cross_intact() {
        for max_read in [usize::MAX, 1000] {
            let (((seen_by_dialer, mut dialer), (seen_by_listener, mut listener)), a, b) = handshake(max_read).await;
            assert_eq!((seen_by_dialer, seen_by_listener), (b, a));
            // One large write (several full messages), then small ones that share a message.
            let large = pattern(3 * MAX_PLAINTEXT + 12345);
            dialer.write_all(&large).await.unwrap();
            for piece in [&b"abc"[..], b"", b"defg"] {
                dialer.write_all(piece).await.unwrap();
            }
            dialer.close().await.unwrap();
            // Read through buffers smaller and larger than one message.
            let mut got = Vec::new();
            let mut small = [0u8; 777];
            while got.len() < MAX_PLAINTEXT {
                let n = listener.read(&mut small).await.unwrap();
                got.extend_from_slice(&small[..n]);
            }
            listener.read_to_end(&mut got).await.unwrap();
            assert_eq!(&got[..large.len()], &large[..]);
            assert_eq!(&got[large.len()..], b"abcdefg");
            // And back.
            listener.write_all(b"reply").await.unwrap();
            listener.flush().await.unwrap();
            let mut reply = [0u8; 5];
            dialer.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"reply");
        }
    }

    #[tokio::test]
    async fn a_small_write_leaves_on_flush_in_one_message() {
        let (((_, mut dialer), (_, listener)), _, _) = handshake(usize::MAX).await;
        dialer.write_all(b"ping").await.unwrap();
        assert!(listener.socket.rx.lock().unwrap().bytes.is_empty(), "nothing leaves before a flush");
        dialer.flush().await.unwrap();
        assert_eq!(listener.socket.rx.lock().unwrap().bytes.len(), 2 + 4 + TAG_LEN);
    }

    #[tokio::test]
    async fn tampered_and_truncated_messages_are_errors() {
        let (((_, mut dialer), (_, mut listener)), _, _) = handshake(usize::MAX).await;
        dialer.write_all(b"secret").await.unwrap();
        dialer.flush().await.unwrap();
        listener.socket.rx.lock().unwrap().bytes[5] ^= 1;
        let err = listener.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let (((_, mut dialer), (_, mut listener)), _, _) = handshake(usize::MAX).await;
        dialer.write_all(b"cut short").await.unwrap();
        dialer.flush().await.unwrap();
        dialer.socket.tx.lock().unwrap().bytes.pop_back();
        dialer.socket.close().await.unwrap();
        let err = listener.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn rust_libp2p_noise_talks_to_ours_both_ways() {
        use futures::FutureExt;
        use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
        for we_dial in [true, false] {
            let (a, b) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
            let (x, y) = connection(5000);
            let config = libp2p_noise::Config::new(&b).unwrap();
            let theirs = if we_dial {
                config.upgrade_inbound(y, "/noise").boxed()
            } else {
                config.upgrade_outbound(y, "/noise").boxed()
            };
            let (ours, theirs) = join(NoiseConfig::new(&a).unwrap().upgrade(x, we_dial), theirs).await;
            let ((their_id, mut ours), (our_id, mut theirs)) = (ours.unwrap(), theirs.unwrap());
            assert_eq!((their_id, our_id), (b.public().to_peer_id(), a.public().to_peer_id()));
            let data = pattern(200_000);
            let (sent, got) = join(
                async {
                    ours.write_all(&data).await.unwrap();
                    ours.flush().await.unwrap();
                },
                async {
                    let mut got = vec![0u8; data.len()];
                    theirs.read_exact(&mut got).await.unwrap();
                    got
                },
            )
            .await;
            let () = sent;
            assert_eq!(got, data);
            theirs.write_all(&data[..70_000]).await.unwrap();
            theirs.flush().await.unwrap();
            let mut back = vec![0u8; 70_000];
            ours.read_exact(&mut back).await.unwrap();
            assert_eq!(back, data[..70_000]);
        }
    }

    #[test]
    fn the_fuzz_entry_point_checks_intact_tampered_and_cut_streams() {
        fn step(op: u8, arg: u16) -> Vec<u8> {
            [&[op][..], &arg.to_le_bytes()].concat()
        }
        // Writes of 200, 80 000 (unflushed, then flushed with the next) and 0 bytes, reads through
        // 50- and 7-byte buffers, and a write of ours: everything arrives.
        let steps = [step(0, 100), step(4, 49), step(1, 40_000), step(0, 0), step(4, 6), step(5, 10)].concat();
        assert_eq!(serve_peer_steps(&[&[3u8][..], &steps].concat()), 200 + 80_000);
        // A flipped bit stops the stream at the message it hit; a cut one ends it early.
        let tampered = [step(0, 100), step(4, 999), step(0, 100), step(2, 30), step(4, 999)].concat();
        assert_eq!(serve_peer_steps(&[&[0u8][..], &tampered].concat()), 200);
        let cut = [step(0, 100), step(0, 100), step(3, 5)].concat();
        assert_eq!(serve_peer_steps(&[&[0u8][..], &cut].concat()), 200);
    }

    #[test]
    fn a_payload_signed_for_another_static_key_is_refused() {
        let identity = identity::Keypair::generate_ed25519();
        let signed = [STATIC_KEY_DOMAIN, &[1u8; 32]].concat();
        let payload = HandshakePayload {
            identity_key: identity.public().encode_protobuf(),
            identity_sig: identity.sign(&signed).unwrap(),
        }
        .encode_to_vec();
        assert_eq!(verify(&payload, &[1u8; 32]).unwrap(), identity.public().to_peer_id());
        assert_eq!(verify(&payload, &[2u8; 32]).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(verify(b"\x0a\x03abc", &[1u8; 32]).is_err(), "a key that does not decode");
    }
}
