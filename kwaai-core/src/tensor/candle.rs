//! Conversion to and from candle tensors.
//!
//! [`Tensor::into_candle`] moves the storage into candle without copying (on the CPU device);
//! [`Tensor::with_candle_view`] encodes straight from a contiguous candle tensor's memory.

use candle_core::{backend::BackendStorage, CpuStorage, Device, Storage};

use super::{Data, Tensor, TensorView};
use crate::{Error, ErrorKind, Result};

fn candle_error(context: &str, e: candle_core::Error) -> Error {
    Error::with_source(ErrorKind::InvalidArgument, context, e)
}

impl Tensor {
    /// Moves this tensor into a candle tensor on `device`. On the CPU the storage moves without
    /// a copy. candle has no bool or int8: bool becomes `U8`, int8 is widened to `I16`.
    pub fn into_candle(self, device: &Device) -> Result<candle_core::Tensor> {
        let (shape, data) = self.into_parts();
        let t = match data {
            Data::F32(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::F16(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::BF16(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::F64(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::I64(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::I32(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::I16(v) => candle_core::Tensor::from_vec(v, shape, device),
            Data::I8(v) => {
                candle_core::Tensor::from_vec(v.into_iter().map(i16::from).collect::<Vec<_>>(), shape, device)
            }
            Data::U8(v) | Data::Bool(v) => candle_core::Tensor::from_vec(v, shape, device),
        };
        t.map_err(|e| candle_error("building a candle tensor", e))
    }

    /// Copies a candle tensor (any device, any layout) into a [`Tensor`]; `U32` becomes int64,
    /// as hivemind has no uint32.
    pub fn from_candle(t: &candle_core::Tensor) -> Result<Tensor> {
        Tensor::with_candle_view(t, |view| view.to_tensor())?
    }

    /// Calls `f` with a view of `t`'s memory: without a copy when `t` is a contiguous CPU tensor,
    /// otherwise on a contiguous CPU copy.
    pub fn with_candle_view<R>(t: &candle_core::Tensor, f: impl FnOnce(TensorView<'_>) -> R) -> Result<R> {
        if !t.device().is_cpu() || !t.is_contiguous() {
            let cpu = t
                .to_device(&Device::Cpu)
                .and_then(|c| c.contiguous())
                .map_err(|e| candle_error("copying a candle tensor to the CPU", e))?;
            return Tensor::with_candle_view(&cpu, f);
        }
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "a contiguous candle tensor has no contiguous offsets"))?;
        let Storage::Cpu(cpu) = &*storage else {
            return Err(Error::new(ErrorKind::Internal, "a CPU candle tensor without CPU storage"));
        };
        let shape = t.dims();
        let (dtype, bytes): (super::DType, &[u8]) = match cpu {
            CpuStorage::F32(v) => (super::DType::F32, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::F16(v) => (super::DType::F16, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::BF16(v) => (super::DType::BF16, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::F64(v) => (super::DType::F64, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::I64(v) => (super::DType::I64, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::I32(v) => (super::DType::I32, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::I16(v) => (super::DType::I16, bytemuck::cast_slice(&v[start..end])),
            CpuStorage::U8(v) => (super::DType::U8, &v[start..end]),
            CpuStorage::U32(v) => {
                let wide: Vec<i64> = v[start..end].iter().map(|&x| i64::from(x)).collect();
                let view = TensorView::new(super::DType::I64, shape, bytemuck::cast_slice(&wide))?;
                return Ok(f(view));
            }
            other => {
                return Err(Error::invalid_argument(format!(
                    "candle dtype {:?} has no hivemind equivalent",
                    other.dtype()
                )))
            }
        };
        Ok(f(TensorView::new(dtype, shape, bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn into_candle_moves_cpu_storage_and_round_trips() {
        let t = Tensor::new(vec![2, 3], Data::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).unwrap();
        let moved = t.clone();
        let ptr = moved.as_bytes().as_ptr();
        let c = moved.into_candle(&Device::Cpu).unwrap();
        assert_eq!(c.dims(), &[2, 3]);
        let same_memory = Tensor::with_candle_view(&c, |v| v.bytes().as_ptr() == ptr).unwrap();
        assert!(same_memory, "the Vec moved into candle without a copy");
        assert_eq!(Tensor::from_candle(&c).unwrap(), t);
        // A transposed (non-contiguous) tensor is viewed through a contiguous copy.
        let tt = Tensor::from_candle(&c.t().unwrap()).unwrap();
        assert_eq!(tt.shape(), &[3, 2]);
        assert_eq!(tt.data(), &Data::F32(vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
    }

    #[test]
    fn bool_and_int8_widen_for_candle() {
        let b = Tensor::from_bytes(DType::Bool, vec![2], &[1, 0]).unwrap().into_candle(&Device::Cpu).unwrap();
        assert_eq!(b.dtype(), candle_core::DType::U8);
        let i = Tensor::new(vec![2], Data::I8(vec![-3, 4])).unwrap().into_candle(&Device::Cpu).unwrap();
        assert_eq!(i.to_vec1::<i16>().unwrap(), vec![-3, 4]);
    }
}
