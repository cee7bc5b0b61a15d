//! What an expert takes and returns, as hivemind's `ModuleBackend.get_info` describes it
//! (hivemind/moe/server/module_backend.py): `forward_schema = (args, kwargs)` and
//! `outputs_schema` made of `BatchTensorDescriptor`s (msgpack ext 0x51,
//! hivemind/utils/tensor_descr.py), plus `keyword_names`.

use rmpv::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::tensor::{CompressionType, DType};
use crate::wire::msgpack::{self, TENSOR_DESCRIPTOR_EXT};

/// One tensor of a schema: its shape after the free batch dimension, dtype and codec.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDescriptor {
    /// Dimensions after the batch dimension.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Whether the tensor needs a gradient (informational).
    pub requires_grad: bool,
    /// The codec a peer uses to send this tensor.
    pub compression: CompressionType,
}

impl TensorDescriptor {
    /// A float32 descriptor of `shape` (after the batch dimension), sent without compression.
    pub fn f32(shape: &[u64]) -> TensorDescriptor {
        TensorDescriptor {
            shape: shape.to_vec(),
            dtype: DType::F32,
            requires_grad: false,
            compression: CompressionType::None,
        }
    }

    /// The msgpack ext 0x51 hivemind's `BatchTensorDescriptor.packb` writes, with exactly its keys.
    pub fn to_value(&self) -> Value {
        let mut size = vec![Value::Nil];
        size.extend(self.shape.iter().map(|&d| Value::from(d)));
        let fields = [
            ("size", msgpack::tuple(size)),
            ("dtype", Value::from(format!("torch.{}", self.dtype.name()))),
            ("layout", Value::from("torch.strided")),
            ("requires_grad", Value::Boolean(self.requires_grad)),
            ("pin_memory", Value::Boolean(false)),
            ("compression", Value::from(self.compression as i32)),
            ("device_type", Value::from("cpu")),
            ("device_index", Value::Nil),
        ];
        let map = Value::Map(fields.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
        Value::Ext(TENSOR_DESCRIPTOR_EXT, msgpack::pack(&map))
    }

    /// Reads a `BatchTensorDescriptor` ext value.
    pub fn from_value(value: &Value) -> Result<TensorDescriptor> {
        let Value::Ext(TENSOR_DESCRIPTOR_EXT, data) = value else {
            return Err(protocol("a schema entry is not a BatchTensorDescriptor"));
        };
        let map = msgpack::unpack(data)?;
        let field = |name: &str| {
            map.as_map().and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v.clone()))
        };
        let size = field("size").as_ref().and_then(msgpack::as_tuple).ok_or_else(|| protocol("descriptor size"))?;
        let shape = size
            .iter()
            .skip(1)
            .map(|d| d.as_u64().ok_or_else(|| protocol("descriptor dimensions must be integers")))
            .collect::<Result<Vec<_>>>()?;
        let dtype = match field("dtype") {
            Some(Value::String(s)) => {
                let name = s.as_str().unwrap_or_default();
                DType::from_name(name.strip_prefix("torch.").unwrap_or(name))?
            }
            _ => DType::F32,
        };
        let compression = field("compression").and_then(|c| c.as_i64()).unwrap_or(0);
        let compression = i32::try_from(compression)
            .ok()
            .and_then(|c| CompressionType::try_from(c).ok())
            .ok_or_else(|| protocol("unknown compression in a descriptor"))?;
        let requires_grad = field("requires_grad").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(TensorDescriptor { shape, dtype, requires_grad, compression })
    }
}

/// An expert's inputs and outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertSchema {
    /// Positional inputs.
    pub args: Vec<TensorDescriptor>,
    /// Keyword inputs, sorted by name (hivemind flattens dictionaries in key order).
    pub kwargs: Vec<(String, TensorDescriptor)>,
    /// Outputs.
    pub outputs: Vec<TensorDescriptor>,
    /// Whether the expert returns one bare tensor (`outputs_schema` is a descriptor, not a tuple).
    pub single_output: bool,
}

impl ExpertSchema {
    /// A schema with these positional inputs and one bare output.
    pub fn new(args: Vec<TensorDescriptor>, output: TensorDescriptor) -> ExpertSchema {
        ExpertSchema { args, kwargs: Vec::new(), outputs: vec![output], single_output: true }
    }

    /// Every input in the order they travel: positional, then keywords by name.
    pub fn flat_inputs(&self) -> Vec<&TensorDescriptor> {
        self.args.iter().chain(self.kwargs.iter().map(|(_, d)| d)).collect()
    }

    /// The msgpack map `rpc_info` returns: `forward_schema`, `outputs_schema`, `keyword_names`.
    pub fn info_value(&self) -> Value {
        let args = msgpack::tuple(self.args.iter().map(TensorDescriptor::to_value).collect());
        let kwargs = Value::Map(self.kwargs.iter().map(|(k, d)| (Value::from(k.as_str()), d.to_value())).collect());
        let outputs = if self.single_output && self.outputs.len() == 1 {
            self.outputs[0].to_value()
        } else {
            msgpack::tuple(self.outputs.iter().map(TensorDescriptor::to_value).collect())
        };
        let names = msgpack::tuple(self.kwargs.iter().map(|(k, _)| Value::from(k.as_str())).collect());
        Value::Map(vec![
            (Value::from("forward_schema"), msgpack::tuple(vec![args, kwargs])),
            (Value::from("outputs_schema"), outputs),
            (Value::from("keyword_names"), names),
        ])
    }

    /// Reads the map `rpc_info` returns (from hivemind or from us).
    pub fn from_info_value(info: &Value) -> Result<ExpertSchema> {
        let entries = info.as_map().ok_or_else(|| protocol("rpc_info is not a map"))?;
        let field = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v)
                .ok_or_else(|| protocol(&format!("rpc_info has no {name}")))
        };
        let forward = msgpack::as_tuple(field("forward_schema")?).ok_or_else(|| protocol("forward_schema"))?;
        let [args, kwargs] = forward.as_slice() else { return Err(protocol("forward_schema is not (args, kwargs)")) };
        let args = msgpack::as_tuple(args)
            .ok_or_else(|| protocol("forward_schema args"))?
            .iter()
            .map(TensorDescriptor::from_value)
            .collect::<Result<Vec<_>>>()?;
        let mut kwargs = kwargs
            .as_map()
            .ok_or_else(|| protocol("forward_schema kwargs"))?
            .iter()
            .map(|(k, v)| {
                let name = k.as_str().ok_or_else(|| protocol("keyword names must be strings"))?;
                Ok((name.to_owned(), TensorDescriptor::from_value(v)?))
            })
            .collect::<Result<Vec<_>>>()?;
        kwargs.sort_by(|a, b| a.0.cmp(&b.0));
        let outputs_value = field("outputs_schema")?;
        let (outputs, single_output) = match msgpack::as_tuple(outputs_value) {
            Some(items) => (items.iter().map(TensorDescriptor::from_value).collect::<Result<Vec<_>>>()?, false),
            None => (vec![TensorDescriptor::from_value(outputs_value)?], true),
        };
        Ok(ExpertSchema { args, kwargs, outputs, single_output })
    }
}

fn protocol(what: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("bad expert schema: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_round_trip_through_rpc_info() {
        let schema = ExpertSchema {
            args: vec![TensorDescriptor::f32(&[8])],
            kwargs: vec![("mask".into(), TensorDescriptor { dtype: DType::Bool, ..TensorDescriptor::f32(&[8]) })],
            outputs: vec![TensorDescriptor { requires_grad: true, ..TensorDescriptor::f32(&[8]) }],
            single_output: true,
        };
        let bytes = msgpack::pack(&schema.info_value());
        assert_eq!(ExpertSchema::from_info_value(&msgpack::unpack(&bytes).unwrap()).unwrap(), schema);
        let Value::Ext(_, data) = schema.args[0].to_value() else { panic!("ext") };
        let keys: Vec<String> = msgpack::unpack(&data)
            .unwrap()
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            keys,
            ["size", "dtype", "layout", "requires_grad", "pin_memory", "compression", "device_type", "device_index"]
        );
    }
}
