//! Content fingerprints: the keys of the cache.
//!
//! A fingerprint is the first 128 bits of a SHA-256 over a domain tag and length-prefixed fields, written as
//! 32 lowercase hex digits. The domain tag keeps fingerprints of different kinds of things apart; length
//! prefixes make the encoding unambiguous (`("ab","c")` and `("a","bc")` differ).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// A 128-bit content fingerprint, shown as 32 hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for logs and tables.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// Incremental fingerprint builder.
#[derive(Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Starts a fingerprint of the kind named by `domain` (e.g. `"distill.shard.v1"`).
    pub fn new(domain: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.field(domain.as_bytes());
        h
    }

    /// Adds one length-prefixed field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.field(s.as_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.field(&v.to_le_bytes())
    }

    /// Adds a long field in pieces: `begin_stream(total_len)`, then `stream_chunk` for each piece.
    pub fn begin_stream(&mut self, total_len: u64) -> &mut Self {
        self.0.update(total_len.to_le_bytes());
        self
    }

    pub fn stream_chunk(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint(hex::encode(self.finish_u128().to_be_bytes()))
    }

    /// The same 128 bits as a number (a fingerprint is its 32 hex digits).
    pub fn finish_u128(self) -> u128 {
        let digest = self.0.finalize();
        u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let a = Hasher::new("t").str("ab").str("c").clone().finish();
        let b = Hasher::new("t").str("a").str("bc").clone().finish();
        assert_ne!(a, b);
    }

    #[test]
    fn domains_keep_kinds_apart() {
        let a = Hasher::new("x").str("same").clone().finish();
        let b = Hasher::new("y").str("same").clone().finish();
        assert_ne!(a, b);
    }

    #[test]
    fn streamed_field_equals_whole_field() {
        let whole = Hasher::new("t").field(b"hello world").clone().finish();
        let mut h = Hasher::new("t");
        h.begin_stream(11)
            .stream_chunk(b"hello ")
            .stream_chunk(b"world");
        assert_eq!(whole, h.finish());
    }

    #[test]
    fn parse_roundtrip() {
        let f = Hasher::new("t").finish();
        assert_eq!(Fingerprint::parse(f.as_str()), Some(f.clone()));
        assert_eq!(f.as_str().len(), 32);
        assert!(Fingerprint::parse("XYZ").is_none());
    }
}
