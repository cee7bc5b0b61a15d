//! The server side of p2pd's Kademlia (`/ipfs/kad/1.0.0`), answered by us rather than by
//! rust-libp2p's kad.
//!
//! rust-libp2p's kad keeps every address with a `/p2p/<peer id>` suffix and sends it so in its
//! answers; the go-libp2p inside p2pd refuses to dial such an address ("no good addresses"), so a
//! Python peer could not find a peer through a kwaai node. The muxer therefore hands inbound kad
//! streams to [`serve`], which answers from kad's routing table (read by the swarm task) with bare
//! addresses and, as go-libp2p-kad-dht does, also names the peer a FIND_NODE looks for when we are
//! connected to it. Our own lookups still run through rust-libp2p's kad, which accepts both forms.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt};
use libp2p::{Multiaddr, PeerId};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::framing::{io_error, write_all};
use super::host::Command;
use super::muxer::RpcStream;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::kad::{ConnectionType, KadMessage, MessageType, Peer};
use crate::wire::p2pd::decode_envelope_length;

/// The protocol ID p2pd's kad speaks.
pub(crate) const KAD_PROTOCOL: &str = "/ipfs/kad/1.0.0";
/// The largest kad message accepted (go-libp2p's `network.MessageSizeMax`).
const MAX_MESSAGE_LEN: usize = 4 << 20;
/// go-libp2p-kad-dht reuses a stream for many requests; one idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Once a message has started, the rest must follow within this time.
const REST_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer in an answer: its ID, where it listens (no `/p2p` suffix) and whether we are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownPeer {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
}

/// Answers the kad requests `peer` sends on `stream` until it closes the stream or stays idle.
pub(crate) async fn serve(peer: PeerId, mut stream: RpcStream, commands: mpsc::WeakSender<Command>) {
    if let Err(e) = answer_requests(peer, &mut stream, &commands).await {
        tracing::debug!(%peer, "kad stream ended: {e}");
    }
}

async fn answer_requests(peer: PeerId, stream: &mut RpcStream, commands: &mpsc::WeakSender<Command>) -> Result<()> {
    let answer = stream.take_answer();
    if !answer.is_empty() {
        write_all(stream, &answer).await?;
    }
    loop {
        let Ok(body) = tokio::time::timeout(IDLE_TIMEOUT, read_message(stream)).await else { return Ok(()) };
        let Some(body) = body? else { return Ok(()) };
        let request = KadMessage::decode(body.as_slice())
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad kad message: {e}")))?;
        if let Some(reply) = reply_to(peer, request, commands).await? {
            write_all(stream, &reply.encode_length_delimited_to_vec()).await?;
        }
    }
}

/// The answer to one request, as go-libp2p-kad-dht gives it (none to ADD_PROVIDER). We keep no
/// values or provider records: p2pd uses its DHT for peer routing only.
async fn reply_to(
    peer: PeerId,
    request: KadMessage,
    commands: &mpsc::WeakSender<Command>,
) -> Result<Option<KadMessage>> {
    let kind = MessageType::try_from(request.r#type)
        .map_err(|_| Error::new(ErrorKind::Protocol, format!("unknown kad message type {}", request.r#type)))?;
    Ok(match kind {
        MessageType::FindNode | MessageType::GetValue | MessageType::GetProviders => {
            let closer = closest_peers(request.key.clone(), peer, commands).await?;
            Some(KadMessage {
                r#type: request.r#type,
                key: request.key,
                closer_peers: closer.into_iter().map(to_wire).collect(),
                ..KadMessage::default()
            })
        }
        MessageType::Ping => Some(KadMessage { r#type: request.r#type, ..KadMessage::default() }),
        MessageType::PutValue => Some(request),
        MessageType::AddProvider => None,
    })
}

async fn closest_peers(
    key: Vec<u8>,
    requester: PeerId,
    commands: &mpsc::WeakSender<Command>,
) -> Result<Vec<KnownPeer>> {
    let closed = || Error::new(ErrorKind::Closed, "the node is shut down");
    let commands = commands.upgrade().ok_or_else(closed)?;
    let (reply, answer) = oneshot::channel();
    commands.send(Command::ClosestPeers { key, requester, reply }).await.map_err(|_| closed())?;
    answer.await.map_err(|_| closed())
}

fn to_wire(known: KnownPeer) -> Peer {
    let connection = if known.connected { ConnectionType::Connected } else { ConnectionType::NotConnected };
    Peer {
        id: known.peer.to_bytes(),
        addrs: known.addrs.iter().map(|a| a.to_vec()).collect(),
        connection: connection as i32,
    }
}

/// Reads one uvarint-length-prefixed message; `None` on a clean end of stream before it.
async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Vec<u8>>> {
    let mut prefix = Vec::with_capacity(4);
    let mut byte = [0u8; 1];
    if reader.read(&mut byte).await.map_err(io_error)? == 0 {
        return Ok(None);
    }
    prefix.push(byte[0]);
    let rest = async {
        let len = loop {
            if let Some((len, _)) =
                decode_envelope_length(&prefix, MAX_MESSAGE_LEN).map_err(|e| Error::new(ErrorKind::Protocol, e))?
            {
                break len;
            }
            reader.read_exact(&mut byte).await.map_err(io_error)?;
            prefix.push(byte[0]);
        };
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.map_err(io_error)?;
        Ok(body)
    };
    tokio::time::timeout(REST_TIMEOUT, rest)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "the peer stalled in the middle of a kad message"))?
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &KadMessage) -> Vec<u8> {
        message.encode_length_delimited_to_vec()
    }

    #[tokio::test]
    async fn messages_are_read_whole_and_lies_are_refused() {
        let ping = KadMessage { r#type: MessageType::Ping as i32, ..KadMessage::default() };
        let mut two = framed(&ping);
        two.extend(framed(&ping));
        let mut reader = futures::io::Cursor::new(two);
        for _ in 0..2 {
            let body = read_message(&mut reader).await.unwrap().unwrap();
            assert_eq!(KadMessage::decode(body.as_slice()).unwrap(), ping);
        }
        assert!(read_message(&mut reader).await.unwrap().is_none(), "a clean end");

        let mut too_long = Vec::new();
        crate::p2p::multistream::encode_uvarint(MAX_MESSAGE_LEN as u64 + 1, &mut too_long);
        let err = read_message(&mut futures::io::Cursor::new(too_long)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        let cut = framed(&KadMessage { key: vec![7; 40], ..KadMessage::default() });
        let err = read_message(&mut futures::io::Cursor::new(cut[..10].to_vec())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    }

    #[tokio::test]
    async fn pings_and_puts_are_echoed_and_providers_get_no_answer() {
        let (commands, _) = mpsc::channel(1);
        let weak = commands.downgrade();
        let peer = PeerId::random();
        let ping = KadMessage { r#type: MessageType::Ping as i32, key: vec![1], ..KadMessage::default() };
        let pong = reply_to(peer, ping, &weak).await.unwrap().unwrap();
        assert_eq!(pong, KadMessage { r#type: MessageType::Ping as i32, ..KadMessage::default() });
        let put = KadMessage {
            r#type: MessageType::PutValue as i32,
            key: vec![2],
            record: Some(vec![3]),
            ..Default::default()
        };
        assert_eq!(reply_to(peer, put.clone(), &weak).await.unwrap(), Some(put));
        let add = KadMessage { r#type: MessageType::AddProvider as i32, ..KadMessage::default() };
        assert_eq!(reply_to(peer, add, &weak).await.unwrap(), None);
        let odd = KadMessage { r#type: 42, ..KadMessage::default() };
        assert_eq!(reply_to(peer, odd, &weak).await.unwrap_err().kind(), ErrorKind::Protocol);
    }
}
