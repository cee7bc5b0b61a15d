//! The DHT through the C ABI. Keys, subkeys and values cross as msgpack bytes in hivemind's
//! `MSGPackSerializer` format (tuples are ext type 0x40), so any msgpack library can build them.

use kwaai_core::dht::{DhtValue, StoreItem};
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
        *out = to_result(node_of(node)?.dht_get(key, latest)?);
        Ok(())
    })
}

/// Converts a core result into its C form (the value is allocated for `kwaai_dht_result_free`).
fn to_result(found: Option<DhtValue>) -> kwaai_dht_result {
    let (is_dictionary, expiration, value) = match found {
        None => {
            return kwaai_dht_result {
                found: false,
                is_dictionary: false,
                expiration: 0.0,
                value: std::ptr::null_mut(),
                value_len: 0,
            };
        }
        Some(DhtValue::Regular { value, expiration }) => (false, expiration, value),
        Some(DhtValue::Dictionary { entries, expiration }) => {
            let items =
                entries.into_iter().map(|e| Value::Array(vec![e.subkey, e.value, Value::F64(e.expiration)])).collect();
            (true, expiration, Value::Array(items))
        }
    };
    let bytes = msgpack::pack(&value).into_boxed_slice();
    let value_len = bytes.len();
    let value = Box::into_raw(bytes).cast::<u8>();
    kwaai_dht_result { found: true, is_dictionary, expiration, value, value_len }
}

/// Stores several items: `items` is a msgpack array of `[key, subkey or nil, value, expiration]`
/// arrays; one flag per item is written to `out_stored`, which has room for `count` flags and
/// `count` must equal the number of items.
///
/// # Safety
/// `items` must point to `items_len` bytes and `out_stored` to `count` writable flags.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_dht_store_many(
    node: *mut kwaai_node,
    items: *const u8,
    items_len: usize,
    out_stored: *mut bool,
    count: usize,
) -> kwaai_status {
    ffi_call(|| {
        let Value::Array(list) = msgpack_arg(items, items_len, "items")? else {
            return Err(Error::invalid_argument("`items` must be a msgpack array"));
        };
        let items = list
            .into_iter()
            .map(|item| match item {
                Value::Array(fields) => match <[Value; 4]>::try_from(fields) {
                    Ok([key, subkey, value, expiration]) => Ok(StoreItem {
                        key,
                        subkey: (subkey != Value::Nil).then_some(subkey),
                        value,
                        expiration: expiration
                            .as_f64()
                            .ok_or_else(|| Error::invalid_argument("an item's expiration is not a number"))?,
                    }),
                    Err(_) => Err(Error::invalid_argument("each item is [key, subkey or nil, value, expiration]")),
                },
                _ => Err(Error::invalid_argument("each item is [key, subkey or nil, value, expiration]")),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if items.len() != count || out_stored.is_null() {
            return Err(Error::invalid_argument(format!("{} items but room for {count} flags", items.len())));
        }
        let stored = node_of(node)?.dht_store_many(items)?;
        std::slice::from_raw_parts_mut(out_stored, count).copy_from_slice(&stored);
        Ok(())
    })
}

/// Reads several keys: `keys` is a msgpack array of keys; one result per key is written to
/// `out_results`, which has room for `count` results (`count` must equal the number of keys).
/// Free each result with `kwaai_dht_result_free`.
///
/// # Safety
/// `keys` must point to `keys_len` bytes and `out_results` to `count` writable results.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_dht_get_many(
    node: *mut kwaai_node,
    keys: *const u8,
    keys_len: usize,
    latest: bool,
    out_results: *mut kwaai_dht_result,
    count: usize,
) -> kwaai_status {
    ffi_call(|| {
        let Value::Array(keys) = msgpack_arg(keys, keys_len, "keys")? else {
            return Err(Error::invalid_argument("`keys` must be a msgpack array"));
        };
        if keys.len() != count || out_results.is_null() {
            return Err(Error::invalid_argument(format!("{} keys but room for {count} results", keys.len())));
        }
        let found = node_of(node)?.dht_get_many(keys, latest)?;
        for (i, result) in found.into_iter().enumerate() {
            out_results.add(i).write(to_result(result));
        }
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
