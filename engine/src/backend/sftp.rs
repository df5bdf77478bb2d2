//! `sftp:[user@]host:/path` (or `sftp://[user@]host[:port]//path`): a repository on a host
//! that offers only SSH, reached through the system's `ssh` — its config, agent, keys and
//! known_hosts — running the SFTP subsystem (`ssh host -s sftp`), as restic does.
//! `-o sftp.command="ssh -J jump host -s sftp"` replaces the whole command (jump hosts,
//! special keys); `-o sftp.connections=N` sets how many sessions run at once (default 4).
//!
//! The layout is the local backend's. Objects are written to a `.tmp-<writer>-<random>` name
//! beside their final one, fsynced when the server offers `fsync@openssh.com`, then renamed
//! into place (`posix-rename@openssh.com`, which replaces; a plain rename that finds the
//! object already there is fine, as objects are content-addressed). Nothing depends on append
//! or on the server's clock.
//!
//! The protocol is SFTP version 3 (draft-ietf-secsh-filexfer-02), the version OpenSSH
//! speaks. Reads and writes are pipelined ([`PIPELINE`] requests of [`CHUNK`] bytes in
//! flight). Every length a server sends is bounded before anything is allocated for it.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_format::FileKind;
use parking_lot::Mutex;

use super::{Backend, ObjectInfo};
use crate::{Error, Result};

/// Bytes per read or write request: OpenSSH's own client uses 32 KiB, and every server takes
/// it.
const CHUNK: usize = 32 * 1024;
/// Requests in flight per transfer.
const PIPELINE: usize = 64;
/// The largest response accepted: a data packet of [`CHUNK`] bytes, a directory batch, a
/// status message. A server that claims more is refused, not believed.
const MAX_PACKET: usize = 1 << 20;

// Packet types (draft-ietf-secsh-filexfer-02, section 3).
const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_FSTAT: u8 = 8;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_EXTENDED: u8 = 200;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;

const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;

const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// `[user@]host[:port]` (`with_port`) → (`[user@]host` as ssh takes it, port). A bracketed
/// IPv6 address loses its brackets (`[::1]` → `::1`).
fn split_host(authority: &str, with_port: bool) -> Option<(String, Option<u16>)> {
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) if with_port => Some(p.parse::<u16>().ok()?),
            Some(_) => return None,
            None if after.is_empty() => None,
            None => return None,
        };
        (addr.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if with_port => (h.to_owned(), Some(p.parse::<u16>().ok()?)),
            Some(_) => return None,
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() || host.contains(['[', ']', '/', ' ']) {
        return None;
    }
    Some((
        match user {
            Some(u) if !u.is_empty() => format!("{u}@{host}"),
            Some(_) => return None,
            None => host,
        },
        port,
    ))
}

/// Where an SFTP repository is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpConfig {
    /// `[user@]host` as given.
    pub host: String,
    /// Port, if the URL form named one.
    pub port: Option<u16>,
    /// The repository directory on the host.
    pub path: String,
    /// The whole command to run instead of `ssh …` (`-o sftp.command=…`), split on spaces.
    pub command: Option<Vec<String>>,
    /// SSH sessions used at once.
    pub connections: usize,
}

impl SftpConfig {
    /// Parse `sftp:[user@]host:/path`, `sftp:[user@]host:relative/path` or
    /// `sftp://[user@]host[:port]//absolute/path` (`/relative` after the host in the URL form),
    /// then the `sftp.*` options.
    pub fn parse(location: &str, options: &[(String, String)]) -> Result<SftpConfig> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid sftp location {location:?}: {why} (use sftp:user@host:/path or sftp://user@host:port//path)"
            ))
        };
        let rest = location
            .strip_prefix("sftp:")
            .ok_or_else(|| bad("no sftp: prefix"))?;
        let (host, port, path) = if let Some(url) = rest.strip_prefix("//") {
            let (authority, path) = url.split_once('/').ok_or_else(|| bad("no path"))?;
            let (host, port) =
                split_host(authority, true).ok_or_else(|| bad("bad host or port"))?;
            (host, port, path.to_owned())
        } else {
            // `[user@]host:path`, the host maybe a bracketed IPv6 address.
            let (host, path) = match rest.find('[') {
                Some(open) if open < rest.find(':').unwrap_or(usize::MAX) => {
                    let close = rest.find(']').ok_or_else(|| bad("unclosed '['"))?;
                    let path = rest[close + 1..]
                        .strip_prefix(':')
                        .ok_or_else(|| bad("no ':' before the path"))?;
                    (&rest[..=close], path)
                }
                _ => rest
                    .split_once(':')
                    .ok_or_else(|| bad("no ':' before the path"))?,
            };
            let (host, _) = split_host(host, false).ok_or_else(|| bad("bad host"))?;
            (host, None, path.to_owned())
        };
        if host.is_empty() || host.starts_with('-') {
            return Err(bad("no host"));
        }
        if path.is_empty() {
            return Err(bad("no path"));
        }
        let mut cfg = SftpConfig {
            host,
            port,
            path: path.trim_end_matches('/').to_owned(),
            command: None,
            connections: 4,
        };
        if cfg.path.is_empty() {
            cfg.path = "/".into();
        }
        for (k, v) in options {
            match k.as_str() {
                "sftp.command" => {
                    let words: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
                    if words.is_empty() {
                        return Err(Error::Invalid("sftp.command is empty".into()));
                    }
                    cfg.command = Some(words);
                }
                "sftp.connections" => {
                    cfg.connections = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=32).contains(n))
                        .ok_or_else(|| {
                            Error::Invalid(format!("sftp.connections must be 1 to 32, not {v:?}"))
                        })?;
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "option {other} does not apply to an sftp repository (sftp.command, sftp.connections)"
                    )))
                }
            }
        }
        Ok(cfg)
    }

    fn command(&self) -> Command {
        match &self.command {
            Some(words) => {
                let mut c = Command::new(&words[0]);
                c.args(&words[1..]);
                c
            }
            None => {
                let mut c = Command::new("ssh");
                if let Some(p) = self.port {
                    c.arg("-p").arg(p.to_string());
                }
                // A link that dies silently is noticed within a minute, a host that never
                // answers within 30 s, instead of a hang (the user's ssh config still wins
                // where it sets these: ssh takes the first value).
                c.args([
                    "-o",
                    "ServerAliveInterval=15",
                    "-o",
                    "ServerAliveCountMax=4",
                ]);
                c.args(["-o", "ConnectTimeout=30"]);
                c.arg("--").arg(&self.host).arg("-s").arg("sftp");
                c
            }
        }
    }
}

/// One SFTP session: an `ssh` child speaking the protocol on its stdin/stdout.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Disconnects when ssh's stderr reached its end (everything it said is in `stderr`).
    stderr_done: std::sync::mpsc::Receiver<()>,
    next_id: u32,
    posix_rename: bool,
    fsync: bool,
}

/// A response packet: its type and its body after the request id.
struct Reply {
    kind: u8,
    body: Vec<u8>,
}

/// Reads fields from a packet body, failing on truncation.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Backend(
                "sftp: truncated packet from the server".into(),
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// File attributes; returns (size, mtime) when present.
    fn attrs(&mut self) -> Result<(Option<u64>, Option<u32>)> {
        let flags = self.u32()?;
        let size = if flags & ATTR_SIZE != 0 {
            Some(self.u64()?)
        } else {
            None
        };
        if flags & ATTR_UIDGID != 0 {
            self.take(8)?;
        }
        let mut perms = None;
        if flags & ATTR_PERMISSIONS != 0 {
            perms = Some(self.u32()?);
        }
        let _ = perms;
        let mut mtime = None;
        if flags & ATTR_ACMODTIME != 0 {
            self.u32()?;
            mtime = Some(self.u32()?);
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = self.u32()?;
            for _ in 0..n {
                self.string()?;
                self.string()?;
            }
        }
        Ok((size, mtime))
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s);
}

/// What an SFTP status means for the caller.
#[derive(Debug)]
enum Status {
    NoSuchFile,
    Other(u32, String),
}

impl Session {
    fn open(cfg: &SftpConfig) -> Result<Session> {
        use std::os::unix::process::CommandExt;
        let mut cmd = cfg.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: Ctrl-C stops cairn, which then releases its lock through
        // this session, instead of killing ssh under it.
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Backend(format!(
                "sftp: cannot run {:?}: {e} (is ssh installed?)",
                cmd.get_program()
            ))
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::with_capacity(256 << 10, child.stdout.take().expect("piped"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, stderr_done) = std::sync::mpsc::channel::<()>();
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut s = sink.lock();
                    if s.len() < 16 << 10 {
                        s.extend_from_slice(&buf[..n]);
                    }
                }
                drop(done_tx);
            });
        }
        let mut s = Session {
            child,
            stdin,
            stdout,
            stderr,
            stderr_done,
            next_id: 1,
            posix_rename: false,
            fsync: false,
        };
        let mut init = vec![FXP_INIT];
        put_u32(&mut init, 3);
        s.send(&init)?;
        let (kind, body) = s.recv_raw()?;
        if kind != FXP_VERSION {
            return Err(Error::Backend(format!(
                "sftp: the server answered the greeting with packet type {kind}"
            )));
        }
        let v = parse_version(&body)?;
        (s.posix_rename, s.fsync) = (v.posix_rename, v.fsync);
        Ok(s)
    }

    /// The connection failed: what ssh said, for the error message.
    fn lost(&mut self, what: &str) -> Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Everything ssh said, unless something else holds its stderr open.
        let _ = self
            .stderr_done
            .recv_timeout(std::time::Duration::from_secs(1));
        let said = String::from_utf8_lossy(&self.stderr.lock())
            .trim()
            .to_owned();
        Error::Backend(if said.is_empty() {
            format!("sftp: connection lost ({what})")
        } else {
            format!("sftp: connection lost ({what}): ssh said: {said}")
        })
    }

    fn send(&mut self, body: &[u8]) -> Result<()> {
        let len = (body.len() as u32).to_be_bytes();
        let r = self
            .stdin
            .write_all(&len)
            .and_then(|()| self.stdin.write_all(body))
            .and_then(|()| self.stdin.flush());
        r.map_err(|e| self.lost(&e.to_string()))
    }

    fn recv_raw(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut len = [0u8; 4];
        if let Err(e) = self.stdout.read_exact(&mut len) {
            return Err(self.lost(&e.to_string()));
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(self.lost(&format!("the server sent a packet of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        if let Err(e) = self.stdout.read_exact(&mut body) {
            return Err(self.lost(&e.to_string()));
        }
        let kind = body[0];
        body.remove(0);
        Ok((kind, body))
    }

    /// Send a request of type `kind` (the id is added) and return its id.
    fn request(&mut self, kind: u8, payload: &[u8]) -> Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut b = Vec::with_capacity(payload.len() + 5);
        b.push(kind);
        put_u32(&mut b, id);
        b.extend_from_slice(payload);
        self.send(&b)?;
        Ok(id)
    }

    /// The next response, with its id.
    fn reply(&mut self) -> Result<(u32, Reply)> {
        let (kind, body) = self.recv_raw()?;
        let mut c = Cursor(&body);
        let id = c.u32()?;
        Ok((
            id,
            Reply {
                kind,
                body: body[4..].to_vec(),
            },
        ))
    }

    /// One request, its response.
    fn call(&mut self, kind: u8, payload: &[u8]) -> Result<Reply> {
        let id = self.request(kind, payload)?;
        let (rid, r) = self.reply()?;
        if rid != id {
            return Err(self.lost(&format!("response {rid} to request {id}")));
        }
        Ok(r)
    }

    fn status_of(r: &Reply) -> Result<std::result::Result<(), Status>> {
        if r.kind != FXP_STATUS {
            return Err(Error::Backend(format!(
                "sftp: expected a status, got packet type {}",
                r.kind
            )));
        }
        let mut c = Cursor(&r.body);
        let code = c.u32()?;
        let msg = String::from_utf8_lossy(c.string().unwrap_or_default()).into_owned();
        Ok(match code {
            FX_OK => Ok(()),
            FX_NO_SUCH_FILE => Err(Status::NoSuchFile),
            c => Err(Status::Other(c, msg)),
        })
    }

    /// The status a reply of the wrong type carries instead of the answer (an `OK` status
    /// there is a failure too).
    fn instead(r: &Reply, wanted: &str) -> Result<Status> {
        Ok(Self::status_of(r)?
            .err()
            .unwrap_or_else(|| Status::Other(4, format!("no {wanted}"))))
    }

    fn handle_of(r: &Reply) -> Result<std::result::Result<Vec<u8>, Status>> {
        match r.kind {
            FXP_HANDLE => Ok(Ok(Cursor(&r.body).string()?.to_vec())),
            _ => Ok(Err(Self::instead(r, "handle")?)),
        }
    }

    fn open_file(
        &mut self,
        path: &str,
        flags: u32,
    ) -> Result<std::result::Result<Vec<u8>, Status>> {
        let mut p = Vec::new();
        put_str(&mut p, path.as_bytes());
        put_u32(&mut p, flags);
        // Owner only, as the local backend writes (keys and packs are nobody else's).
        put_u32(&mut p, ATTR_PERMISSIONS);
        put_u32(&mut p, 0o600);
        let r = self.call(FXP_OPEN, &p)?;
        Self::handle_of(&r)
    }

    fn close(&mut self, handle: &[u8]) -> Result<()> {
        let mut p = Vec::new();
        put_str(&mut p, handle);
        let r = self.call(FXP_CLOSE, &p)?;
        match Self::status_of(&r)? {
            Ok(()) => Ok(()),
            Err(s) => Err(status_error("close", "", s)),
        }
    }

    /// Size of an open file.
    fn fstat_size(&mut self, handle: &[u8]) -> Result<u64> {
        let mut p = Vec::new();
        put_str(&mut p, handle);
        let r = self.call(FXP_FSTAT, &p)?;
        if r.kind != FXP_ATTRS {
            return Err(status_error("fstat", "", Self::instead(&r, "attributes")?));
        }
        Cursor(&r.body)
            .attrs()?
            .0
            .ok_or_else(|| Error::Backend("sftp: the server gave no file size".into()))
    }

    /// Read `len` bytes at `offset` of an open file, pipelined; fewer if it ends first.
    /// Memory follows what arrives, never what was asked for or claimed.
    fn read_at(&mut self, handle: &[u8], offset: u64, len: u64) -> Result<Vec<u8>> {
        let total = usize::try_from(len).unwrap_or(usize::MAX);
        let mut got: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
        let mut pending: HashMap<u32, (usize, usize)> = HashMap::new();
        let mut next = 0usize;
        let mut end = total;
        let mut failed: Option<Error> = None;
        loop {
            while failed.is_none() && pending.len() < PIPELINE && next < end {
                let n = CHUNK.min(end - next);
                let mut p = Vec::new();
                put_str(&mut p, handle);
                p.extend_from_slice(&(offset + next as u64).to_be_bytes());
                put_u32(&mut p, n as u32);
                let id = self.request(FXP_READ, &p)?;
                pending.insert(id, (next, n));
                next += n;
            }
            if pending.is_empty() {
                break;
            }
            // Replies to every request are read, even after a failure, so that the session
            // stays in step.
            let (id, r) = self.reply()?;
            let Some((at, want)) = pending.remove(&id) else {
                return Err(self.lost(&format!("a response to unknown request {id}")));
            };
            match r.kind {
                FXP_DATA => {
                    let data = Cursor(&r.body).string()?;
                    if data.len() > want || data.is_empty() {
                        return Err(self.lost("a data packet of the wrong size"));
                    }
                    if data.len() < want && failed.is_none() && at + data.len() < end {
                        // A short read: ask again for the rest.
                        let rest = at + data.len();
                        let mut p = Vec::new();
                        put_str(&mut p, handle);
                        p.extend_from_slice(&(offset + rest as u64).to_be_bytes());
                        put_u32(&mut p, (want - data.len()) as u32);
                        let id = self.request(FXP_READ, &p)?;
                        pending.insert(id, (rest, want - data.len()));
                    }
                    got.insert(at, data.to_vec());
                }
                _ => match Self::status_of(&r)? {
                    Err(Status::Other(FX_EOF, _)) | Ok(()) => end = end.min(at),
                    Err(s) => {
                        failed.get_or_insert(status_error("read", "", s));
                    }
                },
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // The pieces up to the end, each starting where the one before ended.
        let mut out = Vec::new();
        for (at, piece) in got {
            if at >= end || at != out.len() {
                break;
            }
            out.extend_from_slice(&piece[..piece.len().min(end - at)]);
        }
        Ok(out)
    }

    /// Write all of `data` to an open file from offset 0, pipelined.
    fn write_all(
        &mut self,
        handle: &[u8],
        mut data: impl FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<u64> {
        let mut pending = 0usize;
        let mut offset = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let mut done = false;
        loop {
            while pending < PIPELINE && !done {
                let n = match data(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        // Read the replies in flight, so the session stays in step.
                        for _ in 0..pending {
                            self.reply()?;
                        }
                        return Err(e);
                    }
                };
                if n == 0 {
                    done = true;
                    break;
                }
                let mut p = Vec::with_capacity(n + handle.len() + 16);
                put_str(&mut p, handle);
                p.extend_from_slice(&offset.to_be_bytes());
                put_str(&mut p, &buf[..n]);
                self.request(FXP_WRITE, &p)?;
                offset += n as u64;
                pending += 1;
            }
            if pending == 0 {
                return Ok(offset);
            }
            let (_, r) = self.reply()?;
            pending -= 1;
            if let Err(s) = Self::status_of(&r)? {
                // Drain what is still in flight, so the session stays usable.
                for _ in 0..pending {
                    self.reply()?;
                }
                return Err(status_error("write", "", s));
            }
        }
    }

    fn fsync(&mut self, handle: &[u8]) -> Result<()> {
        if !self.fsync {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "sftp: the server offers no fsync@openssh.com: objects are renamed into place without being flushed to its disk first (a crash of the server can lose recent writes)"
                );
            });
            return Ok(());
        }
        let mut p = Vec::new();
        put_str(&mut p, b"fsync@openssh.com");
        put_str(&mut p, handle);
        let r = self.call(FXP_EXTENDED, &p)?;
        match Self::status_of(&r)? {
            Ok(()) => Ok(()),
            Err(s) => Err(status_error("fsync", "", s)),
        }
    }

    fn simple(&mut self, kind: u8, paths: &[&str]) -> Result<std::result::Result<(), Status>> {
        let mut p = Vec::new();
        for path in paths {
            put_str(&mut p, path.as_bytes());
        }
        if kind == FXP_MKDIR {
            put_u32(&mut p, ATTR_PERMISSIONS);
            put_u32(&mut p, 0o700);
        }
        let r = self.call(kind, &p)?;
        Self::status_of(&r)
    }

    /// Remove a file; one already gone is fine.
    fn remove(&mut self, path: &str) -> Result<()> {
        match self.simple(FXP_REMOVE, &[path])? {
            Ok(()) | Err(Status::NoSuchFile) => Ok(()),
            Err(st) => Err(status_error("remove", path, st)),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<std::result::Result<(), Status>> {
        if self.posix_rename {
            let mut p = Vec::new();
            put_str(&mut p, b"posix-rename@openssh.com");
            put_str(&mut p, from.as_bytes());
            put_str(&mut p, to.as_bytes());
            let r = self.call(FXP_EXTENDED, &p)?;
            return Self::status_of(&r);
        }
        self.simple(FXP_RENAME, &[from, to])
    }

    fn stat(&mut self, path: &str) -> Result<Option<(Option<u64>, Option<u32>)>> {
        let mut p = Vec::new();
        put_str(&mut p, path.as_bytes());
        let r = self.call(FXP_STAT, &p)?;
        if r.kind == FXP_ATTRS {
            return Ok(Some(Cursor(&r.body).attrs()?));
        }
        match Self::status_of(&r)? {
            Err(Status::NoSuchFile) => Ok(None),
            Ok(()) => Ok(None),
            Err(s) => Err(status_error("stat", path, s)),
        }
    }

    /// Entries of a directory: (name, size, mtime). `None` if it does not exist.
    #[allow(clippy::type_complexity)]
    fn read_dir(&mut self, path: &str) -> Result<Option<Vec<(String, u64, Option<u32>)>>> {
        let mut p = Vec::new();
        put_str(&mut p, path.as_bytes());
        let r = self.call(FXP_OPENDIR, &p)?;
        let handle = match Self::handle_of(&r)? {
            Ok(h) => h,
            Err(Status::NoSuchFile) => return Ok(None),
            Err(s) => return Err(status_error("opendir", path, s)),
        };
        let mut out = Vec::new();
        loop {
            let mut p = Vec::new();
            put_str(&mut p, &handle);
            let r = self.call(FXP_READDIR, &p)?;
            if r.kind != FXP_NAME {
                match Self::status_of(&r)? {
                    Err(Status::Other(FX_EOF, _)) | Ok(()) => break,
                    Err(s) => {
                        let _ = self.close(&handle);
                        return Err(status_error("readdir", path, s));
                    }
                }
            }
            out.extend(parse_names(&r.body)?);
        }
        self.close(&handle)?;
        Ok(Some(out))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a server's greeting says.
struct Version {
    posix_rename: bool,
    fsync: bool,
}

/// The body of an `SSH_FXP_VERSION` packet: the version, then extension pairs.
fn parse_version(body: &[u8]) -> Result<Version> {
    let mut c = Cursor(body);
    let version = c.u32()?;
    if version < 3 {
        return Err(Error::Backend(format!(
            "sftp: the server speaks protocol version {version}; version 3 is needed"
        )));
    }
    let mut v = Version {
        posix_rename: false,
        fsync: false,
    };
    while !c.0.is_empty() {
        let name = c.string()?;
        let _data = c.string()?;
        match name {
            b"posix-rename@openssh.com" => v.posix_rename = true,
            b"fsync@openssh.com" => v.fsync = true,
            _ => {}
        }
    }
    Ok(v)
}

/// The body of an `SSH_FXP_NAME` packet (after the id): (name, size, mtime) per entry. The
/// count is the server's claim: entries are read one by one, never allocated ahead.
fn parse_names(body: &[u8]) -> Result<Vec<(String, u64, Option<u32>)>> {
    let mut c = Cursor(body);
    let n = c.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let name = String::from_utf8_lossy(c.string()?).into_owned();
        let _long = c.string()?;
        let (size, mtime) = c.attrs()?;
        out.push((name, size.unwrap_or(0), mtime));
    }
    Ok(out)
}

/// Fuzz entry point (`fuzz/fuzz_targets/sftp_reply.rs`): every decoder of what an SFTP server
/// sends, on arbitrary bytes. Must return, never panic or allocate beyond the input.
pub fn fuzz_reply(data: &[u8]) {
    let _ = parse_version(data);
    let _ = parse_names(data);
    let r = Reply {
        kind: data.first().copied().unwrap_or(0),
        body: data.get(1..).unwrap_or_default().to_vec(),
    };
    let _ = Session::status_of(&r);
    let _ = Session::handle_of(&r);
    let _ = Cursor(data).attrs();
    let _ = Cursor(data).string();
}

fn status_error(op: &str, path: &str, s: Status) -> Error {
    match s {
        Status::NoSuchFile => Error::Backend(format!("sftp {op} {path}: no such file")),
        Status::Other(3, m) => Error::Backend(format!("sftp {op} {path}: permission denied ({m})")),
        Status::Other(c, m) => Error::Backend(format!("sftp {op} {path}: error {c} ({m})")),
    }
}

/// Request counters, for `request_summary`.
#[derive(Debug, Default)]
struct Counts {
    sessions: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A repository on an SFTP server.
pub struct SftpBackend {
    cfg: SftpConfig,
    /// Idle sessions; at most `cfg.connections` exist.
    idle: Mutex<Vec<Session>>,
    open: Mutex<usize>,
    opening: Mutex<()>,
    freed: parking_lot::Condvar,
    counts: Counts,
}

impl std::fmt::Debug for SftpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpBackend")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl SftpBackend {
    /// A backend for `cfg`; the first session is opened now, so that a host that cannot be
    /// reached or a login that fails is reported at once.
    pub fn new(cfg: SftpConfig) -> Result<SftpBackend> {
        let be = SftpBackend {
            cfg,
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(0),
            opening: Mutex::new(()),
            freed: parking_lot::Condvar::new(),
            counts: Counts::default(),
        };
        let s = be.session()?;
        be.give_back(s);
        Ok(be)
    }

    /// An idle session, or a new one while fewer than `connections` exist.
    fn session(&self) -> Result<Session> {
        loop {
            let idle = self.idle.lock().pop();
            if let Some(mut s) = idle {
                if matches!(s.child.try_wait(), Ok(None)) {
                    return Ok(s);
                }
                // Its ssh exited while it was idle (the link dropped, the server restarted):
                // a new session takes its place.
                drop(s);
                *self.open.lock() -= 1;
                continue;
            }
            let mut open = self.open.lock();
            if *open < self.cfg.connections {
                *open += 1;
                drop(open);
                self.counts.sessions.fetch_add(1, Ordering::Relaxed);
                // One login at a time: an ssh that prompts (password, passphrase, a new host
                // key) asks alone on the terminal.
                let _one = self.opening.lock();
                return Session::open(&self.cfg).inspect_err(|_| {
                    *self.open.lock() -= 1;
                    self.freed.notify_one();
                });
            }
            // Wait for one to come back.
            self.freed
                .wait_for(&mut open, std::time::Duration::from_millis(50));
        }
    }

    fn give_back(&self, s: Session) {
        self.idle.lock().push(s);
        self.freed.notify_one();
    }

    /// Run `f` on a session; a session whose connection failed is dropped, not reused.
    fn with<T>(&self, f: impl FnOnce(&mut Session) -> Result<T>) -> Result<T> {
        let mut s = self.session()?;
        let r = f(&mut s);
        match &r {
            // Whole exchanges: the session is in step.
            Ok(_) | Err(Error::ObjectNotFound { .. }) => self.give_back(s),
            // Anything else may have left replies unread, or the connection is gone: a new
            // session is cheaper than a doubt.
            Err(_) => {
                drop(s);
                *self.open.lock() -= 1;
                self.freed.notify_one();
            }
        }
        r
    }

    /// [`SftpBackend::with`], once more on a new session when the connection was lost: every
    /// operation is idempotent (a write goes to a fresh temp name and is renamed).
    fn retrying<T>(&self, mut f: impl FnMut(&mut Session) -> Result<T>) -> Result<T> {
        match self.with(&mut f) {
            Err(Error::Backend(m)) if m.starts_with("sftp: connection lost") => {
                tracing::warn!("{m}; trying again on a new session");
                self.with(f)
            }
            r => r,
        }
    }

    fn path_of(&self, rel: &str) -> String {
        if self.cfg.path == "/" {
            format!("/{rel}")
        } else {
            format!("{}/{rel}", self.cfg.path)
        }
    }

    fn object(&self, kind: FileKind, name: &str) -> Result<String> {
        Ok(self.path_of(&super::object_path(kind, name)?))
    }

    /// Write an object: a temp name beside it, fsync, rename into place.
    fn store(
        &self,
        kind: FileKind,
        name: &str,
        mut data: impl FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<()> {
        let dest = self.object(kind, name)?;
        let dir = dest.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        let tmp = format!(
            "{dir}/.tmp-{}-{:016x}",
            crate::util::my_writer_tag(),
            rand::random::<u64>()
        );
        self.with(|s| {
            let handle = match s.open_file(&tmp, FXF_WRITE | FXF_CREAT | FXF_TRUNC)? {
                Ok(h) => h,
                // A data/xx directory missing (a repository created by another tool).
                Err(Status::NoSuchFile) => {
                    let _ = s.simple(FXP_MKDIR, &[&dir])?;
                    s.open_file(&tmp, FXF_WRITE | FXF_CREAT | FXF_TRUNC)?
                        .map_err(|st| status_error("create", &tmp, st))?
                }
                Err(st) => return Err(status_error("create", &tmp, st)),
            };
            let written = s.write_all(&handle, &mut data).and_then(|n| {
                s.fsync(&handle)?;
                Ok(n)
            });
            let closed = s.close(&handle);
            let n = match written.and_then(|n| closed.map(|()| n)) {
                Ok(n) => n,
                Err(e) => {
                    let _ = s.simple(FXP_REMOVE, &[&tmp]);
                    return Err(e);
                }
            };
            self.counts.bytes_up.fetch_add(n, Ordering::Relaxed);
            match s.rename(&tmp, &dest)? {
                Ok(()) => Ok(()),
                Err(st) if kind == FileKind::Config => {
                    // The one object rewritten in place (`migrate`): it must be replaced
                    // atomically or not at all.
                    let _ = s.simple(FXP_REMOVE, &[&tmp]);
                    Err(Error::Backend(format!(
                        "sftp: cannot replace {dest} ({}){}",
                        status_error("rename", &dest, st),
                        if s.posix_rename {
                            ""
                        } else {
                            "; the server lacks posix-rename@openssh.com, which replacing the config needs"
                        }
                    )))
                }
                Err(st) => {
                    // A plain rename refuses to replace: the same bytes are there already
                    // when the object exists (objects are named by their content).
                    let there = s.stat(&dest)?.is_some();
                    let _ = s.simple(FXP_REMOVE, &[&tmp]);
                    if there {
                        Ok(())
                    } else {
                        Err(status_error("rename", &dest, st))
                    }
                }
            }
        })
    }

    fn read(
        &self,
        kind: FileKind,
        name: &str,
        range: Option<(u64, u64)>,
        max: u64,
    ) -> Result<Vec<u8>> {
        let path = self.object(kind, name)?;
        let data = self.retrying(|s| {
            let handle = match s.open_file(&path, FXF_READ)? {
                Ok(h) => h,
                Err(Status::NoSuchFile) => return Err(Error::not_found(kind, name)),
                Err(st) => return Err(status_error("open", &path, st)),
            };
            let r = (|| {
                let (offset, len) = match range {
                    Some(r) => r,
                    None => {
                        let size = s.fstat_size(&handle)?;
                        if size > max {
                            return Err(super::too_large(kind, name, size, max));
                        }
                        (0, size)
                    }
                };
                s.read_at(&handle, offset, len)
            })();
            let closed = s.close(&handle);
            let data = r?;
            closed?;
            Ok(data)
        })?;
        self.counts
            .bytes_down
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some((offset, len)) = range {
            if data.len() as u64 != len {
                return Err(Error::truncated(kind, name, offset, len, data.len()));
            }
        }
        Ok(data)
    }

    /// The entries of each of `dirs` (none for a directory that does not exist), read on
    /// all sessions at once: listing the 256 pack directories one after another would cost
    /// a thousand round trips in a row.
    #[allow(clippy::type_complexity)]
    fn read_dirs(&self, dirs: &[String]) -> Result<Vec<(String, Vec<(String, u64, Option<u32>)>)>> {
        let per = dirs.len().div_ceil(self.cfg.connections.max(1)).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = dirs
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        self.retrying(|s| {
                            chunk
                                .iter()
                                .map(|d| Ok((d.clone(), s.read_dir(d)?.unwrap_or_default())))
                                .collect::<Result<Vec<_>>>()
                        })
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(dirs.len());
            for p in parts {
                out.extend(
                    p.join()
                        .map_err(|_| Error::Backend("sftp: a listing thread panicked".into()))??,
                );
            }
            Ok(out)
        })
    }

    fn dirs(&self) -> Vec<String> {
        let mut d = vec![self.path_of("")];
        for kind in [
            FileKind::Key,
            FileKind::Lock,
            FileKind::Snapshot,
            FileKind::Index,
        ] {
            d.push(self.path_of(kind.dir()));
        }
        for i in 0..=255u8 {
            d.push(self.path_of(&format!("data/{i:02x}")));
        }
        d
    }
}

/// Run `attempt` again (on a new session) when its connection was lost: a write goes to a
/// fresh temp name and is renamed, so a second attempt is harmless.
fn once_more_if_lost(mut attempt: impl FnMut() -> Result<()>) -> Result<()> {
    match attempt() {
        Err(Error::Backend(m)) if m.starts_with("sftp: connection lost") => {
            tracing::warn!("{m}; trying again on a new session");
            attempt()
        }
        r => r,
    }
}

/// Remote temporary files are named by their remote path with this prefix in
/// [`super::TempFile::path`], to tell them from the local pack files.
const REMOTE: &str = "sftp-remote:";

impl Backend for SftpBackend {
    fn location(&self) -> String {
        match self.cfg.port {
            Some(p) => format!("sftp://{}:{p}/{}", self.cfg.host, self.cfg.path),
            None => format!("sftp:{}:{}", self.cfg.host, self.cfg.path),
        }
    }

    fn exists(&self) -> Result<bool> {
        let p = self.path_of("");
        let p = if p == "/" {
            p
        } else {
            p.trim_end_matches('/').to_owned()
        };
        self.retrying(|s| Ok(s.stat(&p)?.is_some()))
    }

    fn create(&self) -> Result<()> {
        // mkdir -p for the root, then the layout.
        let root = self.cfg.path.clone();
        let mut dirs: Vec<String> = Vec::new();
        let mut at = String::new();
        for part in root.split('/').filter(|p| !p.is_empty()) {
            if at.is_empty() && !root.starts_with('/') {
                at = part.to_owned();
            } else {
                at = format!("{at}/{part}");
            }
            dirs.push(at.clone());
        }
        for kind in [
            FileKind::Key,
            FileKind::Lock,
            FileKind::Snapshot,
            FileKind::Index,
            FileKind::Pack,
        ] {
            dirs.push(self.path_of(kind.dir()));
        }
        for i in 0..=255u8 {
            dirs.push(self.path_of(&format!("data/{i:02x}")));
        }
        self.with(|s| {
            for d in &dirs {
                if let Err(st) = s.simple(FXP_MKDIR, &[d])? {
                    if s.stat(d)?.is_none() {
                        return Err(status_error("mkdir", d, st));
                    }
                }
            }
            Ok(())
        })
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let attempt = || {
            let mut at = 0usize;
            self.store(kind, name, |buf| {
                let n = buf.len().min(data.len() - at);
                buf[..n].copy_from_slice(&data[at..at + n]);
                at += n;
                Ok(n)
            })
        };
        once_more_if_lost(attempt)
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        // Streamed from the local file: a pack is never held in memory whole.
        let attempt = || {
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            self.store(kind, name, |buf| {
                let mut n = 0;
                while n < buf.len() {
                    match f.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io(path, e)),
                    }
                }
                Ok(n)
            })
        };
        once_more_if_lost(attempt)?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.read(kind, name, None, u64::MAX)
    }

    fn get_max(&self, kind: FileKind, name: &str, max: u64) -> Result<Vec<u8>> {
        self.read(kind, name, None, max)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read(kind, name, Some((offset, len)), u64::MAX)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        let path = self.object(kind, name)?;
        self.retrying(|s| Ok(s.stat(&path)?.map(|(size, _)| size.unwrap_or(0))))
    }

    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        if kind == FileKind::Config {
            return super::list_config(self);
        }
        let dirs: Vec<String> = if kind == FileKind::Pack {
            (0..=255u8)
                .map(|i| self.path_of(&format!("data/{i:02x}")))
                .collect()
        } else {
            vec![self.path_of(kind.dir())]
        };
        let mut out = Vec::new();
        for (_, entries) in self.read_dirs(&dirs)? {
            for (name, size, _) in entries {
                // Temp files of an interrupted write (and `.`/`..`) are not objects.
                if super::is_object_name(&name) {
                    out.push(ObjectInfo { name, size });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = self.object(kind, name)?;
        self.retrying(|s| s.remove(&path))
    }

    fn connections(&self) -> usize {
        self.cfg.connections
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn temp_dir(&self) -> PathBuf {
        // Packs are assembled locally and streamed up when complete, as for S3.
        let d = std::env::temp_dir().join("cairn-packs");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    fn temp_files(&self) -> Result<Vec<super::TempFile>> {
        let mut out = super::list_temp_files([self.temp_dir()]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let dirs = self.dirs();
        for (d, entries) in self.read_dirs(&dirs)? {
            for (name, size, mtime) in entries {
                if name.starts_with(".tmp-") {
                    out.push(super::TempFile {
                        path: PathBuf::from(format!("{REMOTE}{d}/{name}")),
                        size,
                        // Without a time, as new: kept until it has one.
                        age: std::time::Duration::from_secs(
                            mtime.map_or(0, |m| now.saturating_sub(u64::from(m))),
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    fn remove_temp(&self, path: &Path) -> Result<()> {
        match path.to_str().and_then(|p| p.strip_prefix(REMOTE)) {
            Some(remote) => self.retrying(|s| s.remove(remote)),
            None => super::remove_local_temp(path),
        }
    }

    fn request_summary(&self) -> Option<String> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(format!(
            "sftp: {} sessions; {} bytes up, {} down",
            g(&self.counts.sessions),
            g(&self.counts.bytes_up),
            g(&self.counts.bytes_down)
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_style_locations() {
        let c = SftpConfig::parse("sftp:backup@nas:/srv/cairn", &[]).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("backup@nas", None, "/srv/cairn")
        );
        let c = SftpConfig::parse("sftp:nas:repo/", &[]).unwrap();
        assert_eq!((c.host.as_str(), c.path.as_str()), ("nas", "repo"));
        let c = SftpConfig::parse("sftp://u@nas:2222//srv/r", &[]).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("u@nas", Some(2222), "/srv/r")
        );
        // IPv6, bracketed in the location, bare for ssh.
        let c = SftpConfig::parse("sftp://u@[::1]:2222//srv/r", &[]).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("u@::1", Some(2222), "/srv/r")
        );
        let c = SftpConfig::parse("sftp://[fe80::1]//r", &[]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("fe80::1", None));
        let c = SftpConfig::parse("sftp:u@[::1]:/srv/r", &[]).unwrap();
        assert_eq!((c.host.as_str(), c.path.as_str()), ("u@::1", "/srv/r"));
        let c = SftpConfig::parse("sftp://nas/rel", &[]).unwrap();
        assert_eq!((c.port, c.path.as_str()), (None, "rel"));
        for bad in [
            "sftp:nas",
            "sftp::/x",
            "sftp:-oProxyCommand=x:/r",
            "sftp://nas:99999//r",
            "sftp:nas:",
        ] {
            assert!(SftpConfig::parse(bad, &[]).is_err(), "{bad}");
        }
        let o = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let c =
            SftpConfig::parse("sftp:h:/r", &o("sftp.command", "ssh -J jump h -s sftp")).unwrap();
        assert_eq!(c.command.unwrap()[2], "jump");
        assert_eq!(
            SftpConfig::parse("sftp:h:/r", &o("sftp.connections", "8"))
                .unwrap()
                .connections,
            8
        );
        assert!(SftpConfig::parse("sftp:h:/r", &o("sftp.connections", "0")).is_err());
        assert!(SftpConfig::parse("sftp:h:/r", &o("s3.region", "x")).is_err());
    }
}
