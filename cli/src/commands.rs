//! The reading and writing subcommands: init, backup, snapshots, ls, restore, cat, key, stats.

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cairn_engine::ops::backup::backup;
use cairn_engine::ops::ls::{find_node, listing, walk};
use cairn_engine::ops::restore::restore;
use cairn_engine::snapshots::{resolve, snapshot_subpath, split_spec};
use cairn_engine::util::{format_timestamp, parse_time, rfc3339};
use cairn_engine::{
    BackupOptions, InitOptions, Progress, Repository, RestoreOptions, SnapshotFilter,
};
use cairn_format::{
    decode_pack_header, BlobType, FileKind, Id, KdfParams, Node, NodeKind, DEFAULT_KDF_LANES,
};
use serde_json::{json, Value};

use crate::hiargs::{backend, filter, lock_shared, open};
use crate::ui::{human_bytes, lossy, snapshot_json, Reporter};
use crate::{BackupArgs, CatArgs, Cli, KeyCommand, LsArgs, RestoreArgs};

pub fn init(cli: &Cli, a: &crate::InitArgs) -> Result<u8> {
    let be = backend(cli)?;
    if be.exists()? && be.stat(FileKind::Config, "config")?.is_some() {
        return Err(cairn_engine::Error::RepoExists(be.location()).into());
    }
    let pw = cli
        .password
        .get("enter password for new repository: ", true)?;
    if pw.is_empty() {
        bail!("empty password refused");
    }
    let template = if a.copy_chunker_params {
        Some(std::sync::Arc::new(crate::hiargs::open_source(
            cli, &a.from,
        )?))
    } else {
        None
    };
    let opts = InitOptions {
        same_blobs_as: template,
        compression_level: a.compression_level,
        pack_size: a.pack_size_mib.saturating_mul(1 << 20),
        format_version: a.format_version,
        kdf: KdfParams::new(
            a.kdf_memory_mib.saturating_mul(1024),
            a.kdf_iterations,
            DEFAULT_KDF_LANES,
        ),
        ..InitOptions::default()
    };
    let repo = Repository::init(be.clone(), pw.as_bytes(), opts)?;
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "initialized", "repository": be.location(), "id": hex::encode(repo.config().repo_id)})
        );
    } else if !cli.quiet {
        println!(
            "created cairn repository {} at {}",
            &hex::encode(repo.config().repo_id)[..10],
            be.location()
        );
        println!("Keep the password safe: without it the data cannot be recovered.");
    }
    Ok(0)
}

/// The bytes of a list file, `-` being standard input.
fn read_list(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .context("reading standard input")?;
        Ok(b)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The non-empty, non-comment lines of an `--exclude-file` file (`-` is
/// standard input), as restic reads them.
fn list_file(path: &Path) -> Result<Vec<String>> {
    let text = String::from_utf8(read_list(path)?)
        .with_context(|| format!("reading {}: not UTF-8", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// The paths a `--files-from` file names, one a line as [`list_file`] reads them, but as raw
/// bytes: a path need not be UTF-8.
fn list_paths(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    let bytes = read_list(path)?;
    let blank = |b: &u8| b.is_ascii_whitespace();
    Ok(bytes
        .split(|&b| b == b'\n')
        .map(|l| {
            let end = l.iter().rposition(|b| !blank(b)).map_or(0, |i| i + 1);
            &l[..end]
        })
        .filter(|l| {
            let start = l.iter().position(|b| !blank(b)).unwrap_or(l.len());
            start < l.len() && l[start] != b'#'
        })
        .map(|l| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(l)))
        .collect())
}

pub fn cmd_backup(cli: &Cli, a: &BackupArgs) -> Result<u8> {
    let mut paths = a.paths.clone();
    for f in &a.files_from {
        paths.extend(list_paths(f)?);
    }
    let mut excludes = a.excludes.clone();
    for f in &a.exclude_files {
        excludes.extend(list_file(f)?);
    }
    if !a.stdin && paths.is_empty() {
        return Err(crate::UsageError("nothing to back up: give paths or --stdin".into()).into());
    }
    let repo = open(cli)?;
    let lock = lock_shared(cli, &repo)?;
    let time = match &a.time {
        Some(t) => Some(
            parse_time(t).ok_or_else(|| crate::UsageError(format!("cannot parse --time {t:?}")))?,
        ),
        None => None,
    };
    let parent = match &a.parent {
        Some(p) => {
            let snaps = repo.load_snapshots_choosing(p == "latest")?;
            Some(resolve(&snaps, p, &SnapshotFilter::default())?.0)
        }
        None => None,
    };
    let stdin: Option<(String, Box<dyn std::io::Read + Send>)> = if a.stdin {
        Some((a.stdin_filename.clone(), Box::new(std::io::stdin())))
    } else {
        None
    };
    let opts = BackupOptions {
        paths: paths.clone(),
        stdin,
        staged: None,
        tags: a.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        host: a.host.clone(),
        time,
        parent,
        force: a.force,
        excludes: excludes.clone(),
        one_file_system: a.one_file_system,
    };
    let progress = Arc::new(Progress::default());
    let json = cli.json;
    let warn = move |msg: &str| {
        if json {
            println!("{}", json!({"message_type": "warning", "warning": msg}));
        }
        eprintln!("warning: {msg}");
    };
    let started = std::time::Instant::now();
    let res = {
        let _r = Reporter::start("backup", progress.clone(), cli.json, cli.quiet);
        // Totals for the percentage and ETA, counted beside the backup.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scanner = (!a.stdin && (cli.json || (!cli.quiet && std::io::stderr().is_terminal())))
            .then(|| {
                let (paths, excl, one_fs) = (paths.clone(), excludes.clone(), a.one_file_system);
                let (p, d) = (progress.clone(), done.clone());
                std::thread::spawn(move || {
                    cairn_engine::ops::backup::scan(&paths, &excl, one_fs, &p, &d)
                })
            });
        let r = backup(&lock, opts, &progress, &warn);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = scanner {
            let _ = t.join();
        }
        r?
    };
    let secs = started.elapsed().as_secs_f64();
    let s = res.snapshot.summary.clone().unwrap_or_default();
    if cli.json {
        println!(
            "{}",
            json!({
                "message_type": "summary", "snapshot_id": res.id.to_hex(), "parent": res.snapshot.parent.map(|p| p.to_hex()),
                "files_new": s.files_new, "files_changed": s.files_changed, "files_unmodified": s.files_unmodified,
                "dirs_new": s.dirs_new, "dirs_changed": s.dirs_changed, "dirs_unmodified": s.dirs_unmodified,
                "data_blobs": s.data_blobs, "tree_blobs": s.tree_blobs, "data_added": s.data_added,
                "data_added_packed": s.data_added_packed, "total_files_processed": s.total_files_processed,
                "total_bytes_processed": s.total_bytes_processed, "total_duration": secs, "errors": s.errors,
                "index_files": res.index_files, "index_bytes": res.index_bytes,
                "index_bytes_fetched": res.index_bytes_fetched.unwrap_or(res.index_bytes),
            })
        );
    } else if !cli.quiet {
        if let Some(p) = res.snapshot.parent {
            println!("using parent snapshot {}", p.short());
        }
        println!(
            "Files: {:>8} new, {:>8} changed, {:>8} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Dirs:  {:>8} new, {:>8} changed, {:>8} unmodified",
            s.dirs_new, s.dirs_changed, s.dirs_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            human_bytes(s.data_added),
            human_bytes(s.data_added_packed)
        );
        println!(
            "processed {} files, {} in {:.1}s ({}/s)",
            s.total_files_processed,
            human_bytes(s.total_bytes_processed),
            secs,
            human_bytes((s.total_bytes_processed as f64 / secs.max(0.001)) as u64)
        );
        println!("snapshot {} saved", res.id.short());
    }
    if s.errors > 0 {
        eprintln!(
            "warning: {} path(s) could not be read completely; the snapshot is incomplete",
            s.errors
        );
        return Ok(3);
    }
    Ok(0)
}

pub fn snapshots(cli: &Cli, a: &crate::SnapshotsArgs) -> Result<u8> {
    let repo = open(cli)?;
    let flt = filter(&a.filter);
    let mut snaps: Vec<_> = repo
        .load_snapshots()?
        .into_iter()
        .filter(|(_, s)| flt.matches(s))
        .collect();
    if let Some(n) = a.latest {
        // Newest first per (host, paths), keep n of each, back in time order.
        let mut seen: std::collections::HashMap<(String, Vec<Vec<u8>>), usize> =
            std::collections::HashMap::new();
        let mut keep = vec![false; snaps.len()];
        for (i, (_, s)) in snaps.iter().enumerate().rev() {
            let c = seen
                .entry((s.hostname.clone(), s.paths.clone()))
                .or_insert(0);
            if *c < n {
                keep[i] = true;
                *c += 1;
            }
        }
        let mut k = keep.into_iter();
        snaps.retain(|_| k.next().unwrap_or(false));
    }
    if cli.json {
        println!(
            "{}",
            Value::Array(snaps.iter().map(|(id, s)| snapshot_json(id, s)).collect())
        );
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<9} {:<19} {:<16} {:<20} {:>10}  Paths",
        "ID", "Time", "Host", "Tags", "Size"
    )?;
    writeln!(out, "{}", "-".repeat(90))?;
    for (id, s) in &snaps {
        let size = s
            .summary
            .as_ref()
            .map_or(String::new(), |x| human_bytes(x.total_bytes_processed));
        let paths: Vec<String> = s.paths.iter().map(|p| lossy(p)).collect();
        writeln!(
            out,
            "{:<9} {:<19} {:<16} {:<20} {:>10}  {}",
            id.short(),
            format_timestamp(&s.time),
            s.hostname,
            s.tags.join(","),
            size,
            paths.join(" ")
        )?;
    }
    writeln!(
        out,
        "{} snapshot{}",
        snaps.len(),
        if snaps.len() == 1 { "" } else { "s" }
    )?;
    Ok(0)
}

pub(crate) fn mode_string(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
        NodeKind::File => '-',
    };
    let mut s = String::from(t);
    // (shift, special bit, letter when executable too, letter when not): setuid, setgid, sticky.
    for (shift, special, with_x, without_x) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (n.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (n.mode & special != 0, x) {
            (true, true) => with_x,
            (true, false) => without_x,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

pub(crate) fn node_json(path: &Path, n: &Node) -> Value {
    json!({
        "path": lossy(path.as_os_str().as_bytes()), "name": lossy(&n.name), "type": format!("{:?}", n.kind).to_lowercase(),
        "mode": n.mode, "uid": n.uid, "gid": n.gid, "user": n.user, "group": n.group, "size": n.size,
        "mtime": file_time_string(&n.mtime, 0, true),
        "inode": n.inode, "links": n.links,
        "link_target": if n.kind == NodeKind::Symlink { Some(lossy(&n.link_target)) } else { None },
        "content": n.content.blobs().map(<[_]>::len), "content_lists": n.content.lists().map(<[_]>::len),
        "subtree": n.subtree.map(|s| s.to_hex()),
    })
}

pub fn ls(cli: &Cli, a: &LsArgs) -> Result<u8> {
    let repo = open(cli)?;
    let ix = repo.indexed()?;
    let (spec, path) = split_spec(&a.snapshot)?;
    let snaps = repo.load_snapshots_choosing(spec == "latest")?;
    let (_, snap) = resolve(&snaps, spec, &filter(&a.filter))?;
    let (tree, base) = listing(&ix, &snap.tree, &snapshot_subpath(path)?)?;
    let mut out = std::io::stdout().lock();
    let mut items = Vec::new();
    // As restic: a whole snapshot is listed recursively, a directory named in it only one
    // level deep unless --recursive.
    let recursive = a.recursive || !a.snapshot.as_bytes().contains(&b':');
    walk(&ix, tree, &base, recursive, &mut |p, n| {
        if cli.json {
            items.push(node_json(p, n));
        } else if a.long {
            let t = file_time_string(&n.mtime, local_offset(), false);
            let target = if n.kind == NodeKind::Symlink {
                format!(" -> {}", lossy(&n.link_target))
            } else {
                String::new()
            };
            // A device has no size: show its number, as `ls -l` does.
            let size = match n.kind {
                NodeKind::CharDevice | NodeKind::BlockDevice => format!(
                    "{}, {}",
                    nix::sys::stat::major(n.rdev),
                    nix::sys::stat::minor(n.rdev)
                ),
                _ => n.size.to_string(),
            };
            crate::output_written(writeln!(
                out,
                "{} {:>8} {:>8} {:>12} {} {}{}",
                mode_string(n),
                user_or_id(&n.user, n.uid),
                user_or_id(&n.group, n.gid),
                size,
                t,
                lossy(p.as_os_str().as_bytes()),
                target
            ));
        } else {
            crate::output_written(
                out.write_all(p.as_os_str().as_bytes())
                    .and_then(|()| out.write_all(b"\n")),
            );
        }
        Ok(())
    })?;
    if cli.json {
        writeln!(out, "{}", Value::Array(items))?;
    }
    Ok(0)
}

fn user_or_id(name: &str, id: u32) -> String {
    if name.is_empty() {
        id.to_string()
    } else {
        name.to_owned()
    }
}

pub(crate) fn local_offset() -> i32 {
    jiff::Zoned::now().offset().seconds()
}

pub fn cmd_restore(cli: &Cli, a: &RestoreArgs) -> Result<u8> {
    let (spec, path) = split_spec(&a.snapshot)?;
    let sub = snapshot_subpath(path)?;
    let repo = open(cli)?;
    let lock = lock_shared(cli, &repo)?;
    let ix = repo.indexed_for_reading()?;
    let snaps = repo.load_snapshots_choosing(spec == "latest")?;
    let (id, snap) = resolve(&snaps, spec, &filter(&a.filter))?;
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a.includes.clone(),
        excludes: a.excludes.clone(),
        delete: a.delete,
        keep: snap.excludes.clone(),
        dry_run: a.dry_run,
        overwrite: match a.overwrite {
            crate::OverwriteArg::Always => cairn_engine::ops::restore::Overwrite::Always,
            crate::OverwriteArg::IfChanged => cairn_engine::ops::restore::Overwrite::IfChanged,
            crate::OverwriteArg::IfNewer => cairn_engine::ops::restore::Overwrite::IfNewer,
            crate::OverwriteArg::Never => cairn_engine::ops::restore::Overwrite::Never,
        },
        verify: a.verify,
    };
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let res = {
        let _r = Reporter::start("restore", progress.clone(), cli.json, cli.quiet);
        restore(&lock, &ix, &snap.tree, &sub, &opts, &progress)?
    };
    let secs = started.elapsed().as_secs_f64();
    for (p, why) in &res.failed {
        if cli.json {
            // Each file's reason, not only the count in the summary.
            println!(
                "{}",
                json!({"message_type": "restore_error", "path": p.to_string_lossy(), "error": why})
            );
        }
        eprintln!("error: {}: {why}", p.display());
    }
    if a.dry_run {
        if cli.json {
            println!(
                "{}",
                json!({"message_type": "summary", "dry_run": true, "snapshot_id": id.to_hex(), "files_to_restore": res.files,
                       "dirs_to_restore": res.dirs, "others_to_restore": res.others, "bytes_to_restore": res.bytes,
                       "files_left_as_they_are": res.skipped, "to_delete": res.deleted})
            );
        } else {
            for p in &res.deleted {
                println!("would delete {}", p.display());
            }
            println!(
                "dry run: would restore snapshot {} to {}: {} files, {} dirs, {} other, {}{}{}",
                id.short(),
                a.target.display(),
                res.files,
                res.dirs,
                res.others,
                human_bytes(res.bytes),
                if res.skipped > 0 {
                    format!("; would leave {} as they are", res.skipped)
                } else {
                    String::new()
                },
                if a.delete {
                    format!("; would delete {} path(s)", res.deleted.len())
                } else {
                    String::new()
                }
            );
        }
        return Ok(0);
    }
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "summary", "snapshot_id": id.to_hex(), "files_restored": res.files, "dirs_restored": res.dirs,
                   "others_restored": res.others, "bytes_restored": res.bytes, "deleted": res.deleted.len(), "skipped": res.skipped,
                   "verified": res.verified, "errors": res.failed.len(), "total_duration": secs})
        );
    } else if !cli.quiet {
        for p in &res.deleted {
            println!("deleted {}", p.display());
        }
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} in {:.1}s{}{}",
            id.short(),
            a.target.display(),
            res.files,
            res.dirs,
            human_bytes(res.bytes),
            secs,
            if res.skipped > 0 {
                format!("; {} left as they were", res.skipped)
            } else {
                String::new()
            },
            if a.verify {
                format!("; {} verified", res.verified)
            } else {
                String::new()
            }
        );
    }
    if res.integrity_failures > 0 {
        return Err(cairn_engine::Error::Integrity(format!(
            "{} of {} files could not be restored because the repository's data is damaged or missing; `cairn check` says how to repair it",
            res.integrity_failures,
            res.files + res.failed.len() as u64
        ))
        .into());
    }
    if !res.failed.is_empty() {
        let total = res.files + res.failed.len() as u64;
        return Err(cairn_engine::Error::RestoreIncomplete {
            failed: res.failed.len() as u64,
            total,
        }
        .into());
    }
    Ok(0)
}

pub fn cat(cli: &Cli, a: &CatArgs) -> Result<u8> {
    let repo = open(cli)?;
    let need_id = || {
        a.id.as_deref()
            .ok_or_else(|| anyhow!("`cat {}` needs an id", a.kind))
    };
    let v: Value = match a.kind.as_str() {
        "config" => serde_json::to_value(repo.config())?,
        "snapshot" => {
            let snaps = repo.load_snapshots_choosing(need_id()? == "latest")?;
            let (id, s) = resolve(&snaps, need_id()?, &SnapshotFilter::default())?;
            snapshot_json(id, s)
        }
        "index" => {
            let id = repo.find_id(FileKind::Index, need_id()?)?;
            serde_json::to_value(repo.load_index_file(&id)?)?
        }
        "lock" => {
            let id = repo.find_id(FileKind::Lock, need_id()?)?;
            serde_json::to_value(repo.load_lock(&id)?)?
        }
        "key" => {
            let id = repo.find_id(FileKind::Key, need_id()?)?;
            let (_, kf) = repo.list_keys()?.into_iter().find(|(k, _)| *k == id).ok_or_else(|| anyhow!("key vanished"))?;
            json!({"id": id.to_hex(), "created": rfc3339(&kf.created), "hostname": kf.hostname, "username": kf.username,
                   "kdf": {"algorithm": "argon2id", "memory_kib": kf.kdf.memory_kib, "iterations": kf.kdf.iterations,
                           "parallelism": kf.kdf.parallelism, "salt": hex::encode(kf.kdf.salt)}})
        }
        "pack" => {
            let id = repo.find_id(FileKind::Pack, need_id()?)?;
            let data = repo.read_pack(&id)?;
            serde_json::to_value(decode_pack_header(repo.key(), &data)?)?
        }
        "tree" => {
            let ix = repo.indexed()?;
            let spec = need_id()?;
            let tree_id = if spec.len() == 64 && !spec.contains(':') {
                Id::from_hex(spec)?
            } else {
                let (s, p) = split_spec(std::ffi::OsStr::new(spec))?;
                let snaps = repo.load_snapshots_choosing(s == "latest")?;
                let (_, snap) = resolve(&snaps, s, &SnapshotFilter::default())?;
                let path = &snapshot_subpath(p)?;
                if path.as_os_str().is_empty() {
                    snap.tree
                } else {
                    find_node(&ix, &snap.tree, path)?.and_then(|n| n.subtree).ok_or_else(|| anyhow!("{} is not a directory in the snapshot", p.to_string_lossy()))?
                }
            };
            let t = ix.load_tree(&tree_id)?;
            json!({"id": tree_id.to_hex(), "nodes": t.nodes.iter().map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or(Value::Null);
                v["name"] = Value::String(lossy(&n.name));
                v["link_target"] = Value::String(lossy(&n.link_target));
                v
            }).collect::<Vec<_>>()})
        }
        "blob" => {
            let ix = repo.indexed()?;
            let index = ix.index();
            let id = Id::from_hex(need_id()?)?;
            let loc = index.get(&id).ok_or_else(|| anyhow!("blob {id} not in the index"))?;
            let data = ix.read_blob(loc.blob_type, &id)?;
            if loc.blob_type == BlobType::Data && !cli.json {
                std::io::stdout().write_all(&data)?;
                return Ok(0);
            }
            json!({"id": id.to_hex(), "type": format!("{:?}", loc.blob_type), "pack": index.pack_id(&loc).to_hex(),
                   "offset": loc.offset, "length": loc.length, "raw_length": loc.raw_length})
        }
        "masterkey" => {
            if std::io::stdout().is_terminal() {
                eprintln!("warning: printing the master key; anyone with it can read the repository");
            }
            json!({"encryption": hex::encode(repo.key().encryption), "id_key": hex::encode(repo.key().id_key), "chunker_seed": repo.key().chunker_seed})
        }
        other => bail!("unknown object kind {other:?} (config, snapshot, tree, index, pack, key, lock, blob, masterkey)"),
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

pub fn key(cli: &Cli, k: &KeyCommand) -> Result<u8> {
    let mut repo = open(cli)?;
    match k {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if cli.json {
                let v: Vec<Value> = keys.iter().map(|(id, kf)| json!({"id": id.to_hex(), "current": *id == repo.key_id(),
                    "username": kf.username, "hostname": kf.hostname, "created": rfc3339(&kf.created)})).collect();
                println!("{}", Value::Array(v));
            } else {
                println!(" {:<9} {:<12} {:<16} created", "ID", "user", "host");
                for (id, kf) in keys {
                    let cur = if id == repo.key_id() { '*' } else { ' ' };
                    println!(
                        "{cur}{:<9} {:<12} {:<16} {}",
                        id.short(),
                        kf.username,
                        kf.hostname,
                        format_timestamp(&kf.created)
                    );
                }
            }
        }
        KeyCommand::Add(a) => {
            let pw = crate::password::new_password(a.new_password_file.as_ref())?;
            let id = repo.add_key(
                pw.as_bytes(),
                KdfParams::new(
                    a.kdf_memory_mib.saturating_mul(1024),
                    a.kdf_iterations,
                    DEFAULT_KDF_LANES,
                ),
            )?;
            println!("added key {}", id.short());
        }
        KeyCommand::Remove { id } => {
            let id = repo.find_id(FileKind::Key, id)?;
            repo.remove_key(&id)?;
            println!("removed key {}", id.short());
        }
        KeyCommand::Passwd(a) => {
            let pw = crate::password::new_password(a.new_password_file.as_ref())?;
            let id = repo.change_password(
                pw.as_bytes(),
                KdfParams::new(
                    a.kdf_memory_mib.saturating_mul(1024),
                    a.kdf_iterations,
                    DEFAULT_KDF_LANES,
                ),
            )?;
            println!("password changed (new key {})", id.short());
        }
    }
    Ok(0)
}

pub fn stats(cli: &Cli) -> Result<u8> {
    let repo = open(cli)?;
    let st = cairn_engine::ops::stats::stats(&repo)?;
    if cli.json {
        println!("{}", serde_json::to_value(&st)?);
    } else {
        println!("snapshots:          {}", st.snapshots);
        println!(
            "packs:              {} ({})",
            st.packs,
            human_bytes(st.pack_bytes)
        );
        println!(
            "blobs:              {} data, {} tree",
            st.data_blobs, st.tree_blobs
        );
        println!(
            "unique content:     {} (stored as {})",
            human_bytes(st.raw_bytes),
            human_bytes(st.stored_bytes)
        );
        println!(
            "index memory:       ~{}",
            human_bytes(st.index_memory_bytes)
        );
        println!(
            "leftovers:          {} temporary file(s) ({}), {} stale lock(s){}",
            st.leftover_temp_files,
            human_bytes(st.leftover_temp_bytes),
            st.stale_locks,
            if st.leftover_temp_files == 0 && st.stale_locks == 0 {
                ""
            } else {
                " (`cairn prune` removes them)"
            }
        );
    }
    Ok(0)
}

/// A file time in the given offset (`YYYY-MM-DD HH:MM:SS`, or RFC 3339 with `rfc`); times
/// outside what the calendar library handles print as seconds since the epoch.
pub(crate) fn file_time_string(t: &cairn_format::FileTime, offset: i32, rfc: bool) -> String {
    let ts = jiff::Timestamp::new(t.secs, t.nanos as i32).ok();
    let off = jiff::tz::Offset::from_seconds(offset).ok();
    match (ts, off) {
        (Some(ts), Some(off)) => {
            let z = ts.to_zoned(jiff::tz::TimeZone::fixed(off));
            if rfc {
                z.strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string()
            } else {
                z.strftime("%Y-%m-%d %H:%M:%S").to_string()
            }
        }
        _ => format!("{}.{:09}", t.secs, t.nanos),
    }
}
