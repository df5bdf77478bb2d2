//! The credentials file: who may use the server, with what rights, on which repositories.
//!
//! One credential per line, `name:hash[:access[:repositories]]`, so that an htpasswd file
//! written by `htpasswd -B` is a valid credentials file (everyone with full access):
//!
//! ```text
//! # node backups: may add, never delete
//! node-1:$argon2id$v=19$m=19456,t=2,p=1$…:append-only:k3s
//! admin:$2y$10$…:full
//! ```
//!
//! Hashes are Argon2 PHC strings or bcrypt (`$2a$`, `$2b$`, `$2y$`); plain-text passwords
//! are refused when the file is read. `repositories` is a comma-separated list of
//! repository paths under the server root (`k3s`, `site-a/k3s`); absent or `*` means all.

use std::collections::HashMap;
use std::path::Path;

use parking_lot::Mutex;

use crate::{Error, Result};

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read, add, overwrite the config, delete.
    Full,
    /// Read and add objects; delete only the locks it created itself.
    AppendOnly,
}

impl Access {
    /// The name used in the credentials file and the `Cairn-Access` header.
    pub fn name(self) -> &'static str {
        match self {
            Access::Full => "full",
            Access::AppendOnly => "append-only",
        }
    }
}

/// One credential.
#[derive(Clone, Debug)]
pub struct Credential {
    /// The user name clients send.
    pub name: String,
    hash: Hash,
    /// Its rights.
    pub access: Access,
    /// Repository paths it may use; `None`: all.
    pub repositories: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
enum Hash {
    Argon2(String),
    Bcrypt(String),
}

/// Argon2 memory a credentials file may ask for per verification: verifications run two at
/// a time, so the server's memory stays bounded whatever the file says.
const MAX_ARGON2_KIB: u32 = 256 * 1024;
/// bcrypt cost above which one verification takes seconds.
const MAX_BCRYPT_COST: u32 = 15;

/// The parsed credentials file.
#[derive(Debug)]
pub struct Credentials {
    by_name: HashMap<String, Credential>,
    /// Keyed digests of (name, password) pairs verified before, so that a client's requests
    /// after the first cost a hash, not an Argon2 run. Keyed with a per-process random key,
    /// so the cache never holds anything that helps guess a password.
    verified: Mutex<HashMap<[u8; 32], Access>>,
    cache_key: [u8; 32],
    /// A hash of the same cost as the real ones, verified for unknown names so that their
    /// answer takes as long as a wrong password's.
    decoy: Option<Hash>,
}

/// Entries kept in the verification cache before it is emptied.
const CACHE_ENTRIES: usize = 4096;

impl Credentials {
    /// Read a credentials file; `append_only` makes every credential append-only.
    pub fn load(path: &Path, append_only: bool) -> Result<Credentials> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            what: format!("credentials file {}", path.display()),
            source: e,
        })?;
        Credentials::parse(&text, append_only).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parse the text of a credentials file.
    pub fn parse(text: &str, append_only: bool) -> Result<Credentials> {
        let mut by_name = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| Error::Config(format!("line {}: {why}", n + 1));
            let (name, rest) = line
                .split_once(':')
                .ok_or_else(|| bad("expected name:hash[:access[:repositories]]".into()))?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
            {
                return Err(bad(format!("invalid credential name {name:?}")));
            }
            // The hash itself contains no ':' (PHC and bcrypt strings use '$' and ',').
            let mut fields = rest.splitn(3, ':');
            let hash_text = fields.next().unwrap_or_default();
            let hash = parse_hash(hash_text).map_err(|why| bad(format!("{name}: {why}")))?;
            let access = match fields.next().map(str::trim) {
                None | Some("") | Some("full") => Access::Full,
                Some("append-only") => Access::AppendOnly,
                Some(other) => {
                    return Err(bad(format!(
                        "{name}: unknown access {other:?} (full or append-only)"
                    )))
                }
            };
            let access = if append_only {
                Access::AppendOnly
            } else {
                access
            };
            let repositories = match fields.next().map(str::trim) {
                None | Some("*") => None,
                Some("") => {
                    let why = "an empty repository list (leave the field out, or write *, for all)";
                    return Err(bad(format!("{name}: {why}")));
                }
                Some(list) => {
                    let mut repos = Vec::new();
                    for r in list.split(',') {
                        let r = r.trim().trim_matches('/');
                        if r.is_empty() {
                            return Err(bad(format!(
                                "{name}: an empty repository in the list (the root is not given as an empty name)"
                            )));
                        }
                        crate::route::check_repo_path(r)
                            .map_err(|why| bad(format!("{name}: repository {r:?}: {why}")))?;
                        repos.push(r.to_owned());
                    }
                    Some(repos)
                }
            };
            let cred = Credential {
                name: name.to_owned(),
                hash,
                access,
                repositories,
            };
            if by_name.insert(name.to_owned(), cred).is_some() {
                return Err(bad(format!("credential {name:?} given twice")));
            }
        }
        if by_name.is_empty() {
            return Err(Error::Config("no credentials in the file".into()));
        }
        let decoy = by_name.values().next().map(|c| c.hash.clone());
        Ok(Credentials {
            by_name,
            verified: Mutex::new(HashMap::new()),
            cache_key: rand::random(),
            decoy,
        })
    }

    /// How many credentials the file has.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the file has none (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The credential `name`, if `password` is its password. Slow (an Argon2 or bcrypt run)
    /// the first time a pair is seen: call it off the async threads.
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<&Credential> {
        let digest = self.digest(name, password);
        if self.verified.lock().contains_key(&digest) {
            return self.by_name.get(name);
        }
        self.verify_slow(name, password, digest)
    }

    /// The credential `name`, if this pair was verified before: one keyed hash, no
    /// Argon2 run (safe on the async threads, and never waits behind other verifications).
    pub fn cached(&self, name: &str, password: &[u8]) -> Option<&Credential> {
        let digest = self.digest(name, password);
        if self.verified.lock().contains_key(&digest) {
            return self.by_name.get(name);
        }
        None
    }

    fn digest(&self, name: &str, password: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.cache_key);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(password);
        *h.finalize().as_bytes()
    }

    fn verify_slow(&self, name: &str, password: &[u8], digest: [u8; 32]) -> Option<&Credential> {
        let Some(cred) = self.by_name.get(name) else {
            if let Some(d) = &self.decoy {
                let _ = check(d, password);
            }
            return None;
        };
        if !check(&cred.hash, password) {
            return None;
        }
        let mut cache = self.verified.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(digest, cred.access);
        Some(cred)
    }
}

fn parse_hash(text: &str) -> std::result::Result<Hash, String> {
    if text.starts_with("$argon2") {
        let parsed = argon2::password_hash::phc::PasswordHash::new(text)
            .map_err(|e| format!("not a valid Argon2 hash: {e}"))?;
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("unsupported Argon2 parameters: {e}"))?;
        if params.m_cost() > MAX_ARGON2_KIB {
            return Err(format!(
                "Argon2 memory {} KiB is above the server's limit of {MAX_ARGON2_KIB} KiB",
                params.m_cost()
            ));
        }
        return Ok(Hash::Argon2(text.to_owned()));
    }
    if ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| text.starts_with(p))
    {
        let cost: u32 = text
            .get(4..6)
            .and_then(|c| c.parse().ok())
            .ok_or("not a valid bcrypt hash")?;
        if cost > MAX_BCRYPT_COST || text.len() != 60 {
            return Err(format!(
                "not a usable bcrypt hash (cost {cost}; at most {MAX_BCRYPT_COST})"
            ));
        }
        return Ok(Hash::Bcrypt(text.to_owned()));
    }
    Err("not an Argon2 or bcrypt hash (plain-text passwords are not accepted; make one with `cairn serve-credential`)".into())
}

fn check(hash: &Hash, password: &[u8]) -> bool {
    match hash {
        Hash::Argon2(text) => {
            use argon2::password_hash::PasswordVerifier;
            argon2::Argon2::default()
                .verify_password(password, text.as_str())
                .is_ok()
        }
        Hash::Bcrypt(text) => bcrypt::verify(password, text).unwrap_or(false),
    }
}

/// A credentials-file line for `name` with `password`: Argon2id with OWASP's parameters
/// (19 MiB, 2 passes), so a verification costs the server little memory.
pub fn credential_line(
    name: &str,
    password: &[u8],
    access: Access,
    repositories: &[String],
) -> Result<String> {
    use argon2::password_hash::PasswordHasher;
    let params = argon2::Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| Error::Config(format!("Argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt: [u8; 16] = rand::random();
    let hash = argon
        .hash_password_with_salt(password, &salt)
        .map_err(|e| Error::Config(format!("hashing the password: {e}")))?;
    let mut line = format!("{name}:{hash}:{}", access.name());
    if !repositories.is_empty() {
        line.push(':');
        line.push_str(&repositories.join(","));
    }
    // The line must read back as what was asked for.
    let parsed = Credentials::parse(&line, false)?;
    let back = parsed
        .verify(name, password)
        .ok_or_else(|| Error::Config("the new hash does not verify".into()))?;
    let wanted = (!repositories.is_empty()).then(|| repositories.to_vec());
    if back.access != access || back.repositories != wanted {
        return Err(Error::Config(format!(
            "the line reads back as something else: {line}"
        )));
    }
    Ok(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn argon2_line_round_trips_and_rejects_wrong_passwords() {
        let line =
            credential_line("node-1", b"s3cret", Access::AppendOnly, &["k3s".into()]).unwrap();
        let creds = Credentials::parse(&line, false).unwrap();
        let c = creds.verify("node-1", b"s3cret").unwrap();
        assert_eq!(c.access, Access::AppendOnly);
        assert_eq!(c.repositories, Some(vec!["k3s".to_owned()]));
        // Cached the second time, still the same answer.
        assert!(creds.verify("node-1", b"s3cret").is_some());
        assert!(creds.verify("node-1", b"s3cret!").is_none());
        assert!(creds.verify("node-2", b"s3cret").is_none());
    }

    #[test]
    fn bcrypt_htpasswd_lines_are_accepted() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let creds = Credentials::parse(&format!("admin:{hash}\n"), false).unwrap();
        assert_eq!(creds.verify("admin", b"pw").unwrap().access, Access::Full);
        assert!(creds.verify("admin", b"pW").is_none());
        // --append-only overrides the file.
        let creds = Credentials::parse(&format!("admin:{hash}:full\n"), true).unwrap();
        assert_eq!(
            creds.verify("admin", b"pw").unwrap().access,
            Access::AppendOnly
        );
    }

    #[test]
    fn bad_files_are_refused() {
        for text in [
            "",
            "# only a comment\n",
            "admin:plaintext\n",
            "admin\n",
            "bad name:$2y$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyzabcde\n",
            "a:$argon2id$v=19$m=9999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
            "a:$2y$31$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyzabcde\n",
        ] {
            assert!(Credentials::parse(text, false).is_err(), "{text:?}");
        }
        let line = credential_line("a", b"x", Access::Full, &[]).unwrap();
        assert!(Credentials::parse(&format!("{line}\n{line}\n"), false).is_err());
        assert!(Credentials::parse(&format!("{line}:a//b"), false).is_err());
        assert!(Credentials::parse(&format!("{line}:../etc"), false).is_err());
        assert!(Credentials::parse(&format!("{line}:"), false).is_err());
        assert!(Credentials::parse(&format!("{line}:*"), false).is_ok());
        assert!(Credentials::parse(&format!("{line}:k3s,"), false).is_err());
        assert!(Credentials::parse(&format!("{line}: , "), false).is_err());
        assert!(credential_line("a", b"x", Access::Full, &[String::new()]).is_err());
    }
}
