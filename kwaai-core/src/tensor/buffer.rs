//! [`Tensor`] (owned, typed storage), [`TensorView`] (borrowed bytes from any host buffer) and
//! [`Decoded`] (either: a decoded message that reads its bytes in place where it can).

use std::borrow::Cow;

use half::{bf16, f16, slice::HalfFloatSliceExt};

use super::DType;
use crate::{Error, Result};

/// Typed, contiguous, row-major element storage. `Bool` holds one byte (0 or 1) per element.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// float32 elements.
    F32(Vec<f32>),
    /// float16 elements.
    F16(Vec<f16>),
    /// bfloat16 elements.
    BF16(Vec<bf16>),
    /// float64 elements.
    F64(Vec<f64>),
    /// int64 elements.
    I64(Vec<i64>),
    /// int32 elements.
    I32(Vec<i32>),
    /// int16 elements.
    I16(Vec<i16>),
    /// int8 elements.
    I8(Vec<i8>),
    /// uint8 elements.
    U8(Vec<u8>),
    /// bool elements, one byte each.
    Bool(Vec<u8>),
}

impl Data {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::F64(_) => DType::F64,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::I16(_) => DType::I16,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.as_bytes().len() / self.dtype().size()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements' bytes in host (little-endian) order, without copying.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice(v),
            Data::F16(v) => bytemuck::cast_slice(v),
            Data::BF16(v) => bytemuck::cast_slice(v),
            Data::F64(v) => bytemuck::cast_slice(v),
            Data::I64(v) => bytemuck::cast_slice(v),
            Data::I32(v) => bytemuck::cast_slice(v),
            Data::I16(v) => bytemuck::cast_slice(v),
            Data::I8(v) => bytemuck::cast_slice(v),
            Data::U8(v) | Data::Bool(v) => v,
        }
    }

    /// Copies `bytes` (a whole number of elements, any alignment) into typed storage.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Result<Data> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return Err(Error::invalid_argument(format!(
                "{} bytes is not a whole number of {} elements",
                bytes.len(),
                dtype.name()
            )));
        }
        use bytemuck::pod_collect_to_vec as collect;
        Ok(match dtype {
            DType::F32 => Data::F32(collect(bytes)),
            DType::F16 => Data::F16(collect(bytes)),
            DType::BF16 => Data::BF16(collect(bytes)),
            DType::F64 => Data::F64(collect(bytes)),
            DType::I64 => Data::I64(collect(bytes)),
            DType::I32 => Data::I32(collect(bytes)),
            DType::I16 => Data::I16(collect(bytes)),
            DType::I8 => Data::I8(collect(bytes)),
            DType::U8 => Data::U8(bytes.to_vec()),
            DType::Bool => Data::Bool(bytes.iter().map(|&b| u8::from(b != 0)).collect()),
        })
    }

    /// Converts float32 values to `dtype` as numpy's `astype` does for finite, in-range values
    /// (floats round to nearest even, integers truncate toward zero and saturate, bool is `!= 0`).
    pub fn from_f32(dtype: DType, values: &[f32]) -> Data {
        match dtype {
            DType::F32 => Data::F32(values.to_vec()),
            DType::F16 => {
                let mut out = vec![f16::ZERO; values.len()];
                out.convert_from_f32_slice(values);
                Data::F16(out)
            }
            DType::BF16 => {
                let mut out = vec![bf16::ZERO; values.len()];
                out.convert_from_f32_slice(values);
                Data::BF16(out)
            }
            DType::F64 => Data::F64(values.iter().map(|&v| f64::from(v)).collect()),
            DType::I64 => Data::I64(values.iter().map(|&v| v as i64).collect()),
            DType::I32 => Data::I32(values.iter().map(|&v| v as i32).collect()),
            DType::I16 => Data::I16(values.iter().map(|&v| v as i16).collect()),
            DType::I8 => Data::I8(values.iter().map(|&v| v as i8).collect()),
            DType::U8 => Data::U8(values.iter().map(|&v| v as u8).collect()),
            DType::Bool => Data::Bool(values.iter().map(|&v| u8::from(v != 0.0)).collect()),
        }
    }
}

/// The element count of `shape`, or an error if it overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid_argument(format!("tensor shape {shape:?} has too many elements")))
}

/// An owned tensor: shape plus typed, contiguous, row-major storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

impl Tensor {
    /// A tensor of `shape` over `data`; the element counts must agree.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor> {
        let numel = checked_numel(&shape)?;
        if numel != data.len() {
            return Err(Error::invalid_argument(format!(
                "shape {shape:?} needs {numel} elements but {} were given",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// Copies a tensor out of raw little-endian bytes (any alignment).
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor> {
        Tensor::new(shape, Data::from_bytes(dtype, bytes)?)
    }

    /// The shape (empty for a 0-d tensor).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The typed storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Takes the shape and storage apart, without copying.
    pub fn into_parts(self) -> (Vec<usize>, Data) {
        (self.shape, self.data)
    }

    /// The elements' bytes, without copying.
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Replaces the shape and lets `fill` rewrite the storage in place; the element count is
    /// checked afterwards (on a mismatch the tensor is left empty and an error returned).
    pub(crate) fn refill(&mut self, shape: Vec<usize>, fill: impl FnOnce(&mut Data)) -> Result<()> {
        fill(&mut self.data);
        let numel = checked_numel(&shape)?;
        if numel != self.data.len() {
            self.shape = vec![0];
            self.data = Data::U8(Vec::new());
            return Err(Error::new(crate::ErrorKind::Internal, "decoded element count does not match the shape"));
        }
        self.shape = shape;
        Ok(())
    }

    /// A borrowed view, ready to encode.
    pub fn view(&self) -> TensorView<'_> {
        TensorView { shape: &self.shape, dtype: self.dtype(), bytes: self.as_bytes() }
    }
}

/// A borrowed tensor: shape, dtype and the bytes of a contiguous, row-major, little-endian host
/// buffer (a C array, a numpy array, a JS typed array, a [`Tensor`], a candle tensor). Encoding
/// reads straight from it, so a host buffer is never copied before compression.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    shape: &'a [usize],
    dtype: DType,
    bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// A view of `bytes` as a `dtype` tensor of `shape`; the byte count must match exactly.
    pub fn new(dtype: DType, shape: &'a [usize], bytes: &'a [u8]) -> Result<TensorView<'a>> {
        let numel = checked_numel(shape)?;
        let expected = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::invalid_argument(format!("tensor shape {shape:?} is too large")))?;
        if bytes.len() != expected {
            return Err(Error::invalid_argument(format!(
                "a {} tensor of shape {shape:?} has {expected} bytes, not {}",
                dtype.name(),
                bytes.len()
            )));
        }
        Ok(TensorView { shape, dtype, bytes })
    }

    /// A view of a host buffer given as a C pointer.
    ///
    /// # Safety
    /// `ptr` must point to `numel(shape) * dtype.size()` readable bytes that stay valid and
    /// unmodified for `'a`. It may be null only when that count is zero.
    pub unsafe fn from_raw_parts(ptr: *const u8, dtype: DType, shape: &'a [usize]) -> Result<TensorView<'a>> {
        let numel = checked_numel(shape)?;
        let len = numel
            .checked_mul(dtype.size())
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| Error::invalid_argument(format!("tensor shape {shape:?} is too large")))?;
        if len == 0 {
            return TensorView::new(dtype, shape, &[]);
        }
        if ptr.is_null() {
            return Err(Error::invalid_argument("null tensor data pointer"));
        }
        // SAFETY: the caller guarantees `len` readable bytes at `ptr` for 'a; len <= isize::MAX.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        TensorView::new(dtype, shape, bytes)
    }

    /// The shape.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Copies the view into an owned [`Tensor`].
    pub fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_bytes(self.dtype, self.shape.to_vec(), self.bytes)
    }

    /// The elements as float32, as torch's `.float()` converts them; borrowed when the view is
    /// an aligned float32 buffer.
    pub fn to_f32(&self) -> Cow<'a, [f32]> {
        let b = self.bytes;
        fn each<T: bytemuck::Pod>(b: &[u8], f: impl Fn(T) -> f32) -> Vec<f32> {
            b.chunks_exact(std::mem::size_of::<T>()).map(|c| f(bytemuck::pod_read_unaligned(c))).collect()
        }
        match self.dtype {
            DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(b) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(b)),
            },
            DType::F16 => {
                let mut out = vec![0f32; self.numel()];
                match bytemuck::try_cast_slice::<u8, f16>(b) {
                    Ok(s) => s.convert_to_f32_slice(&mut out),
                    Err(_) => bytemuck::pod_collect_to_vec::<u8, f16>(b).convert_to_f32_slice(&mut out),
                }
                Cow::Owned(out)
            }
            DType::BF16 => Cow::Owned(each(b, |v: bf16| v.to_f32())),
            DType::F64 => Cow::Owned(each(b, |v: f64| v as f32)),
            DType::I64 => Cow::Owned(each(b, |v: i64| v as f32)),
            DType::I32 => Cow::Owned(each(b, |v: i32| v as f32)),
            DType::I16 => Cow::Owned(each(b, |v: i16| f32::from(v))),
            DType::I8 => Cow::Owned(each(b, |v: i8| f32::from(v))),
            DType::U8 => Cow::Owned(b.iter().map(|&v| f32::from(v)).collect()),
            DType::Bool => Cow::Owned(b.iter().map(|&v| f32::from(u8::from(v != 0))).collect()),
        }
    }
}

/// A decoded message: its own bytes, read in place, where the codec needs no conversion (NONE);
/// otherwise the decoded tensor. See [`decode_borrowed`](super::decode_borrowed).
#[derive(Clone, Debug)]
pub enum Decoded<'a> {
    /// The message's buffer, already checked against the shape and dtype.
    Borrowed {
        /// The shape.
        shape: Vec<usize>,
        /// The element type.
        dtype: DType,
        /// The elements' bytes, inside the message.
        bytes: &'a [u8],
    },
    /// Values the codec computed.
    Owned(Tensor),
}

impl Decoded<'_> {
    /// A view of the elements, without copying.
    pub fn view(&self) -> TensorView<'_> {
        match self {
            Decoded::Borrowed { shape, dtype, bytes } => TensorView { shape, dtype: *dtype, bytes },
            Decoded::Owned(tensor) => tensor.view(),
        }
    }

    /// An owned tensor: borrowed bytes are copied, an owned tensor is moved.
    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            Decoded::Borrowed { shape, dtype, bytes } => Tensor::from_bytes(dtype, shape, bytes),
            Decoded::Owned(tensor) => Ok(tensor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_check_byte_counts_and_raw_pointers() {
        let values = [1.5f32, -2.0, 3.25];
        let bytes: &[u8] = bytemuck::cast_slice(&values);
        let shape = [3usize];
        let view = TensorView::new(DType::F32, &shape, bytes).unwrap();
        assert_eq!(view.to_f32().as_ref(), &values);
        assert!(TensorView::new(DType::F32, &[4], bytes).is_err());
        assert!(TensorView::new(DType::F32, &[usize::MAX, 2], bytes).is_err());
        // SAFETY: `bytes` holds exactly 3 f32 values and outlives the view.
        let raw = unsafe { TensorView::from_raw_parts(bytes.as_ptr(), DType::F32, &shape) }.unwrap();
        assert_eq!(raw.bytes().as_ptr(), bytes.as_ptr(), "a host pointer is borrowed, not copied");
        // SAFETY: a null pointer with a non-empty shape must be refused, not read.
        assert!(unsafe { TensorView::from_raw_parts(std::ptr::null(), DType::F32, &shape) }.is_err());
    }

    #[test]
    fn unaligned_bytes_convert_and_bools_normalise() {
        let mut raw = vec![0u8];
        raw.extend_from_slice(bytemuck::cast_slice(&[7.0f32, -1.0]));
        let view = TensorView::new(DType::F32, &[2], &raw[1..]).unwrap();
        assert_eq!(view.to_f32().as_ref(), &[7.0, -1.0]);
        let t = Tensor::from_bytes(DType::Bool, vec![3], &[0, 2, 1]).unwrap();
        assert_eq!(t.as_bytes(), &[0, 1, 1]);
        assert_eq!(Data::from_f32(DType::I32, &[-2.7, 2.7]), Data::I32(vec![-2, 2]));
    }
}
