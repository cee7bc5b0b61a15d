//! The Kademlia DHT messages that p2pd's kad (go-libp2p-kad-dht v0.20, `pb/dht.proto`, proto3)
//! exchanges on `/ipfs/kad/1.0.0`, each sent as a uvarint length and the message.
//!
//! Only the fields peer routing needs are typed: records and provider peers are carried as raw
//! bytes so that an unusual request still decodes.

/// `Message.MessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    PutValue = 0,
    GetValue = 1,
    AddProvider = 2,
    GetProviders = 3,
    FindNode = 4,
    Ping = 5,
}

/// `Message.ConnectionType`: whether the answering peer is connected to the peer it describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectionType {
    NotConnected = 0,
    Connected = 1,
    CanConnect = 2,
    CannotConnect = 3,
}

/// `Message.Peer`: a peer ID and the multiaddrs (binary form) it listens on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
    #[prost(enumeration = "ConnectionType", tag = "3")]
    pub connection: i32,
}

/// `Message`: a request, or the answer to one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KadMessage {
    #[prost(enumeration = "MessageType", tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// `record.pb.Record`, kept encoded.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub record: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "8")]
    pub closer_peers: Vec<Peer>,
    #[prost(message, repeated, tag = "9")]
    pub provider_peers: Vec<Peer>,
    #[prost(int32, tag = "10")]
    pub cluster_level_raw: i32,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_find_node_request_has_go_kad_dht_bytes() {
        let request = KadMessage { r#type: MessageType::FindNode as i32, key: vec![1, 2], ..Default::default() };
        // type = 4 (field 1, varint), key (field 2, bytes); proto3 leaves the zero level out.
        assert_eq!(request.encode_to_vec(), [0x08, 0x04, 0x12, 0x02, 1, 2]);
        let answer = KadMessage {
            r#type: MessageType::FindNode as i32,
            closer_peers: vec![Peer { id: vec![9], addrs: vec![vec![4, 127, 0, 0, 1]], connection: 1 }],
            ..Default::default()
        };
        let bytes = answer.encode_to_vec();
        assert_eq!(&bytes[2..], [0x42, 0x0c, 0x0a, 0x01, 9, 0x12, 0x05, 4, 127, 0, 0, 1, 0x18, 0x01]);
        assert_eq!(KadMessage::decode(bytes.as_slice()).unwrap(), answer);
    }
}
