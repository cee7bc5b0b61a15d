//! The names hivemind's DHT stores records under: key IDs and subkey bytes.

use kwaai_core::dht::DhtId;
use kwaai_core::wire::msgpack;
use rmpv::Value;
use wasm_bindgen::prelude::*;

/// The 20-byte DHT ID of a string key, the ID peers store and look it up under: SHA-1 of the
/// key's msgpack encoding (hivemind's `DHTID.generate(key)`).
#[wasm_bindgen(js_name = dhtKeyId)]
pub fn dht_key_id(key: &str) -> Vec<u8> {
    DhtId::of_key(&Value::from(key)).as_bytes().to_vec()
}

/// The bytes a string subkey travels as in a DHT store or find (its msgpack encoding). Petals
/// servers announce a block under the subkey of their peer ID.
#[wasm_bindgen(js_name = dhtSubkey)]
pub fn dht_subkey(subkey: &str) -> Vec<u8> {
    msgpack::pack(&Value::from(subkey))
}

/// The XOR distance between two 20-byte DHT IDs, itself 20 bytes (big-endian); lookups go to
/// the peers nearest a key by this distance.
#[wasm_bindgen(js_name = dhtDistance)]
pub fn dht_distance(a: &[u8], b: &[u8]) -> Result<Vec<u8>, JsError> {
    let a = DhtId::from_slice(a).map_err(crate::js_error)?;
    let b = DhtId::from_slice(b).map_err(crate::js_error)?;
    Ok(a.distance(&b).as_bytes().to_vec())
}
