//! The `rpc_info` reply of a Petals server (petals/server/handler.py `rpc_info`,
//! petals/server/backend.py `get_info`) and hivemind's `BatchTensorDescriptor` it carries.

use rmpv::Value;

use super::info::PETALS_VERSION;
use crate::tensor::DType;
use crate::wire::msgpack::{self, TENSOR_DESCRIPTOR_EXT};

/// Sequence length Petals writes into its block schemas (it is informational).
const SCHEMA_SEQ_LEN: u64 = 2048;

/// hivemind's `BatchTensorDescriptor` as msgpack ext 0x51: a tensor whose batch dimension is free
/// and whose other dimensions are `dims`.
pub fn batch_tensor_descriptor(dims: &[u64], dtype: DType, compression: i32) -> Value {
    let mut size = vec![Value::Nil];
    size.extend(dims.iter().map(|&d| Value::from(d)));
    let fields = vec![
        ("size", msgpack::tuple(size)),
        ("dtype", Value::from(format!("torch.{}", dtype.name()))),
        ("layout", Value::from("torch.strided")),
        ("requires_grad", Value::Boolean(false)),
        ("pin_memory", Value::Boolean(false)),
        ("compression", Value::from(compression)),
        ("device_type", Value::Nil),
        ("device_index", Value::Nil),
    ];
    let map = Value::Map(fields.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
    Value::Ext(TENSOR_DESCRIPTOR_EXT, msgpack::pack(&map))
}

/// What the `rpc_info` schemas of a served block depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSchema {
    /// The model's hidden size.
    pub hidden_size: u64,
    /// The dtype the server computes and replies in.
    pub dtype: DType,
    /// The codec (hivemind `CompressionType` number) the server asks clients to use.
    pub compression: i32,
}

/// The server-wide part of the `rpc_info` reply (what a request with an empty uid gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRpcInfo {
    /// Whether our DHT runs in client mode.
    pub dht_client_mode: bool,
    /// Tokens (K and V rows together) the attention cache can still hold.
    pub cache_tokens_available: u64,
}

/// The msgpack map `rpc_info` returns; with `block` (the uid named a served block) it adds that
/// block's forward, output and inference schemas.
pub fn rpc_info_value(server: ServerRpcInfo, block: Option<&BlockSchema>) -> Value {
    let mut entries = vec![
        ("version", Value::from(PETALS_VERSION)),
        ("dht_client_mode", Value::Boolean(server.dht_client_mode)),
        ("cache_tokens_available", Value::from(server.cache_tokens_available)),
    ];
    if let Some(block) = block {
        let hidden =
            || batch_tensor_descriptor(&[1, SCHEMA_SEQ_LEN, block.hidden_size], block.dtype, block.compression);
        let no_kwargs = Value::Map(Vec::new());
        entries.extend([
            ("forward_schema", msgpack::tuple(vec![msgpack::tuple(vec![hidden()]), no_kwargs.clone()])),
            ("outputs_schema", msgpack::tuple(vec![hidden()])),
            ("keyword_names", msgpack::tuple(Vec::new())),
            (
                "inference_schema",
                msgpack::tuple(vec![
                    msgpack::tuple(vec![
                        hidden(),
                        batch_tensor_descriptor(&[], block.dtype, 0),
                        batch_tensor_descriptor(&[], DType::I64, 0),
                    ]),
                    no_kwargs,
                ]),
            ),
        ]);
    }
    Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_has_hiveminds_exact_keys_in_order() {
        let Value::Ext(code, data) = batch_tensor_descriptor(&[1, 8], DType::BF16, 0) else { panic!("an ext") };
        assert_eq!(code, TENSOR_DESCRIPTOR_EXT);
        let map = msgpack::unpack(&data).expect("msgpack");
        let keys: Vec<_> = map.as_map().expect("map").iter().filter_map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["size", "dtype", "layout", "requires_grad", "pin_memory", "compression", "device_type", "device_index"]
        );
        assert_eq!(map.as_map().expect("map")[1].1, Value::from("torch.bfloat16"));
        let size = msgpack::as_tuple(&map.as_map().expect("map")[0].1).expect("tuple");
        assert_eq!(size, [Value::Nil, Value::from(1u64), Value::from(8u64)]);
    }

    #[test]
    fn server_only_info_has_no_schemas() {
        let info = ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 10 };
        assert_eq!(rpc_info_value(info, None).as_map().expect("map").len(), 3);
        let block = BlockSchema { hidden_size: 16, dtype: DType::F32, compression: 0 };
        assert_eq!(rpc_info_value(info, Some(&block)).as_map().expect("map").len(), 7);
    }
}
