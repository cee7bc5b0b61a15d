//! The msgpack `metadata` map Petals requests carry (fact sheet §1.6), read and rewritten.

use rmpv::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::wire::msgpack;

/// A request's metadata: a msgpack map with string keys (empty bytes mean an empty map).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metadata(Vec<(Value, Value)>);

impl Metadata {
    /// Parses serialized metadata.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Metadata> {
        if bytes.is_empty() {
            return Ok(Metadata(Vec::new()));
        }
        match msgpack::unpack(bytes)? {
            Value::Map(entries) => Ok(Metadata(entries)),
            _ => Err(Error::new(ErrorKind::Protocol, "request metadata is not a map")),
        }
    }

    /// The value under `key`, if any (nil counts as absent, as `dict.get` callers treat it).
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v).filter(|v| !v.is_nil())
    }

    /// A string entry.
    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Sets `key` to `value`, keeping its place if present (as `dict.update` does).
    pub(crate) fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
            Some(entry) => entry.1 = value,
            None => self.0.push((Value::from(key), value)),
        }
    }

    /// Serializes the map.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        msgpack::pack(&Value::Map(self.0.clone()))
    }
}

/// Python's `repr` of a msgpack value, close enough for error messages.
pub(crate) fn py_repr(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Nil) => "None".into(),
        Some(Value::String(s)) => format!("'{}'", s.as_str().unwrap_or_default()),
        Some(Value::Boolean(b)) => if *b { "True" } else { "False" }.into(),
        Some(other) => other.to_string(),
    }
}

/// The items of a msgpack array or hivemind tuple.
pub(crate) fn sequence(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) => Some(items.clone()),
        other => msgpack::as_tuple(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_in_place_and_appends_new_keys() {
        let map = Value::Map(vec![(Value::from("session_id"), Value::from("a")), (Value::from("x"), Value::from(1))]);
        let mut meta = Metadata::parse(&msgpack::pack(&map)).unwrap();
        meta.set("session_id", Value::from("b"));
        meta.set("pushed", Value::Boolean(true));
        let back = msgpack::unpack(&meta.to_bytes()).unwrap();
        let keys: Vec<_> = back.as_map().unwrap().iter().map(|(k, _)| k.as_str().unwrap().to_owned()).collect();
        assert_eq!(keys, ["session_id", "x", "pushed"]);
        assert_eq!(meta.str("session_id"), Some("b"));
        assert!(Metadata::parse(&[]).unwrap().get("x").is_none());
        assert_eq!(py_repr(None), "None");
        assert_eq!(py_repr(Some(&Value::from("s"))), "'s'");
    }
}
