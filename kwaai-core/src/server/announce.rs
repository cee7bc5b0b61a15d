//! The DHT records a Petals server writes (petals/utils/dht.py `declare_active_modules`,
//! petals/server/server.py `ModuleAnnouncerThread`).

use libp2p::PeerId;
use rmpv::Value;

use super::info::ServerInfo;
use super::prefix::block_uid;
use crate::dht::{dht_time, Dht, DhtTime, StoreItem};
use crate::error::{Error, Result};

/// The DHT key of the model registry, whose subkeys are DHT prefixes.
pub const MODELS_KEY: &str = "_petals.models";
/// hivemind's `MAX_DHT_TIME_DISCREPANCY_SECONDS`, the floor of an announcement's lifetime.
const MIN_EXPIRATION_SECS: f64 = 3.0;

/// A half-open range of block indices `start..end` served by one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First block.
    pub start: u32,
    /// One past the last block.
    pub end: u32,
}

impl Span {
    /// The span `start..end`; fails if it is empty.
    pub fn new(start: u32, end: u32) -> Result<Self> {
        if start >= end {
            return Err(Error::invalid_argument(format!("empty block span {start}..{end}")));
        }
        Ok(Span { start, end })
    }

    /// Parses Petals' `--block_indices` form `start:end` (end exclusive).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::invalid_argument(format!("block indices {text:?} must be start:end"));
        let (a, b) = text.split_once(':').ok_or_else(bad)?;
        let parse = |s: &str| s.trim().parse::<u32>().map_err(|_| bad());
        let (start, end) = (parse(a)?, parse(b)?);
        if start >= end {
            return Err(Error::invalid_argument(format!("block indices {text:?}: start must be below end")));
        }
        Ok(Span { start, end })
    }
}

/// How long announcements live, in seconds, given the re-announce period, as Petals computes it.
pub fn announcement_expiration(update_period_secs: f64) -> f64 {
    (2.0 * update_period_secs).max(MIN_EXPIRATION_SECS)
}

/// One record per block of `span`, each under `"{dht_prefix}.{block}"` with our base58 peer id as
/// subkey and `info` (with its span set to `span`) as value.
pub fn block_records(
    dht_prefix: &str,
    span: Span,
    peer: &PeerId,
    info: &ServerInfo,
    expiration: DhtTime,
) -> Result<Vec<StoreItem>> {
    check_prefix(dht_prefix)?;
    let info = ServerInfo { start_block: Some(span.start), end_block: Some(span.end), ..info.clone() };
    let value = info.to_value();
    let subkey = Value::from(peer.to_base58());
    Ok((span.start..span.end)
        .map(|block| StoreItem {
            key: Value::from(block_uid(dht_prefix, block)),
            subkey: Some(subkey.clone()),
            value: value.clone(),
            expiration,
        })
        .collect())
}

/// The `_petals.models` registry entry for `dht_prefix`, or `None` for a private prefix (one
/// starting with `_`), which Petals does not register.
pub fn model_record(
    dht_prefix: &str,
    num_blocks: u32,
    repository: Option<&str>,
    expiration: DhtTime,
) -> Result<Option<StoreItem>> {
    check_prefix(dht_prefix)?;
    if num_blocks == 0 {
        return Err(Error::invalid_argument("a model has at least one block"));
    }
    if dht_prefix.starts_with('_') {
        return Ok(None);
    }
    let value = Value::Map(vec![
        (Value::from("num_blocks"), Value::from(num_blocks)),
        (Value::from("repository"), repository.map_or(Value::Nil, Value::from)),
    ]);
    Ok(Some(StoreItem { key: Value::from(MODELS_KEY), subkey: Some(Value::from(dht_prefix)), value, expiration }))
}

/// Announces `span` of the model `dht_prefix` (of `num_blocks` blocks) with `info` for
/// `lifetime_secs`, as one Petals announcement cycle does; the model registry entry is skipped
/// when the state is OFFLINE. Returns whether each block record was accepted by some replica.
pub async fn announce(
    dht: &Dht,
    peer: &PeerId,
    dht_prefix: &str,
    span: Span,
    num_blocks: u32,
    info: &ServerInfo,
    lifetime_secs: f64,
) -> Result<Vec<bool>> {
    if span.end > num_blocks {
        return Err(Error::invalid_argument(format!("span {}..{} exceeds {num_blocks} blocks", span.start, span.end)));
    }
    let expiration = dht_time() + lifetime_secs;
    let mut items = block_records(dht_prefix, span, peer, info, expiration)?;
    let blocks = items.len();
    if info.state != super::ServerState::Offline {
        items.extend(model_record(dht_prefix, num_blocks, None, expiration)?);
    }
    let mut accepted = dht.store_many(items).await?;
    accepted.truncate(blocks);
    Ok(accepted)
}

fn check_prefix(dht_prefix: &str) -> Result<()> {
    if dht_prefix.is_empty() || dht_prefix.contains('.') || dht_prefix.contains(' ') {
        return Err(Error::invalid_argument(format!(
            "DHT prefix {dht_prefix:?} must be non-empty, without '.' or ' '"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerState;

    #[test]
    fn block_indices_parse_as_petals_writes_them() {
        assert_eq!(Span::parse("2:5").unwrap(), Span { start: 2, end: 5 });
        assert_eq!(Span::parse(" 0 : 1 ").unwrap(), Span { start: 0, end: 1 });
        for bad in ["5:2", "3:3", "5", "a:b", "-1:2"] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_records_cover_the_span_with_our_peer_id_as_subkey() {
        let peer = PeerId::random();
        let info = ServerInfo::new(ServerState::Online, 5.0);
        let items = block_records("tiny-hf", Span::new(1, 3).unwrap(), &peer, &info, 100.0).unwrap();
        let keys: Vec<_> = items.iter().map(|i| i.key.as_str().unwrap_or_default().to_owned()).collect();
        assert_eq!(keys, ["tiny-hf.1", "tiny-hf.2"]);
        for item in &items {
            assert_eq!(item.subkey, Some(Value::from(peer.to_base58())));
            let parsed = ServerInfo::from_value(&item.value).unwrap();
            assert_eq!((parsed.start_block, parsed.end_block), (Some(1), Some(3)));
            assert_eq!(item.expiration, 100.0);
        }
    }

    #[test]
    fn prefixes_with_delimiters_and_empty_spans_are_refused() {
        let info = ServerInfo::new(ServerState::Online, 5.0);
        let span = Span::new(0, 1).unwrap();
        assert!(block_records("a.b", span, &PeerId::random(), &info, 1.0).is_err());
        assert!(block_records("a b", span, &PeerId::random(), &info, 1.0).is_err());
        assert!(Span::new(2, 2).is_err());
    }

    #[test]
    fn private_prefixes_are_not_registered() {
        assert!(model_record("_private", 4, None, 1.0).unwrap().is_none());
        let record = model_record("tiny-hf", 4, Some("https://huggingface.co/x/y"), 1.0).unwrap().unwrap();
        assert_eq!(record.key, Value::from(MODELS_KEY));
        assert_eq!(record.subkey, Some(Value::from("tiny-hf")));
        assert_eq!(record.value.as_map().unwrap()[0], (Value::from("num_blocks"), Value::from(4u32)));
    }

    #[test]
    fn expiration_is_twice_the_period_with_a_floor() {
        assert_eq!(announcement_expiration(60.0), 120.0);
        assert_eq!(announcement_expiration(1.0), 3.0);
    }
}
