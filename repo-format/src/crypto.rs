//! The master key, authenticated encryption, blob ids and the password KDF.
//!
//! Sealed box layout: `nonce (24) || ciphertext || tag (16)`, XChaCha20-Poly1305, random nonce.
//! A 192-bit random nonce never repeats in practice, so no counter state has to be kept
//! across processes or machines that write to the same repository.
//!
//! XChaCha20-Poly1305 is computed as its definition reads (draft-irtf-cfrg-xchacha §2.3):
//! HChaCha20 of the key and the first 16 nonce bytes gives a subkey, and the IETF
//! ChaCha20-Poly1305 of AWS-LC (the library rustls already links for S3's TLS) seals with it
//! under the nonce `0^4 || nonce[16..24]`. AWS-LC's stitched assembly runs at twice the speed
//! of the portable crate on this project's machines, and seals and opens in place, so a blob
//! is copied once instead of three times. The golden vectors (made with the RustCrypto
//! `chacha20poly1305` crate) and a property test against that crate pin the bytes.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{FormatError, Id};

/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed box adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The repository master key: created once at `init`, stored only wrapped in key files.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MasterKey {
    /// XChaCha20-Poly1305 key for every encrypted object and blob.
    pub encryption: [u8; 32],
    /// BLAKE3 key for blob ids, so the store cannot test whether it holds a known file.
    pub id_key: [u8; 32],
    /// Seed XORed into the FastCDC gear table, so chunk boundaries do not leak known content.
    pub chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> MasterKey {
        let mut rng = rand::rng();
        let mut encryption = [0u8; 32];
        let mut id_key = [0u8; 32];
        rng.fill_bytes(&mut encryption);
        rng.fill_bytes(&mut id_key);
        MasterKey {
            encryption,
            id_key,
            chunker_seed: rng.next_u64(),
        }
    }

    /// The blob id of `plaintext`: keyed BLAKE3.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Seal with a fresh random nonce.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with_nonce(&self.encryption, &random_nonce(), aad, plaintext)
    }

    /// Open a sealed box; `what` names it in the error.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>, FormatError> {
        open_with_key(&self.encryption, aad, sealed, what)
    }
}

/// A fresh nonce from the operating system's CSPRNG.
pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// The IETF ChaCha20-Poly1305 key and nonce that XChaCha20-Poly1305 with `key` and `nonce`
/// reduces to.
fn xchacha(key: &[u8; 32], nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
    let mut head = [0u8; 16];
    head.copy_from_slice(&nonce[..16]);
    let subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(&(*key).into(), &head.into());
    let mut short = [0u8; 12];
    short[4..].copy_from_slice(&nonce[16..]);
    // A 32-byte key is the only thing `UnboundKey::new` checks for ChaCha20-Poly1305.
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice())
        .expect("ChaCha20-Poly1305 takes a 32-byte key");
    (
        LessSafeKey::new(unbound),
        Nonce::assume_unique_for_key(short),
    )
}

/// Append a sealed box to `out`: the nonce, then the plaintext that `fill` appends (encrypted
/// in place), then the tag. Writing the plaintext straight into its final place saves the
/// copies a `Vec`-returning AEAD makes.
pub fn seal_append(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(nonce);
    let start = out.len();
    fill(out);
    let (cipher, nonce) = xchacha(key, nonce);
    // Sealing fails only for messages over 256 GiB; callers seal single blobs and metadata
    // files, which the format bounds far below that.
    let tag = cipher
        .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[start..])
        .expect("sealed message within ChaCha20-Poly1305's length limit");
    out.extend_from_slice(tag.as_ref());
}

/// Seal with an explicit nonce. Only test vectors and key wrapping call this directly.
pub fn seal_with_nonce(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    seal_append(key, nonce, aad, &mut out, |o| {
        o.extend_from_slice(plaintext)
    });
    out
}

/// Open `nonce || ciphertext || tag` in place; returns the plaintext, a sub-slice of `sealed`.
/// On failure the contents of `sealed` are unspecified.
pub fn open_in_place<'a>(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &'a mut [u8],
    what: &str,
) -> Result<&'a [u8], FormatError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(FormatError::Authentication(format!("{what} (too short)")));
    }
    let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = (&*nonce)
        .try_into()
        .map_err(|_| FormatError::Authentication(format!("{what} (too short)")))?;
    let (cipher, nonce) = xchacha(key, nonce);
    cipher
        .open_in_place(nonce, Aad::from(aad), body)
        .map(|plain| &*plain)
        .map_err(|_| FormatError::Authentication(what.to_owned()))
}

/// Open `nonce || ciphertext || tag` with `key`.
pub fn open_with_key(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
    what: &str,
) -> Result<Vec<u8>, FormatError> {
    let mut buf = sealed.to_vec();
    let len = open_in_place(key, aad, &mut buf, what)?.len();
    // The plaintext sits right after the nonce: shift it down instead of copying it out.
    buf.copy_within(NONCE_LEN..NONCE_LEN + len, 0);
    buf.truncate(len);
    Ok(buf)
}

/// Argon2id parameters, stored in each key file so they can be raised later without a format change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Random salt.
    pub salt: [u8; 32],
}

/// Largest Argon2id memory a key file may ask for (256 MiB).
pub const KDF_MAX_MEMORY_KIB: u32 = 256 * 1024;
/// Most Argon2id passes a key file may ask for.
pub const KDF_MAX_ITERATIONS: u32 = 16;
/// Most Argon2id lanes a key file may ask for.
pub const KDF_MAX_LANES: u32 = 16;
/// Largest memory × passes (KiB): 1 GiB·pass, e.g. 256 MiB × 4 or 64 MiB × 16 (the default is
/// 64 MiB × 3). Bounds the time one key file can cost every command.
pub const KDF_MAX_WORK: u64 = 1024 * 1024;

/// Argon2id lanes of new keys. RFC 9106's memory-constrained recommendation (§4: 64 MiB,
/// 3 passes, 4 lanes); the lanes are computed on parallel threads, so opening a repository
/// on two cores took 0.09 instead of 0.14 s (`snapshots`), for the same memory cost.
pub const DEFAULT_KDF_LANES: u32 = 4;

impl KdfParams {
    /// Default cost: 64 MiB, 3 passes, 4 lanes (RFC 9106 §4; OWASP asks for ≥ 19 MiB, 2 passes).
    pub fn new_default() -> KdfParams {
        Self::new(64 * 1024, 3, DEFAULT_KDF_LANES)
    }

    /// Explicit cost with a fresh salt.
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> KdfParams {
        let mut salt = [0u8; 32];
        rand::rng().fill_bytes(&mut salt);
        KdfParams {
            memory_kib,
            iterations,
            parallelism,
            salt,
        }
    }

    /// Refuse costs outside the documented range (FORMAT.md, "Limits") before allocating: a
    /// key file planted in a repository must not make every command spend a gigabyte and
    /// seconds on it.
    pub fn check_range(&self) -> Result<(), FormatError> {
        if self.memory_kib > KDF_MAX_MEMORY_KIB
            || !(1..=KDF_MAX_ITERATIONS).contains(&self.iterations)
            || !(1..=KDF_MAX_LANES).contains(&self.parallelism)
            || u64::from(self.memory_kib) * u64::from(self.iterations) > KDF_MAX_WORK
        {
            return Err(FormatError::InvalidParameter(format!(
                "argon2 cost {} KiB x {} passes x {} lanes is outside the allowed range (memory <= {} MiB, passes <= {}, lanes <= {}, memory x passes <= {} MiB)",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                KDF_MAX_MEMORY_KIB / 1024,
                KDF_MAX_ITERATIONS,
                KDF_MAX_LANES,
                KDF_MAX_WORK / 1024
            )));
        }
        Ok(())
    }

    /// The range earlier builds accepted (memory ≤ 1 GiB, ≤ 100 passes, ≤ 16 lanes), for
    /// opening a key made by them once, to replace it (`CAIRN_ALLOW_COSTLY_KDF=1`).
    pub fn check_legacy_range(&self) -> Result<(), FormatError> {
        if self.memory_kib > 1024 * 1024 || self.iterations > 100 || self.parallelism > 16 {
            return Err(FormatError::InvalidParameter("argon2 cost too high".into()));
        }
        Ok(())
    }

    /// Derive the 32-byte key-wrapping key from a password.
    pub fn derive(&self, password: &[u8]) -> Result<[u8; 32], FormatError> {
        self.check_range()?;
        self.derive_unchecked(password)
    }

    /// [`KdfParams::derive`] within [`KdfParams::check_legacy_range`] only.
    pub fn derive_legacy(&self, password: &[u8]) -> Result<[u8; 32], FormatError> {
        self.check_legacy_range()?;
        self.derive_unchecked(password)
    }

    fn derive_unchecked(&self, password: &[u8]) -> Result<[u8; 32], FormatError> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| FormatError::InvalidParameter(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(password, &self.salt, &mut out)
            .map_err(|e| FormatError::InvalidParameter(format!("argon2: {e}")))?;
        Ok(out)
    }
}
