//! Restore: plan from the trees, create directories and empty files, then write contents
//! pack by pack in parallel with positioned writes, then links and special files, then
//! metadata (directories last, deepest first, so their mtimes stick).
//!
//! Safety: every name was validated when its tree was decoded (no `/`, `.`, `..`, NUL);
//! directories are created by us and checked to be real directories; files are opened with
//! `O_NOFOLLOW`; symlinks are created only after all contents are written, so no write can
//! follow a link placed by a malicious snapshot out of the target.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cairn_format::{BlobType, FileKind, Id, Node, NodeKind, Tree};
use parking_lot::Mutex;
use rayon::prelude::*;

use crate::fsmeta::{apply_metadata, can_chown};
use crate::index::{BlobLocation, MasterIndex};
use crate::longpath;
use crate::pattern::Patterns;
use crate::progress::{interrupted, Progress};
use crate::repository::{Indexed, Repository};
use crate::{Error, Result};

/// Restore options.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Only paths matching one of these (or under a match).
    pub includes: Vec<String>,
    /// Skip paths matching these.
    pub excludes: Vec<String>,
    /// Remove what the target holds that the snapshot does not, inside the restored
    /// directories only (not beside them, not what `excludes` names, not in a directory
    /// restored only partly because of `includes`).
    pub delete: bool,
    /// Paths `delete` never removes besides `excludes`: the snapshot's own excludes (what
    /// was left out at backup time is not "missing from the snapshot").
    pub keep: Vec<String>,
    /// Plan only: count what would be restored and list what would be deleted; write nothing.
    pub dry_run: bool,
    /// What to do with a file already at a restored path.
    pub overwrite: Overwrite,
    /// After writing, read every restored file back and compare it with the snapshot.
    pub verify: bool,
}

/// What restore does with files already in the target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Replace them (the default).
    #[default]
    Always,
    /// Leave a regular file alone when its size and mtime already match the snapshot's,
    /// and a symlink when its target does (its metadata is still set).
    IfChanged,
    /// Replace an existing file only when the snapshot's is newer (by mtime).
    IfNewer,
    /// Leave anything that exists alone, metadata included.
    Never,
}

/// Outcome.
#[derive(Debug, Default)]
pub struct RestoreResult {
    /// Files restored with content.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other nodes (links, fifos, devices).
    pub others: u64,
    /// Content bytes written or left as holes.
    pub bytes: u64,
    /// Paths that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Paths removed by `delete` (in a dry run: that would be).
    pub deleted: Vec<PathBuf>,
    /// Existing files left as they were (`overwrite`).
    pub skipped: u64,
    /// Files read back and found equal to the snapshot (`verify`).
    pub verified: u64,
    /// How many of those failed because the repository's data is damaged or missing (as
    /// opposed to the target refusing a write): a restore with any exits 13, not 3.
    pub integrity_failures: u64,
}

/// One node to restore. Its path is not stored but rebuilt from the parent chain on use:
/// full paths per entry cost memory quadratic in the depth (a crafted 20 000-level tree
/// would take gigabytes), and the restore plan is the largest thing a restore holds.
struct Entry {
    /// Index of the directory entry this node is in, or [`TOP`].
    parent: u32,
    /// A directory restored whole (not only for an include below it): `delete` may clean it.
    whole: bool,
    node: Node,
}

/// `Entry::parent` of the nodes at the top of the restored tree.
const TOP: u32 = u32::MAX;

/// The path of entry `i` relative to the target.
fn rel_path(entries: &[Box<Entry>], i: usize) -> PathBuf {
    let mut names: Vec<&[u8]> = Vec::new();
    let mut cur = i as u32;
    while cur != TOP {
        let e = &entries[cur as usize];
        names.push(&e.node.name);
        cur = e.parent;
    }
    let mut p = PathBuf::new();
    for n in names.iter().rev() {
        p.push(std::ffi::OsStr::from_bytes(n));
    }
    p
}

/// Visit the entries in plan order (depth-first, parents before children) with their full
/// paths under `target`, built incrementally in one buffer; `leave` is called for each
/// directory after everything inside it (post-order: children before parents). Cost is the
/// sum of name lengths, not of path lengths, which matters for crafted deep trees.
fn walk_paths(
    entries: &[Box<Entry>],
    target: &Path,
    mut visit: impl FnMut(usize, &Path),
    mut leave: impl FnMut(usize, &Path),
) {
    let mut buf: Vec<u8> = target.as_os_str().as_bytes().to_vec();
    let mut stack: Vec<(u32, usize)> = Vec::new();
    let as_path = |b: &[u8]| -> PathBuf { PathBuf::from(std::ffi::OsStr::from_bytes(b)) };
    for (i, e) in entries.iter().enumerate() {
        while let Some(&(top, len)) = stack.last() {
            if top == e.parent {
                break;
            }
            leave(top as usize, &as_path(&buf));
            buf.truncate(len);
            stack.pop();
        }
        let before = buf.len();
        if buf.last() != Some(&b'/') {
            buf.push(b'/');
        }
        buf.extend_from_slice(&e.node.name);
        visit(i, Path::new(std::ffi::OsStr::from_bytes(&buf)));
        if e.node.kind == NodeKind::Dir {
            stack.push((i as u32, before));
        } else {
            buf.truncate(before);
        }
    }
    while let Some((top, len)) = stack.pop() {
        leave(top as usize, &as_path(&buf));
        buf.truncate(len);
    }
}

/// A failure message without the path (the caller prints the path beside it).
fn reason(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

struct Planner<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    includes: Option<Patterns>,
    excludes: Patterns,
    /// Boxed: a `Node` is ~300 bytes, and a `Vec` of them doubling while the walk grows it
    /// held twice the plan in memory at once (heaptrack, 71 k files: peak heap 126 -> 111 MB).
    #[allow(clippy::vec_box)]
    entries: Vec<Box<Entry>>,
    /// The snapshot path of the node being planned.
    snap: PathBuf,
}

impl Planner<'_> {
    /// Add `tree`'s nodes below entry `parent` (the directory at `self.snap` in the
    /// snapshot; `above` = it or an ancestor matches an include); returns whether anything
    /// was added. `self.snap` is one buffer, extended and cut back per name, so the walk
    /// costs the sum of name lengths, not of path lengths (deep crafted trees).
    fn walk(&mut self, tree: &Tree, parent: u32, above: bool) -> Result<bool> {
        let mut any = false;
        for node in &tree.nodes {
            let name = std::ffi::OsStr::from_bytes(&node.name);
            self.snap.push(name);
            let r = self.node(node, name, parent, above);
            self.snap.pop();
            any |= r?;
        }
        if self.entries.len() >= TOP as usize {
            return Err(Error::Invalid(
                "more than 4 billion entries to restore: restore a subtree".into(),
            ));
        }
        Ok(any)
    }

    /// One node at `self.snap`; whether it (or anything below it) was added.
    fn node(
        &mut self,
        node: &Node,
        name: &std::ffi::OsStr,
        parent: u32,
        above: bool,
    ) -> Result<bool> {
        if !self.excludes.is_empty() && self.excludes.matches(&self.snap, name) {
            return Ok(false);
        }
        let included = above
            || self
                .includes
                .as_ref()
                .is_none_or(|g| g.matches(&self.snap, name));
        if node.kind == NodeKind::Dir {
            let pos = self.entries.len();
            self.entries.push(Box::new(Entry {
                parent,
                whole: included,
                node: node.clone(),
            }));
            let sub = match node.subtree {
                Some(id) => self.repo.load_tree(self.index, &id)?,
                None => Tree::default(),
            };
            let inner = crate::ops::backup::deeper(|| self.walk(&sub, pos as u32, included))?;
            if inner || included {
                return Ok(true);
            }
            self.entries.truncate(pos);
            Ok(false)
        } else if included {
            self.entries.push(Box::new(Entry {
                parent,
                whole: false,
                node: node.clone(),
            }));
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

/// A real directory at `path`, ready to be written into. An existing directory that this
/// user may not write into (a read-only directory restored by an earlier run: its mode is
/// applied last) gets the owner's rwx bits for now; the metadata pass sets its real mode.
fn ensure_real_dir(path: &Path, root: bool) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |e| Error::io(path, e);
    match longpath::with(path, |q| fs::symlink_metadata(q)) {
        Ok(m) if m.is_dir() => {
            if !root && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o700 != 0o700 {
                let mode = (m.mode() | 0o700) & 0o7777;
                longpath::with(path, |p| {
                    fs::set_permissions(p, fs::Permissions::from_mode(mode))
                })
                .map_err(io)?;
            }
            Ok(())
        }
        Ok(_) => {
            // A file or symlink where a directory goes: replace it. Removing a symlink never
            // touches its target.
            longpath::with(path, |q| fs::remove_file(q)).map_err(io)?;
            longpath::with(path, |q| fs::create_dir(q)).map_err(io)
        }
        Err(_) => longpath::with(path, |q| fs::create_dir(q)).map_err(io),
    }
}

fn remove_non_dir(path: &Path) -> Result<()> {
    match longpath::with(path, |q| fs::symlink_metadata(q)) {
        Ok(m) if m.is_dir() => Err(Error::Invalid("a directory is in the way".into())),
        Ok(_) => longpath::with(path, |q| fs::remove_file(q)).map_err(|e| Error::io(path, e)),
        Err(_) => Ok(()),
    }
}

/// Where one blob's plaintext goes: (file index, offset in the file).
type Targets = Vec<(usize, u64)>;

/// Files each restore task keeps open at once (tasks run on every core, or `connections`
/// for a remote repository): far below the usual 1024-descriptor soft limit.
const OPEN_FILES_PER_PACK: usize = 32;
/// One pack's blobs to restore, sorted by offset.
type PackJob = (u32, Vec<(Id, BlobLocation, Targets)>);

struct FileJob {
    /// Its entry in the plan (the path is rebuilt from it when the file is opened).
    entry: usize,
    size: u64,
    failed: Mutex<Option<String>>,
}

/// Restore the node at `sub` (a directory's content, or one file) of the snapshot whose root
/// tree is `root` into `opts.target`.
pub fn restore(
    _lock: &crate::lock::SharedLock<'_>,
    ix: &Indexed<'_>,
    root: &Id,
    sub: &Path,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreResult> {
    let (repo, index) = (ix.repo(), ix.index());
    let includes = if opts.includes.is_empty() {
        None
    } else {
        Some(Patterns::new(&opts.includes)?)
    };
    let mut planner = Planner {
        repo,
        index,
        includes,
        excludes: Patterns::new(&opts.excludes)?,
        entries: Vec::new(),
        snap: PathBuf::from("/"),
    };
    if sub
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::Invalid(format!(
            "path {} contains '..'",
            sub.display()
        )));
    }
    let sub_abs = Path::new("/").join(sub);
    let is_root = sub
        .components()
        .all(|c| !matches!(c, std::path::Component::Normal(_)));
    // Whether the target directory itself stands for a directory restored whole.
    let mut top_whole = planner.includes.is_none();
    if is_root {
        let tree = repo.load_tree(index, root)?;
        planner.walk(&tree, TOP, false)?;
    } else {
        let node = crate::ops::ls::find_node(ix, root, sub)?.ok_or_else(|| {
            Error::Invalid(format!("path {} not found in snapshot", sub_abs.display()))
        })?;
        if node.kind == NodeKind::Dir {
            let tree = repo.load_tree(index, &node.subtree.unwrap_or_default())?;
            let above = planner
                .includes
                .as_ref()
                .is_some_and(|g| g.matches_path_or_ancestor(&sub_abs));
            planner.snap = sub_abs.clone();
            top_whole |= above;
            planner.walk(&tree, TOP, above)?;
        } else {
            let parent = sub_abs.parent().unwrap_or(Path::new("/")).to_path_buf();
            let above = planner
                .includes
                .as_ref()
                .is_some_and(|g| g.matches_path_or_ancestor(&parent));
            planner.snap = parent;
            // One file: nothing beside it is the restore's business.
            top_whole = false;
            planner.walk(&Tree { nodes: vec![node] }, TOP, above)?;
        }
    }
    let entries = planner.entries;
    let excludes = if opts.delete && !opts.keep.is_empty() {
        let mut all = opts.excludes.clone();
        all.extend(opts.keep.iter().cloned());
        Patterns::new(&all)?
    } else {
        planner.excludes
    };
    if entries.is_empty() && !opts.includes.is_empty() {
        return Err(Error::Invalid(format!(
            "nothing in the snapshot matches --include {} (patterns: engine/src/pattern.rs; `*` does not match `/`, `**` does)",
            opts.includes.join(" ")
        )));
    }
    let target = &opts.target;
    let path_of = |i: usize| target.join(rel_path(&entries, i));

    if opts.dry_run {
        let mut result = RestoreResult::default();
        for e in &entries {
            match e.node.kind {
                NodeKind::Dir => result.dirs += 1,
                NodeKind::File => {
                    result.files += 1;
                    result.bytes += e.node.size;
                }
                _ => result.others += 1,
            }
        }
        if opts.delete && fs::metadata(target).is_ok_and(|m| m.is_dir()) {
            result.deleted = extraneous(&entries, target, top_whole, &excludes, &sub_abs);
        }
        return Ok(result);
    }

    fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    if !fs::metadata(target)
        .map_err(|e| Error::io(target, e))?
        .is_dir()
    {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            target.display()
        )));
    }
    let mut result = RestoreResult::default();
    let chown = can_chown();

    // Directories, parents first (plan order is depth-first).
    let mut dir_err = None;
    walk_paths(
        &entries,
        target,
        |i, p| {
            if dir_err.is_none() && entries[i].node.kind == NodeKind::Dir {
                match ensure_real_dir(p, chown) {
                    Ok(()) => result.dirs += 1,
                    Err(e) => dir_err = Some(e),
                }
            }
        },
        |_, _| {},
    );
    if let Some(e) = dir_err {
        return Err(e);
    }

    // Files: create, size (holes), and collect blob jobs grouped by pack.
    let mut files: Vec<FileJob> = Vec::new();
    let mut primary: HashMap<(u64, u64), usize> = HashMap::new();
    let mut links: Vec<(usize, usize)> = Vec::new();
    let mut jobs: HashMap<u32, HashMap<Id, (BlobLocation, Targets)>> = HashMap::new();
    let mut integrity: Vec<bool> = Vec::new();
    let mut total_bytes = 0u64;
    let mut skipped = vec![false; entries.len()];
    let mut skip_count = 0u64;
    let mut plan_file = |ei: usize, path: &Path| {
        let e = &entries[ei];
        if e.node.kind != NodeKind::File {
            return;
        }
        if keep_existing(opts.overwrite, path, &e.node) {
            skipped[ei] = true;
            skip_count += 1;
            return;
        }
        if e.node.links > 1 && e.node.inode != 0 {
            let key = (e.node.device, e.node.inode);
            if let Some(&first) = primary.get(&key) {
                links.push((ei, first));
                return;
            }
            primary.insert(key, ei);
        }
        let fi = files.len();
        files.push(FileJob {
            entry: ei,
            size: e.node.size,
            failed: Mutex::new(None),
        });
        integrity.push(false);
        // Where each blob goes, checked against the node's size before the file is created
        // and sized: a node whose size disagrees with its blobs is damaged (and one claiming
        // 1 TiB must not become a 1 TiB sparse file).
        let mut placed: Vec<(u32, Id, BlobLocation, u64)> =
            Vec::with_capacity(e.node.content.len());
        let mut off = 0u64;
        let mut bad = None;
        for id in &e.node.content {
            match index.get(id) {
                Some(loc) if loc.blob_type == BlobType::Data => {
                    placed.push((loc.pack, *id, loc, off));
                    off += u64::from(loc.raw_length);
                }
                _ => {
                    bad = Some(format!(
                        "data blob {} is missing from the index (see `cairn check`)",
                        id.short()
                    ));
                    break;
                }
            }
        }
        if bad.is_none() && off != e.node.size {
            bad = Some(format!(
                "the snapshot says {} bytes but the file's data holds {off}: the snapshot is damaged (see `cairn check`)",
                e.node.size
            ));
        }
        if let Some(msg) = bad {
            *files[fi].failed.lock() = Some(msg);
            integrity[fi] = true;
            return;
        }
        let created = remove_non_dir(path).and_then(|()| {
            longpath::with(path, |p| {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)?;
                f.set_len(e.node.size)
            })
            .map_err(|err| Error::io(path, err))
        });
        if let Err(err) = created {
            *files[fi].failed.lock() = Some(reason(&err));
            return;
        }
        for (pack, id, loc, off) in placed {
            jobs.entry(pack)
                .or_default()
                .entry(id)
                .or_insert_with(|| (loc, Vec::new()))
                .1
                .push((fi, off));
        }
        total_bytes += e.node.size;
    };
    walk_paths(&entries, target, &mut plan_file, |_, _| {});
    result.skipped = skip_count;
    Progress::add(&progress.total_bytes, total_bytes);
    Progress::add(&progress.total_files, files.len() as u64);

    // Contents, one pack per task; adjacent blobs are fetched with one ranged read.
    let mut packs: Vec<PackJob> = jobs
        .into_iter()
        .map(|(p, m)| {
            let mut v: Vec<_> = m.into_iter().map(|(id, (loc, t))| (id, loc, t)).collect();
            v.sort_by_key(|b| b.1.offset);
            (p, v)
        })
        .collect();
    packs.sort_by_key(|p| p.0);
    // A remote backend is latency-bound: keep `connections` downloads in flight even on a
    // 2-core machine (decryption and writes run on the same threads).
    let remote_threads = repo.backend().is_remote().then(|| {
        repo.backend()
            .connections()
            .max(rayon::current_num_threads())
    });
    // Each coalesced span is read whole into memory: RSS grows with threads × span, while
    // spans beyond a few MiB buy nothing (measured: 8 vs 32 MiB, same speed).
    let max_span: u32 = 8 << 20;
    // Set where a file failed because a blob could not be read or verified (damage).
    let job_integrity: Vec<std::sync::atomic::AtomicBool> = integrity
        .iter()
        .map(|&b| std::sync::atomic::AtomicBool::new(b))
        .collect();
    let run = || {
        packs.par_iter().for_each(|(pack, blobs)| {
            if interrupted() {
                return;
            }
            let pack_id = index.packs()[*pack as usize];
            let mut handles: HashMap<usize, File> = HashMap::new();
            let write_to = |handles: &mut HashMap<usize, File>, fi: usize, data: &[u8], off| {
                let job = &files[fi];
                let res = (|| {
                    // A pack of small files touches thousands of them: keep a bounded set
                    // open (blobs come in pack order, so a file's blobs are mostly together),
                    // or the process runs out of descriptors (EMFILE).
                    if handles.len() >= OPEN_FILES_PER_PACK && !handles.contains_key(&fi) {
                        handles.clear();
                    }
                    let f = match handles.entry(fi) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => v.insert(
                            longpath::with(&path_of(job.entry), |p| {
                                OpenOptions::new()
                                    .write(true)
                                    .custom_flags(libc::O_NOFOLLOW)
                                    .open(p)
                            })
                            .map_err(|e| e.to_string())?,
                        ),
                    };
                    write_sparse(f, data, off).map_err(|e| e.to_string())?;
                    Progress::add(&progress.bytes, data.len() as u64);
                    Ok::<(), String>(())
                })();
                if let Err(msg) = res {
                    *job.failed.lock() = Some(msg);
                }
            };
            let mut batch = Batch::default();
            let flush = |batch: &mut Batch, handles: &mut HashMap<usize, File>| {
                if !batch.buf.is_empty() {
                    write_to(handles, batch.fi, &batch.buf, batch.off);
                    batch.buf.clear();
                }
            };
            let mut i = 0;
            while i < blobs.len() {
                // Coalesce blobs whose gaps are small into one read.
                let start = blobs[i].1.offset;
                let mut j = i;
                let mut end = start + blobs[i].1.length;
                while j + 1 < blobs.len()
                    && blobs[j + 1].1.offset <= end + (256 << 10)
                    && end - start < max_span
                {
                    j += 1;
                    end = end.max(blobs[j].1.offset + blobs[j].1.length);
                }
                let mut span = repo.backend().get_range(
                    FileKind::Pack,
                    &pack_id.to_hex(),
                    u64::from(start),
                    u64::from(end - start),
                );
                for (id, loc, targets) in &blobs[i..=j] {
                    // Decrypted in the span buffer itself; a raw blob is written from there.
                    // Err((message, whether the repository's data is damaged)): a network or
                    // disk error reading the repository is not damage (exit 3, not 13).
                    let plain = match span.as_mut() {
                        // A pack the index names but storage lacks is lost data too.
                        Err(e) => Err((
                            e.to_string(),
                            e.is_damage() || matches!(e, Error::ObjectNotFound { .. }),
                        )),
                        Ok(buf) => {
                            let a = (loc.offset - start) as usize;
                            match buf.get_mut(a..a + loc.length as usize) {
                                Some(sealed) => repo
                                    .open_blob(
                                        &pack_id,
                                        &cairn_format::PackEntry {
                                            blob_type: BlobType::Data,
                                            id: *id,
                                            offset: loc.offset,
                                            length: loc.length,
                                            raw_length: loc.raw_length,
                                        },
                                        sealed,
                                    )
                                    .map_err(|e| (e.to_string(), e.is_damage())),
                                None => Err((
                                    format!(
                                        "pack {}: short read of blob {}",
                                        pack_id.short(),
                                        id.short()
                                    ),
                                    true,
                                )),
                            }
                        }
                    };
                    for &(fi, off) in targets {
                        let job = &files[fi];
                        if job.failed.lock().is_some() {
                            continue;
                        }
                        let data = match &plain {
                            Ok(d) => &d[..],
                            Err((msg, damage)) => {
                                *job.failed.lock() = Some(msg.clone());
                                if *damage {
                                    job_integrity[fi]
                                        .store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                continue;
                            }
                        };
                        // Small blobs that continue the pending run of the same file are
                        // gathered into one write: a database restores as thousands of
                        // page-sized blobs, and a syscall per blob cost more than the copy.
                        if data.len() < BATCH_PIECE
                            && batch.fi == fi
                            && batch.off + batch.buf.len() as u64 == off
                            && batch.buf.len() + data.len() <= BATCH_MAX
                        {
                            batch.buf.extend_from_slice(data);
                            continue;
                        }
                        flush(&mut batch, &mut handles);
                        if data.len() < BATCH_PIECE {
                            batch.fi = fi;
                            batch.off = off;
                            batch.buf.extend_from_slice(data);
                        } else {
                            write_to(&mut handles, fi, data, off);
                        }
                    }
                }
                i = j + 1;
            }
            flush(&mut batch, &mut handles);
        });
    };
    match remote_threads.and_then(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build().ok()) {
        Some(pool) => pool.install(run),
        None => run(),
    }
    if interrupted() {
        return Err(Error::Interrupted);
    }

    let mut failed_entries = vec![false; entries.len()];
    let mut failed_primaries: std::collections::HashSet<usize> = std::collections::HashSet::new();
    for (fi, job) in files.iter().enumerate() {
        if let Some(msg) = job.failed.lock().take() {
            failed_entries[job.entry] = true;
            failed_primaries.insert(job.entry);
            if job_integrity[fi].load(std::sync::atomic::Ordering::Relaxed) {
                result.integrity_failures += 1;
            }
            result.failed.push((path_of(job.entry), msg));
        } else {
            result.files += 1;
            result.bytes += job.size;
            Progress::add(&progress.files, 1);
        }
    }
    for &(ei, first) in &links {
        let path = path_of(ei);
        if keep_existing(opts.overwrite, &path, &entries[ei].node) {
            skipped[ei] = true;
            result.skipped += 1;
            continue;
        }
        if failed_primaries.contains(&first) {
            // The content behind this name is the failed file's: never present it as good.
            failed_entries[ei] = true;
            result.failed.push((
                path,
                format!(
                    "hard link to {}, which could not be restored",
                    path_of(first).display()
                ),
            ));
            continue;
        }
        let first_path = path_of(first);
        let r = remove_non_dir(&path).and_then(|()| {
            longpath::with(&first_path, |f| {
                longpath::with(&path, |p| fs::hard_link(f, p))
            })
            .map_err(|e| Error::io(&path, e))
        });
        match r {
            Ok(()) => result.files += 1,
            Err(e) => {
                failed_entries[ei] = true;
                result.failed.push((path, reason(&e)));
            }
        }
    }

    // Special files, then symlinks last of all content.
    walk_paths(
        &entries,
        target,
        |ei, path| {
            let e = &entries[ei];
            if matches!(
                e.node.kind,
                NodeKind::Dir | NodeKind::File | NodeKind::Socket
            ) {
                return;
            }
            if keep_existing(opts.overwrite, path, &e.node) {
                skipped[ei] = true;
                result.skipped += 1;
                return;
            }
            let mode = nix::sys::stat::Mode::from_bits_truncate(e.node.mode);
            let made = remove_non_dir(path).and_then(|()| {
                longpath::with(path, |p| match e.node.kind {
                    NodeKind::Symlink => std::os::unix::fs::symlink(
                        std::ffi::OsStr::from_bytes(&e.node.link_target),
                        p,
                    ),
                    NodeKind::Fifo => nix::unistd::mkfifo(p, mode).map_err(Into::into),
                    _ => {
                        let kind = if e.node.kind == NodeKind::CharDevice {
                            nix::sys::stat::SFlag::S_IFCHR
                        } else {
                            nix::sys::stat::SFlag::S_IFBLK
                        };
                        nix::sys::stat::mknod(p, kind, mode, e.node.rdev as libc::dev_t)
                            .map_err(Into::into)
                    }
                })
                .map_err(|err| Error::io(path, err))
            });
            match made {
                Ok(()) => result.others += 1,
                Err(err) => {
                    failed_entries[ei] = true;
                    result.failed.push((path.to_path_buf(), reason(&err)));
                }
            }
        },
        |_, _| {},
    );

    // What the snapshot does not have goes before the metadata pass, so that directory
    // mtimes set there stay as the snapshot says.
    if opts.delete && !interrupted() {
        for path in extraneous(&entries, target, top_whole, &excludes, &sub_abs) {
            let removed = remove_tree(&path, None);
            match removed {
                Ok(()) => result.deleted.push(path),
                Err(e) => result.failed.push((path, format!("delete: {e}"))),
            }
        }
    }

    // Metadata: every non-directory, and each directory after everything inside it, so that
    // its mtime and (read-only) mode stick.
    let failed_entries = failed_entries;
    let mut meta_failed: Vec<(PathBuf, String)> = Vec::new();
    let mut apply = |ei: usize, path: &Path| {
        if let Err(err) = apply_metadata(path, &entries[ei].node, chown) {
            meta_failed.push((path.to_path_buf(), format!("metadata: {}", reason(&err))));
        }
    };
    let apply_cell = std::cell::RefCell::new(&mut apply);
    walk_paths(
        &entries,
        target,
        |ei, path| {
            let k = entries[ei].node.kind;
            let left_alone = skipped[ei] && opts.overwrite == Overwrite::Never;
            if k != NodeKind::Dir && k != NodeKind::Socket && !failed_entries[ei] && !left_alone {
                (apply_cell.borrow_mut())(ei, path);
            }
        },
        |ei, path| (apply_cell.borrow_mut())(ei, path),
    );
    result.failed.extend(meta_failed);

    if opts.verify && !interrupted() {
        // Every file written (not those left alone), read back blob by blob and hashed with
        // the repository's key: what is on disk is exactly what the snapshot holds.
        let checks: Vec<(usize, PathBuf)> = files
            .iter()
            .filter(|j| !failed_entries[j.entry])
            .map(|j| (j.entry, path_of(j.entry)))
            .collect();
        let outcome: Vec<Option<(PathBuf, String)>> = checks
            .par_iter()
            .map(|(ei, p)| {
                verify_file(repo, index, p, &entries[*ei].node)
                    .err()
                    .map(|why| (p.clone(), format!("verify: {why}")))
            })
            .collect();
        for o in outcome {
            match o {
                Some(f) => result.failed.push(f),
                None => result.verified += 1,
            }
        }
    }
    Ok(result)
}

/// Whether `overwrite` leaves the existing entry at `path` for `node` as it is.
fn keep_existing(overwrite: Overwrite, path: &Path, node: &Node) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = longpath::with(path, |p| fs::symlink_metadata(p)) else {
        return false;
    };
    match overwrite {
        Overwrite::Always => false,
        Overwrite::Never => true,
        Overwrite::IfChanged => match node.kind {
            NodeKind::File => {
                m.is_file()
                    && m.len() == node.size
                    && m.mtime() == node.mtime.secs
                    && m.mtime_nsec() == i64::from(node.mtime.nanos)
            }
            NodeKind::Symlink => longpath::with(path, |p| fs::read_link(p))
                .is_ok_and(|t| t.as_os_str().as_bytes() == node.link_target.as_slice()),
            _ => false,
        },
        // Only an entry of the same type is kept: the metadata pass then sets the
        // snapshot's mode on it, and that must never reach through a symlink planted where a
        // file was.
        Overwrite::IfNewer => {
            let same_type = match node.kind {
                NodeKind::File => m.is_file(),
                NodeKind::Symlink => m.file_type().is_symlink(),
                _ => false,
            };
            same_type
                && (m.mtime(), m.mtime_nsec()) >= (node.mtime.secs, i64::from(node.mtime.nanos))
        }
    }
}

/// Read `path` back and compare it blob by blob with `node`'s content.
fn verify_file(
    repo: &Repository,
    index: &MasterIndex,
    path: &Path,
    node: &Node,
) -> std::result::Result<(), String> {
    use std::io::Read;
    let mut f = longpath::with(path, |p| File::open(p)).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != node.size {
        return Err(format!(
            "{len} bytes on disk, {} in the snapshot",
            node.size
        ));
    }
    let mut buf = Vec::new();
    let mut off = 0u64;
    for id in &node.content {
        let want = index
            .get(id)
            .map(|l| l.raw_length as usize)
            .ok_or_else(|| format!("blob {} not in the index", id.short()))?;
        buf.resize(want, 0);
        f.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if repo.key().blob_id(&buf) != *id {
            return Err(format!(
                "content differs from the snapshot in {want} bytes at offset {off}"
            ));
        }
        off += want as u64;
    }
    Ok(())
}

/// Remove `path` and, for a directory, everything below it, without ever crossing into
/// another file system (`dev`: the device it must be on; `None` = its own): a mount point
/// inside is an error, its contents untouched. Symlinks are removed, never followed.
fn remove_tree(path: &Path, dev: Option<u64>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = match longpath::with(path, |p| fs::symlink_metadata(p)) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let dev = dev.unwrap_or(m.dev());
    if m.dev() != dev {
        return Err(std::io::Error::other(format!(
            "{} is on another file system (a mount point): left in place",
            path.display()
        )));
    }
    if !m.is_dir() {
        return longpath::with(path, |p| fs::remove_file(p));
    }
    for e in longpath::with(path, |p| fs::read_dir(p))? {
        let child = path.join(e?.file_name());
        crate::ops::backup::deeper(|| remove_tree(&child, Some(dev)))?;
    }
    longpath::with(path, |p| fs::remove_dir(p))
}

/// What `delete` removes: in the target directory (when `top_whole`) and in every directory
/// restored whole, each entry whose name the snapshot's directory does not hold, unless an
/// exclude names it (as a snapshot path, `sub` + its place under the target).
#[allow(clippy::vec_box)]
fn extraneous(
    entries: &[Box<Entry>],
    target: &Path,
    top_whole: bool,
    excludes: &Patterns,
    sub: &Path,
) -> Vec<PathBuf> {
    let mut names: HashMap<u32, std::collections::HashSet<&[u8]>> = HashMap::new();
    for e in entries {
        names.entry(e.parent).or_default().insert(&e.node.name);
    }
    let mut out = Vec::new();
    let empty = std::collections::HashSet::new();
    let mut scan = |key: u32, dir: &Path| {
        use std::os::unix::fs::MetadataExt;
        let Ok(rd) = longpath::with(dir, |d| fs::read_dir(d)) else {
            return;
        };
        let Ok(dir_dev) = longpath::with(dir, |d| fs::symlink_metadata(d)).map(|m| m.dev()) else {
            return;
        };
        let keep = names.get(&key).unwrap_or(&empty);
        let mut found: Vec<PathBuf> = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            if keep.contains(name.as_bytes()) {
                continue;
            }
            let path = dir.join(&name);
            // A mount point (another file system) was never the restore's: a backup with
            // --one-file-system records it as an empty directory.
            match longpath::with(&path, |p| fs::symlink_metadata(p)) {
                Ok(m) if m.dev() == dir_dev => {}
                _ => continue,
            }
            if !excludes.is_empty() {
                let rel = path.strip_prefix(target).unwrap_or(&path);
                if excludes.matches(&sub.join(rel), &name) {
                    continue;
                }
            }
            found.push(path);
        }
        found.sort();
        out.extend(found);
    };
    if top_whole {
        scan(TOP, target);
    }
    walk_paths(
        entries,
        target,
        |i, p| {
            let e = &entries[i];
            if e.node.kind == NodeKind::Dir && e.whole {
                scan(i as u32, p);
            }
        },
        |_, _| {},
    );
    out
}

/// Write `data` at `off`, leaving 4 KiB blocks (aligned to the file) that are all zero as
/// holes: the file was pre-sized with `set_len`, so skipped blocks read back as zeros and
/// sparse files stay sparse.
/// Blobs below this size are gathered into per-file runs before writing.
const BATCH_PIECE: usize = 64 << 10;
/// Largest gathered run.
const BATCH_MAX: usize = 1 << 20;

/// A run of small blobs that continue each other in one file, not yet written.
#[derive(Default)]
struct Batch {
    fi: usize,
    off: u64,
    buf: Vec<u8>,
}

fn write_sparse(f: &File, data: &[u8], off: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 4096;
    let mut pos = 0usize;
    let mut run_start: Option<usize> = None;
    while pos < data.len() {
        let abs = off + pos as u64;
        let next = (((abs / BLOCK) + 1) * BLOCK - off) as usize;
        let end = next.min(data.len());
        let zero = data[pos..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], off + s as u64)?;
                run_start = None;
            }
            (false, None) => run_start = Some(pos),
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[s..], off + s as u64)?;
    }
    Ok(())
}
