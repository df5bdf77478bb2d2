//! 32-byte identifiers: blob ids (keyed BLAKE3 of plaintext) and object names
//! (unkeyed BLAKE3 of the stored bytes).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// A 32-byte identifier, shown as 64 lowercase hex digits.
///
/// Serialized by postcard as 32 raw bytes (a fixed-size array has no length prefix).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // JSON (`cat`, `--json`) shows hex; postcard stores the 32 bytes as a fixed array.
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Id::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            Ok(Id(<[u8; 32]>::deserialize(d)?))
        }
    }
}

impl Id {
    /// Length of an id in bytes.
    pub const LEN: usize = 32;

    /// The unkeyed BLAKE3 hash of `data`: the name of a stored object.
    ///
    /// Unkeyed on purpose: anyone can verify the integrity of the storage without the password.
    pub fn of_object(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    /// Full lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as shown to users.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parse a full 64-digit hex id.
    pub fn from_hex(s: &str) -> Result<Id, FormatError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| FormatError::BadId(s.to_owned()))?;
        Ok(Id(out))
    }

    /// Whether this id's hex form starts with `prefix` (case-insensitive).
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        self.to_hex().starts_with(&prefix.to_ascii_lowercase())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Id, FormatError> {
        Id::from_hex(s)
    }
}
