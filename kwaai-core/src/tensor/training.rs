//! Per-call compression for training traffic, on top of the hivemind tensor wire.
//!
//! [`Compression`] picks how one tensor travels in one `ExpertRequest` (runtime.proto):
//!
//! * [`Compression::Codec`]: one tensor in any hivemind codec; `metadata` is empty. Stateless.
//! * [`Compression::Blockwise8bitFeedback`]: one BLOCKWISE_8BIT tensor holding `x + residual`
//!   (quantized as float32, labelled with `x`'s float dtype); `metadata` is empty, so any hivemind
//!   peer that decodes BLOCKWISE_8BIT reads it as a plain tensor. The sender keeps
//!   `x + residual - decoded` as the next residual.
//! * [`Compression::TopK`]: the `k` entries of largest magnitude of `x + residual`, as two NONE
//!   tensors, `values` (shape `[k]`, `x`'s float dtype) then `indices` (int64, shape `[k]`,
//!   strictly increasing row-major positions), and `metadata = msgpack({"sparse": "topk",
//!   "shape": [d0, d1, ...]})`. The receiver scatters the values into zeros of that shape. The
//!   sender keeps the entries it did not send as the next residual.
//!
//! Error feedback needs a floating-point tensor whose element count stays the same from one call
//! to the next; the caller stores the residual ([`Encoded::residual`]) between calls.

use rmpv::Value;

use super::codec::{encode, protocol, DecodeLimits};
use super::gradient::TopK;
use super::{checked_numel, quantize_blockwise, CompressionType, Data, Tensor, TensorView};
use crate::wire::{msgpack, runtime};
use crate::{Error, Result};

/// The metadata key that marks a sparse push, and its one value.
const SPARSE_KEY: &str = "sparse";
const SPARSE_TOPK: &str = "topk";
const SHAPE_KEY: &str = "shape";

/// How a pushed tensor is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// One of hivemind's codecs, without state.
    Codec(CompressionType),
    /// Block-wise 8-bit quantization with error feedback.
    Blockwise8bitFeedback,
    /// Top-k sparsification with error feedback: `k` entries are sent per call (all if `k` is
    /// at least the element count).
    TopK {
        /// How many entries to send.
        k: usize,
    },
}

impl Default for Compression {
    /// Uncompressed.
    fn default() -> Self {
        Compression::Codec(CompressionType::None)
    }
}

impl From<CompressionType> for Compression {
    fn from(codec: CompressionType) -> Self {
        Compression::Codec(codec)
    }
}

impl Compression {
    /// The compression the bindings name: `none`, `float16`, `meanstd_16bit`, `quantile_8bit`,
    /// `uniform_8bit`, `blockwise_8bit`, and with error feedback `blockwise_8bit_feedback` and
    /// `topk` (which needs `k`, the entries per push).
    pub fn from_name(name: &str, k: Option<usize>) -> Result<Compression> {
        let codec = match name {
            "none" => CompressionType::None,
            "float16" => CompressionType::Float16,
            "meanstd_16bit" => CompressionType::Meanstd16bit,
            "quantile_8bit" => CompressionType::Quantile8bit,
            "uniform_8bit" => CompressionType::Uniform8bit,
            "blockwise_8bit" => CompressionType::Blockwise8bit,
            "blockwise_8bit_feedback" => return Ok(Compression::Blockwise8bitFeedback),
            "topk" => {
                let k = k.ok_or_else(|| Error::invalid_argument("compression \"topk\" needs k"))?;
                return Ok(Compression::TopK { k });
            }
            other => return Err(Error::invalid_argument(format!("unknown compression {other:?}"))),
        };
        Ok(Compression::Codec(codec))
    }

    /// Whether calls keep a residual between them.
    pub fn uses_feedback(&self) -> bool {
        !matches!(self, Compression::Codec(_))
    }
}

/// What one push sends, and the residual to keep for the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The request's tensors, whole (not yet split into stream parts).
    pub tensors: Vec<runtime::Tensor>,
    /// The request's metadata (empty for dense tensors).
    pub metadata: Vec<u8>,
    /// The error not sent this time, for the schemes with feedback.
    pub residual: Option<Vec<f32>>,
}

/// Compresses `view` with `compression`; `residual` is what earlier calls with feedback left
/// unsent (ignored by [`Compression::Codec`]). Refuses a residual whose length differs from the
/// tensor's and feedback on non-float tensors.
pub fn encode_push(view: &TensorView<'_>, compression: Compression, residual: Option<&[f32]>) -> Result<Encoded> {
    let k = match compression {
        Compression::Codec(codec) => {
            return Ok(Encoded { tensors: vec![encode(view, codec)?], metadata: Vec::new(), residual: None })
        }
        Compression::Blockwise8bitFeedback => None,
        Compression::TopK { k } => Some(k),
    };
    let dtype = view.dtype();
    if !dtype.is_float() {
        return Err(Error::invalid_argument(format!("error feedback needs a float tensor, not {}", dtype.name())));
    }
    let mut corrected = view.to_f32().into_owned();
    if let Some(residual) = residual {
        if residual.len() != corrected.len() {
            return Err(Error::invalid_argument(format!(
                "a tensor of {} elements after {} under the same name: error feedback needs a fixed size",
                corrected.len(),
                residual.len()
            )));
        }
        corrected.iter_mut().zip(residual).for_each(|(c, r)| *c += r);
    }
    match k {
        None => {
            let q = quantize_blockwise(&corrected);
            corrected.iter_mut().zip(q.dequantize()).for_each(|(c, d)| *c -= d);
            let msg = runtime::Tensor {
                buffer: q.to_buffer(),
                size: shape_u32(view.shape())?,
                dtype: dtype.name().into(),
                compression: CompressionType::Blockwise8bit as i32,
                ..Default::default()
            };
            Ok(Encoded { tensors: vec![msg], metadata: Vec::new(), residual: Some(corrected) })
        }
        Some(k) => {
            let sparse = TopK::select(&corrected, k)?;
            for &i in &sparse.indices {
                corrected[i as usize] = 0.0;
            }
            let values = Tensor::new(vec![sparse.values.len()], Data::from_f32(dtype, &sparse.values))?;
            let indices = Tensor::new(
                vec![sparse.indices.len()],
                Data::I64(sparse.indices.iter().map(|&i| i64::from(i)).collect()),
            )?;
            let shape = view.shape().iter().map(|&d| Value::from(d as u64)).collect();
            let metadata = msgpack::pack(&Value::Map(vec![
                (SPARSE_KEY.into(), SPARSE_TOPK.into()),
                (SHAPE_KEY.into(), Value::Array(shape)),
            ]));
            Ok(Encoded {
                tensors: vec![
                    encode(&values.view(), CompressionType::None)?,
                    encode(&indices.view(), CompressionType::None)?,
                ],
                metadata,
                residual: Some(corrected),
            })
        }
    }
}

/// Rebuilds the pushed tensor from a request's decoded `tensors` and its `metadata`: one dense
/// tensor, or a top-k pair scattered into its shape (bounded by `limits`).
pub fn decode_push(mut tensors: Vec<Tensor>, metadata: &[u8], limits: &DecodeLimits) -> Result<Tensor> {
    if metadata.is_empty() {
        return match tensors.len() {
            1 => Ok(tensors.remove(0)),
            n => Err(Error::invalid_argument(format!("a dense tensor push carries one tensor, not {n}"))),
        };
    }
    let shape = sparse_shape(&msgpack::unpack(metadata)?)?;
    if shape.len() > limits.max_rank {
        return Err(protocol(format!("sparse tensor of rank {} exceeds {}", shape.len(), limits.max_rank)));
    }
    let numel = checked_numel(&shape)
        .ok()
        .filter(|&n| n <= limits.max_elements && n <= u32::MAX as usize)
        .ok_or_else(|| protocol(format!("sparse tensor of shape {shape:?} is too large")))?;
    let [values, indices] = <[Tensor; 2]>::try_from(tensors).map_err(|t| {
        Error::invalid_argument(format!("a top-k push carries values and indices, not {} tensors", t.len()))
    })?;
    let (Data::I64(indices), true) = (indices.data(), values.dtype().is_float()) else {
        return Err(protocol("top-k values must be float and indices int64".into()));
    };
    if values.shape() != [indices.len()] {
        return Err(protocol(format!("{} top-k indices for values of shape {:?}", indices.len(), values.shape())));
    }
    let increasing = indices.windows(2).all(|w| w[0] < w[1]);
    if !increasing || indices.first().is_some_and(|&i| i < 0) || indices.last().is_some_and(|&i| i as usize >= numel) {
        return Err(protocol("top-k indices must be increasing and inside the shape".into()));
    }
    let sparse = TopK {
        numel,
        indices: indices.iter().map(|&i| i as u32).collect(),
        values: values.view().to_f32().into_owned(),
    };
    Tensor::new(shape, Data::from_f32(values.dtype(), &sparse.to_dense()))
}

/// The `shape` of a top-k push's metadata map.
fn sparse_shape(metadata: &Value) -> Result<Vec<usize>> {
    let map = metadata.as_map().ok_or_else(|| protocol("push metadata is not a map".into()))?;
    let get = |key: &str| map.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v);
    match get(SPARSE_KEY).and_then(Value::as_str) {
        Some(SPARSE_TOPK) => {}
        other => return Err(protocol(format!("unknown sparse push format {other:?}"))),
    }
    let dims = get(SHAPE_KEY).and_then(Value::as_array).ok_or_else(|| protocol("top-k push without a shape".into()))?;
    dims.iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| protocol("top-k shape holds a non-integer".into()))
}

fn shape_u32(shape: &[usize]) -> Result<Vec<u32>> {
    shape
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| Error::invalid_argument(format!("dimension {d} does not fit in uint32")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::decode;

    fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor::new(shape, Data::F32(values.to_vec())).unwrap()
    }

    #[test]
    fn compressions_are_named_as_the_bindings_name_them() {
        assert_eq!(Compression::from_name("none", None).unwrap(), Compression::default());
        assert_eq!(Compression::from_name("uniform_8bit", None).unwrap(), CompressionType::Uniform8bit.into());
        assert_eq!(
            Compression::from_name("blockwise_8bit_feedback", None).unwrap(),
            Compression::Blockwise8bitFeedback
        );
        assert_eq!(Compression::from_name("topk", Some(3)).unwrap(), Compression::TopK { k: 3 });
        for (name, k) in [("topk", None), ("zip", Some(1))] {
            let err = Compression::from_name(name, k).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{name}: {err}");
        }
    }

    fn roundtrip(encoded: &Encoded) -> Tensor {
        let limits = DecodeLimits::default();
        let tensors = encoded.tensors.iter().map(|t| decode(t, &limits).unwrap()).collect();
        decode_push(tensors, &encoded.metadata, &limits).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.view().to_f32().into_owned()
    }

    #[test]
    fn top_k_with_every_entry_and_plain_codecs_round_trip_exactly() {
        let t = f32_tensor(vec![2, 3], &[1.0, -2.5, 0.0, 3.25, 1e-3, -7.0]);
        let all = encode_push(&t.view(), Compression::TopK { k: 6 }, None).unwrap();
        assert_eq!(roundtrip(&all), t);
        assert!(all.residual.unwrap().iter().all(|&r| r == 0.0));
        let plain = encode_push(&t.view(), Compression::default(), None).unwrap();
        assert_eq!((roundtrip(&plain), plain.residual), (t, None));
    }

    #[test]
    fn top_k_sends_the_largest_entries_and_keeps_the_rest() {
        let t = f32_tensor(vec![2, 2], &[0.5, -4.0, 3.0, 0.25]);
        let e = encode_push(&t.view(), Compression::TopK { k: 2 }, Some(&[0.0, 0.0, 0.0, 1.0])).unwrap();
        assert_eq!(values(&roundtrip(&e)), vec![0.0, -4.0, 3.0, 0.0]);
        assert_eq!(e.residual.unwrap(), vec![0.5, 0.0, 0.0, 1.25]);
    }

    #[test]
    fn blockwise_feedback_keeps_exactly_what_quantization_lost() {
        let x: Vec<f32> = (0..5000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let t = f32_tensor(vec![5000], &x);
        let e = encode_push(&t.view(), Compression::Blockwise8bitFeedback, None).unwrap();
        assert_eq!(e.tensors[0].compression, CompressionType::Blockwise8bit as i32);
        let got = values(&roundtrip(&e));
        let residual = e.residual.unwrap();
        for i in 0..x.len() {
            assert!((got[i] + residual[i] - x[i]).abs() < 1e-5, "{i}");
        }
    }

    #[test]
    fn bad_pushes_and_bad_feedback_input_are_refused() {
        let ints = Tensor::new(vec![2], Data::I64(vec![1, 2])).unwrap();
        assert!(encode_push(&ints.view(), Compression::TopK { k: 1 }, None).is_err());
        let t = f32_tensor(vec![3], &[1.0, 2.0, 3.0]);
        assert!(encode_push(&t.view(), Compression::Blockwise8bitFeedback, Some(&[0.0; 2])).is_err());

        let limits = DecodeLimits::default();
        let good = encode_push(&t.view(), Compression::TopK { k: 2 }, None).unwrap();
        let decoded = |e: &Encoded| e.tensors.iter().map(|t| decode(t, &limits).unwrap()).collect::<Vec<_>>();
        let mut swapped = decoded(&good);
        swapped.reverse();
        assert!(decode_push(swapped, &good.metadata, &limits).is_err());
        let bad_index = vec![decoded(&good)[0].clone(), Tensor::new(vec![2], Data::I64(vec![1, 3])).unwrap()];
        assert!(decode_push(bad_index, &good.metadata, &limits).is_err());
        let unordered = vec![decoded(&good)[0].clone(), Tensor::new(vec![2], Data::I64(vec![2, 1])).unwrap()];
        assert!(decode_push(unordered, &good.metadata, &limits).is_err());
        let small = DecodeLimits { max_elements: 2, ..limits };
        assert!(decode_push(decoded(&good), &good.metadata, &small).is_err());
        let other = msgpack::pack(&Value::Map(vec![("sparse".into(), "bitmap".into())]));
        assert!(decode_push(decoded(&good), &other, &limits).is_err());
        assert!(decode_push(vec![t.clone(), t.clone()], &[], &limits).is_err());
    }
}
