//! `keys/<id>`: the master key wrapped by a key derived from a password.
//!
//! ```text
//! key file = preamble("K") || postcard(KeyFile)
//! KeyFile.wrapped = seal(argon2id(password, kdf), aad = preamble, postcard(MasterKey))
//! ```
//! The envelope is not encrypted (the KDF parameters must be readable before a key exists);
//! the preamble as associated data stops a wrapped key from being moved into another kind.

use serde::{Deserialize, Serialize};

use crate::crypto::{open_with_key, seal_with_nonce, KdfParams, MasterKey, NONCE_LEN};
use crate::file::{check_preamble, from_postcard, preamble, to_postcard, FileKind, PREAMBLE_LEN};
use crate::{FormatError, Timestamp};

/// A key file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    /// When the key was added.
    pub created: Timestamp,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// The sealed master key.
    pub wrapped: Vec<u8>,
}

impl KeyFile {
    /// Wrap `master` under `password` with the given KDF parameters and nonce source.
    pub fn wrap(
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        created: Timestamp,
        hostname: String,
        username: String,
        nonce: [u8; NONCE_LEN],
    ) -> Result<KeyFile, FormatError> {
        let kek = kdf.derive(password)?;
        let aad = key_aad(&created, &hostname, &username, &kdf);
        let wrapped = seal_with_nonce(&kek, &nonce, &aad, &to_postcard(master));
        Ok(KeyFile {
            created,
            hostname,
            username,
            kdf,
            wrapped,
        })
    }

    /// Unwrap with `password`.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<MasterKey, FormatError> {
        let kek = self.kdf.derive(password)?;
        self.unwrap_with(&kek)
    }

    /// [`KeyFile::unwrap_key`] for a key whose KDF is only within the range earlier builds
    /// accepted ([`crate::KdfParams::check_legacy_range`]).
    pub fn unwrap_key_legacy(&self, password: &[u8]) -> Result<MasterKey, FormatError> {
        let kek = self.kdf.derive_legacy(password)?;
        self.unwrap_with(&kek)
    }

    fn unwrap_with(&self, kek: &[u8; 32]) -> Result<MasterKey, FormatError> {
        let aad = key_aad(&self.created, &self.hostname, &self.username, &self.kdf);
        let plain = open_with_key(kek, &aad, &self.wrapped, "key file")
            .map_err(|_| FormatError::WrongPassword)?;
        from_postcard(&plain, "master key")
    }

    /// Encode to the bytes stored in `keys/`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = preamble(FileKind::Key).to_vec();
        out.extend_from_slice(&to_postcard(self));
        out
    }

    /// Decode from stored bytes.
    pub fn decode(data: &[u8]) -> Result<KeyFile, FormatError> {
        let (_v, body) = check_preamble(data, FileKind::Key)?;
        debug_assert_eq!(data.len() - body.len(), PREAMBLE_LEN);
        from_postcard(body, "key file")
    }
}

/// Associated data of the wrapped master key: the v1 key scheme tag, then the envelope's own
/// fields, so that editing a key file's creation time, host, user or KDF parameters is detected.
fn key_aad(created: &Timestamp, hostname: &str, username: &str, kdf: &KdfParams) -> Vec<u8> {
    let mut aad = b"cairnK\x01\x00".to_vec();
    aad.extend_from_slice(&to_postcard(&(created, hostname, username, kdf)));
    aad
}
