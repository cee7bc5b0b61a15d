//! Local DHT storage with hivemind's rules: absolute expirations in DHT time, a write wins only
//! with a strictly later expiration, and dictionary values whose subkeys expire independently.
//!
//! Time is passed in explicitly (`now`), so the rules are testable without waiting.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;
use rmpv::Value;

use super::id::DhtId;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::msgpack::{self, DICTIONARY_EXT};

/// DHT time: Unix time in float seconds, as hivemind's `get_dht_time()`.
pub type DhtTime = f64;

/// The current DHT time.
pub fn dht_time() -> DhtTime {
    web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One subkey's entry in a [`DictionaryValue`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubkeyEntry {
    /// The subkey as a msgpack value (a peer ID string in Petals records).
    pub subkey: Value,
    /// The serialized value.
    pub value: Vec<u8>,
    /// When this entry expires.
    pub expiration: DhtTime,
}

/// A dictionary value (`DictionaryDHTValue`): subkeys with their own values and expirations.
#[derive(Clone, Debug, PartialEq)]
pub struct DictionaryValue {
    /// Keyed by the subkey's msgpack encoding; insertion-ordered like a Python dict.
    entries: IndexMap<Vec<u8>, SubkeyEntry>,
    latest_expiration: DhtTime,
}

impl Default for DictionaryValue {
    fn default() -> Self {
        DictionaryValue { entries: IndexMap::new(), latest_expiration: f64::NEG_INFINITY }
    }
}

impl DictionaryValue {
    /// Adds or updates a subkey: refused if already expired at `now`, or if the subkey holds an
    /// entry that expires no earlier.
    pub fn store(&mut self, subkey: Value, value: Vec<u8>, expiration: DhtTime, now: DhtTime) -> bool {
        self.latest_expiration = self.latest_expiration.max(expiration);
        if expiration < now {
            return false;
        }
        self.purge(now);
        let packed = msgpack::pack(&subkey);
        match self.entries.get_mut(&packed) {
            Some(entry) if entry.expiration >= expiration => false,
            Some(entry) => {
                *entry = SubkeyEntry { subkey, value, expiration };
                true
            }
            None => {
                self.entries.insert(packed, SubkeyEntry { subkey, value, expiration });
                true
            }
        }
    }

    /// The latest expiration ever stored here (the dictionary's own expiration).
    pub fn latest_expiration(&self) -> DhtTime {
        self.latest_expiration
    }

    /// The entries still alive at `now`, in insertion order.
    pub fn entries(&self, now: DhtTime) -> impl Iterator<Item = &SubkeyEntry> {
        self.entries.values().filter(move |e| e.expiration >= now)
    }

    /// The entry of `subkey` if it is alive at `now`.
    pub fn get(&self, subkey: &Value, now: DhtTime) -> Option<&SubkeyEntry> {
        self.entries.get(&msgpack::pack(subkey)).filter(|e| e.expiration >= now)
    }

    fn purge(&mut self, now: DhtTime) {
        self.entries.retain(|_, e| e.expiration >= now);
    }

    /// hivemind's encoding: `Ext(0x50, msgpack([maxsize, latest_expiration, [[subkey, value, expiration], ...]]))`
    /// with the entries alive at `now` (maxsize is `inf`: unbounded).
    pub fn to_msgpack(&self, now: DhtTime) -> Value {
        let items = self
            .entries(now)
            .map(|e| Value::Array(vec![e.subkey.clone(), Value::Binary(e.value.clone()), Value::F64(e.expiration)]))
            .collect();
        let body =
            Value::Array(vec![Value::F64(f64::INFINITY), Value::F64(self.latest_expiration), Value::Array(items)]);
        Value::Ext(DICTIONARY_EXT, msgpack::pack(&body))
    }

    /// Decodes hivemind's encoding (the whole ext value, as `FindResult.value` carries it). Every
    /// entry is kept, expired or not, as hivemind does while unpacking.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::new(ErrorKind::Protocol, format!("bad dictionary value: {why}"));
        let Value::Ext(DICTIONARY_EXT, body) = msgpack::unpack(bytes)? else {
            return Err(bad("not ext type 0x50"));
        };
        let Value::Array(fields) = msgpack::unpack(&body)? else { return Err(bad("body is not a list")) };
        let [_maxsize, latest, Value::Array(items)] = fields.as_slice() else {
            return Err(bad("expected [maxsize, latest_expiration, items]"));
        };
        let mut dictionary = DictionaryValue {
            entries: IndexMap::new(),
            latest_expiration: as_f64(latest).ok_or_else(|| bad("latest_expiration"))?,
        };
        for item in items {
            let Value::Array(parts) = item else { return Err(bad("item is not a list")) };
            let [subkey, Value::Binary(value), expiration] = parts.as_slice() else {
                return Err(bad("item is not [subkey, bytes, expiration]"));
            };
            let expiration = as_f64(expiration).ok_or_else(|| bad("item expiration"))?;
            let entry = SubkeyEntry { subkey: subkey.clone(), value: value.clone(), expiration };
            match dictionary.entries.get(&msgpack::pack(subkey)) {
                Some(existing) if existing.expiration >= expiration => {}
                _ => {
                    dictionary.entries.insert(msgpack::pack(subkey), entry);
                }
            }
        }
        Ok(dictionary)
    }
}

/// A msgpack number as f64 (hivemind writes float64, but integers are numbers too).
fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::F64(x) => Some(*x),
        Value::F32(x) => Some(f64::from(*x)),
        Value::Integer(i) => i.as_f64(),
        _ => None,
    }
}

/// What a key holds: a regular serialized value or a dictionary.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredValue {
    /// A serialized value (msgpack bytes, possibly signed).
    Regular(Vec<u8>),
    /// A dictionary of subkeys.
    Dictionary(DictionaryValue),
}

/// A stored value and its expiration.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    /// The value.
    pub value: StoredValue,
    /// When it expires.
    pub expiration: DhtTime,
}

/// Orders expirations totally so they can index a `BTreeSet`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Expiration(DhtTime);

impl Eq for Expiration {}
impl PartialOrd for Expiration {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Expiration {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A node's key-value store (`DHTLocalStorage`), bounded by `max_entries`: when full, the entry
/// that expires first is evicted.
#[derive(Debug)]
pub struct LocalStorage {
    data: HashMap<DhtId, StoredEntry>,
    by_expiration: BTreeSet<(Expiration, DhtId)>,
    max_entries: usize,
}

impl LocalStorage {
    /// An empty storage holding at most `max_entries` keys.
    pub fn new(max_entries: usize) -> Self {
        LocalStorage { data: HashMap::new(), by_expiration: BTreeSet::new(), max_entries: max_entries.max(1) }
    }

    /// Stores a regular value; `true` if it was accepted (not expired, and strictly newer than
    /// what the key holds).
    pub fn store(&mut self, key: DhtId, value: Vec<u8>, expiration: DhtTime, now: DhtTime) -> bool {
        self.put(key, StoredValue::Regular(value), expiration, now)
    }

    /// Stores a whole value (regular or dictionary) under `key`, as hivemind caches what a search
    /// found; `true` if accepted (not expired, and strictly newer than what the key holds).
    pub fn store_entry(&mut self, key: DhtId, value: StoredValue, expiration: DhtTime, now: DhtTime) -> bool {
        self.put(key, value, expiration, now)
    }

    /// Stores one subkey of a dictionary value, creating the dictionary if the key is empty or
    /// holds an older regular value; `true` if the subkey entry was accepted.
    pub fn store_subkey(
        &mut self,
        key: DhtId,
        subkey: Value,
        value: Vec<u8>,
        expiration: DhtTime,
        now: DhtTime,
    ) -> bool {
        self.purge(now);
        match self.data.get_mut(&key) {
            Some(StoredEntry { value: StoredValue::Dictionary(dictionary), expiration: outer }) => {
                let accepted = dictionary.store(subkey, value, expiration, now);
                if expiration > *outer && expiration >= now {
                    let old = *outer;
                    *outer = expiration;
                    self.by_expiration.remove(&(Expiration(old), key));
                    self.by_expiration.insert((Expiration(expiration), key));
                }
                accepted
            }
            Some(StoredEntry { expiration: outer, .. }) if *outer >= expiration => false,
            _ => {
                let mut dictionary = DictionaryValue::default();
                dictionary.store(subkey, value, expiration, now);
                let latest = dictionary.latest_expiration();
                self.put(key, StoredValue::Dictionary(dictionary), latest, now)
            }
        }
    }

    fn put(&mut self, key: DhtId, value: StoredValue, expiration: DhtTime, now: DhtTime) -> bool {
        if expiration < now {
            return false;
        }
        self.purge(now);
        if let Some(old) = self.data.get(&key) {
            if old.expiration >= expiration {
                return false;
            }
            self.by_expiration.remove(&(Expiration(old.expiration), key));
        }
        self.data.insert(key, StoredEntry { value, expiration });
        self.by_expiration.insert((Expiration(expiration), key));
        while self.data.len() > self.max_entries {
            let Some((_, victim)) = self.by_expiration.pop_first() else { break };
            self.data.remove(&victim);
        }
        true
    }

    /// The entry of `key` if it is alive at `now`.
    pub fn get(&mut self, key: &DhtId, now: DhtTime) -> Option<&StoredEntry> {
        self.purge(now);
        self.data.get(key)
    }

    /// Every entry alive at `now`.
    pub fn iter(&mut self, now: DhtTime) -> impl Iterator<Item = (&DhtId, &StoredEntry)> {
        self.purge(now);
        self.data.iter()
    }

    /// Keys alive at `now`.
    pub fn len(&mut self, now: DhtTime) -> usize {
        self.purge(now);
        self.data.len()
    }

    /// Whether nothing is alive at `now`.
    pub fn is_empty(&mut self, now: DhtTime) -> bool {
        self.len(now) == 0
    }

    /// Drops every entry that expired before `now`.
    fn purge(&mut self, now: DhtTime) {
        while let Some(&(Expiration(expiration), key)) = self.by_expiration.first() {
            if expiration >= now {
                break;
            }
            self.by_expiration.pop_first();
            self.data.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_000.0;

    fn key(n: u8) -> DhtId {
        DhtId::of_bytes(&[n])
    }

    #[test]
    fn a_write_wins_only_with_a_strictly_later_expiration() {
        let mut s = LocalStorage::new(100);
        assert!(s.store(key(1), b"a".to_vec(), NOW + 10.0, NOW));
        assert!(!s.store(key(1), b"b".to_vec(), NOW + 10.0, NOW), "equal expiration loses");
        assert!(!s.store(key(1), b"c".to_vec(), NOW + 5.0, NOW), "older loses");
        assert!(s.store(key(1), b"d".to_vec(), NOW + 11.0, NOW));
        assert_eq!(s.get(&key(1), NOW).unwrap().value, StoredValue::Regular(b"d".to_vec()));
        assert!(!s.store(key(2), b"x".to_vec(), NOW - 1.0, NOW), "already expired");
    }

    #[test]
    fn entries_expire() {
        let mut s = LocalStorage::new(100);
        s.store(key(1), b"a".to_vec(), NOW + 10.0, NOW);
        assert!(s.get(&key(1), NOW + 10.0).is_some());
        assert!(s.get(&key(1), NOW + 10.5).is_none());
        assert!(s.is_empty(NOW + 10.5));
    }

    #[test]
    fn subkeys_make_a_dictionary_and_merge_by_expiration() {
        let mut s = LocalStorage::new(100);
        assert!(s.store_subkey(key(1), "peer-a".into(), b"1".to_vec(), NOW + 10.0, NOW));
        assert!(s.store_subkey(key(1), "peer-b".into(), b"2".to_vec(), NOW + 20.0, NOW));
        assert!(!s.store_subkey(key(1), "peer-a".into(), b"old".to_vec(), NOW + 5.0, NOW));
        assert!(s.store_subkey(key(1), "peer-a".into(), b"3".to_vec(), NOW + 15.0, NOW));
        let entry = s.get(&key(1), NOW).unwrap().clone();
        assert_eq!(entry.expiration, NOW + 20.0);
        let StoredValue::Dictionary(d) = entry.value else { panic!("not a dictionary") };
        assert_eq!(d.get(&"peer-a".into(), NOW).unwrap().value, b"3");
        assert_eq!(d.entries(NOW + 16.0).count(), 1, "peer-a expired, peer-b alive");
    }

    #[test]
    fn a_subkey_replaces_an_older_regular_value_but_not_a_newer_one() {
        let mut s = LocalStorage::new(100);
        s.store(key(1), b"regular".to_vec(), NOW + 10.0, NOW);
        assert!(!s.store_subkey(key(1), "a".into(), b"v".to_vec(), NOW + 10.0, NOW));
        assert!(s.store_subkey(key(1), "a".into(), b"v".to_vec(), NOW + 11.0, NOW));
        assert!(matches!(s.get(&key(1), NOW).unwrap().value, StoredValue::Dictionary(_)));
        assert!(s.store(key(1), b"regular".to_vec(), NOW + 12.0, NOW), "a newer regular value replaces it");
    }

    #[test]
    fn full_storage_evicts_what_expires_first() {
        let mut s = LocalStorage::new(2);
        s.store(key(1), b"a".to_vec(), NOW + 30.0, NOW);
        s.store(key(2), b"b".to_vec(), NOW + 10.0, NOW);
        s.store(key(3), b"c".to_vec(), NOW + 20.0, NOW);
        assert!(s.get(&key(2), NOW).is_none());
        assert!(s.get(&key(1), NOW).is_some() && s.get(&key(3), NOW).is_some());
    }

    #[test]
    fn dictionary_encoding_round_trips() {
        let mut d = DictionaryValue::default();
        d.store("a".into(), vec![1, 2], NOW + 1.0, NOW);
        d.store(Value::Binary(vec![9]), vec![3], NOW + 2.0, NOW);
        let bytes = msgpack::pack(&d.to_msgpack(NOW));
        assert_eq!(&bytes[..1], &[0xc7], "ext 8 header");
        let back = DictionaryValue::from_msgpack(&bytes).unwrap();
        assert_eq!(back, d);
        assert!(DictionaryValue::from_msgpack(&msgpack::pack(&Value::from(1))).is_err());
    }
}
