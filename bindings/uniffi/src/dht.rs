//! The DHT on `Node`. Keys, subkeys and values cross as msgpack bytes in hivemind's format (as in
//! the C ABI), so any msgpack library on the host side can build and read them.

use kwaai_core::dht::DhtValue;
use kwaai_core::wire::msgpack;
use rmpv::Value;

use crate::error::KwaaiError;
use crate::node::Node;

/// What `Node.dhtGet` found.
#[derive(uniffi::Record, Debug, PartialEq)]
pub struct DhtRecord {
    /// msgpack of the value; for a dictionary, an array of `[subkey, value, expiration]` arrays.
    pub value: Vec<u8>,
    /// Its expiration in DHT time (Unix seconds); for a dictionary, the latest of its entries.
    pub expiration: f64,
    /// Whether it is a dictionary (written with subkeys).
    pub is_dictionary: bool,
}

fn unpack(bytes: &[u8], name: &str) -> Result<Value, KwaaiError> {
    msgpack::unpack(bytes)
        .map_err(|e| KwaaiError::InvalidArgument { message: format!("`{name}` is not msgpack: {}", e.message()) })
}

#[uniffi::export]
impl Node {
    /// Stores msgpack `value` under msgpack `key` (and `subkey`, which makes the key a dictionary)
    /// until `expiration` (Unix seconds); returns whether a replica accepted it.
    #[uniffi::method(default(subkey = None))]
    pub fn dht_store(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expiration: f64,
        subkey: Option<Vec<u8>>,
    ) -> Result<bool, KwaaiError> {
        let subkey = subkey.map(|s| unpack(&s, "subkey")).transpose()?;
        Ok(self.core().dht_store(unpack(&key, "key")?, subkey, unpack(&value, "value")?, expiration)?)
    }

    /// Reads msgpack `key`; `latest` searches the whole swarm for the newest value. None when
    /// nothing unexpired is stored.
    #[uniffi::method(default(latest = true))]
    pub fn dht_get(&self, key: Vec<u8>, latest: bool) -> Result<Option<DhtRecord>, KwaaiError> {
        Ok(self.core().dht_get(unpack(&key, "key")?, latest)?.map(|found| match found {
            DhtValue::Regular { value, expiration } => {
                DhtRecord { value: msgpack::pack(&value), expiration, is_dictionary: false }
            }
            DhtValue::Dictionary { entries, expiration } => {
                let items = entries
                    .into_iter()
                    .map(|e| Value::Array(vec![e.subkey, e.value, Value::F64(e.expiration)]))
                    .collect();
                DhtRecord { value: msgpack::pack(&Value::Array(items)), expiration, is_dictionary: true }
            }
        }))
    }
}
