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

use cairn_format::{open_blob_in_place, BlobType, FileKind, Id, Node, NodeKind, Tree};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;
use rayon::prelude::*;

use crate::archiver::Excludes;
use crate::fsmeta::{apply_metadata, can_chown};
use crate::index::{BlobLocation, MasterIndex};
use crate::progress::{interrupted, Progress};
use crate::repository::Repository;
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
}

struct Entry {
    rel: PathBuf,
    node: Node,
    depth: usize,
}

/// Where a node sits in a snapshot.
pub fn find_node(
    repo: &Repository,
    index: &MasterIndex,
    root: &Id,
    path: &Path,
) -> Result<Option<Node>> {
    let mut tree = repo.load_tree(index, root)?;
    let comps: Vec<&[u8]> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let Some(node) = tree.get(c).cloned() else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(node));
        }
        match node.subtree {
            Some(id) if node.kind == NodeKind::Dir => tree = repo.load_tree(index, &id)?,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

struct Planner<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    includes: Option<GlobSet>,
    excludes: Excludes,
    /// Boxed: a `Node` is ~300 bytes, and a `Vec` of them doubling while the walk grows it
    /// held twice the plan in memory at once (heaptrack, 71 k files: peak heap 126 -> 111 MB).
    #[allow(clippy::vec_box)]
    entries: Vec<Box<Entry>>,
}

impl Planner<'_> {
    fn included(&self, snap_path: &Path) -> bool {
        self.includes
            .as_ref()
            .is_none_or(|g| snap_path.ancestors().any(|a| g.is_match(a)))
    }

    /// Add `tree`'s nodes below `rel`; returns whether anything was added.
    fn walk(&mut self, tree: &Tree, rel: &Path, snap: &Path, depth: usize) -> Result<bool> {
        let mut any = false;
        for node in &tree.nodes {
            let name = std::ffi::OsStr::from_bytes(&node.name);
            let snap_path = snap.join(name);
            if !self.excludes.is_empty() && self.excludes.matches(&snap_path, name) {
                continue;
            }
            let rel_path = rel.join(name);
            if node.kind == NodeKind::Dir {
                let pos = self.entries.len();
                self.entries.push(Box::new(Entry {
                    rel: rel_path.clone(),
                    node: node.clone(),
                    depth,
                }));
                let sub = match node.subtree {
                    Some(id) => self.repo.load_tree(self.index, &id)?,
                    None => Tree::default(),
                };
                let inner = self.walk(&sub, &rel_path, &snap_path, depth + 1)?;
                if inner || self.included(&snap_path) {
                    any = true;
                } else {
                    self.entries.truncate(pos);
                }
            } else if self.included(&snap_path) {
                self.entries.push(Box::new(Entry {
                    rel: rel_path,
                    node: node.clone(),
                    depth,
                }));
                any = true;
            }
        }
        Ok(any)
    }
}

fn ensure_real_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            // A file or symlink where a directory goes: replace it. Removing a symlink never
            // touches its target.
            fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            fs::create_dir(path).map_err(|e| Error::io(path, e))
        }
        Err(_) => fs::create_dir(path).map_err(|e| Error::io(path, e)),
    }
}

fn remove_non_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::Invalid(format!(
            "{}: a directory is in the way",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io(path, e)),
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
    path: PathBuf,
    size: u64,
    failed: Mutex<Option<String>>,
}

/// Restore the node at `sub` (a directory's content, or one file) of the snapshot whose root
/// tree is `root` into `opts.target`.
pub fn restore(
    repo: &Repository,
    index: &MasterIndex,
    root: &Id,
    sub: &Path,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreResult> {
    let includes = if opts.includes.is_empty() {
        None
    } else {
        let mut b = GlobSetBuilder::new();
        for p in &opts.includes {
            let pat = if p.starts_with('/') {
                p.clone()
            } else {
                format!("**/{p}")
            };
            b.add(Glob::new(&pat).map_err(|e| Error::Invalid(format!("bad pattern {p:?}: {e}")))?);
        }
        Some(b.build().map_err(|e| Error::Invalid(e.to_string()))?)
    };
    let mut planner = Planner {
        repo,
        index,
        includes,
        excludes: Excludes::new(&opts.excludes)?,
        entries: Vec::new(),
    };
    let sub_abs = Path::new("/").join(sub);
    let is_root = sub
        .components()
        .all(|c| !matches!(c, std::path::Component::Normal(_)));
    if is_root {
        let tree = repo.load_tree(index, root)?;
        planner.walk(&tree, Path::new(""), Path::new("/"), 0)?;
    } else {
        let node = find_node(repo, index, root, sub)?.ok_or_else(|| {
            Error::Invalid(format!("path {} not found in snapshot", sub_abs.display()))
        })?;
        if node.kind == NodeKind::Dir {
            let tree = repo.load_tree(index, &node.subtree.unwrap_or_default())?;
            planner.walk(&tree, Path::new(""), &sub_abs, 0)?;
        } else {
            let parent = sub_abs.parent().unwrap_or(Path::new("/")).to_path_buf();
            planner.walk(&Tree { nodes: vec![node] }, Path::new(""), &parent, 0)?;
        }
    }
    let entries = planner.entries;

    let target = &opts.target;
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

    // Directories, parents first (plan order is depth-first).
    for e in entries.iter().filter(|e| e.node.kind == NodeKind::Dir) {
        ensure_real_dir(&target.join(&e.rel))?;
        result.dirs += 1;
    }

    // Files: create, size (holes), and collect blob jobs grouped by pack.
    let mut files: Vec<FileJob> = Vec::new();
    let mut file_entry: Vec<usize> = Vec::new();
    let mut primary: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut links: Vec<(usize, PathBuf)> = Vec::new();
    let mut jobs: HashMap<u32, HashMap<Id, (BlobLocation, Targets)>> = HashMap::new();
    let mut total_bytes = 0u64;
    for (ei, e) in entries.iter().enumerate() {
        if e.node.kind != NodeKind::File {
            continue;
        }
        let path = target.join(&e.rel);
        if e.node.links > 1 && e.node.inode != 0 {
            let key = (e.node.device, e.node.inode);
            if let Some(first) = primary.get(&key) {
                links.push((ei, first.clone()));
                continue;
            }
            primary.insert(key, path.clone());
        }
        let fi = files.len();
        files.push(FileJob {
            path: path.clone(),
            size: e.node.size,
            failed: Mutex::new(None),
        });
        file_entry.push(ei);
        let created = remove_non_dir(&path).and_then(|()| {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|err| Error::io(&path, err))?;
            f.set_len(e.node.size).map_err(|err| Error::io(&path, err))
        });
        if let Err(err) = created {
            *files[fi].failed.lock() = Some(err.to_string());
            continue;
        }
        let mut off = 0u64;
        for id in &e.node.content {
            match index.get(id) {
                Some(loc) if loc.blob_type == BlobType::Data => {
                    jobs.entry(loc.pack)
                        .or_default()
                        .entry(*id)
                        .or_insert_with(|| (*loc, Vec::new()))
                        .1
                        .push((fi, off));
                    off += u64::from(loc.raw_length);
                }
                _ => {
                    *files[fi].failed.lock() =
                        Some(format!("data blob {id} is missing from the index"));
                    break;
                }
            }
        }
        total_bytes += e.node.size;
    }
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
                            OpenOptions::new()
                                .write(true)
                                .custom_flags(libc::O_NOFOLLOW)
                                .open(&job.path)
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
                    let plain = match span.as_mut() {
                        Err(e) => Err(e.to_string()),
                        Ok(buf) => {
                            let a = (loc.offset - start) as usize;
                            match buf.get_mut(a..a + loc.length as usize) {
                                Some(sealed) => open_blob_in_place(
                                    repo.key(),
                                    BlobType::Data,
                                    id,
                                    sealed,
                                    loc.raw_length,
                                )
                                .map_err(|e| format!("pack {}: {e}", pack_id.short())),
                                None => Err(format!(
                                    "pack {}: short read of blob {}",
                                    pack_id.short(),
                                    id.short()
                                )),
                            }
                        }
                    };
                    for &(fi, off) in targets {
                        let job = &files[fi];
                        if job.failed.lock().is_some() {
                            continue;
                        }
                        let data = match plain.as_deref() {
                            Ok(d) => d,
                            Err(msg) => {
                                *job.failed.lock() = Some(msg.clone());
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

    let chown = can_chown();
    let mut failed_entries = vec![false; entries.len()];
    for (fi, job) in files.iter().enumerate() {
        if let Some(msg) = job.failed.lock().take() {
            failed_entries[file_entry[fi]] = true;
            result.failed.push((job.path.clone(), msg));
        } else {
            result.files += 1;
            result.bytes += job.size;
            Progress::add(&progress.files, 1);
        }
    }
    let failed_primaries: std::collections::HashSet<PathBuf> =
        result.failed.iter().map(|(p, _)| p.clone()).collect();
    for (ei, first) in &links {
        let path = target.join(&entries[*ei].rel);
        if failed_primaries.contains(first) {
            // The content behind this name is the failed file's: never present it as good.
            failed_entries[*ei] = true;
            result.failed.push((
                path,
                format!(
                    "hard link to {}, which could not be restored",
                    first.display()
                ),
            ));
            continue;
        }
        let r = remove_non_dir(&path)
            .and_then(|()| fs::hard_link(first, &path).map_err(|e| Error::io(&path, e)));
        match r {
            Ok(()) => result.files += 1,
            Err(e) => {
                failed_entries[*ei] = true;
                result.failed.push((path, e.to_string()));
            }
        }
    }

    // Special files, then symlinks last of all content.
    for (ei, e) in entries.iter().enumerate() {
        let path = target.join(&e.rel);
        let made = match e.node.kind {
            NodeKind::Dir | NodeKind::File | NodeKind::Socket => continue,
            NodeKind::Symlink => remove_non_dir(&path).and_then(|()| {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&e.node.link_target), &path)
                    .map_err(|err| Error::io(&path, err))
            }),
            NodeKind::Fifo => remove_non_dir(&path).and_then(|()| {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(e.node.mode))
                    .map_err(|err| Error::io(&path, err.into()))
            }),
            NodeKind::CharDevice | NodeKind::BlockDevice => remove_non_dir(&path).and_then(|()| {
                let kind = if e.node.kind == NodeKind::CharDevice {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                nix::sys::stat::mknod(
                    &path,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(e.node.mode),
                    e.node.rdev as libc::dev_t,
                )
                .map_err(|err| Error::io(&path, err.into()))
            }),
        };
        match made {
            Ok(()) => result.others += 1,
            Err(err) => {
                failed_entries[ei] = true;
                result.failed.push((path, err.to_string()));
            }
        }
    }

    // Metadata: non-directories, then directories deepest first.
    for (ei, e) in entries.iter().enumerate() {
        if e.node.kind == NodeKind::Dir || e.node.kind == NodeKind::Socket || failed_entries[ei] {
            continue;
        }
        let path = target.join(&e.rel);
        if let Err(err) = apply_metadata(&path, &e.node, chown) {
            result.failed.push((path, format!("metadata: {err}")));
        }
    }
    let mut dirs: Vec<&Entry> = entries
        .iter()
        .map(|e| &**e)
        .filter(|e| e.node.kind == NodeKind::Dir)
        .collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.depth));
    for e in dirs {
        let path = target.join(&e.rel);
        if let Err(err) = apply_metadata(&path, &e.node, chown) {
            result.failed.push((path, format!("metadata: {err}")));
        }
    }
    Ok(result)
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
