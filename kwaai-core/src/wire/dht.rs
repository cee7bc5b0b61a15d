//! hivemind's DHT messages: `hivemind/proto/dht.proto` and `auth.proto` (proto3), 1.1.10.post2.
//!
//! Auth fields are carried for completeness; hivemind and Petals leave them unset by default.

/// `AccessToken` (auth.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AccessToken {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    #[prost(string, tag = "3")]
    pub expiration_time: String,
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
}

/// `RequestAuthInfo` (auth.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestAuthInfo {
    #[prost(message, optional, tag = "1")]
    pub client_access_token: Option<AccessToken>,
    #[prost(bytes = "vec", tag = "2")]
    pub service_public_key: Vec<u8>,
    #[prost(double, tag = "3")]
    pub time: f64,
    #[prost(bytes = "vec", tag = "4")]
    pub nonce: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub signature: Vec<u8>,
}

/// `ResponseAuthInfo` (auth.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseAuthInfo {
    #[prost(message, optional, tag = "1")]
    pub service_access_token: Option<AccessToken>,
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

/// `NodeInfo`: the sender's 20-byte DHT node ID, empty for client-mode nodes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeInfo {
    #[prost(bytes = "vec", tag = "1")]
    pub node_id: Vec<u8>,
}

/// `PingRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingRequest {
    #[prost(message, optional, tag = "1")]
    pub auth: Option<RequestAuthInfo>,
    #[prost(message, optional, tag = "2")]
    pub peer: Option<NodeInfo>,
    #[prost(bool, tag = "3")]
    pub validate: bool,
}

/// `PingResponse` (there is no field 3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    #[prost(message, optional, tag = "1")]
    pub auth: Option<ResponseAuthInfo>,
    #[prost(message, optional, tag = "2")]
    pub peer: Option<NodeInfo>,
    #[prost(double, tag = "4")]
    pub dht_time: f64,
    #[prost(bool, tag = "5")]
    pub available: bool,
}

/// `StoreRequest`: aligned lists, one entry per key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoreRequest {
    #[prost(message, optional, tag = "1")]
    pub auth: Option<RequestAuthInfo>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub keys: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub subkeys: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub values: Vec<Vec<u8>>,
    #[prost(double, repeated, tag = "5")]
    pub expiration_time: Vec<f64>,
    #[prost(bool, repeated, tag = "6")]
    pub in_cache: Vec<bool>,
    #[prost(message, optional, tag = "7")]
    pub peer: Option<NodeInfo>,
}

/// `StoreResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoreResponse {
    #[prost(message, optional, tag = "1")]
    pub auth: Option<ResponseAuthInfo>,
    #[prost(bool, repeated, tag = "2")]
    pub store_ok: Vec<bool>,
    #[prost(message, optional, tag = "3")]
    pub peer: Option<NodeInfo>,
}

/// `FindRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FindRequest {
    #[prost(message, optional, tag = "1")]
    pub auth: Option<RequestAuthInfo>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub keys: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "3")]
    pub peer: Option<NodeInfo>,
}

/// `ResultType` of a [`FindResult`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResultType {
    NotFound = 0,
    FoundRegular = 1,
    FoundDictionary = 2,
}

/// `FindResult`: the value (if any) and the nearest peers the responder knows.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FindResult {
    #[prost(enumeration = "ResultType", tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(double, tag = "3")]
    pub expiration_time: f64,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub nearest_node_ids: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub nearest_peer_ids: Vec<Vec<u8>>,
}

/// `FindResponse`: one result per requested key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FindResponse {
    #[prost(message, optional, tag = "1")]
    pub auth: Option<ResponseAuthInfo>,
    #[prost(message, repeated, tag = "2")]
    pub results: Vec<FindResult>,
    #[prost(message, optional, tag = "3")]
    pub peer: Option<NodeInfo>,
}
