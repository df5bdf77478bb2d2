//! Commands that look into snapshots without restoring them (`diff`, `find`, `dump`), change
//! their labels (`tag`), and describe the tool itself (`version`, `completion`, `man`).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cairn_engine::ops::diff::{diff, Change};
use cairn_engine::ops::dump::{dump_file, dump_tar};
use cairn_engine::ops::find::{find, FindOptions};
use cairn_engine::ops::ls::find_node;
use cairn_engine::ops::tag;
use cairn_engine::snapshots::{resolve, snapshot_subpath, split_spec};
use cairn_engine::Indexed;
use cairn_format::{FileTime, Id, NodeKind, Snapshot};
use clap::CommandFactory;
use serde_json::json;

use crate::commands::{file_time_string, local_offset, mode_string, node_json};
use crate::hiargs::{filter, lock_exclusive, open};
use crate::ui::{human_bytes, lossy};
use crate::{Cli, DiffArgs, DumpArgs, FindArgs, TagArgs};

/// The snapshots a command names: `specs` (ids, `latest`) if any, else every snapshot the
/// filters allow; each once, in the order first named (`latest` and its own id are one).
pub(crate) fn select(
    all: &[(Id, Snapshot)],
    specs: &[String],
    f: &cairn_engine::SnapshotFilter,
) -> Result<Vec<(Id, Snapshot)>> {
    if specs.is_empty() {
        return Ok(all.iter().filter(|(_, s)| f.matches(s)).cloned().collect());
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for spec in specs {
        let (id, s) = resolve(all, spec, f)?;
        if seen.insert(*id) {
            out.push((*id, s.clone()));
        }
    }
    Ok(out)
}

/// The tree id `SNAPSHOT[:PATH]` names (a directory).
fn dir_tree(ix: &Indexed<'_>, snap: &Snapshot, path: &std::ffi::OsStr) -> Result<Id> {
    let sub = snapshot_subpath(path)?;
    if sub
        .components()
        .all(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Ok(snap.tree);
    }
    let node = find_node(ix, &snap.tree, &sub)?
        .ok_or_else(|| anyhow!("path {} not found in snapshot", path.to_string_lossy()))?;
    match (node.kind, node.subtree) {
        (NodeKind::Dir, Some(id)) => Ok(id),
        _ => bail!("{} is not a directory", path.to_string_lossy()),
    }
}

pub fn diff_cmd(cli: &Cli, a: &DiffArgs) -> Result<u8> {
    let repo = open(cli)?;
    let ix = repo.indexed()?;
    let f = filter(&a.filter);
    let (sa, pa) = split_spec(&a.first)?;
    let (sb, pb) = split_spec(&a.second)?;
    let snaps = repo.load_snapshots_choosing(sa == "latest" || sb == "latest")?;
    let (ida, snapa) = resolve(&snaps, sa, &f)?;
    let (idb, snapb) = resolve(&snaps, sb, &f)?;
    let (ta, tb) = (dir_tree(&ix, snapa, pa)?, dir_tree(&ix, snapb, pb)?);
    let mut out = std::io::stdout().lock();
    let json_mode = cli.json;
    let stats = diff(&ix, &ta, &tb, a.metadata, &mut |e| {
        let path = lossy(e.path.as_os_str().as_bytes());
        let shown = if e.kind == NodeKind::Dir && e.change != Change::Metadata {
            format!("{path}/")
        } else {
            path
        };
        let r = if json_mode {
            writeln!(
                out,
                "{}",
                json!({"message_type": "change", "path": shown, "modifier": e.change.code().to_string(),
                       "change": e.change, "kind": e.kind, "size_before": e.size_before, "size_after": e.size_after})
            )
        } else {
            writeln!(out, "{}    {shown}", e.change.code())
        };
        crate::output_written(r);
        Ok(())
    })?;
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "statistics", "source_snapshot": ida.to_hex(), "target_snapshot": idb.to_hex(), "stats": stats})
        );
    } else if !cli.quiet {
        println!(
            "\nFiles: {:>6} new, {:>6} removed, {:>6} changed, {} type changed{}",
            stats.files_added,
            stats.files_removed,
            stats.files_modified,
            stats.type_changed,
            if a.metadata {
                format!(", {} metadata only", stats.metadata_changed)
            } else {
                String::new()
            }
        );
        println!(
            "Dirs:  {:>6} new, {:>6} removed",
            stats.dirs_added, stats.dirs_removed
        );
        println!(
            "Added:   {}\nRemoved: {}",
            human_bytes(stats.bytes_added),
            human_bytes(stats.bytes_removed)
        );
    }
    Ok(0)
}

fn parse_file_time(s: &str) -> Result<FileTime> {
    let t = cairn_engine::util::parse_time(s).ok_or_else(|| {
        anyhow!("cannot read {s:?} as a time (e.g. 2024-05-07 or 2024-05-07 02:00:00)")
    })?;
    Ok(FileTime::from_unix_nanos(t.unix_nanos))
}

pub fn find_cmd(cli: &Cli, a: &FindArgs) -> Result<u8> {
    let repo = open(cli)?;
    let ix = repo.indexed()?;
    let all = repo.load_snapshots()?;
    let f = filter(&a.filter);
    let snaps = select(&all, &a.snapshots, &f)?;
    let opts = FindOptions {
        patterns: a.patterns.clone(),
        ignore_case: a.ignore_case,
        oldest: a.oldest.as_deref().map(parse_file_time).transpose()?,
        newest: a.newest.as_deref().map(parse_file_time).transpose()?,
    };
    let mut out = std::io::stdout().lock();
    let mut current: Option<Id> = None;
    let json_mode = cli.json;
    let total = find(&ix, &snaps, &opts, &mut |id, p, n| {
        let r = if json_mode {
            let mut v = node_json(p, n);
            v["snapshot"] = json!(id.to_hex());
            writeln!(out, "{v}")
        } else {
            let head = if current != Some(*id) {
                current = Some(*id);
                let s = &snaps.iter().find(|(i, _)| i == id).map(|(_, s)| s);
                writeln!(
                    out,
                    "Found matching entries in snapshot {} from {}",
                    id.short(),
                    s.map(|s| cairn_engine::util::format_timestamp(&s.time))
                        .unwrap_or_default()
                )
            } else {
                Ok(())
            };
            head.and_then(|()| {
                writeln!(
                    out,
                    "{} {:>8} {:>8} {:>12} {} {}",
                    mode_string(n),
                    n.user,
                    n.group,
                    n.size,
                    file_time_string(&n.mtime, local_offset(), false),
                    lossy(p.as_os_str().as_bytes())
                )
            })
        };
        crate::output_written(r);
        Ok(())
    })?;
    if !cli.json && !cli.quiet {
        eprintln!("{total} match(es) in {} snapshot(s)", snaps.len());
    }
    Ok(if total > 0 { 0 } else { 1 })
}

pub fn dump_cmd(cli: &Cli, a: &DumpArgs) -> Result<u8> {
    let repo = open(cli)?;
    let ix = repo.indexed_for_reading()?;
    let snaps = repo.load_snapshots_choosing(a.snapshot == "latest")?;
    let (_, snap) = resolve(&snaps, &a.snapshot, &filter(&a.filter))?;
    let sub = snapshot_subpath(&a.path)?;
    let is_root = sub
        .components()
        .all(|c| !matches!(c, std::path::Component::Normal(_)));
    let node = if is_root {
        cairn_engine::snapshots::root_node(snap)
    } else {
        find_node(&ix, &snap.tree, &sub)?
            .ok_or_else(|| anyhow!("path {} not found in snapshot", a.path.to_string_lossy()))?
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let archive = a.archive.as_deref();
    if node.kind == NodeKind::File && archive.is_none() {
        dump_file(&ix, &node, &mut out)?;
        out.flush().context("standard output")?;
        return Ok(0);
    }
    match archive.unwrap_or("tar") {
        "tar" => {
            let name = if is_root {
                PathBuf::new()
            } else {
                PathBuf::from(std::ffi::OsStr::from_bytes(&node.name))
            };
            dump_tar(&ix, &node, Path::new(&name), &mut out)?;
        }
        "zip" => {
            let name = if is_root {
                PathBuf::new()
            } else {
                PathBuf::from(std::ffi::OsStr::from_bytes(&node.name))
            };
            cairn_engine::ops::dump::dump_zip(&ix, &node, Path::new(&name), &mut out)?;
        }
        other => bail!("unknown --archive {other:?}: use tar or zip"),
    }
    out.flush().context("standard output")?;
    Ok(0)
}

pub fn tag_cmd(cli: &Cli, a: &TagArgs) -> Result<u8> {
    let repo = open(cli)?;
    let lock = lock_exclusive(cli, &repo)?;
    let all = repo.load_snapshots()?;
    let f = filter(&a.filter);
    let snaps = select(&all, &a.ids, &f)?;
    if snaps.is_empty() {
        bail!("no snapshot matches");
    }
    let plan = tag::plan(
        &snaps,
        &tag::TagOptions {
            add: a.add.clone(),
            remove: a.remove.clone(),
            set: (!a.set.is_empty()).then(|| a.set.clone()),
        },
    )?;
    let done = tag::apply(&lock, plan)?;
    if cli.json {
        println!("{}", json!({"message_type": "tag", "changed": done}));
    } else {
        for c in &done {
            println!(
                "{} -> {}  tags: {}",
                &c.old[..8],
                &c.new[..8],
                if c.after.is_empty() {
                    "(none)".to_owned()
                } else {
                    c.after.join(",")
                }
            );
        }
        println!("modified {} snapshot(s)", done.len());
    }
    Ok(0)
}

pub fn version(cli: &Cli) -> Result<u8> {
    let v = env!("CARGO_PKG_VERSION");
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "version", "version": v, "format_version": cairn_format::FORMAT_VERSION, "target": target})
        );
    } else {
        println!(
            "cairn {v} (repository format {}) {target}",
            cairn_format::FORMAT_VERSION
        );
    }
    Ok(0)
}

pub fn completion(shell: clap_complete::Shell) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "cairn", &mut std::io::stdout());
    Ok(0)
}

/// One man page per command (`cairn.1`, `cairn-backup.1`, …) into `dir`.
pub fn man(dir: &Path) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut n = 0;
    let mut write = |name: String, c: clap::Command| -> Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.name(name.clone()))
            .render(&mut buf)
            .context("rendering man page")?;
        let p = dir.join(format!("{name}.1"));
        std::fs::write(&p, buf).with_context(|| format!("writing {}", p.display()))?;
        n += 1;
        Ok(())
    };
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write(format!("cairn-{}", sub.get_name()), sub.clone())?;
    }
    write("cairn".into(), cmd.clone())?;
    println!("wrote {n} man pages to {}", dir.display());
    Ok(0)
}

pub fn list(cli: &Cli, kind: &str) -> Result<u8> {
    use cairn_format::FileKind;
    let repo = open(cli)?;
    let mut out = std::io::stdout().lock();
    let fk = match kind {
        "snapshots" => FileKind::Snapshot,
        "index" => FileKind::Index,
        "packs" => FileKind::Pack,
        "keys" => FileKind::Key,
        "locks" => FileKind::Lock,
        "blobs" => {
            let index = repo.load_index()?;
            for (id, loc) in index.iter() {
                let t = match loc.blob_type {
                    cairn_format::BlobType::Data => "data",
                    cairn_format::BlobType::Tree => "tree",
                };
                crate::output_written(writeln!(
                    out,
                    "{t} {} {}",
                    id.to_hex(),
                    index.pack_id(&loc).to_hex()
                ));
            }
            return Ok(0);
        }
        other => {
            return Err(crate::UsageError(format!(
                "unknown kind {other:?}: snapshots, index, packs, keys, locks or blobs"
            ))
            .into())
        }
    };
    for id in repo.list_ids(fk)? {
        crate::output_written(writeln!(out, "{}", id.to_hex()));
    }
    Ok(0)
}
