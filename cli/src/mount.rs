//! `cairn mount DIR`: the repository as a read-only file system (FUSE).
//!
//! ```text
//! DIR/snapshots/2024-05-07T02:00:04Z/…   every snapshot, by time (latest -> the newest)
//! DIR/hosts/HOST/…                        the same, per host
//! DIR/tags/TAG/…                          the same, per tag
//! DIR/ids/3f2a9c1e/…                      by short id
//! ```
//!
//! Trees are read when a directory is first looked into; file contents on demand, blob by
//! blob, through a small cache of recent blobs (a sequential read of a big file reads each
//! blob once). Sizes, modes, owners, times, symlinks, devices and xattrs are the snapshot's.
//! Ctrl-C (or SIGTERM) unmounts and exits; so does `umount DIR` from outside.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use cairn_engine::Indexed;
use cairn_format::{BlobType, FileTime, Id, Node, NodeKind, Snapshot};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyXattr, Request,
};
use parking_lot::Mutex;

/// The kernel may cache attributes and entries for this long: nothing here ever changes.
const TTL: Duration = Duration::from_secs(3600);
/// Recent plaintext blobs kept for reads (each at most the repository's largest chunk).
const BLOB_CACHE: usize = 8;

enum Kind {
    /// A directory the mount made up: its children by name.
    Virtual(Arc<BTreeMap<OsString, u64>>),
    /// A symlink the mount made up (`latest`).
    Link(Vec<u8>),
    /// A node of a snapshot; a directory's children are filled in when first listed.
    Node {
        node: Box<Node>,
        children: Option<Arc<BTreeMap<OsString, u64>>>,
        /// A file's data blobs (through its content lists, if it names them) and where each
        /// starts, found at its first read.
        offsets: Option<Arc<Blobs>>,
    },
}

/// A file's data blobs in order, and the offset in the file where each starts.
struct Blobs {
    ids: Vec<Id>,
    starts: Vec<u64>,
}

struct Inode {
    parent: u64,
    /// The snapshot root this node is under (`0` for the entries made at mount time,
    /// snapshot roots among them): hard links are one inode within one snapshot.
    root: u64,
    kind: Kind,
    /// For virtual entries: the time shown (the snapshot's, or the newest below).
    time: FileTime,
}

struct Fs {
    ix: Indexed<'static>,
    inodes: Mutex<Vec<Inode>>,
    /// The inode of each hard-link group seen so far, by (snapshot root, device, inode), so
    /// that every name of a group shows one inode (`rsync -H`, `cp -a` and `du` count on
    /// that). Locked after `inodes`.
    links: Mutex<HashMap<(u64, u64, u64), u64>>,
    blobs: Mutex<VecDeque<(Id, Arc<Vec<u8>>)>>,
    uid: u32,
    gid: u32,
}

fn system_time(t: &FileTime) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Socket => FileType::Socket,
    }
}

/// A name for each snapshot, by time (`2024-05-07T02:00:04Z`, `-1`, `-2` for the same
/// second).
fn snapshot_names(snaps: &[(Id, Snapshot)]) -> Vec<String> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    snaps
        .iter()
        .map(|(_, s)| {
            let base = jiff::Timestamp::from_nanosecond(i128::from(s.time.unix_nanos))
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|_| format!("{}", s.time.unix_nanos));
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                base
            } else {
                format!("{base}-{}", *n - 1)
            }
        })
        .collect()
}

impl Fs {
    fn new(ix: Indexed<'static>, snaps: &[(Id, Snapshot)]) -> Fs {
        let zero = FileTime { secs: 0, nanos: 0 };
        let mut inodes: Vec<Inode> = Vec::new();
        // ino 0 is unused; 1 is the root.
        for _ in 0..2 {
            inodes.push(Inode {
                parent: 1,
                root: 0,
                kind: Kind::Virtual(Arc::default()),
                time: zero,
            });
        }
        let add =
            |inodes: &mut Vec<Inode>, parent: u64, name: &str, kind: Kind, time: FileTime| -> u64 {
                let ino = inodes.len() as u64;
                inodes.push(Inode {
                    parent,
                    root: 0,
                    kind,
                    time,
                });
                if let Kind::Virtual(children) = &mut inodes[parent as usize].kind {
                    Arc::make_mut(children).insert(OsString::from(name), ino);
                }
                let t = &mut inodes[parent as usize].time;
                *t = (*t).max(time);
                ino
            };
        let names = snapshot_names(snaps);
        let root_node = |s: &Snapshot| Kind::Node {
            node: Box::new(cairn_engine::snapshots::root_node(s)),
            children: None,
            offsets: None,
        };
        let dirs: Vec<u64> = ["snapshots", "hosts", "tags", "ids"]
            .iter()
            .map(|d| add(&mut inodes, 1, d, Kind::Virtual(Arc::default()), zero))
            .collect();
        let mut groups: HashMap<(u64, String), u64> = HashMap::new();
        let mut latest: HashMap<u64, String> = HashMap::new();
        for ((id, s), name) in snaps.iter().zip(&names) {
            let t = FileTime::from_unix_nanos(s.time.unix_nanos);
            add(&mut inodes, dirs[0], name, root_node(s), t);
            latest.insert(dirs[0], name.clone());
            add(&mut inodes, dirs[3], &id.to_hex()[..8], root_node(s), t);
            let mut into = |inodes: &mut Vec<Inode>, dir: u64, key: &str| {
                if key.is_empty() || key.contains('/') || key == "." || key == ".." {
                    return;
                }
                let g = *groups
                    .entry((dir, key.to_owned()))
                    .or_insert_with(|| add(inodes, dir, key, Kind::Virtual(Arc::default()), zero));
                add(inodes, g, name, root_node(s), t);
                latest.insert(g, name.clone());
            };
            into(&mut inodes, dirs[1], &s.hostname);
            for tag in &s.tags {
                into(&mut inodes, dirs[2], tag);
            }
        }
        let newest = inodes[dirs[0] as usize].time;
        inodes[1].time = newest;
        // `latest` in every list of snapshots: a symlink to the newest (snapshots are in
        // time order).
        for (dir, name) in latest {
            let t = inodes[dir as usize].time;
            add(&mut inodes, dir, "latest", Kind::Link(name.into_bytes()), t);
        }
        Fs {
            ix,
            inodes: Mutex::new(inodes),
            links: Mutex::new(HashMap::new()),
            blobs: Mutex::new(VecDeque::new()),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn attr(&self, ino: u64, i: &Inode) -> FileAttr {
        let base = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: system_time(&i.time),
            mtime: system_time(&i.time),
            ctime: system_time(&i.time),
            crtime: system_time(&i.time),
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        };
        match &i.kind {
            Kind::Virtual(_) => base,
            Kind::Link(target) => FileAttr {
                kind: FileType::Symlink,
                perm: 0o777,
                nlink: 1,
                size: target.len() as u64,
                ..base
            },
            Kind::Node { node: n, .. } => FileAttr {
                size: n.size,
                blocks: n.size.div_ceil(512),
                atime: system_time(&n.atime),
                mtime: system_time(&n.mtime),
                ctime: system_time(&n.ctime),
                crtime: system_time(&n.mtime),
                kind: file_type(n.kind),
                perm: (n.mode & 0o7777) as u16,
                nlink: if n.kind == NodeKind::Dir {
                    2
                } else {
                    n.links.clamp(1, u64::from(u32::MAX)) as u32
                },
                uid: n.uid,
                gid: n.gid,
                rdev: n.rdev as u32,
                ..base
            },
        }
    }

    /// The children of directory `ino`, loading its tree the first time.
    /// The children of directory `ino` (shared, not copied: directories may be huge).
    fn children(&self, ino: u64) -> Result<Arc<BTreeMap<OsString, u64>>, Errno> {
        let subtree = {
            let inodes = self.inodes.lock();
            let i = inodes.get(ino as usize).ok_or(Errno::ENOENT)?;
            match &i.kind {
                Kind::Virtual(c) => return Ok(c.clone()),
                Kind::Link(_) => return Err(Errno::ENOTDIR),
                Kind::Node { node, children, .. } => {
                    if node.kind != NodeKind::Dir {
                        return Err(Errno::ENOTDIR);
                    }
                    if let Some(c) = children {
                        return Ok(c.clone());
                    }
                    node.subtree
                }
            }
        };
        // The tree is read without holding the lock: other lookups go on meanwhile.
        let tree = match subtree {
            Some(id) => self.ix.load_tree(&id).map_err(|e| {
                tracing::warn!("tree {}: {e}", id.short());
                Errno::EIO
            })?,
            None => cairn_format::Tree::default(),
        };
        let mut inodes = self.inodes.lock();
        if let Some(Inode {
            kind: Kind::Node {
                children: Some(c), ..
            },
            ..
        }) = inodes.get(ino as usize)
        {
            return Ok(c.clone());
        }
        // Only snapshot roots have no root of their own.
        let root = match inodes.get(ino as usize).map_or(0, |i| i.root) {
            0 => ino,
            r => r,
        };
        let mut links = self.links.lock();
        let mut map = BTreeMap::new();
        for n in tree.nodes {
            let name = OsStr::from_bytes(&n.name).to_owned();
            let group = (n.kind != NodeKind::Dir && n.links > 1 && n.inode != 0)
                .then_some((root, n.device, n.inode));
            if let Some(&first) = group.as_ref().and_then(|g| links.get(g)) {
                map.insert(name, first);
                continue;
            }
            let child = inodes.len() as u64;
            if let Some(g) = group {
                links.insert(g, child);
            }
            map.insert(name, child);
            inodes.push(Inode {
                parent: ino,
                root,
                time: n.mtime,
                kind: Kind::Node {
                    node: Box::new(n),
                    children: None,
                    offsets: None,
                },
            });
        }
        let map = Arc::new(map);
        if let Some(Inode {
            kind: Kind::Node { children, .. },
            ..
        }) = inodes.get_mut(ino as usize)
        {
            *children = Some(map.clone());
        }
        Ok(map)
    }

    fn blob(&self, id: &Id) -> Result<Arc<Vec<u8>>, Errno> {
        if let Some((_, b)) = self.blobs.lock().iter().find(|(i, _)| i == id) {
            return Ok(b.clone());
        }
        let data = Arc::new(self.ix.read_blob(BlobType::Data, id).map_err(|e| {
            tracing::warn!("blob {}: {e}", id.short());
            Errno::EIO
        })?);
        let mut cache = self.blobs.lock();
        if cache.len() >= BLOB_CACHE {
            cache.pop_front();
        }
        cache.push_back((*id, data.clone()));
        Ok(data)
    }

    fn read_at(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (file_size, blobs) = {
            let mut inodes = self.inodes.lock();
            let i = inodes.get_mut(ino as usize).ok_or(Errno::ENOENT)?;
            let Kind::Node { node, offsets, .. } = &mut i.kind else {
                return Err(Errno::EISDIR);
            };
            if node.kind != NodeKind::File {
                return Err(Errno::EINVAL);
            }
            if offsets.is_none() {
                let ids = self
                    .ix
                    .file_blobs(&node.content)
                    .map_err(|_| Errno::EIO)?
                    .into_owned();
                let mut starts = Vec::with_capacity(ids.len());
                let mut at = 0u64;
                for c in &ids {
                    starts.push(at);
                    at += self
                        .ix
                        .index()
                        .get(c)
                        .map(|l| u64::from(l.raw_length))
                        .ok_or(Errno::EIO)?;
                }
                *offsets = Some(Arc::new(Blobs { ids, starts }));
            }
            (node.size, offsets.clone().ok_or(Errno::EIO)?)
        };
        let end = file_size.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let b = blobs
                .starts
                .partition_point(|&o| o <= pos)
                .saturating_sub(1);
            let data = self.blob(blobs.ids.get(b).ok_or(Errno::EIO)?)?;
            let start = (pos - blobs.starts.get(b).ok_or(Errno::EIO)?) as usize;
            if start >= data.len() {
                return Err(Errno::EIO);
            }
            let take = ((end - pos) as usize).min(data.len() - start);
            out.extend_from_slice(&data[start..start + take]);
            pos += take as u64;
        }
        Ok(out)
    }

    fn xattrs(&self, ino: u64) -> Vec<cairn_format::Xattr> {
        match self.inodes.lock().get(ino as usize).map(|i| &i.kind) {
            Some(Kind::Node { node, .. }) => node.xattrs.clone(),
            _ => Vec::new(),
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let child = match self.children(parent.0) {
            Ok(c) => c.get(name).copied(),
            Err(e) => return reply.error(e),
        };
        match child {
            Some(ino) => {
                let inodes = self.inodes.lock();
                let attr = self.attr(ino, &inodes[ino as usize]);
                reply.entry(&TTL, &attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let inodes = self.inodes.lock();
        match inodes.get(ino.0 as usize) {
            Some(i) if ino.0 > 0 => reply.attr(&TTL, &self.attr(ino.0, i)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inodes = self.inodes.lock();
        match inodes.get(ino.0 as usize).map(|i| &i.kind) {
            Some(Kind::Link(t)) => reply.data(t),
            Some(Kind::Node { node, .. }) if node.kind == NodeKind::Symlink => {
                reply.data(&node.link_target)
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_at(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let children = match self.children(ino.0) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let inodes = self.inodes.lock();
        let parent = inodes.get(ino.0 as usize).map_or(1, |i| i.parent);
        let mut entries: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        for (name, &c) in children.iter() {
            let kind = self.attr(c, &inodes[c as usize]).kind;
            entries.push((c, kind, name.as_os_str()));
        }
        for (i, (c, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(c), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let x = self.xattrs(ino.0);
        match x.iter().find(|x| x.name == name.as_bytes()) {
            None => reply.error(Errno::ENODATA),
            Some(x) if size == 0 => reply.size(x.value.len() as u32),
            Some(x) if x.value.len() <= size as usize => reply.data(&x.value),
            Some(_) => reply.error(Errno::ERANGE),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        for x in self.xattrs(ino.0) {
            list.extend_from_slice(&x.name);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32);
        } else if list.len() <= size as usize {
            reply.data(&list);
        } else {
            reply.error(Errno::ERANGE);
        }
    }
}

/// Mount the repository at `dir` until Ctrl-C, SIGTERM or an unmount from outside. The
/// file system lives as long as the kernel may call it, so it owns its repository handle
/// (`'static`: the process ends with the mount).
pub fn mount(
    ix: Indexed<'static>,
    snaps: &[(Id, Snapshot)],
    dir: &Path,
    allow_other: bool,
) -> Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    let fs = Fs::new(ix, snaps);
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
        MountOption::DefaultPermissions,
    ];
    if allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(4);
    let dir_owned = dir.to_path_buf();
    std::thread::scope(|scope| -> Result<()> {
        let mut session = fuser::Session::new(fs, dir, &cfg).with_context(|| {
            format!(
                "mounting {} (is /dev/fuse there, and fusermount?)",
                dir.display()
            )
        })?;
        let mut unmounter = Some(session.unmount_callable());
        let worker = scope.spawn(move || session.run());
        eprintln!(
            "mounted at {}; Ctrl-C (or umount) to unmount",
            dir_owned.display()
        );
        while !worker.is_finished() {
            if cairn_engine::progress::interrupted() {
                if let Some(mut u) = unmounter.take() {
                    if let Err(e) = u.unmount() {
                        tracing::warn!("unmount: {e}");
                        let _ = nix::mount::umount2(&dir_owned, nix::mount::MntFlags::MNT_DETACH);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match worker.join() {
            Ok(r) => r.context("the FUSE session ended with an error")?,
            Err(_) => bail!("the FUSE session panicked"),
        }
        Ok(())
    })
}
