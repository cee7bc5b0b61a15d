//! Schema validation against hivemind's `SchemaValidator` (pydantic), chained with the RSA
//! signature validator: the same records, judged by hivemind in the reference venv and by us,
//! get the same verdicts; and in a mixed swarm whose nodes all run these validators, a record
//! that breaks the schema is refused by Python and Rust nodes alike while a valid one is accepted
//! and read everywhere.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ReferenceProcess;
use kwaai_core::dht::schema::{FieldType, Schema, SchemaValidator};
use kwaai_core::dht::validation::{DhtRecord, RsaSignatureValidator, Validators};
use kwaai_core::dht::{dht_time, DhtConfig, DhtId, DhtValue, RPC_STORE};
use kwaai_core::wire::dht::{StoreRequest, StoreResponse};
use kwaai_core::wire::msgpack::{pack, tuple};
use kwaai_core::{Node, NodeConfig};
use prost::Message;
use rmpv::Value;
use serde_json::json;

/// tests/reference/dht_schemas.py, field for field.
fn experiment_schema() -> Schema {
    let progress = Schema::new()
        .field("epoch", FieldType::Int { strict: true, ge: Some(0), le: None })
        .field("loss", FieldType::optional(FieldType::strict_float()))
        .field("peer", FieldType::bytes());
    Schema::new()
        .field("experiment_name", FieldType::Str)
        .field("count", FieldType::int())
        .field("ratio", FieldType::float())
        .field("enabled", FieldType::Bool { strict: false })
        .field("n_batches", FieldType::dict(FieldType::bytes(), FieldType::Int { strict: true, ge: Some(0), le: None }))
        .field("signed_data", FieldType::dict(FieldType::bytes_with_public_key(), FieldType::bytes()))
        .field(
            "progress",
            FieldType::dict(FieldType::bytes_with_public_key(), FieldType::optional(FieldType::Model(progress))),
        )
        .field("shape", FieldType::tuple_of(FieldType::strict_int()))
        .field("pair", FieldType::Tuple(vec![FieldType::Str, FieldType::float()]))
        .field("tags", FieldType::list(FieldType::Str))
        .field("anything", FieldType::Any)
}

fn serving_schema() -> Schema {
    let block = FieldType::Tuple(vec![
        FieldType::Int { strict: true, ge: Some(0), le: Some(1000) },
        FieldType::Float { strict: false, ge: Some(0.0), le: None },
    ]);
    Schema::new()
        .field("blocks", FieldType::dict(FieldType::Str, block))
        .field("version", FieldType::strict_int())
        .field("count", FieldType::Str)
}

fn strict_validators(rsa: &Arc<RsaSignatureValidator>) -> Validators {
    Validators::new(vec![rsa.clone(), Arc::new(SchemaValidator::new(experiment_schema(), false, None))])
}

fn merged_validators(rsa: &Arc<RsaSignatureValidator>) -> Validators {
    Validators::new(vec![
        rsa.clone(),
        Arc::new(SchemaValidator::new(experiment_schema(), false, None)),
        Arc::new(SchemaValidator::new(serving_schema(), false, Some("model"))),
    ])
}

/// A small deterministic generator, so a failure can be replayed from its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64)].clone()
    }

    fn scalar(&mut self) -> Value {
        match self.below(7) {
            0 => self.pick(&[0i64, 1, -1, 5, 1000, 1001, i64::MIN]).into(),
            1 => Value::from(self.pick(&[u64::MAX, 1 << 63, (1 << 53) + 1])),
            2 => Value::F64(self.pick(&[0.0, 1.0, 3.0, 3.5, -0.5, f64::NAN, f64::INFINITY, 9007199254740992.0])),
            3 => Value::Boolean(self.below(2) == 1),
            4 => Value::from(self.pick(&["", "x", "name", "1"])),
            5 => Value::Binary(self.pick(&[b"".to_vec(), b"x".to_vec(), b"peer".to_vec()])),
            _ => Value::Nil,
        }
    }

    fn progress(&mut self) -> Value {
        let mut fields = vec![
            ("epoch", self.pick(&[Value::from(3), Value::from(-1), Value::F64(3.0), Value::Boolean(true)])),
            ("loss", self.pick(&[Value::Nil, Value::F64(0.25), Value::from(1), Value::F64(f64::NAN)])),
            ("peer", self.pick(&[Value::Binary(b"p".to_vec()), Value::from("p")])),
        ];
        match self.below(5) {
            0 => {
                fields.pop();
            }
            1 => fields.push(("extra", Value::from(1))),
            _ => {}
        }
        let key = |k: &str, bytes: bool| if bytes { Value::Binary(k.as_bytes().to_vec()) } else { Value::from(k) };
        let bytes_keys = self.below(8) == 0;
        Value::Map(fields.into_iter().map(|(k, v)| (key(k, bytes_keys), v)).collect())
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth < 2 { 10 } else { 6 }) {
            0..=4 => self.scalar(),
            5 => Value::Ext(0x33, b"raw".to_vec()),
            6 => Value::Array((0..self.below(3)).map(|_| self.value(depth + 1)).collect()),
            7 => tuple((0..self.below(3)).map(|_| self.value(depth + 1)).collect()),
            8 => self.progress(),
            _ => {
                Value::Map(vec![(self.pick(&[Value::from("k"), Value::Binary(b"k".to_vec())]), self.value(depth + 1))])
            }
        }
    }

    fn subkey(&mut self, marker: &[u8]) -> Option<Value> {
        let owned = [b"peer".as_slice(), marker].concat();
        match self.below(12) {
            0..=4 => None,
            5 => Some(Value::Binary(owned)),
            6 => Some(Value::Binary([b"\n".as_slice(), &owned].concat())),
            7 => Some(Value::from(String::from_utf8(owned).unwrap())),
            8 => Some(Value::Binary(b"plain".to_vec())),
            9 => Some(self.pick(&[Value::from(7), Value::from("s"), tuple(vec![1.into(), 2.into()])])),
            10 => Some(Value::Array(vec![1.into()])),
            _ => Some(Value::Binary(b"x[owner:not a key]".to_vec())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const FIELDS: &[&str] = &[
    "experiment_name",
    "count",
    "ratio",
    "enabled",
    "n_batches",
    "signed_data",
    "progress",
    "shape",
    "pair",
    "tags",
    "anything",
    "model_blocks",
    "model_version",
    "model_count",
    "blocks",
    "unknown",
];

#[test]
fn schema_verdicts_match_hivemind_record_for_record() {
    let seed = dht_time().to_bits() | 1;
    eprintln!("seed {seed}");
    let mut generate = Gen(seed);
    let rsa = Arc::new(RsaSignatureValidator::generate().unwrap());
    let (strict, merged) = (strict_validators(&rsa), merged_validators(&rsa));
    assert_eq!(merged.len(), 2, "the two schema validators merge into one");

    let mut records = Vec::new();
    for i in 0..1500 {
        let field = FIELDS[i % FIELDS.len()];
        let subkey = generate.subkey(rsa.owner_marker());
        let mut value = if field == "model_blocks" && generate.below(2) == 0 {
            tuple(vec![generate.scalar(), generate.scalar()])
        } else {
            generate.value(0)
        };
        if field == "progress" && generate.below(2) == 0 {
            value = generate.progress();
        }
        let record = DhtRecord {
            key: DhtId::of_key(&Value::from(field)).as_bytes().to_vec(),
            subkey: subkey.as_ref().map_or(vec![0xc0], pack),
            value: pack(&value),
            expiration: 1e10,
        };
        // Values under our own owner marker are signed most of the time.
        let record =
            if generate.below(4) != 0 { DhtRecord { value: strict.sign_value(&record), ..record } } else { record };
        records.push(record);
    }
    // Bytes that are not one msgpack value.
    let count = DhtId::of_key(&Value::from("count")).as_bytes().to_vec();
    for bad in [vec![0x01, 0x02], vec![0xa2, b'x'], vec![0xd4, 0x40, 0x05], vec![0xc1], vec![0x91, 0xc1]] {
        records.push(DhtRecord { key: count.clone(), subkey: vec![0xc0], value: bad, expiration: 1e10 });
    }

    let request = json!({
        "records": records.iter().map(|r| json!([hex(&r.key), hex(&r.subkey), hex(&r.value), r.expiration])).collect::<Vec<_>>(),
    });
    let reply = common::run_reference_script("dht_schema.py", &[], &request.to_string());
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
    let mut accepted = [0usize; 2];
    for (name, validators, index) in [("strict", &strict, 0), ("merged", &merged, 1)] {
        let verdicts = reply[name].as_array().expect("verdicts");
        assert_eq!(verdicts.len(), records.len());
        for (record, verdict) in records.iter().zip(verdicts) {
            let ours = validators.validate(record);
            assert_eq!(Some(ours), verdict.as_bool(), "{name}: {record:?}");
            accepted[index] += usize::from(ours);
        }
    }
    eprintln!("accepted (strict, merged): {accepted:?} of {}", records.len());
    // Both outcomes occur often, so the comparison means something.
    for count in accepted {
        assert!(count > 50 && count < records.len() - 50, "accepted {accepted:?} of {}", records.len());
    }
}

fn ask(python: &mut ReferenceProcess, request: serde_json::Value) -> serde_json::Value {
    python.send_line(&request.to_string());
    let reply = python.read_json();
    assert!(reply.get("error").is_none(), "{reply}");
    reply
}

/// A raw `rpc_store` of one record to `peer`, bypassing the sender's own validators.
fn raw_store(from: &Node, peer: libp2p::PeerId, key: &str, subkey: Option<&Value>, value: &Value) -> bool {
    let request = StoreRequest {
        keys: vec![DhtId::of_key(&Value::from(key)).as_bytes().to_vec()],
        subkeys: vec![subkey.map_or(vec![0xc0], pack)],
        values: vec![pack(value)],
        expiration_time: vec![dht_time() + 60.0],
        in_cache: vec![false],
        ..StoreRequest::default()
    };
    let reply = from.call_unary(peer, RPC_STORE, &request.encode_to_vec(), Duration::from_secs(5)).expect("a reply");
    StoreResponse::decode(reply.as_slice()).expect("a StoreResponse").store_ok == vec![true]
}

#[test]
fn python_and_rust_nodes_refuse_and_accept_the_same_schema_records() {
    let mut python = ReferenceProcess::start("dht_swarm.py", &["--schema"]);
    let p0 = ask(&mut python, json!({"op": "spawn", "initial_peers": []}))["maddrs"][0].as_str().unwrap().to_owned();
    let rsa = Arc::new(RsaSignatureValidator::generate().unwrap());
    let config = |peer: &str| NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![peer.to_owned()],
        dht: DhtConfig { validators: merged_validators(&rsa), ..DhtConfig::default() },
        ..NodeConfig::default()
    };
    let r0 = Node::start(config(&p0)).unwrap();
    let r0_addr = r0.listen_addrs()[0].to_string();
    let p1_peer =
        ask(&mut python, json!({"op": "spawn", "initial_peers": [r0_addr]}))["peer_id"].as_str().unwrap().to_owned();
    let p1_peer: libp2p::PeerId = p1_peer.parse().unwrap();
    let r1 = Node::start(config(&r0_addr)).unwrap();
    let expiration = dht_time() + 120.0;
    let python_store = |python: &mut ReferenceProcess,
                        node: usize,
                        key: &str,
                        subkey: Option<&Value>,
                        value: &Value| {
        let mut request =
            json!({"op": "store", "node": node, "key": key, "value_hex": hex(&pack(value)), "expiration": expiration});
        if let Some(subkey) = subkey {
            request["subkey_hex"] = json!(hex(&pack(subkey)));
        }
        ask(python, request)["ok"].as_bool().unwrap()
    };
    let python_get = |python: &mut ReferenceProcess, node: usize, key: &str| {
        ask(python, json!({"op": "get", "node": node, "key": key, "latest": true, "hex": true}))
    };

    // Invalid: a float where the schema wants an int, a str subkey where it wants bytes, a
    // missing field in a nested model. Refused by the writer's own node and by every peer.
    let bad: Vec<(&str, Option<Value>, Value)> = vec![
        ("count", None, Value::F64(2.5)),
        ("n_batches", Some(Value::from("peer")), Value::from(3)),
        ("model_version", None, Value::Boolean(true)),
    ];
    for (key, subkey, value) in &bad {
        assert!(!r1.dht_store(Value::from(*key), subkey.clone(), value.clone(), expiration).unwrap(), "rust {key}");
        assert!(!python_store(&mut python, 1, key, subkey.as_ref(), value), "python {key}");
        assert!(!raw_store(&r0, p1_peer, key, subkey.as_ref(), value), "raw to python {key}");
        assert!(!raw_store(&r0, r1.peer_id(), key, subkey.as_ref(), value), "raw to rust {key}");
        assert_eq!(r0.dht_get(Value::from(*key), true).unwrap(), None, "{key} stored nowhere");
        assert_eq!(python_get(&mut python, 0, key), json!({"found": false}), "{key} stored nowhere");
    }

    // Valid: accepted by both, read by both.
    let good: Vec<(&str, Option<Value>, Value)> = vec![
        ("count", None, Value::F64(2.0)),
        ("n_batches", Some(Value::Binary(b"peer".to_vec())), Value::from(3)),
        ("model_blocks", Some(Value::from("block.1")), tuple(vec![Value::from(1), Value::from(4)])),
    ];
    for (i, (key, subkey, value)) in good.iter().enumerate() {
        // Raw stores are accepted by both kinds of peer ...
        assert!(raw_store(&r0, p1_peer, key, subkey.as_ref(), value), "raw to python {key}");
        assert!(raw_store(&r0, r1.peer_id(), key, subkey.as_ref(), value), "raw to rust {key}");
        // ... and so are stores from either side, with later expirations.
        let later = expiration + 1.0 + i as f64;
        assert!(r1.dht_store(Value::from(*key), subkey.clone(), value.clone(), later).unwrap(), "rust {key}");
        let reply = python_get(&mut python, 0, key);
        let python_sees = match subkey {
            None => reply["value_hex"].clone(),
            Some(s) => reply["dictionary_hex"][hex(&pack(s))][0].clone(),
        };
        assert_eq!(python_sees, json!(hex(&pack(value))), "python reads {key}");
        let rust_sees = match r0.dht_get(Value::from(*key), true).unwrap() {
            Some(DhtValue::Regular { value, .. }) => value,
            Some(DhtValue::Dictionary { entries, .. }) => {
                entries.into_iter().find(|e| Some(&e.subkey) == subkey.as_ref()).expect("the subkey").value
            }
            None => panic!("rust finds {key}"),
        };
        assert_eq!(&rust_sees, value);
    }
    let other = Value::Binary(b"other".to_vec());
    assert!(python_store(&mut python, 1, "n_batches", Some(&other), &Value::from(4)));
    let Some(DhtValue::Dictionary { entries, .. }) = r1.dht_get(Value::from("n_batches"), true).unwrap() else {
        panic!("n_batches is a dictionary");
    };
    assert_eq!(entries.len(), 2, "the Python write merged with the Rust one");
}
