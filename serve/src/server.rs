//! The HTTP(S) server: connections, authentication, the access rules, and the streaming
//! bodies that keep memory bounded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cairn_format::FileKind;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use crate::credentials::{Access, Credentials};
use crate::route::{Route, Target};
use crate::store::{Refusal, Store};
use crate::{Error, Result};

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain (server certificate first).
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// How to run the server.
#[derive(Debug)]
pub struct ServeConfig {
    /// The directory whose repositories are served.
    pub root: PathBuf,
    /// Address to listen on.
    pub listen: String,
    /// HTTPS with this certificate; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Who may connect; `None` serves everyone with `open_access` (for loopback and tests).
    pub credentials: Option<Credentials>,
    /// The access of everyone when there are no credentials.
    pub open_access: Access,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Largest pack accepted, in bytes.
    pub max_pack_size: u64,
}

/// Header telling a client what its credential may do.
pub const ACCESS_HEADER: &str = "cairn-access";

type Body = BoxBody<Bytes, std::io::Error>;

/// Password verifications run at once (each may take an Argon2 run's memory).
const VERIFICATIONS_AT_ONCE: usize = 2;
/// Listings built at once: each holds its repository's object names in memory.
const LISTINGS_AT_ONCE: usize = 2;
/// Bytes a response reads from disk at a time.
const READ_CHUNK: usize = 256 << 10;
/// Bytes of a refused upload's body read anyway, so that the client sees the answer.
const DRAIN_LIMIT: u64 = 16 << 20;
/// How long a client may stay silent in the middle of a request body.
const BODY_STALL: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct State {
    store: Store,
    credentials: Option<Credentials>,
    open_access: Access,
    verifications: Arc<Semaphore>,
    listings: Semaphore,
    max_pack_size: u64,
    /// Locks written by append-only credentials through this process: (repository, name)
    /// → credential. Only the writer may delete such a lock.
    lock_owners: Mutex<HashMap<(String, String), String>>,
    in_flight: AtomicUsize,
}

/// Who is asking.
#[derive(Clone, Debug)]
struct Who {
    name: String,
    access: Access,
    repositories: Option<Vec<String>>,
}

impl Who {
    /// Whether the credential lists repository `repo` (or lists none: all).
    fn may_use(&self, repo: &str) -> bool {
        self.repositories
            .as_ref()
            .is_none_or(|list| list.iter().any(|r| r == repo))
    }

    /// Whether the credential names repository `repo` itself (not "all").
    fn names(&self, repo: &str) -> bool {
        self.repositories
            .as_ref()
            .is_some_and(|list| list.iter().any(|r| r == repo))
    }
}

/// Serve until SIGINT or SIGTERM. `ready` is called with the bound address once the
/// server accepts connections.
pub fn serve(cfg: ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let tls = match &cfg.tls {
        Some(files) => Some(tls_acceptor(files)?),
        None => None,
    };
    if !cfg.root.is_dir() {
        return Err(Error::Config(format!(
            "{}: not a directory (the root of the served repositories)",
            cfg.root.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("cairn-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            what: "tokio runtime".into(),
            source: e,
        })?;
    let state = Arc::new(State {
        store: Store::new(cfg.root.clone()),
        credentials: cfg.credentials,
        open_access: cfg.open_access,
        verifications: Arc::new(Semaphore::new(VERIFICATIONS_AT_ONCE)),
        listings: Semaphore::new(LISTINGS_AT_ONCE),
        max_pack_size: cfg.max_pack_size,
        lock_owners: Mutex::new(HashMap::new()),
        in_flight: AtomicUsize::new(0),
    });
    let result = rt.block_on(accept_loop(
        state,
        &cfg.listen,
        tls,
        cfg.max_connections.max(1),
        ready,
    ));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn accept_loop(
    state: Arc<State>,
    listen: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Io {
            what: format!("listening on {listen}"),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Io {
        what: "listening socket".into(),
        source: e,
    })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Io {
            what: "SIGTERM handler".into(),
            source: e,
        })?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Io {
            what: "SIGINT handler".into(),
            source: e,
        })?;
    ready(addr);
    let connections = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => connection(TokioIo::new(s), state, peer).await,
                        Ok(Err(e)) => tracing::info!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::info!("TLS handshake with {peer} timed out"),
                    }
                }
                None => connection(TokioIo::new(stream), state, peer).await,
            }
        });
    }
    // Let requests in progress finish (an upload being verified, a listing), then stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn connection<I>(io: TokioIo<I>, state: Arc<State>, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move {
            // Counted down on drop too: hyper drops a request whose client went away.
            let _counted = InFlight::new(&state.in_flight);
            let resp = handle(&state, peer, req).await;
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        .max_buf_size(64 << 10)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!("connection from {peer}: {e}");
    }
}

/// One request in progress, for the shutdown's wait.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> InFlight<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
        Error::Config(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("certificate file", &files.cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate file", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "certificate file {}: no PEM certificate in it",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("private key file", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("TLS certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = msg.into();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn unauthorized(msg: &str) -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cairn\""),
    );
    r
}

pub(crate) fn basic_auth(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let name = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((name, decoded[colon + 1..].to_vec()))
}

async fn authenticate(
    state: &Arc<State>,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> std::result::Result<Who, Response<Body>> {
    let Some(creds) = &state.credentials else {
        return Ok(Who {
            name: "-".into(),
            access: state.open_access,
            repositories: None,
        });
    };
    let Some((name, password)) = basic_auth(headers) else {
        return Err(unauthorized("this server needs a user name and password"));
    };
    let found = match creds.cached(&name, &password) {
        Some(c) => Some(c.clone()),
        None => {
            // The permit goes with the Argon2 run: if the client hangs up, the run (which
            // cannot be stopped) still counts against the limit until it ends.
            let Ok(permit) = state.verifications.clone().acquire_owned().await else {
                return Err(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
            };
            let st = state.clone();
            let user = name.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let creds = st.credentials.as_ref()?;
                creds.verify(&user, &password).cloned()
            })
            .await
            .ok()
            .flatten()
        }
    };
    match found {
        Some(c) => Ok(Who {
            name: c.name,
            access: c.access,
            repositories: c.repositories,
        }),
        None => {
            tracing::warn!("authentication failed for {name:?} from {peer}");
            Err(unauthorized("wrong user name or password"))
        }
    }
}

async fn handle(state: &Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path == "/healthz" && (method == Method::GET || method == Method::HEAD) {
        return text(StatusCode::OK, "ok");
    }
    let who = match authenticate(state, peer, req.headers()).await {
        Ok(w) => w,
        Err(resp) => return resp,
    };
    let create = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "create=true"));
    let mut resp = match crate::route::parse(&path, create && method == Method::POST) {
        Err(why) => text(StatusCode::BAD_REQUEST, format!("{path}: {why}")),
        Ok(route) => {
            if !who.may_use(&route.repo) {
                refuse(&who, peer, &method, &path, "not allowed on this repository")
            } else {
                let resp = dispatch(state, &who, peer, req, &route).await;
                tracing::debug!(
                    "{peer} {} {method} {path} -> {}",
                    who.name,
                    resp.status().as_u16()
                );
                resp
            }
        }
    };
    resp.headers_mut()
        .insert(ACCESS_HEADER, HeaderValue::from_static(who.access.name()));
    resp
}

fn refuse(who: &Who, peer: SocketAddr, method: &Method, path: &str, why: &str) -> Response<Body> {
    tracing::warn!(
        "refused {method} {path} from {peer} (credential {:?}, {}): {why}",
        who.name,
        who.access.name()
    );
    text(
        StatusCode::FORBIDDEN,
        format!(
            "{method} {path}: refused for credential {:?} ({}): {why}",
            who.name,
            who.access.name()
        ),
    )
}

fn server_error(e: &Error) -> Response<Body> {
    tracing::error!("{e}");
    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Io {
            what: "server task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

async fn dispatch(
    state: &Arc<State>,
    who: &Who,
    peer: SocketAddr,
    req: Request<Incoming>,
    route: &Route,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let repo = route.repo.clone();
    match (&route.target, &method) {
        (Target::Repository, &Method::POST) => {
            if who.access == Access::AppendOnly
                && !who.names(&repo)
                && !state.store.is_repository(&repo)
            {
                return refuse(
                    who,
                    peer,
                    &method,
                    &path,
                    "append-only credentials create only the repositories their credential names",
                );
            }
            if let Some(outer) = state.store.enclosing_repository(&repo) {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{path}: inside repository {outer:?}: repositories do not nest"),
                );
            }
            let st = state.clone();
            match blocking(move || st.store.create(&repo)).await {
                Ok(()) => text(StatusCode::OK, "created"),
                Err(e) => server_error(&e),
            }
        }
        (Target::List(kind), &Method::GET) => {
            let (st, kind) = (state.clone(), *kind);
            let dir = state.store.repo_dir(&repo);
            if !dir.is_dir() {
                return text(StatusCode::NOT_FOUND, format!("no repository at {path}"));
            }
            let Ok(_listing) = state.listings.acquire().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            };
            match blocking(move || st.store.list(&repo, kind)).await {
                Ok(list) => {
                    // Names are hex digits: the JSON needs no escaping.
                    let mut json = String::with_capacity(list.len() * 90 + 2);
                    json.push('[');
                    for (i, o) in list.iter().enumerate() {
                        if i > 0 {
                            json.push(',');
                        }
                        json.push_str(&format!("{{\"name\":\"{}\",\"size\":{}}}", o.name, o.size));
                    }
                    json.push(']');
                    drop(list);
                    let mut r =
                        Response::new(Full::new(Bytes::from(json)).map_err(|n| match n {}).boxed());
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/vnd.x.restic.rest.v2"),
                    );
                    r
                }
                Err(e) => server_error(&e),
            }
        }
        (Target::Object(kind, name), &Method::HEAD | &Method::GET) => {
            let file_path = match state.store.path(&repo, *kind, name) {
                Ok(p) => p,
                Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            };
            read_object(&req, &file_path, method == Method::HEAD).await
        }
        (Target::Object(kind, name), &Method::POST | &Method::PUT) => {
            upload(state, who, peer, req, &repo, *kind, name).await
        }
        (Target::Object(kind, name), &Method::DELETE) => {
            let key = (repo.clone(), name.clone());
            if who.access == Access::AppendOnly {
                let own_lock = *kind == FileKind::Lock
                    && state.lock_owners.lock().get(&key) == Some(&who.name);
                if !own_lock {
                    return refuse(
                        who,
                        peer,
                        &method,
                        &path,
                        "append-only credentials cannot delete (only the locks they created)",
                    );
                }
            }
            let (st, kind, name) = (state.clone(), *kind, name.clone());
            match blocking(move || st.store.delete(&repo, kind, &name)).await {
                Ok(found) => {
                    state.lock_owners.lock().remove(&key);
                    if found {
                        text(StatusCode::OK, "deleted")
                    } else {
                        text(StatusCode::NOT_FOUND, "not found")
                    }
                }
                Err(e) => server_error(&e),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
    }
}

/// The largest body accepted for an object of `kind`.
fn max_body(kind: FileKind, max_pack: u64) -> u64 {
    match kind {
        FileKind::Pack => max_pack,
        // A sealed file: at most its decoded limit stored uncompressed, plus its framing.
        _ => cairn_format::max_decoded_len(kind) as u64 + 4096,
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    state: &Arc<State>,
    who: &Who,
    peer: SocketAddr,
    req: Request<Incoming>,
    repo: &str,
    kind: FileKind,
    name: &str,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let max = max_body(kind, state.max_pack_size);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        tracing::warn!(
            "refused {method} {path} from {peer} (credential {:?}): {} bytes declared, {max} accepted",
            who.name,
            declared.unwrap_or_default()
        );
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{path}: at most {max} bytes are accepted for a {}",
                kind.name()
            ),
        );
    }
    let dest = match state.store.path(repo, kind, name) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let exists = dest.exists();
    if exists && who.access == Access::AppendOnly {
        // Read (and drop) a body of ordinary size first, so that the client gets the answer
        // instead of a connection closed under its upload.
        let mut body = req.into_body();
        let mut read = 0u64;
        while read <= DRAIN_LIMIT {
            match tokio::time::timeout(BODY_STALL, body.frame()).await {
                Ok(Some(Ok(f))) => read += f.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
        return refuse(
            who,
            peer,
            &method,
            &path,
            "the object exists, and append-only credentials cannot overwrite",
        );
    }
    let replace = kind == FileKind::Config && who.access == Access::Full;
    let mut up = match tokio::task::block_in_place(|| state.store.upload(repo, kind, name, max)) {
        Ok(u) => u,
        Err(Error::NoRepository(r)) => {
            return text(StatusCode::NOT_FOUND, format!("no repository at {r:?}"))
        }
        Err(e) => return server_error(&e),
    };
    let mut body = req.into_body();
    let refused = |r: Refusal| {
        tracing::warn!(
            "refused {method} {path} from {peer} (credential {:?}): {r}",
            who.name
        );
        let status = match r {
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        text(status, format!("{path}: {r}"))
    };
    loop {
        let frame = match tokio::time::timeout(BODY_STALL, body.frame()).await {
            Err(_) => return refused(Refusal::Incomplete("the client stopped sending".into())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return refused(Refusal::Incomplete(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match tokio::task::block_in_place(|| up.write(&data)) {
            Ok(()) => {}
            Err(Error::Refused(r)) => return refused(r),
            Err(e) => return server_error(&e),
        }
    }
    if kind == FileKind::Config && exists && who.access == Access::Full {
        tracing::info!("{} replaced the config of {repo:?}", who.name);
    }
    match tokio::task::block_in_place(|| up.finish(replace)) {
        Ok(written) => {
            if written && kind == FileKind::Lock && who.access == Access::AppendOnly {
                state
                    .lock_owners
                    .lock()
                    .insert((repo.to_owned(), name.to_owned()), who.name.clone());
            }
            text(
                StatusCode::OK,
                if written { "stored" } else { "already stored" },
            )
        }
        Err(Error::Refused(r)) => refused(r),
        Err(e) => server_error(&e),
    }
}

/// `GET` (with an optional single `Range: bytes=a-b`) or `HEAD` of a file, streamed.
async fn read_object(
    req: &Request<Incoming>,
    path: &std::path::Path,
    head: bool,
) -> Response<Body> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return text(StatusCode::NOT_FOUND, "not found")
        }
        Err(e) => {
            return server_error(&Error::Io {
                what: path.display().to_string(),
                source: e,
            })
        }
    };
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            return server_error(&Error::Io {
                what: path.display().to_string(),
                source: e,
            })
        }
    };
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some(r) => match parse_range(r, size) {
            Some((s, l)) => (StatusCode::PARTIAL_CONTENT, s, l),
            None => {
                let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
    };
    let body: Body = if head {
        Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
    } else {
        let mut file = file;
        if start > 0 {
            use tokio::io::AsyncSeekExt;
            if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
                return server_error(&Error::Io {
                    what: path.display().to_string(),
                    source: e,
                });
            }
        }
        FileBody {
            file,
            remaining: len,
            buf: vec![0; READ_CHUNK.min(len as usize)],
        }
        .boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {start}-{}/{size}",
            (start + len).saturating_sub(1)
        )) {
            resp.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// `bytes=a-b` / `bytes=a-` within `size`: (start, length).
pub(crate) fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = if b.trim().is_empty() {
        size.checked_sub(1)?
    } else {
        b.trim().parse::<u64>().ok()?.min(size.checked_sub(1)?)
    };
    if start > end {
        return None;
    }
    Some((start, end - start + 1))
}

/// A file region as a response body, read `READ_CHUNK` bytes at a time.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (this.buf.len() as u64).min(this.remaining) as usize;
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was sent",
                    ))));
                }
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(
                    &this.buf[..n],
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 10)));
        assert_eq!(parse_range("bytes=90-200", 100), Some((90, 10)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-4", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
