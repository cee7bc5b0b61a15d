//! DHT wire input: every hivemind DHT protobuf message, msgpack values (with hivemind's ext
//! types) and dictionary values decode without panicking, and what decodes re-encodes.
#![no_main]

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
    // Validation of arbitrary records (owner markers, signatures) must not panic.
    thread_local! {
        static VALIDATORS: Validators =
            Validators::new(vec![std::sync::Arc::new(RsaSignatureValidator::generate().expect("an RSA key"))]);
    }
    let split = data.len() / 2;
    let record = DhtRecord { key: data[..split].to_vec(), subkey: data[split..].to_vec(), value: data.to_vec(), expiration: 1e9 };
    VALIDATORS.with(|v| {
        let _ = v.validate(&record);
        let _ = v.strip_value(&record);
    });
});
