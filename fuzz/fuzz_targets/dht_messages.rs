//! DHT wire input: every hivemind DHT protobuf message, msgpack values (with hivemind's ext
//! types) and dictionary values decode without panicking, and what decodes re-encodes.
#![no_main]

use kwaai_core::dht::schema::{FieldType, Schema, SchemaValidator};
use kwaai_core::dht::validation::{DhtRecord, RsaSignatureValidator, Validators};
use kwaai_core::dht::DictionaryValue;
use kwaai_core::wire::dht::{FindRequest, FindResponse, PingRequest, PingResponse, StoreRequest, StoreResponse};
use kwaai_core::wire::msgpack;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = PingRequest::decode(data);
    let _ = PingResponse::decode(data);
    let _ = StoreRequest::decode(data);
    let _ = StoreResponse::decode(data);
    let _ = FindRequest::decode(data);
    if let Ok(response) = FindResponse::decode(data) {
        assert_eq!(FindResponse::decode(response.encode_to_vec().as_slice()).ok(), Some(response));
    }
    if let Ok(value) = msgpack::unpack(data) {
        // Compared as bytes: a NaN value is not equal to itself.
        let packed = msgpack::pack(&value);
        let again = msgpack::unpack(&packed).expect("our own encoding decodes");
        assert_eq!(msgpack::pack(&again), packed);
        let _ = msgpack::as_tuple(&again);
    }
    if let Ok(dictionary) = DictionaryValue::from_msgpack(data) {
        let packed = msgpack::pack(&dictionary.to_msgpack(f64::NEG_INFINITY));
        assert!(DictionaryValue::from_msgpack(&packed).is_ok());
    }
    // Validation of arbitrary records (owner markers, signatures, schema types) must not panic.
    thread_local! {
        static VALIDATORS: Validators = Validators::new(vec![
            std::sync::Arc::new(RsaSignatureValidator::generate().expect("an RSA key")),
            std::sync::Arc::new(SchemaValidator::new(every_type(), false, None)),
        ]);
    }
    let split = data.len() / 2;
    let record = DhtRecord { key: data[..split].to_vec(), subkey: data[split..].to_vec(), value: data.to_vec(), expiration: 1e9 };
    VALIDATORS.with(|v| {
        let _ = v.validate(&record);
        let _ = v.strip_value(&record);
        // The same bytes as a value and subkey under every schema field's key.
        for field in ["any", "int", "float", "bool", "str", "bytes", "list", "tuple", "pair", "dict", "model"] {
            let packed = [&[0xa0 | field.len() as u8][..], field.as_bytes()].concat(); // msgpack fixstr
            let key = kwaai_core::dht::DhtId::of_bytes(&packed).as_bytes().to_vec();
            let _ = v.validate(&DhtRecord { key: key.clone(), subkey: vec![0xc0], value: data.to_vec(), expiration: 1e9 });
            let _ = v.validate(&DhtRecord { key, subkey: data[..split].to_vec(), value: data[split..].to_vec(), expiration: 1e9 });
        }
    });
});

/// A schema with a field of every type.
fn every_type() -> Schema {
    let model = Schema::new().field("a", FieldType::strict_int()).field("b", FieldType::optional(FieldType::bytes()));
    Schema::new()
        .field("any", FieldType::Any)
        .field("int", FieldType::Int { strict: false, ge: Some(-5), le: Some(5) })
        .field("float", FieldType::Float { strict: false, ge: Some(0.0), le: None })
        .field("bool", FieldType::Bool { strict: false })
        .field("str", FieldType::Str)
        .field("bytes", FieldType::bytes_with_public_key())
        .field("list", FieldType::list(FieldType::optional(FieldType::int())))
        .field("tuple", FieldType::tuple_of(FieldType::strict_float()))
        .field("pair", FieldType::Tuple(vec![FieldType::Str, FieldType::bytes()]))
        .field("dict", FieldType::dict(FieldType::Str, FieldType::list(FieldType::Any)))
        .field("model", FieldType::dict(FieldType::bytes(), FieldType::Model(model)))
}
