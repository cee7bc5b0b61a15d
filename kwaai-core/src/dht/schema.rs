//! hivemind's `SchemaValidator`: records under the keys a schema declares must hold values of the
//! declared types. hivemind describes schemas as pydantic models; here a [`Schema`] is a list of
//! fields with a [`FieldType`] each, and a value is accepted exactly when hivemind's validator
//! would accept it: pydantic parses it and the parsed value must equal the original, so only the
//! conversions that keep a value equal in Python (`3.0` for an `int`, `1` for a `bool`, ...) pass,
//! and only for the types that are not strict.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use regex::bytes::Regex;
use rmpv::Value;

use super::id::DhtId;
use super::validation::{DhtRecord, RecordValidator};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::msgpack::{self, DICTIONARY_EXT, TENSOR_DESCRIPTOR_EXT, TUPLE_EXT};

/// The type of a schema field, as a pydantic annotation would declare it.
#[derive(Debug, Clone)]
pub enum FieldType {
    /// `Any`: every value.
    Any,
    /// `bool` (`strict: false`: also 0, 1, 0.0 and 1.0) or `StrictBool`.
    Bool {
        /// Only `true` and `false`.
        strict: bool,
    },
    /// `int`/`conint` (`strict: false`: also booleans and integral floats) or `StrictInt`.
    Int {
        /// Only integers (not booleans, not floats).
        strict: bool,
        /// Inclusive lower bound (`ge`).
        ge: Option<i64>,
        /// Inclusive upper bound (`le`).
        le: Option<i64>,
    },
    /// `float`/`confloat` (`strict: false`: also booleans and exactly representable integers)
    /// or `StrictFloat`.
    Float {
        /// Only floats.
        strict: bool,
        /// Inclusive lower bound (`ge`).
        ge: Option<f64>,
        /// Inclusive upper bound (`le`).
        le: Option<f64>,
    },
    /// `str`.
    Str,
    /// `bytes`, or hivemind's `conbytes(regex=...)` when `pattern` is set (matched at the start).
    Bytes {
        /// The pattern the bytes must match from their first byte.
        pattern: Option<Regex>,
    },
    /// `List[T]` (a msgpack array).
    List(Box<FieldType>),
    /// `Tuple[A, B, ...]`: a hivemind tuple (ext 0x40) of exactly these item types.
    Tuple(Vec<FieldType>),
    /// `Tuple[T, ...]`: a hivemind tuple of any length.
    TupleOf(Box<FieldType>),
    /// `Dict[K, V]`; a record stored under a subkey is checked as `{subkey: value}`.
    Dict(Box<FieldType>, Box<FieldType>),
    /// `Optional[T]`: nil or a `T`.
    Optional(Box<FieldType>),
    /// A nested model: a map with exactly these fields as string keys.
    Model(Schema),
}

impl FieldType {
    /// `int`.
    pub fn int() -> Self {
        FieldType::Int { strict: false, ge: None, le: None }
    }

    /// `StrictInt`.
    pub fn strict_int() -> Self {
        FieldType::Int { strict: true, ge: None, le: None }
    }

    /// `float`.
    pub fn float() -> Self {
        FieldType::Float { strict: false, ge: None, le: None }
    }

    /// `StrictFloat`.
    pub fn strict_float() -> Self {
        FieldType::Float { strict: true, ge: None, le: None }
    }

    /// `bytes`.
    pub fn bytes() -> Self {
        FieldType::Bytes { pattern: None }
    }

    /// hivemind's `BytesWithPublicKey`: bytes holding an `[owner:...]` marker before any newline.
    pub fn bytes_with_public_key() -> Self {
        FieldType::Bytes { pattern: Some(Regex::new(r"(?-u)^.*\[owner:(.+?)\].*").expect("valid regex")) }
    }

    /// `conbytes(regex=pattern)`, matched from the start of the bytes as Python's `re.match`.
    pub fn bytes_matching(pattern: &str) -> Result<Self> {
        let regex = Regex::new(&format!("(?-u)^(?:{pattern})"))
            .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, format!("bad pattern {pattern:?}"), e))?;
        Ok(FieldType::Bytes { pattern: Some(regex) })
    }

    /// `List[item]`.
    pub fn list(item: FieldType) -> Self {
        FieldType::List(Box::new(item))
    }

    /// `Tuple[item, ...]`.
    pub fn tuple_of(item: FieldType) -> Self {
        FieldType::TupleOf(Box::new(item))
    }

    /// `Dict[key, value]`.
    pub fn dict(key: FieldType, value: FieldType) -> Self {
        FieldType::Dict(Box::new(key), Box::new(value))
    }

    /// `Optional[inner]`.
    pub fn optional(inner: FieldType) -> Self {
        FieldType::Optional(Box::new(inner))
    }

    /// Whether pydantic parses `value` as this type into a value equal to it.
    fn accepts(&self, value: &Loaded) -> bool {
        match (self, value) {
            (FieldType::Any, _) => true,
            (FieldType::Bool { strict }, value) => match value {
                Loaded::Bool(_) => true,
                Loaded::Int(i) => !strict && (*i == 0 || *i == 1),
                Loaded::Float(f) => !strict && (*f == 0.0 || *f == 1.0),
                _ => false,
            },
            (FieldType::Int { strict, ge, le }, value) => {
                let within = |x: f64, exact: Option<i128>| {
                    let above = ge.is_none_or(|ge| exact.map_or(x >= ge as f64, |i| i >= i128::from(ge)));
                    let below = le.is_none_or(|le| exact.map_or(x <= le as f64, |i| i <= i128::from(le)));
                    above && below
                };
                match value {
                    Loaded::Int(i) => within(*i as f64, Some(*i)),
                    Loaded::Bool(b) => !strict && within(f64::from(u8::from(*b)), Some(i128::from(*b))),
                    Loaded::Float(f) => !strict && f.is_finite() && f.fract() == 0.0 && within(*f, None),
                    _ => false,
                }
            }
            (FieldType::Float { strict, ge, le }, value) => {
                let parsed = match value {
                    Loaded::Float(f) => Some(*f),
                    // float(i) must compare equal to i, so it must be exact.
                    Loaded::Int(i) if !strict && (*i as f64) as i128 == *i && (*i as f64).is_finite() => {
                        Some(*i as f64)
                    }
                    Loaded::Bool(b) if !strict => Some(f64::from(u8::from(*b))),
                    _ => None,
                };
                parsed.is_some_and(|x| ge.is_none_or(|ge| x >= ge) && le.is_none_or(|le| x <= le))
            }
            (FieldType::Str, Loaded::Str(_)) => true,
            (FieldType::Bytes { pattern }, Loaded::Bytes(bytes)) => pattern.as_ref().is_none_or(|p| p.is_match(bytes)),
            (FieldType::List(item), Loaded::List(items)) => items.iter().all(|v| item.accepts(v)),
            (FieldType::Tuple(types), Loaded::Tuple(items)) => {
                types.len() == items.len() && types.iter().zip(items).all(|(t, v)| t.accepts(v))
            }
            (FieldType::TupleOf(item), Loaded::Tuple(items)) => items.iter().all(|v| item.accepts(v)),
            (FieldType::Dict(key, item), Loaded::Dict(entries)) => {
                entries.iter().all(|(k, v)| key.accepts(k) && item.accepts(v))
            }
            (FieldType::Optional(_), Loaded::None) => true,
            (FieldType::Optional(inner), value) => inner.accepts(value),
            (FieldType::Model(schema), Loaded::Dict(entries)) => {
                entries.len() == schema.fields.len()
                    && entries.iter().all(|(k, v)| match k {
                        Loaded::Str(name) => schema.field_type(name).is_some_and(|t| t.accepts(v)),
                        _ => false,
                    })
            }
            _ => false,
        }
    }
}

/// A schema: named fields with their types (a pydantic model's fields).
#[derive(Debug, Clone, Default)]
pub struct Schema {
    fields: Vec<(String, FieldType)>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Self {
        Schema::default()
    }

    /// This schema with one more field.
    pub fn field(mut self, name: &str, field_type: FieldType) -> Self {
        self.fields.push((name.to_owned(), field_type));
        self
    }

    fn field_type(&self, name: &str) -> Option<&FieldType> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(n, _)| n.as_str())
    }
}

/// hivemind's `SchemaValidator`: each field `f` of a schema owns the DHT key `f` (or
/// `"{prefix}_{f}"`); a record under such a key must match the field's type. Records under other
/// keys pass if `allow_extra_keys`. Validators of several schemas merge (in [`super::validation::Validators`]):
/// a record passes if any schema that has its field accepts it.
#[derive(Debug, Clone)]
pub struct SchemaValidator {
    schemas: Vec<Schema>,
    field_of_key: HashMap<DhtId, String>,
    allow_extra_keys: bool,
}

impl SchemaValidator {
    /// A validator for `schema`; `prefix` names each field's key `"{prefix}_{field}"`.
    pub fn new(schema: Schema, allow_extra_keys: bool, prefix: Option<&str>) -> Self {
        let field_of_key = schema
            .names()
            .map(|name| {
                let raw_key = prefix.map_or_else(|| name.to_owned(), |p| format!("{p}_{name}"));
                (DhtId::of_key(&Value::from(raw_key)), name.to_owned())
            })
            .collect();
        SchemaValidator { schemas: vec![schema], field_of_key, allow_extra_keys }
    }
}

impl RecordValidator for SchemaValidator {
    fn validate(&self, record: &DhtRecord) -> bool {
        let Some(field) = DhtId::from_slice(&record.key).ok().and_then(|key| self.field_of_key.get(&key)) else {
            return self.allow_extra_keys;
        };
        let Some(value) = Loaded::from_msgpack(&record.value) else { return false };
        let reserved = record.subkey == [0xc0] || record.subkey.is_empty();
        let checked = if reserved {
            // A whole dictionary must arrive as a DictionaryDHTValue, never as a map.
            if matches!(value, Loaded::Dict(_)) {
                return false;
            }
            value
        } else {
            let Some(subkey) = Loaded::from_msgpack(&record.subkey) else { return false };
            if !subkey.is_hashable() {
                return false;
            }
            Loaded::Dict(vec![(subkey, value)])
        };
        // hivemind compares the parsed value with `!=`, which a NaN never passes.
        if matches!(checked, Loaded::Float(f) if f.is_nan()) {
            return false;
        }
        self.schemas.iter().filter_map(|schema| schema.field_type(field)).any(|t| t.accepts(&checked))
    }

    fn merge(&self, other: &dyn RecordValidator) -> Option<Arc<dyn RecordValidator>> {
        let other = other.as_any()?.downcast_ref::<SchemaValidator>()?;
        let mut merged = self.clone();
        merged.schemas.extend(other.schemas.iter().cloned());
        merged.field_of_key.extend(other.field_of_key.iter().map(|(k, v)| (*k, v.clone())));
        merged.allow_extra_keys |= other.allow_extra_keys;
        Some(Arc::new(merged))
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// A value as hivemind's `MSGPackSerializer.loads` returns it, for type checks.
#[derive(Debug, Clone, PartialEq)]
enum Loaded {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Loaded>),
    Tuple(Vec<Loaded>),
    /// Entries with distinct keys (the last of duplicate keys wins, as in a Python dict).
    Dict(Vec<(Loaded, Loaded)>),
    /// A `DictionaryDHTValue` or tensor descriptor: only `Any` accepts it.
    Object,
}

impl Loaded {
    /// Decodes as hivemind does; `None` where hivemind's decoding raises.
    fn from_msgpack(bytes: &[u8]) -> Option<Loaded> {
        Loaded::from_value(&msgpack::unpack(bytes).ok()?)
    }

    fn from_value(value: &Value) -> Option<Loaded> {
        Some(match value {
            Value::Nil => Loaded::None,
            Value::Boolean(b) => Loaded::Bool(*b),
            Value::Integer(i) => Loaded::Int(i.as_i64().map(i128::from).or_else(|| i.as_u64().map(i128::from))?),
            Value::F32(f) => Loaded::Float(f64::from(*f)),
            Value::F64(f) => Loaded::Float(*f),
            Value::String(s) => Loaded::Str(s.as_str()?.to_owned()),
            Value::Binary(b) => Loaded::Bytes(b.clone()),
            Value::Array(items) => Loaded::List(items.iter().map(Loaded::from_value).collect::<Option<_>>()?),
            Value::Map(entries) => {
                let mut dict: Vec<(Loaded, Loaded)> = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    // msgpack >= 1.0 refuses map keys other than str and bytes.
                    if !matches!(k, Value::String(_) | Value::Binary(_)) {
                        return None;
                    }
                    let (k, v) = (Loaded::from_value(k)?, Loaded::from_value(v)?);
                    dict.retain(|(existing, _)| *existing != k);
                    dict.push((k, v));
                }
                Loaded::Dict(dict)
            }
            Value::Ext(TUPLE_EXT, data) => {
                // `tuple(loads(data))`: a tuple of the items, characters, byte values or keys.
                Loaded::Tuple(match Loaded::from_value(&msgpack::unpack(data).ok()?)? {
                    Loaded::List(items) => items,
                    Loaded::Str(s) => s.chars().map(|c| Loaded::Str(c.to_string())).collect(),
                    Loaded::Bytes(b) => b.into_iter().map(|x| Loaded::Int(i128::from(x))).collect(),
                    Loaded::Dict(entries) => entries.into_iter().map(|(k, _)| k).collect(),
                    Loaded::Tuple(items) => items,
                    _ => return None,
                })
            }
            Value::Ext(DICTIONARY_EXT | TENSOR_DESCRIPTOR_EXT, _) => Loaded::Object,
            // hivemind leaves unknown ext types as their payload bytes.
            Value::Ext(_, data) => Loaded::Bytes(data.clone()),
        })
    }

    /// Whether Python could use the value as a dict key.
    fn is_hashable(&self) -> bool {
        match self {
            Loaded::List(_) | Loaded::Dict(_) => false,
            Loaded::Tuple(items) => items.iter().all(Loaded::is_hashable),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msgpack::{pack, tuple};

    fn record(field: &str, subkey: Option<Value>, value: Value) -> DhtRecord {
        DhtRecord {
            key: DhtId::of_key(&Value::from(field)).as_bytes().to_vec(),
            subkey: subkey.map_or(vec![0xc0], |s| pack(&s)),
            value: pack(&value),
            expiration: 1e10,
        }
    }

    fn validator() -> SchemaValidator {
        let progress = Schema::new()
            .field("epoch", FieldType::Int { strict: true, ge: Some(0), le: None })
            .field("loss", FieldType::optional(FieldType::strict_float()));
        let schema = Schema::new()
            .field("count", FieldType::int())
            .field("name", FieldType::Str)
            .field(
                "n_batches",
                FieldType::dict(FieldType::bytes(), FieldType::Int { strict: true, ge: Some(0), le: None }),
            )
            .field("progress", FieldType::dict(FieldType::bytes_with_public_key(), FieldType::Model(progress)))
            .field("pair", FieldType::Tuple(vec![FieldType::Str, FieldType::float()]));
        SchemaValidator::new(schema, false, None)
    }

    #[test]
    fn values_pass_only_without_conversions_python_would_see() {
        let v = validator();
        assert!(v.validate(&record("count", None, Value::from(3))));
        assert!(v.validate(&record("count", None, Value::F64(3.0))), "3.0 == 3 in Python");
        assert!(!v.validate(&record("count", None, Value::F64(3.5))));
        assert!(v.validate(&record("count", None, Value::Boolean(true))));
        assert!(!v.validate(&record("count", None, Value::from("3"))));
        assert!(!v.validate(&record("name", None, Value::Binary(b"x".to_vec()))), "bytes are not str");
        assert!(v.validate(&record("pair", None, tuple(vec!["a".into(), Value::from(2)]))));
        assert!(!v.validate(&record("pair", None, Value::Array(vec!["a".into(), Value::from(2)]))), "a list");
        assert!(!v.validate(&record("unknown", None, Value::from(1))), "no extra keys");
    }

    #[test]
    fn subkeys_are_checked_as_one_entry_dictionaries() {
        let v = validator();
        let ok = |subkey: Value, value: Value| v.validate(&record("n_batches", Some(subkey), value));
        assert!(ok(Value::Binary(b"peer".to_vec()), Value::from(5)));
        assert!(!ok(Value::from("peer"), Value::from(5)), "a str subkey is not bytes");
        assert!(!ok(Value::Binary(b"peer".to_vec()), Value::from(-1)), "ge=0");
        assert!(!ok(Value::Binary(b"peer".to_vec()), Value::Boolean(true)), "strict");
        assert!(!v.validate(&record("n_batches", None, Value::Map(vec![]))), "a plain map is refused");
        let owner = Value::Binary(b"peer[owner:ssh-rsa AAAA]".to_vec());
        let progress =
            |fields: Vec<(&str, Value)>| Value::Map(fields.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
        let good = progress(vec![("epoch", Value::from(1)), ("loss", Value::Nil)]);
        assert!(v.validate(&record("progress", Some(owner.clone()), good)));
        let missing = progress(vec![("epoch", Value::from(1))]);
        assert!(!v.validate(&record("progress", Some(owner.clone()), missing)));
        let extra = progress(vec![("epoch", Value::from(1)), ("loss", Value::Nil), ("x", Value::Nil)]);
        assert!(!v.validate(&record("progress", Some(owner), extra)));
        let no_owner = progress(vec![("epoch", Value::from(1)), ("loss", Value::Nil)]);
        assert!(!v.validate(&record("progress", Some(Value::Binary(b"\n[owner:x]".to_vec())), no_owner)));
    }

    #[test]
    fn merged_schemas_accept_what_either_accepts() {
        let a = SchemaValidator::new(Schema::new().field("x", FieldType::strict_int()), false, Some("p"));
        let b = SchemaValidator::new(Schema::new().field("x", FieldType::Str), false, None);
        let merged = a.merge(&b).expect("schema validators merge");
        for key in ["p_x", "x"] {
            assert!(merged.validate(&record(key, None, Value::from(1))), "{key}");
            assert!(merged.validate(&record(key, None, Value::from("s"))), "{key}");
            assert!(!merged.validate(&record(key, None, Value::F64(1.5))), "{key}");
        }
        assert!(!merged.validate(&record("other", None, Value::from(1))));
    }

    #[test]
    fn a_chain_merges_schemas_and_keeps_one_rsa_validator_first() {
        use crate::dht::validation::{RsaSignatureValidator, Validators};
        let rsa = RsaSignatureValidator::new(rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap());
        let a = SchemaValidator::new(Schema::new().field("x", FieldType::strict_int()), false, None);
        let b = SchemaValidator::new(Schema::new().field("y", FieldType::Str), false, None);
        let chain = Validators::new(vec![Arc::new(a), Arc::new(rsa.clone()), Arc::new(b), Arc::new(rsa)]);
        assert_eq!(chain.len(), 2);
        assert!(chain.validate(&record("x", None, Value::from(1))));
        assert!(chain.validate(&record("y", None, Value::from("s"))));
        assert!(!chain.validate(&record("y", None, Value::from(1))));
        assert!(!chain.validate(&record("z", None, Value::from(1))));
    }
}
