//! hivemind's `averaging.proto` (proto3, no package): matchmaking and all-reduce messages of
//! `DecentralizedAverager` (hivemind 1.1.10.post2: hivemind/proto/averaging.proto).

use super::runtime::Tensor;

/// `MessageCode`: what a matchmaking or all-reduce message means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageCode {
    /// The default; never sent on purpose.
    NoCode = 0,
    /// A follower asks to join.
    RequestJoin = 1,
    /// The leader accepted the follower.
    Accepted = 2,
    /// The group is formed: all-reduce may begin.
    BeginAllreduce = 3,
    /// A sender's part of its tensors.
    PartForAveraging = 4,
    /// A reducer's reply: the group average minus the sender's part.
    AveragedPart = 5,
    /// The leader has not declared itself in the DHT.
    NotDeclared = 6,
    /// The peer follows another leader (see `suggested_leader`).
    NotALeader = 7,
    /// The follower's expiration is earlier than the leader's.
    BadExpirationTime = 8,
    /// The follower averages differently shaped tensors.
    BadSchemaHash = 9,
    /// No running group has this id.
    BadGroupId = 10,
    /// This peer is already in the group.
    DuplicatePeerId = 11,
    /// The group already has its target size.
    GroupIsFull = 12,
    /// The peer is not looking for a group now.
    NotLookingForGroup = 13,
    /// The request broke the protocol.
    ProtocolViolation = 14,
    /// The peer failed internally.
    InternalError = 15,
    /// The peer left the all-reduce.
    Cancelled = 16,
    /// The leader closed the group (maybe pointing to another leader).
    GroupDisbanded = 17,
    /// The follower used another group key than the leader.
    BadGroupKey = 18,
}

impl MessageCode {
    /// The name in averaging.proto (`ACCEPTED`, `BEGIN_ALLREDUCE`, ...), or `UNKNOWN(n)`.
    pub fn name_of(code: i32) -> String {
        use MessageCode::*;
        let name = match MessageCode::try_from(code) {
            Ok(NoCode) => "NO_CODE",
            Ok(RequestJoin) => "REQUEST_JOIN",
            Ok(Accepted) => "ACCEPTED",
            Ok(BeginAllreduce) => "BEGIN_ALLREDUCE",
            Ok(PartForAveraging) => "PART_FOR_AVERAGING",
            Ok(AveragedPart) => "AVERAGED_PART",
            Ok(NotDeclared) => "NOT_DECLARED",
            Ok(NotALeader) => "NOT_A_LEADER",
            Ok(BadExpirationTime) => "BAD_EXPIRATION_TIME",
            Ok(BadSchemaHash) => "BAD_SCHEMA_HASH",
            Ok(BadGroupId) => "BAD_GROUP_ID",
            Ok(DuplicatePeerId) => "DUPLICATE_PEER_ID",
            Ok(GroupIsFull) => "GROUP_IS_FULL",
            Ok(NotLookingForGroup) => "NOT_LOOKING_FOR_GROUP",
            Ok(ProtocolViolation) => "PROTOCOL_VIOLATION",
            Ok(InternalError) => "INTERNAL_ERROR",
            Ok(Cancelled) => "CANCELLED",
            Ok(GroupDisbanded) => "GROUP_DISBANDED",
            Ok(BadGroupKey) => "BAD_GROUP_KEY",
            Err(_) => return format!("UNKNOWN({code})"),
        };
        name.to_string()
    }
}

/// `JoinRequest`: a follower asks a leader to take it into its group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinRequest {
    /// The hash of the follower's tensor descriptors.
    #[prost(bytes = "vec", tag = "2")]
    pub schema_hash: Vec<u8>,
    /// DHT time by which the follower wants all-reduce to begin.
    #[prost(double, tag = "3")]
    pub expiration: f64,
    /// The follower's gather blob.
    #[prost(bytes = "vec", tag = "4")]
    pub gather: Vec<u8>,
    /// Whether the follower accepts no incoming calls.
    #[prost(bool, tag = "5")]
    pub client_mode: bool,
    /// The group key the follower looks in (`prefix.0b0101`).
    #[prost(string, tag = "6")]
    pub group_key: String,
}

/// `MessageFromLeader`: the leader's answers on an `rpc_join_group` stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageFromLeader {
    /// A [`MessageCode`].
    #[prost(enumeration = "MessageCode", tag = "1")]
    pub code: i32,
    /// The group's random id (with BEGIN_ALLREDUCE).
    #[prost(bytes = "vec", tag = "2")]
    pub group_id: Vec<u8>,
    /// The leader to ask instead (PeerID bytes), with NOT_A_LEADER or GROUP_DISBANDED.
    #[prost(bytes = "vec", tag = "3")]
    pub suggested_leader: Vec<u8>,
    /// Every member's PeerID bytes, in all-reduce order.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub ordered_peer_ids: Vec<Vec<u8>>,
    /// Every member's gather blob, in the same order.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub gathered: Vec<Vec<u8>>,
}

/// `AveragingData`: one message of an `rpc_aggregate_part` stream, either way.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AveragingData {
    /// A [`MessageCode`].
    #[prost(enumeration = "MessageCode", tag = "1")]
    pub code: i32,
    /// The group id, in the sender's first message.
    #[prost(bytes = "vec", tag = "2")]
    pub group_id: Vec<u8>,
    /// The sender's PeerID bytes (hivemind leaves it empty).
    #[prost(bytes = "vec", tag = "3")]
    pub peer_id: Vec<u8>,
    /// A sender's part, or a reducer's averaged delta for it.
    #[prost(message, optional, tag = "4")]
    pub tensor_part: Option<Tensor>,
    /// The sender's averaging weight.
    #[prost(double, tag = "5")]
    pub weight: f64,
}

/// `DownloadRequest`: asks a peer for its state (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DownloadRequest {}

/// `DownloadData`: one message of a state download.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DownloadData {
    /// msgpack metadata, in the first message only.
    #[prost(bytes = "vec", tag = "1")]
    pub metadata: Vec<u8>,
    /// One streamed part of one tensor.
    #[prost(message, optional, tag = "2")]
    pub tensor_part: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // The expected bytes are what hivemind's averaging_pb2 serializes for the same fields.
    #[test]
    fn join_request_matches_hivemind_bytes() {
        let request = JoinRequest {
            schema_hash: vec![1, 2],
            expiration: 1.5,
            gather: vec![0x93],
            client_mode: true,
            group_key: "p.0b01".into(),
        };
        assert_eq!(hex(&request.encode_to_vec()), "1202010219000000000000f83f22019328013206702e30623031");
    }

    #[test]
    fn message_from_leader_matches_hivemind_bytes() {
        let message = MessageFromLeader {
            code: MessageCode::BeginAllreduce as i32,
            group_id: b"g".to_vec(),
            suggested_leader: vec![],
            ordered_peer_ids: vec![b"A".to_vec(), b"B".to_vec()],
            gathered: vec![b"x".to_vec(), b"y".to_vec()],
        };
        let bytes = message.encode_to_vec();
        assert_eq!(hex(&bytes), "08031201672201412201422a01782a0179");
        assert_eq!(MessageFromLeader::decode(&bytes[..]).unwrap(), message);
    }

    #[test]
    fn averaging_data_matches_hivemind_bytes() {
        let data = AveragingData {
            code: MessageCode::PartForAveraging as i32,
            group_id: b"g".to_vec(),
            peer_id: vec![],
            tensor_part: Some(Tensor { buffer: vec![0], dtype: "float32".into(), ..Default::default() }),
            weight: 2.0,
        };
        assert_eq!(hex(&data.encode_to_vec()), "0804120167220c0a01002207666c6f61743332290000000000000040");
    }

    #[test]
    fn code_names_follow_the_proto() {
        assert_eq!(MessageCode::name_of(17), "GROUP_DISBANDED");
        assert_eq!(MessageCode::name_of(99), "UNKNOWN(99)");
    }
}
