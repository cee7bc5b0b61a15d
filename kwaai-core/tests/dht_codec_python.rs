//! Our msgpack, DHT IDs and dictionary values against hivemind's `MSGPackSerializer`, `DHTID`
//! and `DictionaryDHTValue`, computed by the reference venv in the same run, both directions.

mod common;

use kwaai_core::dht::{dht_time, DhtId, DictionaryValue};
use kwaai_core::wire::msgpack::{pack, tuple, unpack};
use rmpv::Value;

// `DHTID.generate(None)` is a random ID in hivemind (None means "no source"), so a top-level
// `None` has no deterministic ID to compare.

/// A small deterministic generator, so a failure can be replayed from its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth < 3 { 11 } else { 8 }) {
            0 => Value::from(self.next()),
            1 => Value::from(-((self.next() >> 1) as i64) - 1),
            2 => Value::from([0i64, 127, 128, -32, -33, 65535, -32769][self.below(7) as usize]),
            3 => Value::F64((self.next() as f64) / 7.0 - 1e18),
            4 => Value::from((0..self.below(40)).map(|i| ['a', 'é', '字', ' '][(i % 4) as usize]).collect::<String>()),
            5 => Value::Binary((0..self.below(300)).map(|_| self.next() as u8).collect()),
            6 => Value::Nil,
            7 => Value::Boolean(self.below(2) == 1),
            8 => Value::Array((0..self.below(18)).map(|_| self.value(depth + 1)).collect()),
            9 => tuple((0..self.below(18)).map(|_| self.value(depth + 1)).collect()),
            _ => {
                Value::Map((0..self.below(18)).map(|i| (Value::from(format!("k{i}")), self.value(depth + 1))).collect())
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

fn strings(json: &serde_json::Value) -> Vec<String> {
    json.as_array().expect("array").iter().map(|v| v.as_str().expect("string").to_owned()).collect()
}

#[test]
fn msgpack_dht_ids_and_dictionaries_match_hivemind_both_ways() {
    let seed = dht_time().to_bits() | 1;
    eprintln!("seed {seed}");
    let mut generate = Gen(seed);
    let ours: Vec<Value> = (0..300).map(|_| generate.value(0)).collect();
    let now = dht_time();
    let mut dictionary = DictionaryValue::default();
    for i in 0..6u64 {
        let subkey = if i % 2 == 0 { Value::from(format!("peer{i}")) } else { tuple(vec![i.into(), "x".into()]) };
        assert!(dictionary.store(subkey, pack(&Value::from(i)), now + 100.0 + i as f64, now));
    }
    let request = serde_json::json!({
        "seed": seed % (1 << 52),
        "count": 300,
        "rust_packed": ours.iter().map(|v| hex(&pack(v))).collect::<Vec<_>>(),
        "dictionaries": [hex(&pack(&dictionary.to_msgpack(now)))],
    });
    let reply = common::run_reference_script("dht_codec.py", &[], &request.to_string());
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");

    // hivemind's bytes decode and re-encode to the same bytes here, and hash to the same ID.
    for case in reply["python_values"].as_array().expect("python_values") {
        let packed = unhex(case["packed"].as_str().unwrap());
        let value = unpack(&packed).expect("we decode hivemind's msgpack");
        assert_eq!(hex(&pack(&value)), hex(&packed), "re-encoding {value:?}");
        if value != Value::Nil {
            assert_eq!(hex(DhtId::of_key(&value).as_bytes()), case["dhtid"].as_str().unwrap(), "DHTID of {value:?}");
        }
    }
    // Our bytes survive hivemind's loads+dumps unchanged, and hivemind hashes our values as we do.
    for ((value, repacked), dhtid) in
        ours.iter().zip(strings(&reply["rust_repacked"])).zip(strings(&reply["rust_dhtids"]))
    {
        assert_eq!(repacked, hex(&pack(value)), "hivemind re-encoded {value:?} differently");
        if *value != Value::Nil {
            assert_eq!(dhtid, hex(DhtId::of_key(value).as_bytes()), "DHTID of {value:?}");
        }
    }
    assert_eq!(strings(&reply["dictionaries"]), vec![hex(&pack(&dictionary.to_msgpack(now)))]);

    // A DictionaryDHTValue built by hivemind decodes here and re-encodes byte for byte.
    let python_dict = unhex(reply["python_dictionary"]["packed"].as_str().unwrap());
    let decoded = DictionaryValue::from_msgpack(&python_dict).expect("we decode hivemind's dictionary");
    assert_eq!(decoded.entries(now).count(), strings(&reply["python_dictionary"]["subkeys"]).len());
    for subkey in strings(&reply["python_dictionary"]["subkeys"]) {
        assert!(decoded.get(&unpack(&unhex(&subkey)).unwrap(), now).is_some(), "subkey {subkey}");
    }
    assert_eq!(hex(&pack(&decoded.to_msgpack(now))), hex(&python_dict));
}
