//! hivemind's `runtime.proto` (proto3, no package): tensors and the expert request/response
//! messages that carry them (hivemind 1.1.10.post2: hivemind/proto/runtime.proto).
//!
//! [`ExpertRequest`] and [`ExpertResponse`] share field numbers 2 and 3, so either parses as the
//! other; Petals relies on this.

/// How a [`Tensor`]'s buffer is encoded (`CompressionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompressionType {
    /// Raw elements in host byte order.
    None = 0,
    /// Mean/std scaling over the last axis, then float16.
    Meanstd16bit = 1,
    /// A cast to float16.
    Float16 = 2,
    /// 256 buckets at approximate quantiles.
    Quantile8bit = 3,
    /// 256 equal-width buckets over ±3 standard deviations.
    Uniform8bit = 4,
    /// bitsandbytes' dynamic 8-bit code with one absmax per 4096 elements.
    Blockwise8bit = 5,
}

impl CompressionType {
    /// The name in runtime.proto (`NONE`, `MEANSTD_16BIT`, ...).
    pub fn as_str_name(&self) -> &'static str {
        match self {
            CompressionType::None => "NONE",
            CompressionType::Meanstd16bit => "MEANSTD_16BIT",
            CompressionType::Float16 => "FLOAT16",
            CompressionType::Quantile8bit => "QUANTILE_8BIT",
            CompressionType::Uniform8bit => "UNIFORM_8BIT",
            CompressionType::Blockwise8bit => "BLOCKWISE_8BIT",
        }
    }

    /// The value with this runtime.proto name.
    pub fn from_str_name(name: &str) -> Option<CompressionType> {
        [
            CompressionType::None,
            CompressionType::Meanstd16bit,
            CompressionType::Float16,
            CompressionType::Quantile8bit,
            CompressionType::Uniform8bit,
            CompressionType::Blockwise8bit,
        ]
        .into_iter()
        .find(|c| c.as_str_name() == name)
    }
}

/// One serialized tensor, or one streamed part of one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tensor {
    /// The encoded elements (the codec decides the layout).
    #[prost(bytes = "vec", tag = "1")]
    pub buffer: Vec<u8>,
    /// The full shape; empty for a 0-d tensor.
    #[prost(uint32, repeated, tag = "2")]
    pub size: Vec<u32>,
    /// Whether the receiver should track gradients (senders write `false`).
    #[prost(bool, tag = "3")]
    pub requires_grad: bool,
    /// The element type's name (`float32`, `bfloat16`, ...); empty in later stream parts.
    #[prost(string, tag = "4")]
    pub dtype: String,
    /// The codec, a [`CompressionType`] value.
    #[prost(enumeration = "CompressionType", tag = "5")]
    pub compression: i32,
    /// How many parts the tensor was split into (informational; receivers never check it).
    #[prost(int32, tag = "6")]
    pub chunks: i32,
}

/// `ExpertUID`: names one expert or a space-joined chain of Petals blocks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpertUid {
    /// The uid string.
    #[prost(string, tag = "1")]
    pub uid: String,
}

/// `ExpertInfo`: the msgpack map an `rpc_info` call returns.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpertInfo {
    /// msgpack bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub serialized_info: Vec<u8>,
}

/// `ExpertRequest`: a call on an expert or a chain of blocks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpertRequest {
    /// The callee's uid.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// The input tensors (or, in a stream, one part of one).
    #[prost(message, repeated, tag = "2")]
    pub tensors: Vec<Tensor>,
    /// msgpack metadata (Petals: session ids, args structure, ...).
    #[prost(bytes = "vec", tag = "3")]
    pub metadata: Vec<u8>,
}

/// `ExpertResponse`: the reply to an [`ExpertRequest`]; it has no field 1.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpertResponse {
    /// The output tensors (or, in a stream, one part of one).
    #[prost(message, repeated, tag = "2")]
    pub tensors: Vec<Tensor>,
    /// msgpack metadata.
    #[prost(bytes = "vec", tag = "3")]
    pub metadata: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn tensor_fields_use_runtime_proto_numbers_and_packed_sizes() {
        let t = Tensor {
            buffer: vec![0xAB],
            size: vec![2, 300],
            requires_grad: true,
            dtype: "f".into(),
            compression: CompressionType::Float16 as i32,
            chunks: 1,
        };
        let bytes = t.encode_to_vec();
        // 1: bytes; 2: packed varints (300 = 0xAC 0x02); 3: bool; 4: string; 5: enum; 6: int32.
        let expected = [0x0A, 1, 0xAB, 0x12, 3, 2, 0xAC, 0x02, 0x18, 1, 0x22, 1, b'f', 0x28, 2, 0x30, 1];
        assert_eq!(bytes, expected);
        assert_eq!(Tensor::decode(&bytes[..]).unwrap(), t);
    }

    #[test]
    fn a_response_parses_as_a_request_with_an_empty_uid() {
        let resp =
            ExpertResponse { tensors: vec![Tensor { dtype: "int64".into(), ..Default::default() }], metadata: vec![1] };
        let req = ExpertRequest::decode(&resp.encode_to_vec()[..]).unwrap();
        assert_eq!(req.uid, "");
        assert_eq!(req.tensors, resp.tensors);
        assert_eq!(req.metadata, vec![1]);
    }
}
