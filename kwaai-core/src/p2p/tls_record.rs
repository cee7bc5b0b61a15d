//! TLS 1.3's record layer (RFC 8446 §5), ours, on the traffic keys of a handshake rustls ran.
//!
//! rustls copies every received record's plaintext into a fresh buffer and every written byte into
//! its own before encrypting. Here a socket read takes in as many records as have arrived, and each
//! is decrypted straight into the reader's buffer (or, when the reader has less room than the record
//! holds, where it lies, and copied from there); a write is sealed straight from the writer's buffer
//! into the bytes that leave in one socket write.
//!
//! After the handshake only three kinds of record may come: application data, alerts (a
//! `close_notify` ends the stream, any other alert is an error) and the post-handshake messages
//! `NewSessionTicket` (ignored: we never resume) and `KeyUpdate` (new receiving keys from rustls,
//! and our own update before our next data when the peer asks). We update our sending keys every
//! [`KEY_UPDATE_EVERY`] records, well before AES-GCM's limit.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use futures::{AsyncRead, AsyncWrite};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::ConnectionTrafficSecrets;

use super::outbound::Outbound;

/// A record's header: content type, legacy version (3, 3), length.
const HEADER_LEN: usize = 5;
/// The most plaintext a record carries.
const MAX_PLAINTEXT: usize = 1 << 14;
/// The AEAD tag (all TLS 1.3 suites rustls offers).
const TAG_LEN: usize = 16;
/// The largest encrypted record body a peer may send.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The largest record a peer may send, header included.
const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT;
/// The largest record we send: a full plaintext, its content type and the tag.
const MAX_SEALED: usize = HEADER_LEN + MAX_PLAINTEXT + 1 + TAG_LEN;
/// One socket read takes in up to this many bytes, and up to this many wait for one socket write.
const BUFFER: usize = 8 * MAX_RECORD;
/// Records sent under one key before we update it.
const KEY_UPDATE_EVERY: u64 = 1 << 24;

const APPLICATION_DATA: u8 = 23;
const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// A `KeyUpdate` handshake message; its last byte says whether the peer must update too.
const KEY_UPDATE_MESSAGE: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("tls: {why}"))
}

/// The side of the connection rustls's handshake left us: it derives the next keys of a
/// `KeyUpdate`.
pub(crate) enum Session {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Session {
    fn next_keys(&mut self, sending: bool) -> io::Result<RecordKey> {
        let (seq, secrets) = match (self, sending) {
            (Session::Client(k), true) => k.update_tx_secret(),
            (Session::Client(k), false) => k.update_rx_secret(),
            (Session::Server(k), true) => k.update_tx_secret(),
            (Session::Server(k), false) => k.update_rx_secret(),
        }
        .map_err(invalid)?;
        RecordKey::new(seq, secrets)
    }
}

/// One direction's AEAD key, IV and record sequence number.
pub(crate) struct RecordKey {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    /// The key rustls extracted, starting at record `seq`.
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> io::Result<Self> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(invalid("a cipher suite without a record layer here")),
        };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).map_err(invalid)?);
        let iv = iv.as_ref().try_into().map_err(invalid)?;
        Ok(RecordKey { key, iv, seq })
    }

    /// The next record's nonce: the IV XOR the big-endian sequence number.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[aead::NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// An established TLS 1.3 connection over `C`.
pub(crate) struct TlsStream<C> {
    socket: C,
    session: Session,
    rx: RecordKey,
    tx: RecordKey,
    /// Bytes read: `inbound[plain_start..plain_end]` is the opened plaintext not yet read, and
    /// `inbound[in_start..in_end]` the records not yet opened.
    inbound: Box<[u8]>,
    plain_start: usize,
    plain_end: usize,
    in_start: usize,
    in_end: usize,
    /// The peer sent `close_notify`: reads end there.
    read_closed: bool,
    /// The peer asked for a `KeyUpdate`, owed before our next data.
    key_update_owed: bool,
    /// Sealed records not yet handed to the socket.
    outbound: Outbound,
    close_sent: bool,
    /// Records sent under one key before we update it ([`KEY_UPDATE_EVERY`]; less in tests).
    pub(crate) key_update_every: u64,
}

impl<C> TlsStream<C> {
    /// The record layer after a handshake: `early` is plaintext rustls already decrypted and
    /// `unread` the bytes it left behind (at most part of one record).
    pub fn new(socket: C, session: Session, rx: RecordKey, tx: RecordKey, early: &[u8], unread: &[u8]) -> Self {
        let mut inbound = vec![0u8; BUFFER.max(early.len() + unread.len() + MAX_RECORD)].into_boxed_slice();
        inbound[..early.len()].copy_from_slice(early);
        let in_end = early.len() + unread.len();
        inbound[early.len()..in_end].copy_from_slice(unread);
        TlsStream {
            socket,
            session,
            rx,
            tx,
            inbound,
            plain_start: 0,
            plain_end: early.len(),
            in_start: early.len(),
            in_end,
            read_closed: false,
            key_update_owed: false,
            outbound: Outbound::new(BUFFER),
            close_sent: false,
            key_update_every: KEY_UPDATE_EVERY,
        }
    }

    /// The connection under the records.
    pub(crate) fn socket(&self) -> &C {
        &self.socket
    }

    /// The negotiated cipher suite.
    pub fn suite(&self) -> rustls::CipherSuite {
        match &self.session {
            Session::Client(k) => k.negotiated_cipher_suite().suite(),
            Session::Server(k) => k.negotiated_cipher_suite().suite(),
        }
    }

    /// The length of the next whole record in `inbound`, header included, if it has all arrived.
    fn next_record(&self) -> io::Result<Option<usize>> {
        let buffered = &self.inbound[self.in_start..self.in_end];
        if buffered.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buffered[3], buffered[4]]));
        if buffered[0] != APPLICATION_DATA {
            return Err(invalid(format!("a record of outer type {} after the handshake", buffered[0])));
        }
        if !(TAG_LEN + 1..=MAX_CIPHERTEXT).contains(&len) {
            return Err(invalid(format!("a record of {len} bytes")));
        }
        Ok((buffered.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
    }

    /// Opens the next record (`len` bytes, all buffered) where it lies. Its data becomes the
    /// plaintext to read; alerts and handshake messages are handled here.
    fn open(&mut self, len: usize) -> io::Result<()> {
        let start = self.in_start;
        let (header, body) = self.inbound[start..start + len].split_at_mut(HEADER_LEN);
        let nonce = self.rx.next_nonce();
        let inner = self
            .rx
            .key
            .open_in_place(nonce, Aad::from(&*header), body)
            .map_err(|_| invalid("a record failed to decrypt"))?;
        self.in_start += len;
        let (content_type, content_len) = inner_content(inner)?;
        let content = start + HEADER_LEN..start + HEADER_LEN + content_len;
        if content_type == APPLICATION_DATA {
            (self.plain_start, self.plain_end) = (content.start, content.end);
            return Ok(());
        }
        let content = self.inbound[content].to_vec();
        self.on_control(content_type, &content)
    }

    /// Opens the next record (`len` bytes, all buffered) straight into `out`, which has room for
    /// all of its inner plaintext, and returns how many bytes of data it put there: the copy out of
    /// our buffer that [`TlsStream::open`] leads to is spared.
    fn open_into(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let start = self.in_start;
        let (header, body) = self.inbound[start..start + len].split_at(HEADER_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let out = &mut out[..ciphertext.len()];
        let nonce = self.rx.next_nonce();
        self.rx
            .key
            .open_separate_gather(nonce, Aad::from(header), ciphertext, tag, out)
            .map_err(|_| invalid("a record failed to decrypt"))?;
        self.in_start += len;
        let (content_type, content_len) = inner_content(out)?;
        if content_type == APPLICATION_DATA {
            return Ok(content_len);
        }
        self.on_control(content_type, &out[..content_len])?;
        Ok(0)
    }

    /// Handles a record that is not application data: an alert or handshake messages.
    fn on_control(&mut self, content_type: u8, content: &[u8]) -> io::Result<()> {
        match content_type {
            ALERT => match content {
                [_, 0] => self.read_closed = true,
                [_, description] => return Err(invalid(format!("the peer sent alert {description}"))),
                _ => return Err(invalid("a malformed alert")),
            },
            HANDSHAKE => self.on_handshake(content)?,
            other => return Err(invalid(format!("a record of content type {other}"))),
        }
        Ok(())
    }

    /// Handles the whole handshake messages in `messages`.
    fn on_handshake(&mut self, messages: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < messages.len() {
            let m = &messages[at..];
            let len = match m {
                [_, a, b, c, ..] => usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c),
                _ => return Err(invalid("a handshake message split across records")),
            };
            if m.len() < 4 + len {
                return Err(invalid("a handshake message split across records"));
            }
            let (kind, body) = (m[0], &m[4..4 + len]);
            let client = matches!(self.session, Session::Client(_));
            match (kind, body) {
                (NEW_SESSION_TICKET, _) if client => {}
                (KEY_UPDATE, &[request @ (0 | 1)]) => {
                    self.key_update_owed |= request == 1;
                    self.rx = self.session.next_keys(false)?;
                }
                _ => return Err(invalid(format!("handshake message {kind} after the handshake"))),
            }
            at += 4 + len;
        }
        Ok(())
    }

    /// Seals one record of `content_type` around `data` (at most [`MAX_PLAINTEXT`] bytes) into
    /// `outbound`, which has room.
    fn seal(&mut self, content_type: u8, data: &[u8]) -> io::Result<()> {
        let body_len = data.len() + 1 + TAG_LEN;
        let record = &mut self.outbound.spare()[..HEADER_LEN + body_len];
        record[..HEADER_LEN].copy_from_slice(&[APPLICATION_DATA, 3, 3, (body_len >> 8) as u8, body_len as u8]);
        let (header, body) = record.split_at_mut(HEADER_LEN);
        // Encrypted from the writer's buffer into the record: the data is not copied first.
        let (ciphertext, type_and_tag) = body.split_at_mut(data.len());
        let nonce = self.tx.next_nonce();
        self.tx
            .key
            .seal_out_of_place_scatter(nonce, Aad::from(&*header), data, ciphertext, &[content_type], type_and_tag)
            .map_err(|_| invalid("sealing"))?;
        self.outbound.commit(HEADER_LEN + body_len);
        Ok(())
    }

    /// Seals a `KeyUpdate` (asking the peer to update too when `ask_peer`) and moves to the next
    /// sending keys. `outbound` has room.
    pub(crate) fn update_keys(&mut self, ask_peer: bool) -> io::Result<()> {
        let mut message = KEY_UPDATE_MESSAGE;
        message[4] = u8::from(ask_peer);
        self.seal(HANDSHAKE, &message)?;
        self.tx = self.session.next_keys(true)?;
        self.key_update_owed = false;
        Ok(())
    }

    /// Room for two more records (a `KeyUpdate` and data).
    pub(crate) fn has_room(&self) -> bool {
        self.outbound.room() >= 2 * MAX_SEALED
    }
}

/// A record's inner plaintext (RFC 8446 §5.2): its content type, the last non-zero byte (zeros
/// after it are padding), and the length of the content before it.
fn inner_content(inner: &[u8]) -> io::Result<(u8, usize)> {
    let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
        return Err(invalid("a record without a content type"));
    };
    if type_at > MAX_PLAINTEXT {
        return Err(invalid("a record over 16 KiB of plaintext"));
    }
    Ok((inner[type_at], type_at))
}

impl<C: AsyncRead + Unpin> AsyncRead for TlsStream<C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut filled = 0;
        loop {
            // Plaintext first, then every whole record already read, until `buf` is full.
            if this.plain_start < this.plain_end {
                let n = (buf.len() - filled).min(this.plain_end - this.plain_start);
                buf[filled..filled + n].copy_from_slice(&this.inbound[this.plain_start..this.plain_start + n]);
                this.plain_start += n;
                filled += n;
                if filled == buf.len() {
                    return Poll::Ready(Ok(filled));
                }
                continue;
            }
            if this.read_closed {
                return Poll::Ready(Ok(filled));
            }
            if let Some(len) = this.next_record()? {
                if buf.len() - filled >= len - HEADER_LEN - TAG_LEN {
                    filled += this.open_into(len, &mut buf[filled..])?;
                    if filled == buf.len() {
                        return Poll::Ready(Ok(filled));
                    }
                } else {
                    this.open(len)?;
                }
                continue;
            }
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
            // Nothing for the reader: read more, keeping room for a whole record after the start
            // of the partial one.
            if this.in_start == this.in_end {
                this.in_start = 0;
                this.in_end = 0;
            } else if this.inbound.len() - this.in_start < MAX_RECORD {
                this.inbound.copy_within(this.in_start..this.in_end, 0);
                this.in_end -= this.in_start;
                this.in_start = 0;
            }
            let n = ready!(Pin::new(&mut this.socket).poll_read(cx, &mut this.inbound[this.in_end..]))?;
            if n == 0 {
                if this.in_start == this.in_end {
                    return Poll::Ready(Ok(0));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls: the connection closed inside a record",
                )));
            }
            this.in_end += n;
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for TlsStream<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "tls: written after close")));
        }
        if !this.has_room() {
            // Pending only while the socket cannot take the bytes that leave no room.
            if this.outbound.poll_send(&mut this.socket, cx)?.is_pending() && !this.has_room() {
                return Poll::Pending;
            }
        }
        let mut written = 0;
        while written < buf.len() && this.has_room() {
            if this.key_update_owed || this.tx.seq >= this.key_update_every {
                this.update_keys(false)?;
            }
            let n = (buf.len() - written).min(MAX_PLAINTEXT);
            this.seal(APPLICATION_DATA, &buf[written..written + n])?;
            written += n;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.outbound.poll_send(&mut this.socket, cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            if !this.has_room() {
                ready!(this.outbound.poll_send(&mut this.socket, cx))?;
            }
            // close_notify: a warning-level alert 0.
            this.seal(ALERT, &[1, 0])?;
            this.close_sent = true;
        }
        ready!(this.outbound.poll_send(&mut this.socket, cx))?;
        ready!(Pin::new(&mut this.socket).poll_flush(cx))?;
        Pin::new(&mut this.socket).poll_close(cx)
    }
}
