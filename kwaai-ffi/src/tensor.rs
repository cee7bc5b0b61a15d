//! Tensors through the C ABI, and pushing them between peers.

use std::ffi::CString;
use std::os::raw::{c_char, c_void};
use std::time::Duration;

use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, Error, ErrorKind, PeerId};

use crate::callbacks::UserData;
use crate::error::{ffi_call, kwaai_status};
use crate::handles::Registry;
use crate::node::{kwaai_node, node_and_tensor_gate, node_of};
use crate::strings::{out_arg, str_arg};

pub(crate) static TENSORS: Registry = Registry::new("tensor");

/// Element types. The numeric values are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kwaai_dtype {
    /// IEEE binary32.
    F32 = 0,
    /// IEEE binary16.
    F16 = 1,
    /// bfloat16.
    Bf16 = 2,
    /// IEEE binary64.
    F64 = 3,
    /// Signed 64-bit integer.
    I64 = 4,
    /// Signed 32-bit integer.
    I32 = 5,
    /// Signed 16-bit integer.
    I16 = 6,
    /// Signed 8-bit integer.
    I8 = 7,
    /// Unsigned 8-bit integer.
    U8 = 8,
    /// Boolean, one byte per element (0 or 1).
    Bool = 9,
}

impl From<kwaai_dtype> for DType {
    fn from(dtype: kwaai_dtype) -> DType {
        match dtype {
            kwaai_dtype::F32 => DType::F32,
            kwaai_dtype::F16 => DType::F16,
            kwaai_dtype::Bf16 => DType::BF16,
            kwaai_dtype::F64 => DType::F64,
            kwaai_dtype::I64 => DType::I64,
            kwaai_dtype::I32 => DType::I32,
            kwaai_dtype::I16 => DType::I16,
            kwaai_dtype::I8 => DType::I8,
            kwaai_dtype::U8 => DType::U8,
            kwaai_dtype::Bool => DType::Bool,
        }
    }
}

fn c_dtype(dtype: DType) -> kwaai_dtype {
    match dtype {
        DType::F32 => kwaai_dtype::F32,
        DType::F16 => kwaai_dtype::F16,
        DType::BF16 => kwaai_dtype::Bf16,
        DType::F64 => kwaai_dtype::F64,
        DType::I64 => kwaai_dtype::I64,
        DType::I32 => kwaai_dtype::I32,
        DType::I16 => kwaai_dtype::I16,
        DType::I8 => kwaai_dtype::I8,
        DType::U8 => kwaai_dtype::U8,
        DType::Bool => kwaai_dtype::Bool,
    }
}

/// A tensor owned by the library: an element type, a shape and its elements (row-major,
/// little-endian). Read-only once created; free it with `kwaai_tensor_free`.
pub struct kwaai_tensor {
    pub(crate) tensor: Tensor,
}

/// Reads `len` elements at `ptr` (NULL only with `len == 0`).
///
/// # Safety
/// `ptr` must point to `len` readable elements.
pub(crate) unsafe fn slice_arg<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T], Error> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(Error::invalid_argument(format!("`{name}` is NULL but its length is {len}")))
    } else {
        Ok(std::slice::from_raw_parts(ptr, len))
    }
}

/// Creates a tensor of `dtype` and shape `shape[0..ndim]` by copying `data_len` bytes from
/// `data`; `data_len` must equal the product of the shape times the element size (a mismatch is
/// KWAAI_STATUS_INVALID_ARGUMENT), and booleans must be 0 or 1.
///
/// # Safety
/// `shape` must point to `ndim` sizes and `data` to `data_len` bytes (either NULL when its length is 0).
#[no_mangle]
pub unsafe extern "C" fn kwaai_tensor_new(
    dtype: kwaai_dtype,
    shape: *const usize,
    ndim: usize,
    data: *const c_void,
    data_len: usize,
    out: *mut *mut kwaai_tensor,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let shape = slice_arg(shape, ndim, "shape")?.to_vec();
        let bytes = slice_arg(data.cast::<u8>(), data_len, "data")?;
        let tensor = Tensor::from_bytes(dtype.into(), shape, bytes)?;
        *out = TENSORS.insert(kwaai_tensor { tensor });
        Ok(())
    })
}

/// Writes the tensor's element type to `out`.
#[no_mangle]
pub extern "C" fn kwaai_tensor_dtype(tensor: *mut kwaai_tensor, out: *mut kwaai_dtype) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = TENSORS.with(tensor, |t| c_dtype(t.tensor.dtype()))?;
        Ok(())
    })
}

/// Writes the number of dimensions to `out`.
#[no_mangle]
pub extern "C" fn kwaai_tensor_ndim(tensor: *mut kwaai_tensor, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = TENSORS.with(tensor, |t| t.tensor.shape().len())?;
        Ok(())
    })
}

/// Writes the size of dimension `index` to `out`; an index past the last dimension is
/// KWAAI_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn kwaai_tensor_dim(tensor: *mut kwaai_tensor, index: usize, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let dims = TENSORS.with(tensor, |t| t.tensor.shape().to_vec())?;
        *out = *dims
            .get(index)
            .ok_or_else(|| Error::invalid_argument(format!("dimension {index} of a {}-d tensor", dims.len())))?;
        Ok(())
    })
}

/// Writes a pointer to the tensor's bytes and their count to `out_data` and `out_len`. The bytes
/// belong to the tensor: they stay valid, unchanged, until `kwaai_tensor_free`.
#[no_mangle]
pub extern "C" fn kwaai_tensor_data(
    tensor: *mut kwaai_tensor,
    out_data: *mut *const c_void,
    out_len: *mut usize,
) -> kwaai_status {
    ffi_call(|| {
        let out_data = out_arg(out_data, "out_data")?;
        let out_len = out_arg(out_len, "out_len")?;
        // The boxed tensor is never mutated or moved while its handle lives.
        let (ptr, len) = TENSORS.with(tensor, |t| (t.tensor.as_bytes().as_ptr(), t.tensor.as_bytes().len()))?;
        *out_data = ptr.cast();
        *out_len = len;
        Ok(())
    })
}

/// Frees a tensor. NULL is ignored; a freed or foreign handle is KWAAI_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn kwaai_tensor_free(tensor: *mut kwaai_tensor) -> kwaai_status {
    ffi_call(|| {
        if !tensor.is_null() && TENSORS.remove(tensor).is_none() {
            return Err(Error::invalid_argument("tensor handle is freed or not from this library"));
        }
        Ok(())
    })
}

/// Sends `tensor` under `name` to the peer whose base58 ID is `peer_id`, waiting up to
/// `timeout_ms` until the peer's tensor handler took it (the node dials the peer if needed). A
/// peer without a handler, or whose handler refused, gives KWAAI_STATUS_PROTOCOL. `tensor` stays
/// owned by the caller.
///
/// # Safety
/// `peer_id` and `name` must be NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_push_tensor(
    node: *mut kwaai_node,
    peer_id: *const c_char,
    name: *const c_char,
    tensor: *mut kwaai_tensor,
    timeout_ms: u64,
) -> kwaai_status {
    ffi_call(|| push(node, peer_id, name, tensor, Compression::default(), timeout_ms))
}

/// How `kwaai_node_push_tensor_compressed` compresses a tensor. Values 0 to 5 are hivemind's
/// CompressionType codecs; the last two keep an error-feedback residual per (peer, name) in the
/// sending node. The numeric values are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kwaai_compression {
    /// No compression.
    None = 0,
    /// hivemind MEANSTD_16BIT.
    Meanstd16bit = 1,
    /// hivemind FLOAT16.
    Float16 = 2,
    /// hivemind QUANTILE_8BIT.
    Quantile8bit = 3,
    /// hivemind UNIFORM_8BIT.
    Uniform8bit = 4,
    /// hivemind BLOCKWISE_8BIT.
    Blockwise8bit = 5,
    /// BLOCKWISE_8BIT with error feedback (float tensors).
    Blockwise8bitFeedback = 100,
    /// The `k` largest entries, with error feedback (float tensors).
    TopK = 101,
}

fn compression_of(compression: kwaai_compression, k: usize) -> Compression {
    use kwaai_core::tensor::CompressionType as C;
    let codec = match compression {
        kwaai_compression::None => C::None,
        kwaai_compression::Meanstd16bit => C::Meanstd16bit,
        kwaai_compression::Float16 => C::Float16,
        kwaai_compression::Quantile8bit => C::Quantile8bit,
        kwaai_compression::Uniform8bit => C::Uniform8bit,
        kwaai_compression::Blockwise8bit => C::Blockwise8bit,
        kwaai_compression::Blockwise8bitFeedback => return Compression::Blockwise8bitFeedback,
        kwaai_compression::TopK => return Compression::TopK { k },
    };
    Compression::Codec(codec)
}

/// Like `kwaai_node_push_tensor`, compressed as `compression` says (`k`: entries sent by
/// KWAAI_COMPRESSION_TOP_K, ignored otherwise). Error feedback on a non-float tensor, or on a
/// tensor whose element count changed under the same name, gives KWAAI_STATUS_INVALID_ARGUMENT.
///
/// # Safety
/// `peer_id` and `name` must be NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_push_tensor_compressed(
    node: *mut kwaai_node,
    peer_id: *const c_char,
    name: *const c_char,
    tensor: *mut kwaai_tensor,
    compression: kwaai_compression,
    k: usize,
    timeout_ms: u64,
) -> kwaai_status {
    ffi_call(|| push(node, peer_id, name, tensor, compression_of(compression, k), timeout_ms))
}

unsafe fn push(
    node: *mut kwaai_node,
    peer_id: *const c_char,
    name: *const c_char,
    tensor: *mut kwaai_tensor,
    compression: Compression,
    timeout_ms: u64,
) -> kwaai_core::Result<()> {
    let peer: PeerId = str_arg(peer_id, "peer_id")?
        .parse()
        .map_err(|e| Error::invalid_argument(format!("`peer_id` is not a peer ID: {e}")))?;
    let name = str_arg(name, "name")?;
    let tensor = TENSORS.with(tensor, |t| t.tensor.clone())?;
    node_of(node)?.push_tensor(peer, name, &tensor, compression, Duration::from_millis(timeout_ms))
}

/// Receives a pushed tensor. Runs on one of the node's threads; it must return quickly and must
/// not call kwaai_node_* functions (tensor and string functions are fine). `peer_id` and `name`
/// are valid during the call only. The tensor is the host's: free it with `kwaai_tensor_free`.
/// Return true to accept it; false makes the sender's push fail.
pub type kwaai_tensor_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        peer_id: *const c_char,
        name: *const c_char,
        tensor: *mut kwaai_tensor,
    ) -> bool,
>;

/// A non-NULL `kwaai_tensor_callback`.
pub(crate) type TensorCallback = unsafe extern "C" fn(
    user_data: *mut c_void,
    peer_id: *const c_char,
    name: *const c_char,
    tensor: *mut kwaai_tensor,
) -> bool;

/// Calls `callback(user_data, ...)` for every tensor a peer pushes to this node, replacing an
/// earlier handler; tensors over 2^30 elements are refused. `user_data` must stay valid until
/// `kwaai_node_clear_tensor_handler`, `kwaai_node_shutdown` or `kwaai_node_free` returns: after
/// that the callback is never called again.
#[no_mangle]
pub extern "C" fn kwaai_node_set_tensor_handler(
    node: *mut kwaai_node,
    callback: kwaai_tensor_callback,
    user_data: *mut c_void,
) -> kwaai_status {
    ffi_call(|| {
        let callback = callback.ok_or_else(|| Error::invalid_argument("`callback` is NULL"))?;
        let (node, gate) = node_and_tensor_gate(node)?;
        gate.set(Some((callback, UserData(user_data))));
        node.set_tensor_handler(DecodeLimits::default(), move |received| {
            let peer = CString::new(received.peer.to_base58()).expect("base58 has no NUL");
            let name =
                CString::new(received.name).map_err(|_| Error::invalid_argument("a tensor name with a NUL byte"))?;
            let tensor = received.tensor;
            let accepted = gate.call(|callback, user_data| {
                let handle = TENSORS.insert(kwaai_tensor { tensor });
                // SAFETY: the host gave this callback for these arguments; the strings outlive the call.
                unsafe { callback(user_data.0, peer.as_ptr(), name.as_ptr(), handle) }
            });
            match accepted {
                Some(true) => Ok(()),
                Some(false) => Err(Error::invalid_argument("the receiving host refused the tensor")),
                None => Err(Error::new(ErrorKind::Closed, "the receiving host stopped taking tensors")),
            }
        })
    })
}

/// Stops receiving pushed tensors. Once it returns, the callback is not running and is never
/// called again.
#[no_mangle]
pub extern "C" fn kwaai_node_clear_tensor_handler(node: *mut kwaai_node) -> kwaai_status {
    ffi_call(|| {
        let (node, gate) = node_and_tensor_gate(node)?;
        gate.set(None);
        node.clear_tensor_handler().map(drop)
    })
}
