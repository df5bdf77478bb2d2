//! Restore: a planner thread walks the trees depth-first, creates directories, and cuts the
//! plan into bounded batches; the calling thread writes each batch while the next one is
//! planned: contents pack by pack in parallel with positioned writes (each file created by
//! the writer of its only blob, or by the planner when it has several, and given its
//! metadata through the same descriptor as its last byte lands), then the batch's hard
//! links, special files and symlinks, then the metadata of the directories completed in it
//! (post-order, so their mtimes and modes stick). Memory is bounded by the batch size, not
//! by the snapshot's file count.
//!
//! Safety: every name was validated when its tree was decoded (no `/`, `.`, `..`, NUL;
//! names unique in a directory); directories are created by us and checked to be real
//! directories; files are created with `O_EXCL | O_NOFOLLOW` (whatever was at the path is
//! removed first, never written through) and reopened with `O_NOFOLLOW`; a symlink is
//! created only after every write of its batch and earlier ones, and never replaces a
//! directory, so no write can follow a link placed by a malicious snapshot out of the
//! target.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cairn_format::{BlobType, FileKind, Id, Node, NodeKind, Tree};
use parking_lot::Mutex;
use rayon::prelude::*;

use crate::fsmeta::{apply_metadata, apply_metadata_fd, can_chown};
use crate::index::{entry_of, BlobLocation, MasterIndex};
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
    /// Replace an existing file only when the snapshot's is newer (by mtime); a kept one is
    /// left as it is, metadata included.
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

/// A failure message without the path (the caller prints the path beside it).
fn reason(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// What one batch of the plan holds at most: its files, links, special files and finished
/// directories (each ~0.5 KB of plan: path, node, counters) and its files' blob placements.
/// Memory is at most three batches (one being planned, one queued, one being written),
/// whatever the snapshot's size.
const BATCH_FILES: usize = 2048;
/// See [`BATCH_FILES`].
const BATCH_PLACEMENTS: usize = 16384;

/// One regular file being restored. A file's blobs may span batches; the job is shared.
struct FileJob {
    path: PathBuf,
    node: Node,
    /// Content bytes not yet written. The writer that brings it to zero sets the file's
    /// metadata through the descriptor it wrote with and closes it.
    remaining: AtomicU64,
    /// The file has exactly one blob: the writer of that blob creates it (one `open`), so
    /// the planner never touches it. Otherwise the planner creates and sizes it.
    create: bool,
    failed: Mutex<Option<String>>,
    /// It failed because the repository's data is damaged or missing (exit 13, not 3).
    integrity: AtomicBool,
    /// This restore created the file at `path` (so a failed one holds partial content of
    /// ours, which [`set_aside`] moves off the name).
    created: AtomicBool,
    /// Its content is right but its metadata could not be set (reported; its hard links
    /// are still made, as they share the content).
    meta_failed: Mutex<Option<String>>,
}

impl FileJob {
    fn fail(&self, msg: String, damage: bool) {
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(msg);
        }
        if damage {
            self.integrity.store(true, Ordering::Relaxed);
        }
    }

    fn has_failed(&self) -> bool {
        self.failed.lock().is_some()
    }
}

/// Where one blob's plaintext goes: (file in the batch, offset in the file).
type Targets = Vec<(usize, u64)>;

/// Files each restore task keeps open at once (tasks run on every core, or `connections`
/// for a remote repository): far below the usual 1024-descriptor soft limit.
const OPEN_FILES_PER_PACK: usize = 32;
/// Blobs of one pack per restore task (see `Writer::write`).
const TASK_BLOBS: usize = 256;
/// One blob to restore: where it is, where it goes.
type BlobJob = (Id, BlobLocation, Targets);
/// One pack's blobs to restore, sorted by offset.
type PackJob = (u32, Vec<BlobJob>);

/// A bounded part of the plan, handed from the planner to the writers. Everything in it is
/// applied after its contents are written, in this order: hard links, special files and
/// symlinks (so no write of this or an earlier batch can follow a link the snapshot
/// placed), then the metadata of the directories completed in it (post-order, so their
/// mtimes and read-only modes stick).
#[derive(Default)]
struct Batch {
    files: Vec<Arc<FileJob>>,
    /// Indices into `files` of the jobs whose last blobs are in this batch.
    finals: Vec<usize>,
    packs: HashMap<u32, HashMap<Id, (BlobLocation, Targets)>>,
    placements: usize,
    /// (path, node, the first file of its hard-link group).
    links: Vec<(PathBuf, Node, Arc<FileJob>)>,
    /// Symlinks, FIFOs and devices; with the first path of their hard-link group when they
    /// are not its first (they are linked to it, not made again).
    specials: Vec<(PathBuf, Node, Option<PathBuf>)>,
    dirs_done: Vec<(PathBuf, Node)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.links.is_empty()
            && self.specials.is_empty()
            && self.dirs_done.is_empty()
    }
}

/// One directory of the walk: its remaining entries and where it is.
struct Frame {
    nodes: std::vec::IntoIter<Node>,
    /// Its own node (for its metadata); `None` for the target itself.
    node: Option<Node>,
    /// Length of the target path / snapshot path buffers with its own name.
    path_len: usize,
    snap_len: usize,
    /// Restored whole (not only for an include below it): it is created even if empty,
    /// and `delete` may clean it.
    whole: bool,
    /// Created (or found) on disk.
    created: bool,
    /// Found on disk as it was and left so (`--overwrite never` keeps its metadata too).
    untouched: bool,
    /// With `delete`: the names it keeps.
    keep: Option<HashMap<Vec<u8>, bool>>,
}

/// Walks the trees depth-first (explicitly: a crafted 20 000-level tree must not overflow
/// the stack, and paths are one buffer cut back per name, so the walk costs the sum of name
/// lengths, not of path lengths), creates directories (lazily: a directory only an include
/// below it reaches is created only if something inside it is) and files with more than
/// one blob, and cuts the plan into batches.
struct Planner<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    opts: &'a RestoreOptions,
    includes: Option<Patterns>,
    excludes: Patterns,
    /// `excludes` plus `keep`: what `delete` leaves alone.
    delete_excludes: Patterns,
    chown: bool,
    path: Vec<u8>,
    snap: Vec<u8>,
    stack: Vec<Frame>,
    /// The first file of each hard-link group, by (device, inode) as recorded at backup.
    primary: HashMap<(u64, u64), Arc<FileJob>>,
    /// The same for symlinks, FIFOs and devices: the first path of each hard-link group.
    special_primary: HashMap<(u64, u64), PathBuf>,
    batch: Batch,
    /// Counts and failures of what the planner did itself.
    result: RestoreResult,
    /// Anything was selected (else an include matched nothing).
    any: bool,
    progress: &'a Progress,
    /// To the writers; `None` in a dry run.
    tx: Option<std::sync::mpsc::SyncSender<Batch>>,
}

fn as_path(b: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(b))
}

impl Planner<'_> {
    fn push_name(buf: &mut Vec<u8>, name: &[u8]) {
        if buf.last() != Some(&b'/') {
            buf.push(b'/');
        }
        buf.extend_from_slice(name);
    }

    /// The names `delete` keeps in a directory restored whole: every entry not excluded.
    /// With `delete`: the names directory `nodes` keeps, each with whether the snapshot's
    /// entry is a directory (a directory on disk where the snapshot has a file is in the way,
    /// and `delete` removes it too).
    fn keep_names(&self, nodes: &[Node]) -> Option<HashMap<Vec<u8>, bool>> {
        (self.opts.delete).then(|| {
            let mut snap = self.snap.clone();
            let len = snap.len();
            nodes
                .iter()
                .filter(|n| {
                    let name = std::ffi::OsStr::from_bytes(&n.name);
                    Self::push_name(&mut snap, &n.name);
                    let kept =
                        self.excludes.is_empty() || !self.excludes.matches(as_path(&snap), name);
                    snap.truncate(len);
                    kept
                })
                .map(|n| (n.name.clone(), n.kind == NodeKind::Dir))
                .collect()
        })
    }

    /// Walk everything below the top frame, sending full batches to the writers.
    fn run(&mut self) -> Result<()> {
        while let Some(frame) = self.stack.last_mut() {
            let Some(node) = frame.nodes.next() else {
                self.leave()?;
                continue;
            };
            let (path_len, snap_len) = (self.path.len(), self.snap.len());
            Self::push_name(&mut self.path, &node.name);
            Self::push_name(&mut self.snap, &node.name);
            let r = self.node(node);
            if !matches!(r, Ok(true)) {
                self.path.truncate(path_len);
                self.snap.truncate(snap_len);
            }
            r?;
            let b = &self.batch;
            let items = b.files.len() + b.links.len() + b.specials.len() + b.dirs_done.len();
            if items >= BATCH_FILES || b.placements >= BATCH_PLACEMENTS {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Hand the batch to the writers (waiting while they are a batch behind).
    fn flush(&mut self) -> Result<()> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let b = std::mem::take(&mut self.batch);
        if b.is_empty() {
            return Ok(());
        }
        match &self.tx {
            Some(tx) if tx.send(b).is_ok() => Ok(()),
            // The writers stopped (they report why).
            _ => Err(Error::Interrupted),
        }
    }

    /// The node whose name was just pushed; `Ok(true)` when it is a directory now on the
    /// stack (its name stays in the buffers until it is left).
    fn node(&mut self, node: Node) -> Result<bool> {
        let name = std::ffi::OsStr::from_bytes(&node.name);
        if !self.excludes.is_empty() && self.excludes.matches(as_path(&self.snap), name) {
            return Ok(false);
        }
        let Some(frame) = self.stack.last() else {
            return Ok(false);
        };
        let included = frame.whole
            || self
                .includes
                .as_ref()
                .is_none_or(|g| g.matches(as_path(&self.snap), name));
        if node.kind == NodeKind::Dir {
            let sub = match node.subtree {
                Some(id) => self.repo.load_tree(self.index, &id)?,
                None => Tree::default(),
            };
            let keep = if included {
                self.keep_names(&sub.nodes)
            } else {
                None
            };
            self.stack.push(Frame {
                nodes: sub.nodes.into_iter(),
                node: Some(node),
                path_len: self.path.len(),
                snap_len: self.snap.len(),
                whole: included,
                created: false,
                untouched: false,
                keep,
            });
            return Ok(true);
        }
        if !included {
            return Ok(false);
        }
        self.ensure_dirs()?;
        self.any = true;
        let path = as_path(&self.path).to_path_buf();
        match node.kind {
            NodeKind::File => self.file(path, node),
            // Not restorable: nothing is created (a dry run counts it).
            NodeKind::Socket => {
                self.result.others += u64::from(self.opts.dry_run);
                Ok(())
            }
            _ => {
                if self.opts.dry_run {
                    self.result.others += 1;
                } else {
                    let group =
                        (node.links > 1 && node.inode != 0).then_some((node.device, node.inode));
                    // The first name of a group is made; later ones link to it.
                    let first = group.and_then(|k| match self.special_primary.entry(k) {
                        Entry::Occupied(first) => Some(first.get().clone()),
                        Entry::Vacant(v) => {
                            v.insert(path.clone());
                            None
                        }
                    });
                    self.batch.specials.push((path, node, first));
                }
                Ok(())
            }
        }
        .map(|()| false)
    }

    /// Leave the innermost directory: create it if it is restored whole but was empty, and
    /// queue its metadata after everything inside it.
    fn leave(&mut self) -> Result<()> {
        if self.stack.last().is_some_and(|f| f.whole && !f.created) {
            self.ensure_dirs()?;
        }
        let Some(f) = self.stack.pop() else {
            return Ok(());
        };
        // `never` leaves an existing directory as it is, metadata included.
        let left_alone = f.untouched && self.opts.overwrite == Overwrite::Never;
        if let (true, Some(node)) = (f.created, f.node) {
            if !self.opts.dry_run && !left_alone {
                self.batch
                    .dirs_done
                    .push((as_path(&self.path[..f.path_len]).to_path_buf(), node));
            }
        }
        // Back to the parent's path (the top frame keeps the target's).
        if let Some(parent) = self.stack.last() {
            self.path.truncate(parent.path_len);
            self.snap.truncate(parent.snap_len);
        }
        Ok(())
    }

    /// Create every directory on the stack not created yet (outermost first) and clean
    /// those restored whole of what the snapshot does not hold.
    fn ensure_dirs(&mut self) -> Result<()> {
        for i in 0..self.stack.len() {
            if self.stack[i].created {
                continue;
            }
            self.stack[i].created = true;
            self.any = true;
            self.result.dirs += 1;
            let path = as_path(&self.path[..self.stack[i].path_len]).to_path_buf();
            if !self.opts.dry_run {
                self.stack[i].untouched = ensure_real_dir(&path, self.chown)?;
            }
            self.clean(i, &path);
        }
        Ok(())
    }

    /// `delete`: remove what directory `i` of the stack holds that the snapshot does not.
    /// Done when the directory is first reached, before anything is written into it.
    fn clean(&mut self, i: usize, dir: &Path) {
        let Some(keep) = self.stack[i].keep.take() else {
            return;
        };
        if self.opts.dry_run && !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            return;
        }
        let snap_dir = as_path(&self.snap[..self.stack[i].snap_len]).to_path_buf();
        for path in extraneous(dir, &keep, &self.delete_excludes, &snap_dir) {
            if self.opts.dry_run {
                self.result.deleted.push(path);
                continue;
            }
            match remove_tree(&path, None) {
                Ok(()) => self.result.deleted.push(path),
                Err(e) => self.result.failed.push((path, format!("delete: {e}"))),
            }
        }
    }

    /// Plan one regular file.
    fn file(&mut self, path: PathBuf, node: Node) -> Result<()> {
        let leave = if self.opts.dry_run {
            // What the restore would leave, without touching it.
            let keep = keep_existing(self.opts.overwrite, &path, &node);
            self.result.skipped += u64::from(keep);
            keep
        } else {
            leave_existing(
                self.opts.overwrite,
                &path,
                &node,
                self.chown,
                &mut self.result,
            )
        };
        if leave {
            return Ok(());
        }
        let group = (node.links > 1 && node.inode != 0).then_some((node.device, node.inode));
        if let Some(primary) = group.and_then(|k| self.primary.get(&k)) {
            if self.opts.dry_run {
                self.result.files += 1;
            } else {
                let primary = primary.clone();
                self.batch.links.push((path, node, primary));
            }
            return Ok(());
        }
        // Where each blob goes, checked against the node's size before the file is created
        // and sized: a node whose size disagrees with its blobs is damaged (and one claiming
        // 1 TiB must not become a 1 TiB sparse file).
        let (ids, mut bad) = match self.repo.file_blobs(self.index, &node.content) {
            Ok(ids) => (ids, None),
            Err(e) => (std::borrow::Cow::Borrowed(&[][..]), Some(e.to_string())),
        };
        let mut placed: Vec<(Id, BlobLocation, u64)> = Vec::with_capacity(ids.len());
        let mut off = 0u64;
        for id in ids.iter() {
            match self.index.get(id) {
                Some(loc) if loc.blob_type == BlobType::Data => {
                    placed.push((*id, loc, off));
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
        drop(ids);
        if bad.is_none() && off != node.size {
            bad = Some(format!(
                "the snapshot says {} bytes but the file's data holds {off}: the snapshot is damaged (see `cairn check`)",
                node.size
            ));
        }
        if self.opts.dry_run {
            self.result.files += 1;
            self.result.bytes += node.size;
            return Ok(());
        }
        let size = node.size;
        let job = Arc::new(FileJob {
            path,
            remaining: AtomicU64::new(size),
            // (An empty file is created here even if its one blob is empty: the writers
            // write nothing for it.)
            create: placed.len() == 1 && size > 0,
            node,
            failed: Mutex::new(None),
            integrity: AtomicBool::new(false),
            created: AtomicBool::new(false),
            meta_failed: Mutex::new(None),
        });
        if let Some(k) = group {
            self.primary.insert(k, job.clone());
        }
        Progress::add(&self.progress.total_files, 1);
        Progress::add(&self.progress.total_bytes, size);
        if let Some(msg) = bad {
            job.fail(msg, true);
        } else if !job.create {
            // Created and sized here (holes stay holes); an empty file is complete now.
            match create_file(&job.path).and_then(|f| {
                job.created.store(true, Ordering::Relaxed);
                f.set_len(size).map_err(|e| Error::io(&job.path, e))?;
                if size == 0 {
                    if let Err(e) = apply_metadata_fd(&f, &job.path, &job.node, self.chown) {
                        *job.meta_failed.lock() = Some(format!("metadata: {}", reason(&e)));
                    }
                }
                Ok(())
            }) {
                Ok(()) => {}
                Err(e) => job.fail(reason(&e), false),
            }
        }
        let mut fi = self.batch.files.len();
        self.batch.files.push(job.clone());
        if !job.has_failed() {
            for (id, loc, off) in placed {
                if self.batch.placements >= BATCH_PLACEMENTS {
                    // The rest of this file's blobs go in the next batch.
                    self.flush()?;
                    fi = self.batch.files.len();
                    self.batch.files.push(job.clone());
                }
                self.batch
                    .packs
                    .entry(loc.pack)
                    .or_default()
                    .entry(id)
                    .or_insert_with(|| (loc, Vec::new()))
                    .1
                    .push((fi, off));
                self.batch.placements += 1;
            }
        }
        self.batch.finals.push(fi);
        Ok(())
    }
}

/// Create a new regular file at `path` for writing (mode 0600 until its metadata is set),
/// never following a symlink and never writing into an existing file: whatever is at the
/// path (another link to a file outside the target, say) is removed first.
fn create_file(path: &Path) -> Result<File> {
    let open = || {
        longpath::with(path, |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
        })
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_non_dir(path)?;
            open().map_err(|e| Error::io(path, e))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A real directory at `path`, ready to be written into; whether it existed and was left as
/// it was. An existing directory that this user may not write into (a read-only directory
/// restored by an earlier run: its mode is applied last) gets the owner's rwx bits for now;
/// the metadata pass sets its real mode.
fn ensure_real_dir(path: &Path, root: bool) -> Result<bool> {
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
                return Ok(false);
            }
            Ok(true)
        }
        Ok(_) => {
            // A file or symlink where a directory goes: replace it. Removing a symlink never
            // touches its target.
            longpath::with(path, |q| fs::remove_file(q)).map_err(io)?;
            longpath::with(path, |q| fs::create_dir(q)).map_err(io)?;
            Ok(false)
        }
        Err(_) => {
            longpath::with(path, |q| fs::create_dir(q)).map_err(io)?;
            Ok(false)
        }
    }
}

fn remove_non_dir(path: &Path) -> Result<()> {
    match longpath::with(path, |q| fs::symlink_metadata(q)) {
        Ok(m) if m.is_dir() => Err(Error::Invalid("a directory is in the way".into())),
        Ok(_) => longpath::with(path, |q| fs::remove_file(q)).map_err(|e| Error::io(path, e)),
        Err(_) => Ok(()),
    }
}

/// What a file whose restore failed part-way is renamed to: `NAME` + this.
pub const PARTIAL_SUFFIX: &str = ".cairn-partial";

/// Move a file whose content could not all be restored off its name: its bytes are not the
/// snapshot's, and whatever opens the name next (a database, `k3s server --cluster-reset`)
/// must not take them for the restored file. The bytes that were restored stay beside it
/// as `NAME.cairn-partial` (linked there, so another file of that name is never replaced);
/// failing that, the file is removed. Returns what became of it, for the failure message.
fn set_aside(path: &Path) -> String {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(PARTIAL_SUFFIX);
    let partial = path.with_file_name(&name);
    let kept = longpath::with(path, |p| longpath::with(&partial, |q| fs::hard_link(p, q))).is_ok();
    match remove_non_dir(path) {
        Ok(()) if kept => format!(" (the bytes restored are kept as {})", partial.display()),
        Ok(()) => " (the partial file was removed)".into(),
        Err(e) => format!(
            " (the partial file is still there: could not remove it: {})",
            reason(&e)
        ),
    }
}

/// Writes the batches the planner sends, in order: contents pack by pack in parallel
/// (each file's metadata set as its last byte lands), then the batch's hard links, special
/// files and symlinks, and the metadata of the directories completed in it.
struct Writer<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    opts: &'a RestoreOptions,
    chown: bool,
    progress: &'a Progress,
    /// A remote backend is latency-bound: `connections` downloads in flight even on a
    /// 2-core machine (decryption and writes run on the same threads).
    pool: Option<rayon::ThreadPool>,
    result: RestoreResult,
}

impl Writer<'_> {
    fn write(&mut self, batch: Batch) {
        let Batch {
            files,
            finals,
            packs,
            links,
            specials,
            dirs_done,
            ..
        } = batch;
        let mut packs: Vec<PackJob> = packs
            .into_iter()
            .map(|(p, m)| {
                let mut v: Vec<_> = m.into_iter().map(|(id, (loc, t))| (id, loc, t)).collect();
                v.sort_by_key(|b| b.1.offset);
                (p, v)
            })
            .collect();
        packs.sort_by_key(|p| p.0);
        // A pack of small files holds thousands of them, and a batch's files often fit in
        // one or two packs: runs of at most TASK_BLOBS blobs, not whole packs, are the tasks,
        // so every core creates and writes files.
        let tasks: Vec<(u32, &[BlobJob])> = packs
            .iter()
            .flat_map(|(p, blobs)| task_runs(blobs).map(move |c| (*p, c)))
            .collect();
        let run = || {
            tasks
                .par_iter()
                .for_each(|(pack, blobs)| self.write_pack(&files, *pack, blobs));
        };
        match &self.pool {
            Some(pool) => pool.install(run),
            None => run(),
        }
        if interrupted() {
            return;
        }
        let result = &mut self.result;
        for &fi in &finals {
            let job = &files[fi];
            match job.failed.lock().clone() {
                Some(mut msg) => {
                    if job.integrity.load(Ordering::Relaxed) {
                        result.integrity_failures += 1;
                    }
                    // Every write to it is over: its blobs are all in this batch or earlier.
                    if job.created.load(Ordering::Relaxed) {
                        msg.push_str(&set_aside(&job.path));
                    }
                    result.failed.push((job.path.clone(), msg));
                }
                None => {
                    result.files += 1;
                    result.bytes += job.node.size;
                    Progress::add(&self.progress.files, 1);
                    if let Some(msg) = job.meta_failed.lock().clone() {
                        result.failed.push((job.path.clone(), msg));
                    }
                }
            }
        }
        let (overwrite, chown) = (self.opts.overwrite, self.chown);
        let keep = |result: &mut RestoreResult, path: &Path, node: &Node| {
            leave_existing(overwrite, path, node, chown, result)
        };
        for (path, node, first) in links {
            if keep(result, &path, &node) {
                continue;
            }
            if first.has_failed() {
                // The content behind this name is the failed file's: never present it as good.
                let msg = format!(
                    "hard link to {}, which could not be restored",
                    first.path.display()
                );
                result.failed.push((path, msg));
                continue;
            }
            let r = remove_non_dir(&path).and_then(|()| {
                longpath::with(&first.path, |f| {
                    longpath::with(&path, |p| fs::hard_link(f, p))
                })
                .map_err(|e| Error::io(&path, e))
            });
            match r {
                Ok(()) => result.files += 1,
                Err(e) => result.failed.push((path, reason(&e))),
            }
        }
        for (path, node, first) in specials {
            if keep(result, &path, &node) {
                continue;
            }
            // A later name of a hard-linked FIFO, device or symlink: the same inode again
            // (batches are written in walk order, so the first name exists by now). linkat
            // without AT_SYMLINK_FOLLOW links a symlink itself.
            if let Some(first) = first {
                let linked = remove_non_dir(&path).and_then(|()| {
                    longpath::with(&first, |f| longpath::with(&path, |p| fs::hard_link(f, p)))
                        .map_err(|e| Error::io(&path, e))
                });
                match linked {
                    Ok(()) => result.others += 1,
                    Err(err) => result.failed.push((path, reason(&err))),
                }
                continue;
            }
            let mode = nix::sys::stat::Mode::from_bits_truncate(node.mode);
            let made = remove_non_dir(&path).and_then(|()| {
                longpath::with(&path, |p| match node.kind {
                    NodeKind::Symlink => std::os::unix::fs::symlink(
                        std::ffi::OsStr::from_bytes(&node.link_target),
                        p,
                    ),
                    NodeKind::Fifo => nix::unistd::mkfifo(p, mode).map_err(Into::into),
                    _ => {
                        let kind = if node.kind == NodeKind::CharDevice {
                            nix::sys::stat::SFlag::S_IFCHR
                        } else {
                            nix::sys::stat::SFlag::S_IFBLK
                        };
                        nix::sys::stat::mknod(p, kind, mode, node.rdev as libc::dev_t)
                            .map_err(Into::into)
                    }
                })
                .map_err(|err| Error::io(&path, err))
                .and_then(|()| apply_metadata(&path, &node, self.chown))
            });
            match made {
                Ok(()) => result.others += 1,
                Err(err) => result.failed.push((path, reason(&err))),
            }
        }
        for (path, node) in dirs_done {
            if let Err(err) = apply_metadata(&path, &node, self.chown) {
                result
                    .failed
                    .push((path, format!("metadata: {}", reason(&err))));
            }
        }
        if self.opts.verify && !interrupted() {
            // Every file written (not those left alone), read back blob by blob and hashed
            // with the repository's key: what is on disk is exactly what the snapshot holds.
            let outcome: Vec<Option<(PathBuf, String)>> = finals
                .par_iter()
                .filter(|&&fi| !files[fi].has_failed())
                .map(|&fi| {
                    let job = &files[fi];
                    verify_file(self.repo, self.index, &job.path, &job.node)
                        .err()
                        .map(|why| (job.path.clone(), format!("verify: {why}")))
                })
                .collect();
            for o in outcome {
                match o {
                    Some(f) => self.result.failed.push(f),
                    None => self.result.verified += 1,
                }
            }
        }
    }

    /// Blobs of one pack (sorted by offset); adjacent ones are fetched with one ranged read.
    fn write_pack(&self, files: &[Arc<FileJob>], pack: u32, blobs: &[BlobJob]) {
        if interrupted() {
            return;
        }
        let repo = self.repo;
        let pack_id = self.index.packs()[pack as usize];
        // Each coalesced span is read whole into memory: RSS grows with threads × span,
        // while spans beyond a few MiB buy nothing (measured: 8 vs 32 MiB, same speed).
        let max_span: u32 = 8 << 20;
        let mut handles: HashMap<usize, File> = HashMap::new();
        let write_to = |handles: &mut HashMap<usize, File>, fi: usize, data: &[u8], off| {
            let job = &files[fi];
            let res = (|| {
                // A pack of small files touches thousands of them: keep a bounded set open
                // (blobs come in pack order, so a file's blobs are mostly together), or the
                // process runs out of descriptors (EMFILE).
                if handles.len() >= OPEN_FILES_PER_PACK && !handles.contains_key(&fi) {
                    handles.clear();
                }
                let f = match handles.entry(fi) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(if job.create {
                        let f = create_file(&job.path).map_err(|e| reason(&e))?;
                        job.created.store(true, Ordering::Relaxed);
                        f
                    } else {
                        longpath::with(&job.path, |p| {
                            OpenOptions::new()
                                .write(true)
                                .custom_flags(libc::O_NOFOLLOW)
                                .open(p)
                        })
                        .map_err(|e| e.to_string())?
                    }),
                };
                let to_end = write_sparse(f, data, off).map_err(|e| e.to_string())?;
                Progress::add(&self.progress.bytes, data.len() as u64);
                let n = data.len() as u64;
                if job.remaining.fetch_sub(n, Ordering::AcqRel) == n {
                    // The last bytes of the file: its metadata now, through this descriptor.
                    if let Some(f) = handles.remove(&fi) {
                        if job.create && !to_end {
                            // Its tail was a hole: give the file its length.
                            f.set_len(job.node.size).map_err(|e| e.to_string())?;
                        }
                        if let Err(e) = apply_metadata_fd(&f, &job.path, &job.node, self.chown) {
                            *job.meta_failed.lock() = Some(format!("metadata: {}", reason(&e)));
                        }
                    }
                }
                Ok::<(), String>(())
            })();
            if let Err(msg) = res {
                job.fail(msg, false);
            }
        };
        let mut gather = Gather::default();
        let flush = |gather: &mut Gather, handles: &mut HashMap<usize, File>| {
            if !gather.buf.is_empty() {
                write_to(handles, gather.fi, &gather.buf, gather.off);
                gather.buf.clear();
            }
        };
        let mut opener = repo.opener(pack_id);
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
                            Some(sealed) => opener
                                .open(&entry_of(*id, loc), sealed)
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
                    if job.has_failed() {
                        continue;
                    }
                    let data = match &plain {
                        Ok(d) => &d[..],
                        Err((msg, damage)) => {
                            job.fail(msg.clone(), *damage);
                            continue;
                        }
                    };
                    // Small blobs that continue the pending run of the same file are
                    // gathered into one write: a database restores as thousands of
                    // page-sized blobs, and a syscall per blob cost more than the copy.
                    if data.len() < GATHER_PIECE
                        && gather.fi == fi
                        && gather.off + gather.buf.len() as u64 == off
                        && gather.buf.len() + data.len() <= GATHER_MAX
                    {
                        gather.buf.extend_from_slice(data);
                        continue;
                    }
                    flush(&mut gather, &mut handles);
                    if data.len() < GATHER_PIECE {
                        gather.fi = fi;
                        gather.off = off;
                        gather.buf.extend_from_slice(data);
                    } else {
                        write_to(&mut handles, fi, data, off);
                    }
                }
            }
            i = j + 1;
        }
        flush(&mut gather, &mut handles);
    }
}

/// Restore the node at `sub` (a directory's content, or one file) of the snapshot whose root
/// tree is `root` into `opts.target`.
///
/// A planner thread walks the trees and cuts the plan into bounded batches; this thread
/// writes each batch while the next is planned. Memory is two batches plus the trees on
/// the current path (and one entry per hard-link group), not the snapshot's file count.
pub fn restore(
    lock: &crate::lock::SharedLock<'_>,
    ix: &Indexed<'_>,
    root: &Id,
    sub: &Path,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreResult> {
    // Spans and blobs of up to 8 MiB each, allocated and freed per span and per blob.
    crate::alloc::reusing(|| restore_inner(lock, ix, root, sub, opts, progress))
}

fn restore_inner(
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
    let excludes = Patterns::new(&opts.excludes)?;
    let delete_excludes = if opts.delete && !opts.keep.is_empty() {
        let mut all = opts.excludes.clone();
        all.extend(opts.keep.iter().cloned());
        Patterns::new(&all)?
    } else {
        Patterns::new(&opts.excludes)?
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
    // The top of the walk: the entries that go straight into the target, the snapshot
    // directory they are in, whether they are included whatever the includes say, and
    // whether the target stands for a directory restored whole (`delete` may clean it).
    let (top, top_snap, above, top_whole) = if is_root {
        let tree = repo.load_tree(index, root)?;
        (tree, PathBuf::from("/"), false, includes.is_none())
    } else {
        let node = crate::ops::ls::find_node(ix, root, sub)?.ok_or_else(|| {
            Error::Invalid(format!("path {} not found in snapshot", sub_abs.display()))
        })?;
        if node.kind == NodeKind::Dir {
            let tree = repo.load_tree(index, &node.subtree.unwrap_or_default())?;
            let above = includes
                .as_ref()
                .is_some_and(|g| g.matches_path_or_ancestor(&sub_abs));
            (tree, sub_abs.clone(), above, includes.is_none() || above)
        } else {
            let parent = sub_abs.parent().unwrap_or(Path::new("/")).to_path_buf();
            let above = includes
                .as_ref()
                .is_some_and(|g| g.matches_path_or_ancestor(&parent));
            // One file: nothing beside it is the restore's business.
            (Tree { nodes: vec![node] }, parent, above, false)
        }
    };
    let target = &opts.target;
    if !opts.dry_run {
        // A file (or a symlink to one) at the target: say so, not "File exists".
        if fs::metadata(target).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::Invalid(format!(
                "the target {} exists and is not a directory",
                target.display()
            )));
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
    }
    let chown = can_chown();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
    let mut planner = Planner {
        repo,
        index,
        opts,
        includes,
        excludes,
        delete_excludes,
        chown,
        path: target.as_os_str().as_bytes().to_vec(),
        snap: top_snap.as_os_str().as_bytes().to_vec(),
        stack: Vec::new(),
        primary: HashMap::new(),
        special_primary: HashMap::new(),
        batch: Batch::default(),
        result: RestoreResult::default(),
        any: false,
        progress,
        tx: (!opts.dry_run).then_some(tx),
    };
    let keep = if opts.delete && top_whole {
        planner.keep_names(&top.nodes)
    } else {
        None
    };
    planner.stack.push(Frame {
        nodes: top.nodes.into_iter(),
        node: None,
        path_len: planner.path.len(),
        snap_len: planner.snap.len(),
        whole: above,
        created: true,
        untouched: false,
        keep,
    });
    planner.clean(0, target);

    let mut writer = Writer {
        repo,
        index,
        opts,
        chown,
        progress,
        pool: repo
            .backend()
            .is_remote()
            .then(|| {
                let n = repo
                    .backend()
                    .connections()
                    .max(rayon::current_num_threads());
                rayon::ThreadPoolBuilder::new().num_threads(n).build().ok()
            })
            .flatten(),
        result: RestoreResult::default(),
    };
    let (planned, planner) = std::thread::scope(|s| {
        let h = s.spawn(move || {
            let r = planner.run();
            // Closing the channel ends the writer's loop.
            planner.tx = None;
            (r, planner)
        });
        while let Ok(b) = rx.recv() {
            writer.write(b);
            if interrupted() {
                break;
            }
        }
        drop(rx);
        h.join()
    })
    .map_err(|_| Error::Invalid("the restore planner failed unexpectedly".into()))?;
    if interrupted() {
        return Err(Error::Interrupted);
    }
    planned?;
    if !planner.any && !opts.includes.is_empty() {
        return Err(Error::Invalid(format!(
            "nothing in the snapshot matches --include {} (patterns: engine/src/pattern.rs; `*` does not match `/`, `**` does)",
            opts.includes.join(" ")
        )));
    }
    let mut result = planner.result;
    let w = writer.result;
    result.files += w.files;
    result.dirs += w.dirs;
    result.others += w.others;
    result.bytes += w.bytes;
    result.skipped += w.skipped;
    result.verified += w.verified;
    result.integrity_failures += w.integrity_failures;
    result.failed.extend(w.failed);
    result.deleted.extend(w.deleted);
    Ok(result)
}

/// Whether `overwrite` leaves the existing entry at `path` as it is; if so it is counted as
/// skipped and, with `IfChanged` (it matches the snapshot's file: a re-run completing a
/// restore), given `node`'s metadata (a failure to is reported). `IfNewer` keeps a newer
/// file as the user left it: mode, owner and mtime included, or it would look as old as the
/// snapshot's copy.
fn leave_existing(
    overwrite: Overwrite,
    path: &Path,
    node: &Node,
    chown: bool,
    result: &mut RestoreResult,
) -> bool {
    if !keep_existing(overwrite, path, node) {
        return false;
    }
    result.skipped += 1;
    if overwrite == Overwrite::IfChanged {
        if let Err(err) = apply_metadata(path, node, chown) {
            let msg = format!("metadata: {}", reason(&err));
            result.failed.push((path.to_path_buf(), msg));
        }
    }
    true
}

/// Whether `overwrite` leaves the existing entry at `path` for `node` as it is.
fn keep_existing(overwrite: Overwrite, path: &Path, node: &Node) -> bool {
    use std::os::unix::fs::MetadataExt;
    if overwrite == Overwrite::Always {
        return false;
    }
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
        // Only an entry of the same type is kept: a newer symlink where the snapshot has a
        // file is replaced, not taken for the file.
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
    let ids = repo
        .file_blobs(index, &node.content)
        .map_err(|e| e.to_string())?;
    for id in ids.iter() {
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

/// What `delete` removes from `dir`, a directory restored whole: each entry whose name the
/// snapshot's directory (at `snap_dir`) does not `keep`, unless `excludes` names it (as a
/// snapshot path), and never a mount point (another file system was never the restore's:
/// a backup with --one-file-system records it as an empty directory).
fn extraneous(
    dir: &Path,
    keep: &HashMap<Vec<u8>, bool>,
    excludes: &Patterns,
    snap_dir: &Path,
) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = longpath::with(dir, |d| fs::read_dir(d)) else {
        return Vec::new();
    };
    let Ok(dir_dev) = longpath::with(dir, |d| fs::symlink_metadata(d)).map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let path = dir.join(&name);
        let m = match longpath::with(&path, |p| fs::symlink_metadata(p)) {
            Ok(m) if m.dev() == dir_dev => m,
            _ => continue,
        };
        // Kept, unless it is a directory where the snapshot has something else: the restore
        // could not put that entry there otherwise ("a directory is in the way").
        if keep
            .get(name.as_bytes())
            .is_some_and(|&snap_dir| snap_dir || !m.is_dir())
        {
            continue;
        }
        if !excludes.is_empty() && excludes.matches(&snap_dir.join(&name), &name) {
            continue;
        }
        found.push(path);
    }
    found.sort();
    found
}

/// Blobs below this size are gathered into per-file runs before writing.
const GATHER_PIECE: usize = 64 << 10;
/// Largest gathered run.
const GATHER_MAX: usize = 1 << 20;

/// A run of small blobs that continue each other in one file, not yet written.
#[derive(Default)]
struct Gather {
    fi: usize,
    off: u64,
    buf: Vec<u8>,
}

/// Write `data` at `off`, leaving 4 KiB blocks (aligned to the file) that are all zero as
/// holes: the file was pre-sized with `set_len`, so skipped blocks read back as zeros and
/// sparse files stay sparse. Returns whether the last byte of `data` was written (not
/// left as a hole): a file created without pre-sizing needs its length set if not.
fn write_sparse(f: &File, data: &[u8], off: u64) -> std::io::Result<bool> {
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
        return Ok(true);
    }
    Ok(data.is_empty())
}

/// A pack's blobs (sorted by offset) cut into runs of about [`TASK_BLOBS`]: a run never
/// ends inside a group (blobs sharing one sealed box), so each group is read and inflated
/// by one task only.
fn task_runs(blobs: &[BlobJob]) -> impl Iterator<Item = &[BlobJob]> {
    let mut rest = blobs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(TASK_BLOBS);
        while end < rest.len() && rest[end].1.offset == rest[end - 1].1.offset {
            end += 1;
        }
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}
