//! Expert UIDs as hivemind writes them (hivemind/moe/expert_uid.py): `prefix.i.j…`, an expert
//! type without dots followed by one or more grid coordinates, each `0` or a number without a
//! leading zero. A prefix is such a string cut after a dot (`ffn.`, `ffn.3.`).

use libp2p::PeerId;

use crate::error::{Error, Result};

/// What separates an expert's type and its coordinates.
pub const UID_DELIMITER: char = '.';

/// The subkey a 1-D expert is declared under in its `"{uid}."` key: hivemind's `FLAT_EXPERT`.
pub const FLAT_EXPERT: i64 = -1;

/// An expert and the peer that serves it (hivemind's `ExpertInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpertInfo {
    /// The expert's UID.
    pub uid: String,
    /// The peer serving it.
    pub peer_id: PeerId,
}

fn is_coordinate(part: &str) -> bool {
    match part.as_bytes() {
        [b'0'] => true,
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
        [] => false,
    }
}

/// Whether `text` is an expert UID: `type.c1[.c2…]` (hivemind's `UID_PATTERN`).
pub fn is_valid_uid(text: &str) -> bool {
    let mut parts = text.split(UID_DELIMITER);
    let head = parts.next().unwrap_or_default();
    let coordinates: Vec<&str> = parts.collect();
    !head.is_empty() && !coordinates.is_empty() && coordinates.iter().all(|c| is_coordinate(c))
}

/// Whether `text` is an expert prefix: `type.` or `type.c1.…ck.` (hivemind's `PREFIX_PATTERN`).
pub fn is_valid_prefix(text: &str) -> bool {
    match text.strip_suffix(UID_DELIMITER) {
        Some(body) if !body.contains(UID_DELIMITER) => !body.is_empty(),
        Some(body) => is_valid_uid(body),
        None => false,
    }
}

/// Splits a UID or prefix into the prefix before its last coordinate and that coordinate
/// (hivemind's `split_uid`): `ffn.1.2` → (`ffn.1.`, 2), `ffn.1.` → (`ffn.`, 1).
pub fn split_uid(uid_or_prefix: &str) -> Result<(String, i64)> {
    let trimmed = uid_or_prefix.trim_end_matches(UID_DELIMITER);
    let pivot = trimmed
        .rfind(UID_DELIMITER)
        .ok_or_else(|| Error::invalid_argument(format!("{uid_or_prefix:?} has no coordinate to split off")))?
        + 1;
    let coordinate = trimmed[pivot..]
        .parse::<i64>()
        .map_err(|_| Error::invalid_argument(format!("{uid_or_prefix:?} does not end in a numeric coordinate")))?;
    Ok((trimmed[..pivot].to_owned(), coordinate))
}

/// The grid coordinates of `uid` (everything after its type).
pub fn coordinates(uid: &str) -> Result<Vec<i64>> {
    if !is_valid_uid(uid) {
        return Err(Error::invalid_argument(format!("{uid:?} is not a valid expert uid")));
    }
    uid.split(UID_DELIMITER).skip(1).map(|c| c.parse::<i64>().map_err(|_| bad_uid(uid))).collect()
}

fn bad_uid(uid: &str) -> Error {
    Error::invalid_argument(format!("{uid:?} has a coordinate out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_follow_hiveminds_pattern() {
        for good in ["ffn.0", "ffn.10.3", "expert_x.98.76.54", "a b.1", "é.0.0"] {
            assert!(is_valid_uid(good), "{good}");
        }
        for bad in ["ffn", "ffn.", ".1", "ffn.01", "ffn.1.", "ffn..1", "ffn.-1", "ffn.a", "a.b.1", "ffn.1 "] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
    }

    #[test]
    fn prefixes_end_with_the_delimiter() {
        for good in ["ffn.", "ffn.0.", "ffn.12.3."] {
            assert!(is_valid_prefix(good), "{good}");
        }
        for bad in ["ffn", ".", "ffn.01.", "ffn..", "ffn.1", "a.b."] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn split_uid_peels_the_last_coordinate() {
        assert_eq!(split_uid("ffn.1.2").unwrap(), ("ffn.1.".to_owned(), 2));
        assert_eq!(split_uid("ffn.1.").unwrap(), ("ffn.".to_owned(), 1));
        assert_eq!(split_uid("e.5.-1").unwrap(), ("e.5.".to_owned(), -1));
        assert!(split_uid("ffn").is_err());
        assert_eq!(coordinates("ffn.3.0").unwrap(), vec![3, 0]);
    }
}
