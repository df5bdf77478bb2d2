//! Backup: walk, read, chunk, hash, dedup, compress, seal, pack, upload; then trees and the
//! snapshot.
//!
//! Parallelism is rayon work-stealing over directory entries (many small files) *and* over
//! the chunks of one file (one huge file), nested: an idle core steals whichever is available.
//! Large files are read in windows of [`window_size`] bytes, cut with the two-stage parallel
//! chunker, and their chunks sealed in parallel.
//!
//! Why `read(2)` windows and not `mmap` for big files: a file truncated by its writer while
//! mapped raises SIGBUS, which kills the process. Live database files in a PV can do exactly
//! that; the backup must warn and go on instead. The copy from the page cache is the price:
//! ~7 % of the CPU of an incompressible backup (perf), ~3 % of a compressible one.
//!
//! Memory bound: at most `threads` files are chunked with nested parallelism at once
//! ([`Archiver::parallel_files`]), each holding two windows ([`window_size`]: 1.25 × max chunk,
//! at least 8 MiB); a file that finds all slots taken is processed sequentially on its
//! thread, which then steals no further work, so it adds two windows per thread at most.
//! Add the packer's packs (see [`crate::packer`]) and the trees of the directories being
//! walked (one tree per directory level per thread).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_format::{
    BlobType, FileKind, Id, Node, NodeKind, Snapshot, SnapshotSummary, Timestamp, Tree,
};
use parking_lot::Mutex;
use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::fsmeta::{
    list_dir, node_from_meta, open_source, read_file_xattrs, read_xattrs, xattrs_pending, NameCache,
};
use crate::index::MasterIndex;
use crate::lock::SharedLock;
use crate::longpath;
use crate::packer::Packer;
use crate::pattern::Patterns;
use crate::progress::{interrupted, Progress};
use crate::repository::Repository;
use crate::util::{hostname, now_timestamp, username};
use crate::{Error, Result};

/// What to back up and how.
pub struct BackupOptions {
    /// Absolute paths to back up.
    pub paths: Vec<PathBuf>,
    /// Read this stream as one file named `.0` instead of paths.
    pub stdin: Option<(String, Box<dyn Read + Send>)>,
    /// Store this directory's contents as the snapshot's root instead of paths: what cairn
    /// prepared itself (a database copy, an API export), recorded as `/` so that restoring
    /// does not depend on where it was prepared.
    pub staged: Option<PathBuf>,
    /// Tags.
    pub tags: Vec<String>,
    /// Host name to record (default: this host).
    pub host: Option<String>,
    /// Snapshot time (default: now).
    pub time: Option<Timestamp>,
    /// Explicit parent; `None` = find the latest with the same host and paths.
    pub parent: Option<Id>,
    /// Re-read every file even if a parent says it is unchanged.
    pub force: bool,
    /// Exclude glob patterns.
    pub excludes: Vec<String>,
    /// Do not cross file-system boundaries.
    pub one_file_system: bool,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("paths", &self.paths)
            .field("tags", &self.tags)
            .finish()
    }
}

/// What a backup did.
#[derive(Debug)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Index files this backup loaded to deduplicate against.
    pub index_files: u64,
    /// Their bytes (from the cache or the repository).
    pub index_bytes: u64,
    /// Of those, the bytes fetched from the repository (`None`: no cache, all of them).
    pub index_bytes_fetched: Option<u64>,
}

/// Called with each warning (unreadable or changing files).
pub type WarnFn = dyn Fn(&str) + Send + Sync;

#[derive(Default)]
struct Counts {
    files_new: u64,
    files_changed: u64,
    files_unmodified: u64,
    dirs_new: u64,
    dirs_changed: u64,
    dirs_unmodified: u64,
    files: u64,
    bytes: u64,
}

/// A changed file's chunks as the parent snapshot stored them (id, length), cut the same way
/// again while they match. A file that grew at its end (a log) then stores only its new
/// bytes: content-defined cutting would store its old last chunk again, since that chunk ended
/// at the old end of file, not at a content-defined boundary, and with 512 KiB text chunks
/// that is about a quarter megabyte a night for every log. Bytes that do not match end the
/// guide, and the rest of the file is cut by content as always (which finds the old
/// content-defined boundaries again after the change).
struct Guide {
    chunks: Vec<(Id, u32)>,
    /// The chunk to try next.
    next: usize,
}

/// How many chunks below the cutter's minimum may end a guided file before they are cut
/// again by content: each costs an index entry and one more blob to read back, and cutting
/// them again costs storing their bytes once more (one night in this many).
const GUIDE_SHORT_RUN: usize = 8;

/// The chunk ends decided in one read window, and the ids of the first of them, which the
/// guide hashed already.
#[derive(Default)]
struct Cuts {
    ends: Vec<usize>,
    known: Vec<Id>,
}

/// The path recorded in an [`Error::Io`] that came from reading a backup source.
const SOURCE_READ: &str = "<source read>";

/// Bytes per read window for files with `max` chunk size. More than `max_chunk`, so that every
/// window decides at least one chunk; the rest is slack for the undecided tail carried over.
pub fn window_size(max_chunk: usize) -> usize {
    (max_chunk + (max_chunk / 4)).max(8 << 20)
}

/// How one file is cut.
#[derive(Clone, Copy)]
enum Cutter<'a> {
    Cdc(&'a Chunker),
    /// One chunk per page of this many bytes.
    Pages(usize),
    /// SQLite pages cut around their cells (`cairn_format::sqlite_cell_cuts`).
    SqliteCells {
        page: usize,
        usable: usize,
        min_piece: usize,
    },
}

/// A page rule of the config, ready to use.
enum RuleCutter {
    Cdc(Chunker),
    Pages,
    SqliteCells(usize),
}

struct Archiver<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    packer: Packer,
    chunker: Chunker,
    page_rules: Vec<(cairn_format::PageFormat, RuleCutter)>,
    excludes: Patterns,
    names: NameCache,
    progress: &'a Progress,
    warn: &'a WarnFn,
    counts: Mutex<Counts>,
    errors: AtomicUsize,
    parallel_files: AtomicUsize,
    max_parallel_files: usize,
    /// Read window: [`window_size`] of the largest maximum chunk of any cutter.
    window: usize,
    /// Read windows of finished files, taken again by the next ones (see [`WindowPool`]).
    windows: WindowPool,
    one_file_system: bool,
}

/// Directories named on the command line, and the path components leading to them.
enum Target {
    Real(PathBuf),
    Virtual(PathBuf, BTreeMap<OsString, Target>),
}

/// Make `p` absolute and lexically normal (no `.`/`..`), without resolving symlinks: the
/// snapshot records the path the operator named.
pub fn normalize_path(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

fn build_targets(paths: &[PathBuf]) -> BTreeMap<OsString, Target> {
    let mut root: BTreeMap<OsString, Target> = BTreeMap::new();
    for p in paths {
        let comps: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                _ => None,
            })
            .collect();
        let mut level = &mut root;
        let mut cur = PathBuf::from("/");
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            if i + 1 == comps.len() {
                level.insert(c.clone(), Target::Real(cur.clone()));
                break;
            }
            let entry = level
                .entry(c.clone())
                .or_insert_with(|| Target::Virtual(cur.clone(), BTreeMap::new()));
            match entry {
                Target::Real(_) => break, // an ancestor is backed up whole already
                Target::Virtual(_, children) => level = children,
            }
        }
    }
    root
}

/// Run `f`, one directory level deeper, on a fresh stack segment when little stack is left:
/// tree depth is bounded by the file system (or a crafted snapshot), not by thread stacks.
pub(crate) fn deeper<T>(f: impl FnOnce() -> T) -> T {
    stacker::maybe_grow(256 << 10, 4 << 20, f)
}

/// Count the files and bytes `paths` hold, into `progress.total_files`/`total_bytes`: a
/// stat-only walk run beside a backup (as restic's scanner) so that progress can show a
/// percentage and an ETA. The same excludes and file-system boundary as the backup; stops
/// when `stop` is set or on an interrupt. Unreadable paths are skipped (the backup reports
/// them).
pub fn scan(
    paths: &[PathBuf],
    excludes: &[String],
    one_file_system: bool,
    progress: &Progress,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::os::unix::fs::MetadataExt;
    let Ok(excludes) = Patterns::new(excludes) else {
        return;
    };
    let mut stack: Vec<(PathBuf, Option<u64>)> = paths
        .iter()
        .filter_map(|p| normalize_path(p).ok())
        .map(|p| (p, None))
        .collect();
    while let Some((p, dev)) = stack.pop() {
        if stop.load(Ordering::Relaxed) || interrupted() {
            return;
        }
        let Ok(m) = longpath::with(&p, |q| fs::symlink_metadata(q)) else {
            continue;
        };
        if m.is_dir() {
            if one_file_system && dev.is_some_and(|d| d != m.dev()) {
                continue;
            }
            let Ok(rd) = longpath::with(&p, list_dir) else {
                continue;
            };
            for name in rd.flatten() {
                let child = p.join(&name);
                if !excludes.is_empty() && excludes.matches(&child, &name) {
                    continue;
                }
                stack.push((child, Some(m.dev())));
            }
        } else {
            Progress::add(&progress.total_files, 1);
            if m.is_file() {
                Progress::add(&progress.total_bytes, m.len());
            }
        }
    }
}

/// Run a backup under a shared lock.
pub fn backup(
    lock: &SharedLock<'_>,
    opts: BackupOptions,
    progress: &Progress,
    warn: &WarnFn,
) -> Result<BackupResult> {
    crate::alloc::transient(|| backup_inner(lock, opts, progress, warn))
}

fn backup_inner(
    lock: &SharedLock<'_>,
    opts: BackupOptions,
    progress: &Progress,
    warn: &WarnFn,
) -> Result<BackupResult> {
    let repo: &Repository = lock;
    let start = now_timestamp();
    let index = Arc::new(repo.load_index_for_writing()?);
    let index_files = index.files.len() as u64;
    let (index_bytes, index_bytes_fetched) = repo.index_io();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some((name, _)) = &opts.stdin {
        if !Node::valid_name(name.as_bytes()) {
            return Err(Error::Invalid(format!("invalid --stdin-filename {name:?}")));
        }
        paths.push(PathBuf::from("/").join(name));
    } else if opts.staged.is_some() {
        paths.push(PathBuf::from("/"));
    } else {
        if opts.paths.is_empty() {
            return Err(Error::Invalid(
                "nothing to back up: give at least one path".into(),
            ));
        }
        for p in &opts.paths {
            let n = normalize_path(p)?;
            fs::symlink_metadata(&n).map_err(|e| Error::io(&n, e))?;
            paths.push(n);
        }
        paths.sort();
        paths.dedup();
        // `/` covers every other path.
        if paths.iter().any(|p| p == Path::new("/")) {
            paths.retain(|p| p == Path::new("/"));
        }
    }
    let path_bytes: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();

    let parent_id = match opts.parent {
        Some(id) => Some(id),
        None if opts.force => None,
        None => crate::snapshots::latest(&repo.load_snapshots()?, |s| {
            s.hostname == host && s.paths == path_bytes
        })
        .map(|(id, _)| *id),
    };
    let parent_tree = match parent_id {
        Some(id) if !opts.force => {
            // A damaged parent only costs speed: every file is read again. So does a parent
            // chosen here that a forget running beside this backup removed meanwhile (one
            // named with --parent must exist).
            let snap = match repo.load::<Snapshot>(FileKind::Snapshot, &id) {
                Ok(s) => Some(s),
                Err(e @ Error::ObjectNotFound { .. }) if opts.parent.is_none() => {
                    tracing::warn!(
                        "parent snapshot {}: {e}; reading every file again",
                        id.short()
                    );
                    None
                }
                Err(e) => return Err(e),
            };
            match snap.map(|s| repo.load_tree(&index, &s.tree)) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) if e.is_damage() || matches!(e, Error::ObjectNotFound { .. }) => {
                    tracing::warn!(
                        "parent snapshot {}: {e}; reading every file again",
                        id.short()
                    );
                    None
                }
                Some(Err(e)) => return Err(e),
            }
        }
        _ => None,
    };

    let seed = repo.key().chunker_seed;
    let chunker = Chunker::new(&repo.config().chunker, seed);
    let page_rules = repo
        .config()
        .page_rules
        .iter()
        .map(|r| {
            let c = match &r.strategy {
                cairn_format::PageStrategy::Pages => RuleCutter::Pages,
                cairn_format::PageStrategy::Cdc(p) => RuleCutter::Cdc(Chunker::new(p, seed)),
                cairn_format::PageStrategy::SqliteCells { min_piece } => {
                    RuleCutter::SqliteCells(*min_piece as usize)
                }
            };
            (r.format, c)
        })
        .collect::<Vec<_>>();
    // A window must hold the largest chunk of any cutter a file may get (pages are at most
    // 64 KiB), or a window without a cut would never make progress.
    let window = window_size(
        page_rules
            .iter()
            .map(|(_, r)| match r {
                RuleCutter::Cdc(c) => c.max_size(),
                RuleCutter::Pages | RuleCutter::SqliteCells(_) => 1 << 16,
            })
            .fold(chunker.max_size(), usize::max),
    );
    let arch = Archiver {
        repo,
        index: &index,
        packer: Packer::new(repo, index.clone()).under(lock.guard()?),
        chunker,
        page_rules,
        excludes: Patterns::new(&opts.excludes)?,
        names: NameCache::default(),
        progress,
        warn,
        counts: Mutex::default(),
        errors: AtomicUsize::new(0),
        parallel_files: AtomicUsize::new(0),
        max_parallel_files: rayon::current_num_threads().max(1),
        window,
        windows: WindowPool::new(2 * window),
        one_file_system: opts.one_file_system,
    };

    let root_tree = if let Some((name, reader)) = opts.stdin {
        arch.stdin_tree(&name, reader)?
    } else if let Some(dir) = &opts.staged {
        arch.dir_tree(dir, parent_tree.as_ref(), None)?
    } else if paths.iter().any(|p| p == Path::new("/")) {
        // The root tree is the listing of `/` itself.
        arch.dir_tree(Path::new("/"), parent_tree.as_ref(), None)?
    } else {
        arch.targets_tree(&build_targets(&paths), parent_tree.as_ref(), None)?
    };
    let root_id = arch.store_tree(root_tree)?;
    if interrupted() {
        return Err(Error::Interrupted);
    }
    arch.packer.finish()?;
    let stats = arch.packer.stats();
    let c = arch.counts.into_inner();
    let errors = arch.errors.load(Ordering::Relaxed) as u64;
    let end = now_timestamp();
    let mut tags = opts.tags;
    tags.sort();
    tags.dedup();
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let snapshot = Snapshot {
        time: opts.time.unwrap_or(start),
        parent: parent_id,
        tree: root_id,
        paths: path_bytes,
        hostname: host,
        username: username(),
        uid,
        gid,
        tags,
        excludes: opts.excludes,
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        summary: Some(SnapshotSummary {
            backup_start: start,
            backup_end: end,
            files_new: c.files_new,
            files_changed: c.files_changed,
            files_unmodified: c.files_unmodified,
            dirs_new: c.dirs_new,
            dirs_changed: c.dirs_changed,
            dirs_unmodified: c.dirs_unmodified,
            data_blobs: stats.data_blobs,
            tree_blobs: stats.tree_blobs,
            data_added: stats.bytes_added,
            data_added_packed: stats.bytes_packed,
            total_files_processed: c.files,
            total_bytes_processed: c.bytes,
            errors,
        }),
    };
    // The snapshot goes last: everything it references is indexed and durable by now. A
    // prune may delete packs condemned after this backup loaded the index only once this
    // lock is gone or stale, so the snapshot is committed only while the lock is certainly
    // live (FORMAT.md §15).
    lock.guard()?.check_held()?;
    let id = repo.save(FileKind::Snapshot, &snapshot)?;
    Ok(BackupResult {
        id,
        snapshot,
        index_files,
        index_bytes,
        index_bytes_fetched,
    })
}

impl Archiver<'_> {
    fn warn(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        Progress::add(&self.progress.errors, 1);
        (self.warn)(&msg);
    }

    fn store_tree(&self, mut tree: Tree) -> Result<Id> {
        tree.canonicalize();
        let bytes = tree.encode();
        // Readers refuse larger trees (FORMAT.md, "Limits"): never write one.
        if bytes.len() > cairn_format::MAX_TREE_LEN as usize {
            return Err(Error::Invalid(format!(
                "a directory listing of {} bytes is larger than the format's limit of {} (millions of entries, or files of billions of chunks)",
                bytes.len(),
                cairn_format::MAX_TREE_LEN
            )));
        }
        let id = self.packer.blob_id(&bytes);
        self.packer.add(BlobType::Tree, id, &bytes)?;
        Ok(id)
    }

    fn parent_subtree(&self, parent: Option<&Node>) -> Option<Tree> {
        let node = parent?;
        let id = node.subtree?;
        match self.repo.load_tree(self.index, &id) {
            Ok(t) => Some(t),
            Err(e) => {
                // A damaged parent only costs speed: files are re-read.
                tracing::warn!("parent tree {}: {e}; re-reading", id.short());
                None
            }
        }
    }

    fn targets_tree(
        &self,
        targets: &BTreeMap<OsString, Target>,
        parent: Option<&Tree>,
        dev: Option<u64>,
    ) -> Result<Tree> {
        let nodes: Vec<Option<Node>> = targets
            .par_iter()
            .map(|(name, t)| -> Result<Option<Node>> {
                let pnode = parent.and_then(|p| p.get(name.as_bytes()));
                match t {
                    Target::Real(path) => {
                        let meta = match longpath::with(path, |q| fs::symlink_metadata(q)) {
                            Ok(m) => m,
                            Err(e) => {
                                self.warn(format!("{}: {e}", path.display()));
                                return Ok(None);
                            }
                        };
                        self.entry(path, name, &meta, pnode, dev)
                    }
                    Target::Virtual(path, children) => {
                        // A component above a named path is recorded as the directory it
                        // leads to, even when it is a symlink (`/var/run` → `/run`): the
                        // snapshot mirrors the path the operator named.
                        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
                        if !meta.is_dir() {
                            return Err(Error::Invalid(format!(
                                "{} is not a directory",
                                path.display()
                            )));
                        }
                        let mut node = node_from_meta(name, path, &meta, &self.names, None, false)?;
                        let sub = self.parent_subtree(pnode);
                        let tree = deeper(|| self.targets_tree(children, sub.as_ref(), dev))?;
                        node.subtree = Some(self.store_tree(tree)?);
                        Ok(Some(node))
                    }
                }
            })
            .collect::<Result<_>>()?;
        Ok(Tree {
            nodes: nodes.into_iter().flatten().collect(),
        })
    }

    /// One directory entry. `Ok(None)` when it was skipped with a warning.
    fn entry(
        &self,
        path: &Path,
        name: &OsStr,
        meta: &fs::Metadata,
        parent: Option<&Node>,
        dev: Option<u64>,
    ) -> Result<Option<Node>> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let mut node = match node_from_meta(name, path, meta, &self.names, parent, true) {
            Ok(n) => n,
            Err(e) => {
                self.warn(format!("{e}"));
                return Ok(None);
            }
        };
        match node.kind {
            NodeKind::Dir => {
                let dev = dev.or(Some(meta.dev()));
                if self.one_file_system && dev != Some(meta.dev()) {
                    // A mount point: record it empty, as restic does.
                    node.subtree = Some(self.store_tree(Tree::default())?);
                    return Ok(Some(node));
                }
                let sub = self.parent_subtree(parent.filter(|p| p.kind == NodeKind::Dir));
                // One stack frame chain per directory level: deep trees (any user can make
                // one) grow the stack on the heap instead of overflowing it.
                let tree = match deeper(|| self.dir_tree(path, sub.as_ref(), dev)) {
                    Ok(t) => t,
                    // This directory could not be listed: skip it with a warning. Errors from
                    // further down (a full repository disk) abort the backup instead.
                    Err(Error::Io { path: p, source }) if Path::new(&p) == path => {
                        self.warn(format!("{p}: {source}"));
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                let id = self.store_tree(tree)?;
                node.subtree = Some(id);
                let mut c = self.counts.lock();
                match parent.and_then(|p| p.subtree) {
                    None => c.dirs_new += 1,
                    Some(old) if old == id => c.dirs_unmodified += 1,
                    Some(_) => c.dirs_changed += 1,
                }
                Progress::add(&self.progress.dirs, 1);
            }
            NodeKind::File => {
                let xattrs = xattrs_pending(meta, parent);
                if !self.file_content(path, meta, parent, &mut node, xattrs)? {
                    return Ok(None);
                }
            }
            _ => {
                let mut c = self.counts.lock();
                c.files += 1;
                Progress::add(&self.progress.files, 1);
            }
        }
        Ok(Some(node))
    }

    fn dir_tree(&self, path: &Path, parent: Option<&Tree>, dev: Option<u64>) -> Result<Tree> {
        let rd = longpath::with(path, list_dir).map_err(|e| Error::io(path, e))?;
        let mut entries: Vec<(OsString, PathBuf)> = Vec::new();
        for e in rd {
            match e {
                Ok(name) => {
                    let p = path.join(&name);
                    if !self.excludes.is_empty() && self.excludes.matches(&p, &name) {
                        continue;
                    }
                    entries.push((name, p));
                }
                Err(e) => self.warn(format!("{}: {e}", path.display())),
            }
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let nodes: Vec<Option<Node>> = entries
            .par_iter()
            .map(|(name, p)| {
                let meta = match longpath::with(p, |q| fs::symlink_metadata(q)) {
                    Ok(m) => m,
                    Err(e) => {
                        self.warn(format!("{}: {e}", p.display()));
                        return Ok(None);
                    }
                };
                self.entry(
                    p,
                    name,
                    &meta,
                    parent.and_then(|t| t.get(name.as_bytes())),
                    dev,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Tree {
            nodes: nodes.into_iter().flatten().collect(),
        })
    }

    /// Fill in `node.content`. Returns false if the file had to be skipped.
    ///
    /// A file is stored as it was up to the size it had when listed; if it changed while it
    /// was read (or holds more than that size), a warning says so and the backup ends with
    /// exit code 3.
    ///
    /// `xattrs`: the node's xattrs are still to be read (see [`node_from_meta`]), from the
    /// open file when it is read.
    fn file_content(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        parent: Option<&Node>,
        node: &mut Node,
        xattrs: bool,
    ) -> Result<bool> {
        if let Some(p) = parent {
            let unchanged = p.kind == NodeKind::File
                && p.size == node.size
                && p.mtime == node.mtime
                && p.ctime == node.ctime
                && p.inode == node.inode;
            if let Some(content) = unchanged
                .then(|| self.reuse(&p.content))
                .transpose()?
                .flatten()
            {
                node.content = content;
                // Content is reused on other grounds than xattrs (the device number may
                // differ, after a reboot or on a new mount).
                if xattrs {
                    node.xattrs = read_xattrs(path);
                }
                let mut c = self.counts.lock();
                c.files_unmodified += 1;
                c.files += 1;
                c.bytes += node.size;
                Progress::add(&self.progress.files, 1);
                Progress::add(&self.progress.bytes, node.size);
                return Ok(true);
            }
        }
        let mut f = match longpath::with(path, open_source) {
            Ok(f) => f,
            Err(e) => {
                let what = if e.kind() == ErrorKind::NotFound {
                    "vanished before it could be read".to_owned()
                } else {
                    e.to_string()
                };
                self.warn(format!("{}: {what}", path.display()));
                return Ok(false);
            }
        };
        if xattrs {
            node.xattrs = read_file_xattrs(&f);
        }
        let guide = parent.filter(|p| p.kind == NodeKind::File);
        let (content, read) = match self.chunk_stream(&mut f, Some(meta.len()), guide) {
            Ok(v) => v,
            // Only a failure to read the *source* skips the file; an I/O error writing the
            // repository (a full disk) must abort the backup.
            Err(Error::Io { path: p, source }) if p == SOURCE_READ => {
                self.warn(format!("{}: read error: {source}", path.display()));
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let after = f.metadata().map_err(|e| Error::io(path, e))?;
        // Reading stopped at the size the file had when it was listed: one more byte tells
        // a file that holds more than its size says (a stale NFS attribute cache, a FUSE
        // file system) from one that ended there. A file that says it is empty may be a
        // generated one (procfs-like): it is read to its end instead.
        let mut content = content;
        let mut read = read;
        let mut probe = [0u8; 1];
        let probed = loop {
            match f.read(&mut probe) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                r => break r.unwrap_or(0),
            }
        };
        if meta.len() == 0 && probed == 1 {
            let mut rest = std::io::Read::chain(&probe[..1], &mut f);
            (content, read) = match self.chunk_stream(&mut rest, None, None) {
                Ok(v) => v,
                Err(Error::Io { path: p, source }) if p == SOURCE_READ => {
                    self.warn(format!("{}: read error: {source}", path.display()));
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
        }
        let more_data = meta.len() > 0 && probed == 1;
        if more_data
            || (meta.len() > 0 && read != meta.len())
            || after.len() != meta.len()
            || after.mtime() != meta.mtime()
            || after.mtime_nsec() != meta.mtime_nsec()
        {
            let what = if more_data || read != meta.len() || after.len() != meta.len() {
                format!(
                    "{} bytes before, {read} read, {} after",
                    meta.len(),
                    after.len()
                )
            } else {
                "its modification time changed during the read".to_owned()
            };
            self.warn(format!(
                "{}: file changed while it was read ({what}); stored what was read",
                path.display()
            ));
        }
        node.size = read;
        node.content = self.packer.content(content)?;
        let mut c = self.counts.lock();
        if parent.is_some_and(|p| p.kind == NodeKind::File) {
            c.files_changed += 1;
        } else {
            c.files_new += 1;
        }
        c.files += 1;
        c.bytes += read;
        Progress::add(&self.progress.files, 1);
        Ok(true)
    }

    /// Fill `buf` up to the window size or EOF.
    fn fill(
        &self,
        r: &mut (dyn Read + Send),
        buf: &mut Window,
        window: usize,
        size_hint: Option<u64>,
        total: &mut u64,
        eof: &mut bool,
    ) -> Result<()> {
        while buf.len < window && !*eof {
            // A file is read up to the size it had when it was opened, never further: one that
            // keeps growing (a log being appended to) would otherwise be chased to its new
            // end. Growth is detected afterwards from its size and reported.
            if size_hint.is_some_and(|s| *total >= s) {
                *eof = true;
                break;
            }
            // Read only what the file should still hold, not a whole window: zero-filling
            // 8 MiB for a 4 KiB file costs more than reading it.
            let expected = size_hint.map_or(usize::MAX, |s| s.saturating_sub(*total) as usize);
            let want = (window - buf.len).min(8 << 20).min(expected.max(1));
            match r.read(buf.spare(want)) {
                Ok(0) => *eof = true,
                Ok(n) => {
                    buf.len += n;
                    *total += n as u64;
                    Progress::add(&self.progress.bytes, n as u64);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(SOURCE_READ, e)),
            }
        }
        Ok(())
    }

    /// The parent's chunks of a file cut by `c`, as a [`Guide`]; `None` where they would not
    /// help or cannot be had (a damaged parent only costs what guiding would have saved).
    fn guide(&self, parent: &Node, c: &Chunker) -> Option<Guide> {
        // A parent of one chunk below the minimum is what content-defined cutting would
        // store again anyway; guiding it would only split small files.
        if parent.size < c.min_size() as u64 {
            return None;
        }
        let ids = match self.repo.file_blobs(self.index, &parent.content) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("parent content lists: {e}; cutting without them");
                return None;
            }
        };
        let mut chunks = Vec::with_capacity(ids.len());
        let mut total = 0u64;
        for id in ids.iter() {
            let loc = self.index.get(id)?;
            if loc.blob_type != BlobType::Data {
                return None;
            }
            total += u64::from(loc.raw_length);
            chunks.push((*id, loc.raw_length));
        }
        if total != parent.size {
            return None;
        }
        // Chunks of another cutter (the file changed format) larger than this one's maximum
        // could not be decided within a read window.
        if let Some(i) = chunks.iter().position(|&(_, l)| l as usize > c.max_size()) {
            chunks.truncate(i);
        }
        // Each night's appended tail below the minimum leaves one short chunk; past
        // `GUIDE_SHORT_RUN` of them, they are cut again by content (once, into chunks of at
        // least the minimum), so that a file never holds more than that many in a row.
        let short = chunks
            .iter()
            .rev()
            .take_while(|&&(_, l)| (l as usize) < c.min_size())
            .count();
        if short >= GUIDE_SHORT_RUN {
            chunks.truncate(chunks.len() - short);
        }
        (!chunks.is_empty()).then_some(Guide { chunks, next: 0 })
    }

    /// Chunk ends of `buf` (which starts at a chunk boundary) that are final: the guide's
    /// while its chunks match, content-defined ones from the first that does not (or once it
    /// has none left).
    fn cuts(&self, cut: Cutter<'_>, guide: &mut Option<Guide>, buf: &[u8], eof: bool) -> Cuts {
        let mut out = Cuts::default();
        let mut at = 0;
        if let Some(g) = guide {
            while let Some(&(id, len)) = g.chunks.get(g.next) {
                let end = at + len as usize;
                if end > buf.len() {
                    if eof {
                        // The file now ends inside this chunk.
                        g.next = g.chunks.len();
                    }
                    break;
                }
                if self.packer.blob_id(&buf[at..end]) != id {
                    g.next = g.chunks.len();
                    break;
                }
                out.ends.push(end);
                out.known.push(id);
                at = end;
                g.next += 1;
            }
            if g.next < g.chunks.len() {
                // Waiting for the rest of a chunk from the next window.
                return out;
            }
            *guide = None;
        }
        out.ends.extend(
            self.cut_window(cut, &buf[at..], eof)
                .into_iter()
                .map(|e| e + at),
        );
        out
    }

    /// Chunk ends of `buf` that are final (see [`Chunker::boundaries_window`]).
    fn cut_window(&self, cut: Cutter<'_>, buf: &[u8], eof: bool) -> Vec<usize> {
        match cut {
            Cutter::Pages(page) => {
                let mut out: Vec<usize> = (1..=buf.len() / page).map(|i| i * page).collect();
                if eof && !buf.len().is_multiple_of(page) {
                    out.push(buf.len());
                }
                out
            }
            Cutter::SqliteCells {
                page,
                usable,
                min_piece,
            } => cairn_format::sqlite_window_cuts(buf, page, usable, min_piece, eof),
            // The two-stage cutter hashes every byte (SS-CDC cannot skip the first `min` bytes
            // of a chunk it has not located yet), so it costs ~2.3× the CPU of the sequential
            // cutter. With few cores it is cheaper to cut sequentially while the other cores
            // seal the previous window; with many, sequential cutting would become the
            // bottleneck.
            Cutter::Cdc(c) if self.max_parallel_files >= 8 => {
                c.boundaries_window(buf, eof, 1 << 20)
            }
            Cutter::Cdc(c) => c.window_cuts(buf, eof),
        }
    }

    /// Store the chunks of `buf` ending at `cuts.ends`; the first `cuts.known.len()` were
    /// hashed already (by the guide).
    fn seal_window(&self, buf: &[u8], cuts: &Cuts, parallel: bool) -> Result<Vec<Id>> {
        let mut spans = Vec::with_capacity(cuts.ends.len());
        let mut s = 0;
        for (i, &e) in cuts.ends.iter().enumerate() {
            spans.push((s, e, cuts.known.get(i).copied()));
            s = e;
        }
        let store = |&(a, b, known): &(usize, usize, Option<Id>)| -> Result<Id> {
            let chunk = &buf[a..b];
            let id = known.unwrap_or_else(|| self.packer.blob_id(chunk));
            self.packer.add(BlobType::Data, id, chunk)?;
            Ok(id)
        };
        if parallel && spans.len() > 1 {
            spans.par_iter().map(store).collect()
        } else {
            spans.iter().map(store).collect()
        }
    }

    /// An unchanged file's content as the parent snapshot names it, if every data blob is
    /// still stored (or queued in this run); `None` to read the file again. Lists are read
    /// for their blobs: a list in the index does not prove that the blobs it names are, and
    /// the content is stored again as this repository's format names it (lists after a
    /// migration to format 4).
    fn reuse(&self, parent: &cairn_format::Content) -> Result<Option<cairn_format::Content>> {
        let ids = match self.repo.file_blobs(self.index, parent) {
            Ok(ids) => ids,
            Err(e) => {
                // A damaged parent only costs speed: the file is read again.
                tracing::warn!("parent content lists: {e}; re-reading");
                return Ok(None);
            }
        };
        if !ids.iter().all(|id| self.packer.has(id)) {
            return Ok(None);
        }
        // Named directly again where the repository's format or the file's size says so.
        self.packer.content(ids.into_owned()).map(Some)
    }

    /// Chunk and store a stream; returns blob ids and bytes read.
    ///
    /// A multi-window file is pipelined: while the chunks of window *k* are sealed on all
    /// cores, window *k + 1* is read and cut.
    ///
    /// `parent` is the file's node in the parent snapshot, if it was a file there: its chunks
    /// guide the cutting (see [`Guide`]).
    fn chunk_stream(
        &self,
        r: &mut (dyn Read + Send),
        size_hint: Option<u64>,
        parent: Option<&Node>,
    ) -> Result<(Vec<Id>, u64)> {
        let window = self.window;
        let cap = size_hint
            .map_or(window, |s| (s as usize).min(window))
            .max(1);
        let mut ids = Vec::new();
        let mut total = 0u64;
        let mut eof = false;
        // Given back to the pool however this returns.
        let mut w = FileWindows {
            pool: &self.windows,
            cur: self.windows.take(cap),
            spare: None,
        };
        self.fill(r, &mut w.cur, window, size_hint, &mut total, &mut eof)?;
        // The first window decides how the whole file is cut (magic bytes at its start).
        let cut = self.cutter_for(w.cur.data(), size_hint);
        // Only files with several chunks under their cutter compete for a parallel slot; the
        // slot count is released on every exit path by the guard.
        let max_chunk = match cut {
            Cutter::Cdc(c) => c.max_size(),
            Cutter::Pages(page) | Cutter::SqliteCells { page, .. } => page,
        };
        let big = size_hint.is_none_or(|s| s as usize > max_chunk);
        let parallel =
            big && self.parallel_files.fetch_add(1, Ordering::AcqRel) < self.max_parallel_files;
        let _slot = SlotGuard(&self.parallel_files, big);
        let mut guide = match (cut, parent) {
            (Cutter::Cdc(c), Some(p)) => self.guide(p, c),
            _ => None,
        };
        let mut cuts = self.cuts(cut, &mut guide, w.cur.data(), eof);
        loop {
            if interrupted() {
                return Err(Error::Interrupted);
            }
            // A full window always decides a chunk (it is larger than any maximum chunk);
            // failing that, stop rather than spin on the same bytes.
            if cuts.ends.is_empty() && !eof {
                return Err(Error::Invalid(format!(
                    "no chunk boundary in a {}-byte read window (window smaller than a chunk?)",
                    w.cur.len
                )));
            }
            let consumed = cuts.ends.last().copied().unwrap_or(0);
            // Two buffers per file take turns: a fresh 10 MiB allocation per window costs
            // page faults (or, with glibc's dynamic thresholds, memory that stays resident).
            let need = match (eof, consumed == w.cur.len) {
                (true, true) => 0,
                (true, false) => w.cur.len - consumed,
                (false, _) => window,
            };
            let mut next = match w.spare.take() {
                Some(spare) => spare,
                None => self.windows.take(need),
            };
            next.len = 0;
            if need > 0 {
                next.reserve_exact(need);
                next.extend_from_slice(&w.cur.data()[consumed..]);
            }
            let done = eof && next.len == 0;
            let (sealed, next_cuts) = if parallel && !done {
                let (sealed, next_cuts) = rayon::join(
                    || self.seal_window(w.cur.data(), &cuts, true),
                    || -> Result<Cuts> {
                        self.fill(r, &mut next, window, size_hint, &mut total, &mut eof)?;
                        Ok(self.cuts(cut, &mut guide, next.data(), eof))
                    },
                );
                (sealed, Some(next_cuts))
            } else {
                (self.seal_window(w.cur.data(), &cuts, parallel), None)
            };
            ids.extend(sealed?);
            if done {
                w.spare = Some(next);
                break;
            }
            cuts = match next_cuts {
                Some(c) => c?,
                None => {
                    self.fill(r, &mut next, window, size_hint, &mut total, &mut eof)?;
                    self.cuts(cut, &mut guide, next.data(), eof)
                }
            };
            w.spare = Some(std::mem::replace(&mut w.cur, next));
        }
        Ok((ids, total))
    }

    /// The cutter for a file whose first bytes are `head`.
    fn cutter_for(&self, head: &[u8], len: Option<u64>) -> Cutter<'_> {
        if let Some((format, page)) = cairn_format::pages::detect(
            &head[..head.len().min(cairn_format::pages::DETECT_LEN)],
            len,
        ) {
            if let Some((_, rule)) = self.page_rules.iter().find(|(f, _)| *f == format) {
                return match rule {
                    RuleCutter::Pages if page > 0 => Cutter::Pages(page as usize),
                    // Config validation allows `Pages` only for formats with pages.
                    RuleCutter::Pages => Cutter::Cdc(&self.chunker),
                    RuleCutter::Cdc(c) => Cutter::Cdc(c),
                    // The reserved bytes at the end of each page are in the database header.
                    RuleCutter::SqliteCells(min_piece) => Cutter::SqliteCells {
                        page: page as usize,
                        usable: (page as usize)
                            .saturating_sub(usize::from(head.get(20).copied().unwrap_or(0))),
                        min_piece: *min_piece,
                    },
                };
            }
        }
        Cutter::Cdc(&self.chunker)
    }

    fn stdin_tree(&self, name: &str, mut reader: Box<dyn Read + Send>) -> Result<Tree> {
        let (content, size) = match self.chunk_stream(&mut reader, None, None) {
            Ok(v) => v,
            Err(Error::Io { path, source }) if path == SOURCE_READ => {
                return Err(Error::io("standard input", source))
            }
            Err(e) => return Err(e),
        };
        let now = cairn_format::FileTime::from_unix_nanos(now_timestamp().unix_nanos);
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        {
            let mut c = self.counts.lock();
            c.files_new += 1;
            c.files += 1;
            c.bytes += size;
        }
        Ok(Tree {
            nodes: vec![Node {
                name: name.as_bytes().to_vec(),
                kind: NodeKind::File,
                mode: 0o644,
                uid,
                gid,
                user: self.names.user(uid),
                group: self.names.group(gid),
                mtime: now,
                atime: now,
                ctime: now,
                size,
                inode: 0,
                device: 0,
                rdev: 0,
                links: 1,
                link_target: Vec::new(),
                xattrs: Vec::new(),
                content: self.packer.content(content)?,
                subtree: None,
            }],
        })
    }
}

/// A read buffer whose bytes past `len` stay initialized between uses: refilling a recycled
/// window reads over old bytes instead of zero-filling a whole window first (that memset was 3 % of
/// an incompressible backup's CPU).
#[derive(Default)]
struct Window {
    buf: Vec<u8>,
    len: usize,
}

impl Window {
    fn with_capacity(n: usize) -> Window {
        Window {
            buf: Vec::with_capacity(n),
            len: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Capacity for `total` bytes of data, allocated once instead of by doubling.
    fn reserve_exact(&mut self, total: usize) {
        self.buf.reserve_exact(total.saturating_sub(self.buf.len()));
    }

    /// `want` bytes of room after the data; only bytes never used before are zero-filled.
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.buf.len() < self.len + want {
            self.buf.resize(self.len + want, 0);
        }
        &mut self.buf[self.len..self.len + want]
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.spare(bytes.len()).copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Read windows of finished files, kept for the next ones, up to a total capacity.
///
/// Why: a backup runs with glibc's mmap threshold at 128 KiB ([`crate::alloc::transient`]),
/// so a window allocated per file (up to 10 MiB) was mapped, faulted in, zero-filled and
/// unmapped for every file above that size: on the 3 GB real tree a third of the first
/// backup's page faults. A window taken from the pool is already faulted in, and
/// [`Window::spare`] zero-fills only bytes it never held. Windows below
/// [`WindowPool::MIN`] come from the allocator's heap and are not kept.
///
/// Memory: the pool holds at most `cap` bytes of windows that are not in use, and a file
/// takes from it before it allocates. A kept window stays resident whole even while it
/// serves a smaller file, so the pool can keep up to `cap` more resident than exact-size
/// windows would (measured on the real tree: peak RSS +5–8 MiB together with the kept zstd
/// context); files under [`WindowPool::MIN`], all of a many-small-files tree, never use it.
struct WindowPool {
    free: Mutex<Vec<Window>>,
    cap: usize,
}

impl WindowPool {
    /// Windows smaller than this are allocated from the heap and dropped after use.
    const MIN: usize = 128 << 10;

    fn new(cap: usize) -> WindowPool {
        WindowPool {
            free: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// An empty window with room for `want` bytes: the smallest kept one that fits, else the
    /// largest kept one (it grows), else a new one.
    fn take(&self, want: usize) -> Window {
        if want >= Self::MIN {
            let mut free = self.free.lock();
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, w)| w.buf.capacity() >= want)
                .min_by_key(|(_, w)| w.buf.capacity())
                .or_else(|| {
                    free.iter()
                        .enumerate()
                        .max_by_key(|(_, w)| w.buf.capacity())
                })
                .map(|(i, _)| i);
            if let Some(i) = fit {
                let mut w = free.swap_remove(i);
                drop(free);
                w.len = 0;
                w.reserve_exact(want);
                return w;
            }
        }
        Window::with_capacity(want)
    }

    /// Keep `w` for a later file if it is large enough and fits under the cap; when it does
    /// not fit, smaller kept windows make room for it.
    fn put(&self, w: Window) {
        let size = w.buf.capacity();
        if size < Self::MIN || size > self.cap {
            return;
        }
        let mut free = self.free.lock();
        let mut held: usize = free.iter().map(|w| w.buf.capacity()).sum();
        while held + size > self.cap {
            let Some((i, smallest)) = free
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.buf.capacity())
                .map(|(i, w)| (i, w.buf.capacity()))
            else {
                break;
            };
            if smallest >= size {
                return;
            }
            held -= smallest;
            free.swap_remove(i);
        }
        free.push(w);
    }
}

/// One file's two read windows ([`Archiver::chunk_stream`]), given back to the pool when the
/// file is done, on every path out of it.
struct FileWindows<'p> {
    pool: &'p WindowPool,
    cur: Window,
    spare: Option<Window>,
}

impl Drop for FileWindows<'_> {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.cur));
        if let Some(w) = self.spare.take() {
            self.pool.put(w);
        }
    }
}

struct SlotGuard<'a>(&'a AtomicUsize, bool);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Window, WindowPool};

    const MIB: usize = 1 << 20;

    fn held(pool: &WindowPool) -> Vec<usize> {
        let mut caps: Vec<usize> = pool.free.lock().iter().map(|w| w.buf.capacity()).collect();
        caps.sort_unstable();
        caps
    }

    /// A window filled once and given back is handed out again with its bytes still
    /// initialized (no zero-fill, no fresh pages), and only as much as the pool's cap is kept.
    #[test]
    fn the_window_pool_reuses_windows_within_its_cap() {
        let pool = WindowPool::new(10 * MIB);
        let mut a = pool.take(4 * MIB);
        a.extend_from_slice(&vec![7u8; 4 * MIB]);
        let a_ptr = a.buf.as_ptr();
        pool.put(a);
        assert_eq!(held(&pool), [4 * MIB]);

        // Taken again, for a smaller file: the same buffer, empty, its bytes initialized.
        let mut b = pool.take(MIB);
        assert_eq!(b.buf.as_ptr(), a_ptr);
        assert_eq!(b.len, 0);
        assert_eq!(b.buf.len(), 4 * MIB);
        b.spare(MIB).fill(1);
        assert!(held(&pool).is_empty());

        // A second window while the first is out is new; both come back, within the cap.
        let c = pool.take(5 * MIB);
        assert_ne!(c.buf.as_ptr(), a_ptr);
        pool.put(b);
        pool.put(c);
        assert_eq!(held(&pool), [4 * MIB, 5 * MIB]);

        // Over the cap, a larger window replaces smaller ones; a smaller one is dropped.
        pool.put(Window::with_capacity(6 * MIB));
        assert_eq!(held(&pool), [6 * MIB]);
        pool.put(Window::with_capacity(3 * MIB));
        assert_eq!(held(&pool), [3 * MIB, 6 * MIB]);
        pool.put(Window::with_capacity(2 * MIB));
        assert_eq!(held(&pool), [3 * MIB, 6 * MIB]);

        // Small windows and windows over the cap are never kept.
        pool.put(Window::with_capacity(WindowPool::MIN - 1));
        pool.put(Window::with_capacity(11 * MIB));
        assert_eq!(held(&pool), [3 * MIB, 6 * MIB]);

        // The smallest kept window that fits is taken; failing that, the largest, grown.
        assert_eq!(pool.take(2 * MIB).buf.capacity(), 3 * MIB);
        let grown = pool.take(8 * MIB);
        assert!(grown.buf.capacity() >= 8 * MIB);
        assert!(held(&pool).is_empty());
        // Below the minimum the pool is not consulted.
        pool.put(grown);
        assert!(pool.take(WindowPool::MIN - 1).buf.capacity() < WindowPool::MIN);
        assert_eq!(held(&pool).len(), 1);
    }
}
