//! `cairn dump SNAPSHOT PATH`: one file's content to a writer, or a directory as a tar
//! stream that GNU tar extracts as the snapshot holds it — contents, modes, owners (ids and
//! names), mtimes to the nanosecond (PAX), symlinks, hardlinks, devices, fifos, xattrs
//! (PAX `SCHILY.xattr`), non-UTF-8 and long names. Streaming: memory is one blob and one
//! tree per level, plus the first path of each hardlinked inode.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cairn_format::{BlobType, Node, NodeKind};
use serde::Serialize;

use crate::progress::interrupted;
use crate::repository::Indexed;
use crate::{Error, Result};

/// What a dump wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DumpStats {
    /// Entries written.
    pub entries: u64,
    /// Content bytes written.
    pub bytes: u64,
}

fn out_err(e: std::io::Error) -> Error {
    Error::io("standard output", e)
}

/// Write a file node's content to `out`, blob by blob.
pub fn dump_file(ix: &Indexed<'_>, node: &Node, out: &mut dyn Write) -> Result<u64> {
    if node.kind != NodeKind::File {
        return Err(Error::Invalid(format!(
            "{} is not a regular file",
            String::from_utf8_lossy(&node.name)
        )));
    }
    let mut n = 0u64;
    for id in ix.file_blobs(&node.content)?.iter() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let data = ix.read_blob(BlobType::Data, id)?;
        out.write_all(&data).map_err(out_err)?;
        n += data.len() as u64;
    }
    if n != node.size {
        return Err(Error::Integrity(format!(
            "{}: the snapshot says {} bytes but its data holds {n}",
            String::from_utf8_lossy(&node.name),
            node.size
        )));
    }
    Ok(n)
}

/// Reads a file node's blobs in order, for the tar builder.
struct BlobReader<'a, 'r> {
    ix: &'a Indexed<'r>,
    ids: std::slice::Iter<'a, cairn_format::Id>,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes handed out: the tar writer pads a short body silently, so the caller compares
    /// this with the size the header claims.
    done: u64,
}

impl std::io::Read for BlobReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            if interrupted() {
                return Err(std::io::Error::other("interrupted"));
            }
            self.buf = self
                .ix
                .read_blob(BlobType::Data, id)
                .map_err(std::io::Error::other)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.done += n as u64;
        Ok(n)
    }
}

/// A PAX time: a decimal number of seconds, negative before the epoch (`-1.25`, not the
/// `-2` + 0.75 s that `FileTime` holds).
fn pax_time(t: &cairn_format::FileTime) -> String {
    if t.secs < 0 && t.nanos > 0 {
        format!("-{}.{:09}", -(t.secs + 1), 1_000_000_000 - t.nanos)
    } else {
        format!("{}.{:09}", t.secs, t.nanos)
    }
}

struct TarDump<'a, 'r, W: Write> {
    ix: &'a Indexed<'r>,
    tar: tar::Builder<W>,
    links: HashMap<(u64, u64), PathBuf>,
    stats: DumpStats,
}

impl<W: Write> TarDump<'_, '_, W> {
    fn entry(&mut self, path: &Path, n: &Node) -> Result<()> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.mode & 0o7777);
        h.set_uid(u64::from(n.uid));
        h.set_gid(u64::from(n.gid));
        h.set_mtime(n.mtime.secs.max(0) as u64);
        // Names that do not fit (or are not ASCII-safe) are left out; ids always go in.
        let _ = h.set_username(&n.user);
        let _ = h.set_groupname(&n.group);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> =
            vec![("mtime".into(), pax_time(&n.mtime).into_bytes())];
        for x in &n.xattrs {
            let name = String::from_utf8_lossy(&x.name);
            pax.push((format!("SCHILY.xattr.{name}"), x.value.clone()));
        }
        self.tar
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(out_err)?;
        // Every kind but directories (and sockets, skipped) can be hard-linked: later names of
        // an inode become link entries, as GNU tar writes them.
        let hard =
            (!matches!(n.kind, NodeKind::Dir | NodeKind::Socket) && n.links > 1 && n.inode != 0)
                .then_some((n.device, n.inode));
        if let Some(first) = hard.and_then(|k| self.links.get(&k)).cloned() {
            h.set_entry_type(tar::EntryType::Link);
            self.tar
                .append_link(&mut h, path, &first)
                .map_err(out_err)?;
            self.stats.entries += 1;
            return Ok(());
        }
        match n.kind {
            NodeKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(n.size);
                let ids = self.ix.file_blobs(&n.content)?;
                let mut r = BlobReader {
                    ix: self.ix,
                    ids: ids.iter(),
                    buf: Vec::new(),
                    pos: 0,
                    done: 0,
                };
                self.tar
                    .append_data(&mut h, path, std::io::Read::take(&mut r, n.size))
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                // Data that disagrees with the size recorded means a damaged snapshot: the
                // archive would be wrong, so the dump fails instead of padding it.
                let mut rest = [0u8; 1];
                let more = std::io::Read::read(&mut r, &mut rest).unwrap_or(0);
                if r.done != n.size + more as u64 || more != 0 {
                    return Err(Error::Integrity(format!(
                        "{}: the snapshot says {} bytes but its data holds {}",
                        path.display(),
                        n.size,
                        r.done
                    )));
                }
                self.stats.bytes += n.size;
            }
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                self.tar
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(out_err)?;
            }
            NodeKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut h, path, OsStr::from_bytes(&n.link_target))
                    .map_err(out_err)?;
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                h.set_entry_type(match n.kind {
                    NodeKind::Fifo => tar::EntryType::Fifo,
                    NodeKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                let dev = n.rdev as libc::dev_t;
                h.set_device_major(libc::major(dev)).map_err(out_err)?;
                h.set_device_minor(libc::minor(dev)).map_err(out_err)?;
                self.tar
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(out_err)?;
            }
            // A socket cannot be recreated from an archive; GNU tar skips them too.
            NodeKind::Socket => return Ok(()),
        }
        if let Some(k) = hard {
            self.links.insert(k, path.to_path_buf());
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn dir(&mut self, base: &Path, n: &Node) -> Result<()> {
        let tree = match n.subtree {
            Some(id) => self.ix.load_tree(&id)?,
            None => return Ok(()),
        };
        for c in &tree.nodes {
            let p = base.join(OsStr::from_bytes(&c.name));
            self.entry(&p, c)?;
            if c.kind == NodeKind::Dir {
                crate::ops::backup::deeper(|| self.dir(&p, c))?;
            }
        }
        Ok(())
    }
}

/// Write `node` (found at `name` in the snapshot) as a tar stream: a directory as `name/`
/// and everything below it (`name` empty for the snapshot's root: entries at the top), a
/// file as one entry.
pub fn dump_tar(ix: &Indexed<'_>, node: &Node, name: &Path, out: impl Write) -> Result<DumpStats> {
    let mut t = TarDump {
        ix,
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        stats: DumpStats::default(),
    };
    t.tar.mode(tar::HeaderMode::Complete);
    if node.kind == NodeKind::Dir {
        if !name.as_os_str().is_empty() {
            t.entry(name, node)?;
        }
        t.dir(name, node)?;
    } else {
        t.entry(name, node)?;
    }
    let stats = t.stats.clone();
    t.tar
        .into_inner()
        .map_err(out_err)?
        .flush()
        .map_err(out_err)?;
    Ok(stats)
}

fn zip_err(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(e) => out_err(e),
        other => Error::Invalid(format!("zip: {other}")),
    }
}

/// Write `node` as a zip stream (deflated), for those who unpack on machines without tar.
/// Zip keeps contents, permission bits, mtimes (to 2 s, 1980–2107), directories and
/// symlinks; it has no owners, hardlinks (each name gets its content), devices, fifos or
/// xattrs (skipped), and names are UTF-8 (others are written lossily).
pub fn dump_zip(ix: &Indexed<'_>, node: &Node, name: &Path, out: impl Write) -> Result<DumpStats> {
    let mut z = zip::ZipWriter::new_stream(out);
    let mut stats = DumpStats::default();
    zip_entry(
        ix,
        &mut z,
        name,
        node,
        &mut stats,
        name.as_os_str().is_empty(),
    )?;
    z.finish().map_err(zip_err)?.flush().map_err(out_err)?;
    Ok(stats)
}

fn zip_entry<W: Write>(
    ix: &Indexed<'_>,
    z: &mut zip::ZipWriter<zip::write::StreamWriter<W>>,
    path: &Path,
    n: &Node,
    stats: &mut DumpStats,
    skip_self: bool,
) -> Result<()> {
    if interrupted() {
        return Err(Error::Interrupted);
    }
    let time = jiff::Timestamp::from_second(n.mtime.secs)
        .ok()
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
        .and_then(|t| {
            zip::DateTime::from_date_and_time(
                u16::try_from(t.year()).ok()?,
                t.month() as u8,
                t.day() as u8,
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
            )
            .ok()
        })
        .unwrap_or_default();
    let opts = zip::write::SimpleFileOptions::default()
        .last_modified_time(time)
        .unix_permissions(n.mode & 0o7777)
        .large_file(n.size >= u32::MAX as u64);
    let name = path.to_string_lossy();
    match n.kind {
        NodeKind::Dir => {
            if !skip_self {
                z.add_directory(format!("{name}/"), opts).map_err(zip_err)?;
                stats.entries += 1;
            }
            if let Some(id) = n.subtree {
                let tree = ix.load_tree(&id)?;
                for c in &tree.nodes {
                    let p = path.join(OsStr::from_bytes(&c.name));
                    crate::ops::backup::deeper(|| zip_entry(ix, z, &p, c, stats, false))?;
                }
            }
        }
        NodeKind::File => {
            z.start_file(
                name.into_owned(),
                opts.compression_method(zip::CompressionMethod::Deflated),
            )
            .map_err(zip_err)?;
            stats.bytes += dump_file(ix, n, z)?;
            stats.entries += 1;
        }
        NodeKind::Symlink => {
            z.add_symlink(
                name.into_owned(),
                String::from_utf8_lossy(&n.link_target),
                opts,
            )
            .map_err(zip_err)?;
            stats.entries += 1;
        }
        // Zip cannot hold these.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_before_the_epoch_are_plain_decimals() {
        let t = |secs, nanos| pax_time(&cairn_format::FileTime { secs, nanos });
        assert_eq!(t(1, 5), "1.000000005");
        assert_eq!(t(0, 0), "0.000000000");
        assert_eq!(t(-2, 750_000_000), "-1.250000000");
        assert_eq!(t(-3, 0), "-3.000000000");
    }
}
