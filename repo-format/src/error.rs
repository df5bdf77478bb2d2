use thiserror::Error;

/// Everything that can be wrong with bytes that claim to be part of a cairn repository.
#[derive(Debug, Error)]
pub enum FormatError {
    /// The object does not start with cairn's magic bytes.
    #[error("not a cairn {expected} file (bad magic bytes)")]
    BadMagic {
        /// What kind of file was expected.
        expected: &'static str,
    },
    /// The object is of another kind than the one asked for.
    #[error("expected a {expected} file, found a {found} file")]
    WrongKind {
        /// The kind asked for.
        expected: &'static str,
        /// The kind in the preamble.
        found: String,
    },
    /// A format version this build does not know.
    #[error("unsupported {kind} format version {version} (this cairn reads versions up to {supported}); upgrade cairn")]
    UnsupportedVersion {
        /// The file kind.
        kind: &'static str,
        /// The version found.
        version: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// The object is shorter than its structure requires.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Authentication of encrypted data failed: wrong key, or the bytes were altered.
    #[error("authentication failed for {0}: wrong key or corrupted/tampered data")]
    Authentication(String),
    /// Decryption worked but the content does not hash to the expected id.
    #[error("content of {what} hashes to {actual}, expected {expected}")]
    IdMismatch {
        /// What was checked.
        what: String,
        /// The id recorded.
        expected: String,
        /// The id computed.
        actual: String,
    },
    /// Decryption worked and the content hashes right, but its length is not the recorded one.
    #[error("{what} is {actual} bytes long, but its index entry says {expected}")]
    LengthMismatch {
        /// What was checked.
        what: String,
        /// The length recorded.
        expected: u64,
        /// The length found.
        actual: u64,
    },
    /// A stored object or entry claims more than the format allows.
    #[error("{what} claims {claimed} bytes, more than the format's limit of {limit}")]
    TooLarge {
        /// What made the claim.
        what: String,
        /// What it claims.
        claimed: u64,
        /// The limit (FORMAT.md, "Limits").
        limit: u64,
    },
    /// The payload could not be decoded.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was decoded.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// Decompression failed.
    #[error("decompression failed for {0}")]
    Decompress(String),
    /// No key file matches the password.
    #[error("wrong password or no key file matches it")]
    WrongPassword,
    /// A hex id could not be parsed.
    #[error("invalid id {0:?}")]
    BadId(String),
    /// Parameters out of their allowed range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}
