//! Record validation as hivemind does it: `DHTRecord`s checked on every store and every find
//! result, signed on store and stripped on read, by a chain of validators. The one validator that
//! matters across the swarm is [`RsaSignatureValidator`] (hivemind's `RSASignatureValidator`);
//! [`super::schema::SchemaValidator`] restricts the types of declared keys.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use regex::bytes::Regex;
use rmpv::Value;
use rsa::pss::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use crate::error::{Error, ErrorKind, Result};
use crate::wire::msgpack;

/// `DHTRecord`: what validators see. `key` is the 20-byte key ID, `subkey` the packed subkey
/// (`c0` for none), `value` the serialized value.
#[derive(Debug, Clone, PartialEq)]
pub struct DhtRecord {
    /// The key's 20-byte ID.
    pub key: Vec<u8>,
    /// The serialized subkey, `c0` for a regular value.
    pub subkey: Vec<u8>,
    /// The serialized value (with signatures while stored).
    pub value: Vec<u8>,
    /// Expiration in DHT time.
    pub expiration: f64,
}

impl DhtRecord {
    pub(crate) fn with_value(&self, value: Vec<u8>) -> DhtRecord {
        DhtRecord { value, ..self.clone() }
    }

    /// hivemind's signed form: msgpack of the tuple `(key, subkey, value, expiration)`.
    fn to_signed_bytes(&self) -> Vec<u8> {
        msgpack::pack(&msgpack::tuple(vec![
            Value::Binary(self.key.clone()),
            Value::Binary(self.subkey.clone()),
            Value::Binary(self.value.clone()),
            Value::F64(self.expiration),
        ]))
    }
}

/// A record validator (hivemind's `RecordValidatorBase`).
pub trait RecordValidator: Send + Sync {
    /// Whether the record (as stored or received) is acceptable.
    fn validate(&self, record: &DhtRecord) -> bool;
    /// The value to store for a record the application writes (e.g. with a signature appended).
    fn sign_value(&self, record: &DhtRecord) -> Vec<u8> {
        record.value.clone()
    }
    /// The value to return to the application for a valid record (e.g. without its signature).
    fn strip_value(&self, record: &DhtRecord) -> Vec<u8> {
        record.value.clone()
    }
    /// Validators sign in increasing priority and validate/strip in decreasing priority.
    fn priority(&self) -> i32 {
        0
    }
    /// hivemind's `merge_with`: a validator combining this one and `other` (which then is not
    /// added to the chain on its own), or `None` if they do not merge.
    fn merge(&self, _other: &dyn RecordValidator) -> Option<Arc<dyn RecordValidator>> {
        None
    }
    /// The validator as `Any`, so that [`RecordValidator::merge`] can recognize its own kind.
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }
}

/// The validators of a DHT, applied like hivemind's `CompositeValidator`.
#[derive(Clone, Default)]
pub struct Validators(Vec<Arc<dyn RecordValidator>>);

impl fmt::Debug for Validators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Validators({})", self.0.len())
    }
}

impl Validators {
    /// A chain of `validators` as hivemind's `CompositeValidator` builds it: each one is merged
    /// into the first earlier one that accepts it, the rest are ordered by priority.
    pub fn new(validators: Vec<Arc<dyn RecordValidator>>) -> Self {
        let mut chain: Vec<Arc<dyn RecordValidator>> = Vec::with_capacity(validators.len());
        for validator in validators {
            let merged = chain.iter().enumerate().find_map(|(i, v)| v.merge(validator.as_ref()).map(|m| (i, m)));
            match merged {
                Some((i, m)) => chain[i] = m,
                None => chain.push(validator),
            }
        }
        chain.sort_by_key(|v| v.priority());
        Validators(chain)
    }

    /// How many validators the chain holds after merging.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no validator (then every record is valid).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Validates from the highest priority down, stripping between validators.
    pub fn validate(&self, record: &DhtRecord) -> bool {
        let mut record = record.clone();
        for (i, validator) in self.0.iter().rev().enumerate() {
            if !validator.validate(&record) {
                return false;
            }
            if i + 1 < self.0.len() {
                record = record.with_value(validator.strip_value(&record));
            }
        }
        true
    }

    /// Signs from the lowest priority up.
    pub fn sign_value(&self, record: &DhtRecord) -> Vec<u8> {
        self.0.iter().fold(record.clone(), |r, v| r.with_value(v.sign_value(&r))).value
    }

    /// Strips from the highest priority down.
    pub fn strip_value(&self, record: &DhtRecord) -> Vec<u8> {
        self.0.iter().rev().fold(record.clone(), |r, v| r.with_value(v.strip_value(&r))).value
    }
}

fn owner_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?-u)\[owner:(.+?)\]").expect("valid regex"))
}

fn signature_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?-u)\[signature:(.+?)\]").expect("valid regex"))
}

/// hivemind's `RSASignatureValidator`: a record whose key or subkey contains
/// `[owner:ssh-rsa ...]` must carry exactly one `[signature:<base64>]` by that key, an RSA-PSS
/// (SHA-256, MGF1-SHA-256, maximal salt) signature of the record without the signature.
#[derive(Clone)]
pub struct RsaSignatureValidator {
    private_key: RsaPrivateKey,
    owner_marker: Vec<u8>,
}

impl RsaSignatureValidator {
    /// A validator that signs with `private_key` the records that carry its owner marker.
    pub fn new(private_key: RsaPrivateKey) -> Self {
        let owner_marker = [b"[owner:".as_slice(), &openssh_public_key(&private_key.to_public_key()), b"]"].concat();
        RsaSignatureValidator { private_key, owner_marker }
    }

    /// A validator with a fresh RSA-2048 key, as hivemind makes one per process.
    pub fn generate() -> Result<Self> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .map_err(|e| Error::with_source(ErrorKind::Internal, "generating an RSA key", e))?;
        Ok(Self::new(key))
    }

    /// `[owner:ssh-rsa ...]`: put it in a subkey to make the record writable only by this key.
    pub fn owner_marker(&self) -> &[u8] {
        &self.owner_marker
    }
}

impl RecordValidator for RsaSignatureValidator {
    fn validate(&self, record: &DhtRecord) -> bool {
        let mut owners: Vec<&[u8]> =
            owner_regex().captures_iter(&record.key).map(|c| c.get(1).expect("group").as_bytes()).collect();
        owners.extend(owner_regex().captures_iter(&record.subkey).map(|c| c.get(1).expect("group").as_bytes()));
        let Some(owner) = owners.first() else { return true };
        if owners.iter().any(|o| o != owner) {
            return false;
        }
        let Ok(public_key) = parse_openssh_public_key(owner) else { return false };
        let signatures: Vec<&[u8]> =
            signature_regex().captures_iter(&record.value).map(|c| c.get(1).expect("group").as_bytes()).collect();
        let [signature] = signatures.as_slice() else { return false };
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature) else { return false };
        let Ok(signature) = Signature::try_from(signature.as_slice()) else { return false };
        let stripped = record.with_value(self.strip_value(record));
        let verifier = VerifyingKey::<Sha256>::new_with_salt_len(public_key.clone(), max_salt_len(&public_key));
        verifier.verify(&stripped.to_signed_bytes(), &signature).is_ok()
    }

    fn sign_value(&self, record: &DhtRecord) -> Vec<u8> {
        let marker = self.owner_marker.as_slice();
        let contains = |hay: &[u8]| hay.windows(marker.len()).any(|w| w == marker);
        if !contains(&record.key) && !contains(&record.subkey) {
            return record.value.clone();
        }
        let public_key = self.private_key.to_public_key();
        let signer = SigningKey::<Sha256>::new_with_salt_len(self.private_key.clone(), max_salt_len(&public_key));
        let signature = signer.sign_with_rng(&mut rand::thread_rng(), &record.to_signed_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
        [record.value.as_slice(), b"[signature:", encoded.as_bytes(), b"]"].concat()
    }

    fn strip_value(&self, record: &DhtRecord) -> Vec<u8> {
        signature_regex().replace_all(&record.value, &b""[..]).into_owned()
    }

    fn priority(&self) -> i32 {
        10
    }

    fn merge(&self, other: &dyn RecordValidator) -> Option<Arc<dyn RecordValidator>> {
        // Like hivemind, a second RSA validator is dropped: the first one's key signs.
        other.as_any()?.downcast_ref::<RsaSignatureValidator>()?;
        Some(Arc::new(self.clone()))
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// PSS "maximal" salt: emLen - hLen - 2 (222 bytes for RSA-2048).
fn max_salt_len(key: &RsaPublicKey) -> usize {
    let em_len = (key.n().bits() - 1).div_ceil(8);
    em_len.saturating_sub(32 + 2)
}

/// `ssh-rsa <base64>` as OpenSSH (and hivemind) writes an RSA public key, without a comment.
fn openssh_public_key(key: &RsaPublicKey) -> Vec<u8> {
    let mut blob = Vec::new();
    put_ssh_string(&mut blob, b"ssh-rsa");
    put_ssh_mpint(&mut blob, &key.e().to_bytes_be());
    put_ssh_mpint(&mut blob, &key.n().to_bytes_be());
    [b"ssh-rsa ".as_slice(), base64::engine::general_purpose::STANDARD.encode(blob).as_bytes()].concat()
}

fn put_ssh_string(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn put_ssh_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let trimmed = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
    let pad = trimmed.first().is_some_and(|b| b & 0x80 != 0);
    out.extend_from_slice(&((trimmed.len() + pad as usize) as u32).to_be_bytes());
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

fn parse_openssh_public_key(text: &[u8]) -> Result<RsaPublicKey> {
    let bad = || Error::new(ErrorKind::Protocol, "bad ssh-rsa public key");
    let mut parts = text.split(|b| *b == b' ');
    if parts.next() != Some(b"ssh-rsa") {
        return Err(bad());
    }
    let blob = base64::engine::general_purpose::STANDARD.decode(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let mut rest = blob.as_slice();
    let mut take = || -> Result<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
        let field = rest.get(4..4 + len).ok_or_else(bad)?;
        rest = &rest[4 + len..];
        Ok(field)
    };
    if take()? != b"ssh-rsa" {
        return Err(bad());
    }
    let e = BigUint::from_bytes_be(take()?);
    let n = BigUint::from_bytes_be(take()?);
    RsaPublicKey::new(n, e).map_err(|e| Error::with_source(ErrorKind::Protocol, "bad ssh-rsa public key", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(subkey: &[u8], value: &[u8]) -> DhtRecord {
        DhtRecord { key: vec![7; 20], subkey: subkey.to_vec(), value: value.to_vec(), expiration: 1e9 }
    }

    #[test]
    fn owner_signed_records_verify_and_forgeries_do_not() {
        let owner = RsaSignatureValidator::generate().unwrap();
        let other = RsaSignatureValidator::generate().unwrap();
        let subkey = msgpack::pack(&Value::Binary([b"peer".as_slice(), owner.owner_marker()].concat()));
        let unsigned = record(&subkey, &msgpack::pack(&Value::from("hello")));
        let signed = unsigned.with_value(owner.sign_value(&unsigned));
        assert_ne!(signed.value, unsigned.value);
        assert!(owner.validate(&signed) && other.validate(&signed), "anyone verifies the owner's signature");
        assert_eq!(owner.strip_value(&signed), unsigned.value);
        assert!(!owner.validate(&unsigned), "an owned record needs a signature");
        assert_eq!(other.sign_value(&unsigned), unsigned.value, "only the owner signs");
        let tampered = DhtRecord { expiration: 2e9, ..signed.clone() };
        assert!(!owner.validate(&tampered));
        let twice = signed.with_value(owner.sign_value(&signed));
        assert!(!owner.validate(&twice), "exactly one signature");
        assert!(owner.validate(&record(b"\xc0", b"anything")), "unowned records pass");
    }

    #[test]
    fn openssh_keys_round_trip() {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap().to_public_key();
        let text = openssh_public_key(&key);
        assert!(text.starts_with(b"ssh-rsa AAAAB3NzaC1yc2E"));
        assert_eq!(parse_openssh_public_key(&text).unwrap(), key);
        assert!(parse_openssh_public_key(b"ssh-rsa !!!").is_err());
    }
}
