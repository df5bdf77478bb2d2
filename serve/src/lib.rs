//! `cairn serve`: local repositories over HTTP(S), for clients using `rest:` locations.
//!
//! The protocol is restic's REST protocol (v2 listings) with cairn's object kinds: `GET`,
//! `HEAD`, `POST`/`PUT` and `DELETE` on `/<repo>/<kind dir>/<name>`, listings of
//! `/<repo>/<kind dir>/`, `POST /<repo>/?create=true`. What this server adds to a plain
//! file server is what makes it safe to give every node a credential:
//!
//! - **Uploads are verified before they exist**: bytes stream to a temporary file, the
//!   preamble must name the kind the path says (checked at the first bytes, so garbage is
//!   refused at once) and the BLAKE3 hash of the whole body must be the object's name
//!   (FORMAT.md §1). Only then is the file fsynced and linked under its name.
//! - **Append-only credentials** ([`Access::AppendOnly`]) read and add, but never delete or
//!   overwrite; the one exception is the lock files that credential created through this
//!   server process, so a nightly job releases and refreshes its own locks. Locks it cannot
//!   delete (after a server restart) expire as every lock does (FORMAT.md §13).
//! - **Bounded resources**: a connection limit, per-kind body limits checked against
//!   `Content-Length` and while streaming, two password verifications at a time with a
//!   cache of verified pairs, fixed-size read and write buffers.
//!
//! Every refusal is logged with the credential and the request.

mod credentials;
mod route;
mod server;
mod store;

pub use credentials::{credential_line, Access, Credential, Credentials};
pub use route::{check_repo_path, Route, Target};
pub use server::{serve, ServeConfig, TlsFiles};
pub use store::{Refusal, Store, Upload};

/// Fuzzing entry point: what a client sends that the server decodes before any file is
/// touched: the request path, a `Range` header, a Basic `Authorization` header, and a
/// credentials file. Splits `data` at NUL bytes into those four.
pub fn fuzz_request(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    if let Ok(route) = route::parse(&path, data.len().is_multiple_of(2)) {
        // Whatever parsed names nothing outside the root.
        assert!(route
            .repo
            .split('/')
            .all(|seg| seg != ".." && seg != "." && !seg.starts_with('/')));
        assert!(!route.repo.starts_with('/'));
        if let Target::Object(kind, name) = &route.target {
            assert!(cairn_engine::backend::object_path(*kind, name).is_ok());
        }
    }
    let range = String::from_utf8_lossy(parts.next().unwrap_or_default());
    if let Some((start, len)) = server::parse_range(&range, 1 << 20) {
        assert!(len >= 1 && start + len <= 1 << 20);
    }
    if let Ok(v) = hyper::header::HeaderValue::from_bytes(parts.next().unwrap_or_default()) {
        let mut headers = hyper::header::HeaderMap::new();
        headers.insert(hyper::header::AUTHORIZATION, v);
        let _ = server::basic_auth(&headers);
    }
    let creds = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let _ = Credentials::parse(&creds, false);
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server's configuration (credentials file, TLS files, options) is unusable.
    #[error("{0}")]
    Config(String),
    /// A repository operation failed.
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    /// The path names no repository.
    #[error("no repository at {0:?}")]
    NoRepository(String),
    /// An upload was refused.
    #[error(transparent)]
    Refused(Refusal),
}

/// Results of the server.
pub type Result<T> = std::result::Result<T, Error>;
