//! Petals' `ServerInfo` record (petals/data_structures.py) and its msgpack tuple form.

use rmpv::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::wire::msgpack;

/// The handle name of `rpc_info`.
pub const RPC_INFO: &str = "TransformerConnectionHandler.rpc_info";

/// The Petals version our records claim, as clients compare it with their own.
pub const PETALS_VERSION: &str = "2.2.0.post1";

/// A server's state as Petals announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Leaving or gone: clients skip it.
    Offline = 0,
    /// Loading its blocks.
    Joining = 1,
    /// Serving.
    Online = 2,
}

impl ServerState {
    fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::Offline),
            1 => Some(Self::Joining),
            2 => Some(Self::Online),
            _ => None,
        }
    }
}

/// What a server announces about itself under each block it serves (Petals `ServerInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Its state.
    pub state: ServerState,
    /// Requests per second it sustains for a full span (clients route by it).
    pub throughput: f64,
    /// First block served.
    pub start_block: Option<u32>,
    /// One past the last block served.
    pub end_block: Option<u32>,
    /// A name for swarm monitors.
    pub public_name: Option<String>,
    /// The Petals version it speaks.
    pub version: Option<String>,
    /// Measured network throughput.
    pub network_rps: Option<f64>,
    /// Measured forward throughput.
    pub forward_rps: Option<f64>,
    /// Measured inference throughput.
    pub inference_rps: Option<f64>,
    /// Names of the adapters it serves.
    pub adapters: Vec<String>,
    /// Compute dtype as torch names it (`float32`, `float16`, `bfloat16`).
    pub torch_dtype: Option<String>,
    /// Weight quantization (`none`, `int8`, `nf4`).
    pub quant_type: Option<String>,
    /// Whether it is reachable only through a relay.
    pub using_relay: Option<bool>,
    /// Attention-cache tokens it can still allocate.
    pub cache_tokens_left: Option<u64>,
    /// Round-trip times (seconds) to servers of the next blocks, by base58 peer id.
    pub next_pings: Option<Vec<(String, f64)>>,
}

impl ServerInfo {
    /// A record with the given state and throughput, our Petals version and nothing else.
    pub fn new(state: ServerState, throughput: f64) -> Self {
        ServerInfo {
            state,
            throughput,
            start_block: None,
            end_block: None,
            public_name: None,
            version: Some(PETALS_VERSION.to_owned()),
            network_rps: None,
            forward_rps: None,
            inference_rps: None,
            adapters: Vec::new(),
            torch_dtype: None,
            quant_type: None,
            using_relay: None,
            cache_tokens_left: None,
            next_pings: None,
        }
    }

    /// The value Petals stores: the tuple `(state, throughput, extra)` with `extra` holding every
    /// other field, in Petals' field order, floats as floats and ints as ints.
    pub fn to_value(&self) -> Value {
        let opt_str = |s: &Option<String>| s.as_ref().map_or(Value::Nil, |s| Value::from(s.as_str()));
        let opt_f64 = |x: Option<f64>| x.map_or(Value::Nil, Value::F64);
        let opt_int = |x: Option<u64>| x.map_or(Value::Nil, Value::from);
        let adapters = msgpack::tuple(self.adapters.iter().map(|a| Value::from(a.as_str())).collect());
        let next_pings = self.next_pings.as_ref().map_or(Value::Nil, |pings| {
            Value::Map(pings.iter().map(|(peer, rtt)| (Value::from(peer.as_str()), Value::F64(*rtt))).collect())
        });
        let extra = vec![
            ("start_block", opt_int(self.start_block.map(u64::from))),
            ("end_block", opt_int(self.end_block.map(u64::from))),
            ("public_name", opt_str(&self.public_name)),
            ("version", opt_str(&self.version)),
            ("network_rps", opt_f64(self.network_rps)),
            ("forward_rps", opt_f64(self.forward_rps)),
            ("inference_rps", opt_f64(self.inference_rps)),
            ("adapters", adapters),
            ("torch_dtype", opt_str(&self.torch_dtype)),
            ("quant_type", opt_str(&self.quant_type)),
            ("using_relay", self.using_relay.map_or(Value::Nil, Value::Boolean)),
            ("cache_tokens_left", opt_int(self.cache_tokens_left)),
            ("next_pings", next_pings),
        ];
        let extra = Value::Map(extra.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
        msgpack::tuple(vec![Value::from(self.state as u64), Value::F64(self.throughput), extra])
    }

    /// Parses a stored record as Petals' `ServerInfo.from_tuple` does: a 2- or 3-item tuple,
    /// strict types, unknown keys ignored.
    pub fn from_value(value: &Value) -> Result<Self> {
        let items = msgpack::as_tuple(value).ok_or_else(|| bad("ServerInfo is not a tuple"))?;
        if items.len() < 2 {
            return Err(bad("ServerInfo tuple has fewer than 2 items"));
        }
        let state = items[0].as_u64().and_then(ServerState::from_code).ok_or_else(|| bad("bad ServerInfo state"))?;
        let throughput = rps(&items[1])?.ok_or_else(|| bad("ServerInfo throughput is nil"))?;
        let mut info = ServerInfo::new(state, throughput);
        info.version = None;
        let Some(extra) = items.get(2) else { return Ok(info) };
        let entries = extra.as_map().ok_or_else(|| bad("ServerInfo extra is not a map"))?;
        for (key, value) in entries {
            match key.as_str().unwrap_or_default() {
                "start_block" => info.start_block = opt_u32(value)?,
                "end_block" => info.end_block = opt_u32(value)?,
                "public_name" => info.public_name = opt_string(value)?,
                "version" => info.version = opt_string(value)?,
                "network_rps" => info.network_rps = rps(value)?,
                "forward_rps" => info.forward_rps = rps(value)?,
                "inference_rps" => info.inference_rps = rps(value)?,
                "adapters" => info.adapters = strings(value)?,
                "torch_dtype" => info.torch_dtype = opt_string(value)?,
                "quant_type" => info.quant_type = opt_string(value)?,
                "using_relay" => info.using_relay = opt_bool(value)?,
                "cache_tokens_left" => info.cache_tokens_left = opt_u64(value)?,
                "next_pings" => info.next_pings = pings(value)?,
                _ => {}
            }
        }
        Ok(info)
    }
}

fn bad(message: &str) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

/// A strict non-negative finite float, or nil.
fn rps(value: &Value) -> Result<Option<f64>> {
    match value {
        Value::Nil => Ok(None),
        Value::F64(x) if x.is_finite() && *x >= 0.0 => Ok(Some(*x)),
        Value::F32(x) if x.is_finite() && *x >= 0.0 => Ok(Some(f64::from(*x))),
        _ => Err(bad("ServerInfo rate is not a finite non-negative float")),
    }
}

fn opt_u64(value: &Value) -> Result<Option<u64>> {
    match value {
        Value::Nil => Ok(None),
        Value::Integer(_) => value.as_u64().map(Some).ok_or_else(|| bad("ServerInfo integer is negative")),
        _ => Err(bad("ServerInfo integer field is not an integer")),
    }
}

fn opt_u32(value: &Value) -> Result<Option<u32>> {
    opt_u64(value)?.map(|x| u32::try_from(x).map_err(|_| bad("ServerInfo block index too large"))).transpose()
}

fn opt_string(value: &Value) -> Result<Option<String>> {
    match value {
        Value::Nil => Ok(None),
        Value::String(s) => s.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| bad("ServerInfo string is not UTF-8")),
        _ => Err(bad("ServerInfo string field is not a string")),
    }
}

fn opt_bool(value: &Value) -> Result<Option<bool>> {
    match value {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(*b)),
        _ => Err(bad("ServerInfo flag is not a bool")),
    }
}

fn strings(value: &Value) -> Result<Vec<String>> {
    let items = match value {
        Value::Array(items) => items.clone(),
        other => msgpack::as_tuple(other).ok_or_else(|| bad("ServerInfo adapters is not a sequence"))?,
    };
    items.iter().map(|item| opt_string(item)?.ok_or_else(|| bad("ServerInfo adapter is nil"))).collect()
}

fn pings(value: &Value) -> Result<Option<Vec<(String, f64)>>> {
    let Value::Map(entries) = value else {
        return match value {
            Value::Nil => Ok(None),
            _ => Err(bad("ServerInfo next_pings is not a map")),
        };
    };
    entries
        .iter()
        .map(|(peer, rtt)| {
            let peer = opt_string(peer)?.ok_or_else(|| bad("ServerInfo next_pings key is nil"))?;
            match rtt {
                Value::F64(x) if *x >= 0.0 => Ok((peer, *x)),
                _ => Err(bad("ServerInfo ping is not a non-negative float")),
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_info() -> ServerInfo {
        ServerInfo {
            start_block: Some(2),
            end_block: Some(5),
            public_name: Some("kwaai".into()),
            network_rps: Some(100.5),
            forward_rps: Some(20.0),
            inference_rps: Some(3.25),
            adapters: vec!["a".into(), "b".into()],
            torch_dtype: Some("float32".into()),
            quant_type: Some("none".into()),
            using_relay: Some(false),
            cache_tokens_left: Some(4096),
            next_pings: Some(vec![("QmPeer".into(), 0.01), ("QmOther".into(), f64::INFINITY)]),
            ..ServerInfo::new(ServerState::Online, 12.5)
        }
    }

    #[test]
    fn record_is_a_three_item_tuple_with_fields_in_petals_order() {
        let items = msgpack::as_tuple(&full_info().to_value()).expect("a tuple");
        assert_eq!(items[0], Value::from(2u64));
        assert_eq!(items[1], Value::F64(12.5));
        let keys: Vec<&str> = items[2].as_map().expect("a map").iter().filter_map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "start_block",
                "end_block",
                "public_name",
                "version",
                "network_rps",
                "forward_rps",
                "inference_rps",
                "adapters",
                "torch_dtype",
                "quant_type",
                "using_relay",
                "cache_tokens_left",
                "next_pings"
            ]
        );
    }

    #[test]
    fn record_round_trips_through_msgpack() {
        let info = full_info();
        let bytes = msgpack::pack(&info.to_value());
        let parsed = ServerInfo::from_value(&msgpack::unpack(&bytes).expect("unpacks")).expect("parses");
        assert_eq!(parsed, info);
    }

    #[test]
    fn throughput_is_a_float_even_when_whole() {
        let bytes = msgpack::pack(&ServerInfo::new(ServerState::Joining, 1.0).to_value());
        let items = msgpack::as_tuple(&msgpack::unpack(&bytes).expect("unpacks")).expect("a tuple");
        assert_eq!(items[1], Value::F64(1.0));
    }

    #[test]
    fn parsing_rejects_what_petals_rejects() {
        let int_throughput = msgpack::tuple(vec![Value::from(2u64), Value::from(3u64)]);
        assert!(ServerInfo::from_value(&int_throughput).is_err());
        let bad_state = msgpack::tuple(vec![Value::from(7u64), Value::F64(1.0)]);
        assert!(ServerInfo::from_value(&bad_state).is_err());
        let two_items = msgpack::tuple(vec![Value::from(0u64), Value::F64(1.0)]);
        assert_eq!(ServerInfo::from_value(&two_items).expect("2 items").state, ServerState::Offline);
        let extra_key = msgpack::tuple(vec![
            Value::from(1u64),
            Value::F64(1.0),
            Value::Map(vec![(Value::from("unknown"), Value::from(1u64))]),
        ]);
        assert!(ServerInfo::from_value(&extra_key).is_ok());
    }
}
