//! The DHT through the C ABI. Keys, subkeys and values cross as msgpack bytes in hivemind's
//! `MSGPackSerializer` format (tuples are ext type 0x40), so any msgpack library can build them.

use kwaai_core::dht::DhtValue;
use kwaai_core::wire::msgpack;
use kwaai_core::Error;
use rmpv::Value;

use crate::error::{ffi_call, kwaai_status};
use crate::node::{kwaai_node, node_of};
use crate::strings::out_arg;

/// What `kwaai_node_dht_get` found. Free the value with `kwaai_dht_result_free`.
#[repr(C)]
pub struct kwaai_dht_result {
    /// Whether the key holds an unexpired value.
    pub found: bool,
    /// Whether it is a dictionary (written with subkeys).
    pub is_dictionary: bool,
    /// Its expiration in DHT time (Unix seconds); for a dictionary, the latest of its entries.
    pub expiration: f64,
    /// msgpack of the value; for a dictionary, an array of `[subkey, value, expiration]` arrays.
    pub value: *mut u8,
    /// Length of `value` in bytes.
    pub value_len: usize,
}

/// Reads `len` bytes at `ptr` (NULL is allowed only with `len == 0`) and decodes them as msgpack.
///
/// # Safety
/// `ptr` must point to `len` readable bytes.
unsafe fn msgpack_arg(ptr: *const u8, len: usize, name: &str) -> Result<Value, Error> {
    let bytes = if len == 0 {
        &[][..]
    } else if ptr.is_null() {
        return Err(Error::invalid_argument(format!("`{name}` is NULL but its length is {len}")));
    } else {
        std::slice::from_raw_parts(ptr, len)
    };
    msgpack::unpack(bytes).map_err(|e| Error::invalid_argument(format!("`{name}` is not msgpack: {}", e.message())))
}

/// Stores a value in the DHT until `expiration` (Unix seconds) and writes to `out_stored` whether a
/// replica accepted it. `key`, `subkey` and `value` are msgpack; `subkey` may be NULL (no subkey).
///
/// # Safety
/// Each pointer must be NULL or point to its stated number of bytes; `out_stored` must be writable.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_dht_store(
    node: *mut kwaai_node,
    key: *const u8,
    key_len: usize,
    subkey: *const u8,
    subkey_len: usize,
    value: *const u8,
    value_len: usize,
    expiration: f64,
    out_stored: *mut bool,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out_stored, "out_stored")?;
        let key = msgpack_arg(key, key_len, "key")?;
        let subkey = if subkey.is_null() { None } else { Some(msgpack_arg(subkey, subkey_len, "subkey")?) };
        let value = msgpack_arg(value, value_len, "value")?;
        *out = node_of(node)?.dht_store(key, subkey, value, expiration)?;
        Ok(())
    })
}

/// Reads `key` (msgpack) from the DHT into `out`; `latest` searches the whole swarm for the newest
/// value. `out->found` is false when the key holds nothing.
///
/// # Safety
/// `key` must point to `key_len` bytes; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_dht_get(
    node: *mut kwaai_node,
    key: *const u8,
    key_len: usize,
    latest: bool,
    out: *mut kwaai_dht_result,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let key = msgpack_arg(key, key_len, "key")?;
        let found = node_of(node)?.dht_get(key, latest)?;
        let (is_dictionary, expiration, value) = match found {
            None => {
                *out = kwaai_dht_result {
                    found: false,
                    is_dictionary: false,
                    expiration: 0.0,
                    value: std::ptr::null_mut(),
                    value_len: 0,
                };
                return Ok(());
            }
            Some(DhtValue::Regular { value, expiration }) => (false, expiration, value),
            Some(DhtValue::Dictionary { entries, expiration }) => {
                let items = entries
                    .into_iter()
                    .map(|e| Value::Array(vec![e.subkey, e.value, Value::F64(e.expiration)]))
                    .collect();
                (true, expiration, Value::Array(items))
            }
        };
        let bytes = msgpack::pack(&value).into_boxed_slice();
        let value_len = bytes.len();
        let value = Box::into_raw(bytes).cast::<u8>();
        *out = kwaai_dht_result { found: true, is_dictionary, expiration, value, value_len };
        Ok(())
    })
}

/// Frees the value of a result filled by `kwaai_node_dht_get` and resets it. NULL is ignored.
///
/// # Safety
/// `result` must be NULL or a result filled by `kwaai_node_dht_get`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kwaai_dht_result_free(result: *mut kwaai_dht_result) {
    let Some(result) = result.as_mut() else { return };
    if !result.value.is_null() {
        let slice = std::ptr::slice_from_raw_parts_mut(result.value, result.value_len);
        drop(Box::from_raw(slice));
    }
    result.value = std::ptr::null_mut();
    result.value_len = 0;
    result.found = false;
}
