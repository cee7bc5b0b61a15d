//! hivemind's tensor wire format in the browser: `encodeTensor` writes the protobuf bytes of a
//! `runtime_pb2.Tensor` with any of the six codecs, `decodeTensor` reads them back.

use kwaai_core::tensor::{decode, encode, CompressionType, DType, Data, DecodeLimits, Tensor};
use kwaai_core::wire::runtime;
use prost::Message;
use wasm_bindgen::prelude::*;

use crate::js_error;

fn compression_of(name: &str) -> kwaai_core::Result<CompressionType> {
    CompressionType::from_str_name(name).ok_or_else(|| {
        kwaai_core::Error::invalid_argument(format!(
            "unknown compression {name:?}: use NONE, FLOAT16, MEANSTD_16BIT, QUANTILE_8BIT, UNIFORM_8BIT or BLOCKWISE_8BIT"
        ))
    })
}

fn encode_bytes(values: &[f32], shape: &[u32], dtype: &str, compression: &str) -> kwaai_core::Result<Vec<u8>> {
    let dtype = DType::from_name(dtype)?;
    let compression = compression_of(compression)?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let tensor = Tensor::new(shape, Data::from_f32(dtype, values))?;
    Ok(encode(&tensor.view(), compression)?.encode_to_vec())
}

/// Serializes a tensor as hivemind does (`serialize_torch_tensor`): the protobuf bytes of a
/// `runtime_pb2.Tensor`.
///
/// `values` are the elements in row-major order, converted to `dtype` (`"float32"`, `"float16"`,
/// `"bfloat16"`, `"int64"`, ...) as numpy's `astype` does; `shape` must hold `values.length`
/// elements; `compression` is a runtime.proto name: `NONE`, `FLOAT16`, `MEANSTD_16BIT`,
/// `QUANTILE_8BIT`, `UNIFORM_8BIT` or `BLOCKWISE_8BIT`.
#[wasm_bindgen(js_name = encodeTensor)]
pub fn encode_tensor(values: &[f32], shape: &[u32], dtype: &str, compression: &str) -> Result<Vec<u8>, JsError> {
    encode_bytes(values, shape, dtype, compression).map_err(js_error)
}

/// A tensor read from hivemind's wire format.
#[wasm_bindgen]
pub struct DecodedTensor {
    shape: Vec<u32>,
    dtype: DType,
    compression: CompressionType,
    values: Vec<f32>,
}

#[wasm_bindgen]
impl DecodedTensor {
    /// The dimensions.
    #[wasm_bindgen(getter)]
    pub fn shape(&self) -> Vec<u32> {
        self.shape.clone()
    }

    /// The element type it was sent as (`"float32"`, `"bfloat16"`, ...).
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> String {
        self.dtype.name().to_owned()
    }

    /// The codec it was sent with (`"NONE"`, `"BLOCKWISE_8BIT"`, ...).
    #[wasm_bindgen(getter)]
    pub fn compression(&self) -> String {
        self.compression.as_str_name().to_owned()
    }

    /// The elements in row-major order as float32 (converted as torch's `.float()` does).
    #[wasm_bindgen(getter)]
    pub fn values(&self) -> Vec<f32> {
        self.values.clone()
    }
}

fn decode_bytes(bytes: &[u8]) -> kwaai_core::Result<DecodedTensor> {
    let msg = runtime::Tensor::decode(bytes).map_err(|e| {
        kwaai_core::Error::with_source(kwaai_core::ErrorKind::Protocol, "not a runtime.proto Tensor", e)
    })?;
    let compression = CompressionType::try_from(msg.compression).unwrap_or(CompressionType::None);
    let tensor = decode(&msg, &DecodeLimits::default())?;
    let values = tensor.view().to_f32().into_owned();
    Ok(DecodedTensor { shape: msg.size.clone(), dtype: tensor.dtype(), compression, values })
}

/// Reads the protobuf bytes of a hivemind `runtime_pb2.Tensor` (any codec); throws on malformed
/// or oversized input.
#[wasm_bindgen(js_name = decodeTensor)]
pub fn decode_tensor(bytes: &[u8]) -> Result<DecodedTensor, JsError> {
    decode_bytes(bytes).map_err(js_error)
}
