//! `forget`, `prune`, `check`, `repair`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cairn_engine::ops::check::{check, ReadData};
use cairn_engine::ops::forget::{self as forget_op, group_label, ForgetOptions};
use cairn_engine::ops::prune::{prune, MaxUnused, PruneOptions, PruneReport};
use cairn_engine::ops::repair::repair_index;
use cairn_engine::retention::{parse_count, parse_keep_tags, Duration, GroupBy, Policy};
use cairn_engine::util::{format_timestamp, now_timestamp};
use cairn_engine::Progress;
use cairn_format::{FileKind, Id};
use serde_json::json;

use crate::hiargs::{filter, lock_exclusive, lock_maintenance, lock_shared, open};
use crate::ui::snapshot_json;
use crate::ui::{human_bytes, Reporter};
use crate::{CheckArgs, Cli, ForgetArgs, PruneOpts, UsageError};

/// Parse `2G`, `500M`, `1.5T`, `1024` (bytes; binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => bail!("invalid size {s:?} (use K, M, G, T)"),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid size {s:?}"))?;
    if n < 0.0 {
        bail!("invalid size {s:?}");
    }
    Ok((n * mult as f64) as u64)
}

fn prune_options(o: &PruneOpts, dry_run: bool) -> Result<PruneOptions> {
    let max_unused = if let Some(p) = o.max_unused.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| anyhow!("invalid --max-unused {:?}", o.max_unused))?;
        if !(0.0..=100.0).contains(&v) {
            bail!("--max-unused must be between 0% and 100%");
        }
        MaxUnused::Fraction(v / 100.0)
    } else if o.max_unused == "unlimited" {
        MaxUnused::Fraction(f64::INFINITY)
    } else {
        MaxUnused::Bytes(parse_size(&o.max_unused)?)
    };
    let max_repack_bytes = match &o.max_repack_size {
        Some(s) => parse_size(s)?,
        None => u64::MAX,
    };
    Ok(PruneOptions {
        max_unused,
        max_repack_bytes,
        dry_run,
        clock_skew: o.clock_skew,
        trust_index: o.trust_index,
    })
}

/// An argument that does not parse is a usage error (exit 2).
fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    crate::UsageError(e.to_string()).into()
}

fn count(o: &Option<String>) -> Result<i64> {
    o.as_deref()
        .map_or(Ok(0), |s| parse_count(s).map_err(usage))
}

fn dur(o: &Option<String>) -> Result<Duration> {
    o.as_deref().map_or(Ok(Duration::default()), |s| {
        Duration::parse(s).map_err(usage)
    })
}

/// `forget`'s arguments as operation options (usage errors exit 2).
fn forget_options(a: &ForgetArgs) -> Result<ForgetOptions> {
    let policy = Policy {
        last: count(&a.keep_last)?,
        hourly: count(&a.keep_hourly)?,
        daily: count(&a.keep_daily)?,
        weekly: count(&a.keep_weekly)?,
        monthly: count(&a.keep_monthly)?,
        yearly: count(&a.keep_yearly)?,
        within: dur(&a.keep_within)?,
        within_hourly: dur(&a.keep_within_hourly)?,
        within_daily: dur(&a.keep_within_daily)?,
        within_weekly: dur(&a.keep_within_weekly)?,
        within_monthly: dur(&a.keep_within_monthly)?,
        within_yearly: dur(&a.keep_within_yearly)?,
        tags: parse_keep_tags(&a.keep_tag),
    };
    if policy.is_empty() && a.ids.is_empty() {
        return Err(crate::UsageError(
            "no policy given: use --keep-* options or name snapshot ids (refusing to remove everything)".into(),
        )
        .into());
    }
    Ok(ForgetOptions {
        policy,
        filter: filter(&a.filter),
        group_by: GroupBy::parse(&a.group_by).map_err(usage)?,
        ids: a.ids.clone(),
        allow_empty_group: a.allow_empty_group,
    })
}

pub fn forget(cli: &Cli, a: &ForgetArgs) -> Result<u8> {
    let opts = forget_options(a)?;
    let prune_opts = if a.prune {
        Some(prune_options(&a.prune_opts, a.dry_run).map_err(usage)?)
    } else {
        None
    };
    let repo = open(cli)?;
    let lock = lock_maintenance(cli, &repo)?;
    let all = repo.load_snapshots()?;
    let plan = forget_op::plan(&all, &opts, now_timestamp().unix_nanos)?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let by_id: std::collections::HashMap<_, _> = all.iter().map(|(i, s)| (*i, s)).collect();
    let mut out_groups = Vec::new();
    for g in &plan.groups {
        if !cli.json && !cli.quiet {
            println!("snapshots for {}:", group_label(&g.key));
        }
        let mut keep_json = Vec::new();
        let mut remove_json = Vec::new();
        for d in &g.decisions {
            let s = by_id[&d.id];
            if d.keep {
                keep_json.push(json!({"snapshot": snapshot_json(&d.id, s), "matches": d.reasons}));
            } else {
                remove_json.push(snapshot_json(&d.id, s));
            }
            if !cli.json && !cli.quiet {
                let verdict = if d.keep {
                    format!("keep    {}", d.reasons.join(", "))
                } else {
                    "remove".into()
                };
                println!(
                    "  {}  {}  {:<16} {:<20} {}",
                    d.id.short(),
                    format_timestamp(&s.time),
                    s.hostname,
                    s.tags.join(","),
                    verdict
                );
            }
        }
        out_groups.push(json!({"group": g.key, "keep": keep_json, "remove": remove_json}));
    }
    if !a.dry_run {
        forget_op::apply(lock.as_maintenance(), &plan)?;
    }
    let mut prune_report = None;
    if let (Some(prune_opts), false) = (&prune_opts, plan.remove.is_empty()) {
        let progress = Arc::new(Progress::default());
        let _r = Reporter::start("prune", progress.clone(), cli.json, cli.quiet);
        // A dry run cannot mark with the removals applied; it reports prune as things stand.
        prune_report = Some(prune(lock.as_maintenance(), prune_opts, &progress)?);
    }
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "forget", "dry_run": a.dry_run, "groups": out_groups,
            "removed": plan.remove.iter().map(|i| i.to_hex()).collect::<Vec<_>>(), "prune": prune_report})
        );
    } else if !cli.quiet {
        println!(
            "{} {} snapshot(s)",
            if a.dry_run { "would remove" } else { "removed" },
            plan.remove.len()
        );
        if let Some(r) = &prune_report {
            print_prune(r);
        }
    }
    Ok(0)
}

fn print_prune(r: &PruneReport) {
    println!(
        "{}: {} packs ({}), {} used / {} unused blobs",
        if r.dry_run {
            "prune (dry run)"
        } else {
            "prune"
        },
        r.packs_total,
        human_bytes(r.bytes_total),
        r.blobs_used,
        r.blobs_unused
    );
    // Unreferenced packs are deleted at once before format 3 (where nothing is condemned)
    // or when nothing else ran; otherwise they wait with the other condemned packs.
    let unreferenced = if r.quiet || r.packs_condemned == 0 {
        r.packs_unreferenced
    } else {
        0
    };
    println!(
        "  deleted {} unused and {} unreferenced packs, repacked {} packs ({} copied), freed {}, {} unused left",
        r.packs_deleted,
        unreferenced,
        r.packs_repacked,
        human_bytes(r.bytes_repacked),
        human_bytes(r.bytes_freed),
        human_bytes(r.bytes_unused_left)
    );
    if r.packs_waiting > 0 || r.packs_recovered > 0 {
        println!(
            "  {} condemned pack(s) ({}) wait for operations that were running to finish{}: a later prune deletes them{}",
            r.packs_waiting,
            human_bytes(r.bytes_waiting),
            r.held_back_by
                .as_ref()
                .map(|b| format!(" (the oldest: {b})"))
                .unwrap_or_default(),
            if r.packs_recovered > 0 {
                format!("; {} condemned pack(s) were needed again and kept", r.packs_recovered)
            } else {
                String::new()
            }
        );
    }
    if r.packs_spared > 0 {
        eprintln!(
            "cairn: warning: kept {} pack(s) the index says can go: their own headers list used blobs whose indexed copies do not verify (a damaged or forged index: run `cairn check --read-data`)",
            r.packs_spared
        );
    }
    if r.temp_files_removed > 0 || r.stale_locks_removed > 0 {
        println!(
            "  {} {} temporary file(s) ({}) and {} stale lock(s) left by interrupted runs",
            if r.dry_run { "would remove" } else { "removed" },
            r.temp_files_removed,
            human_bytes(r.temp_bytes_removed),
            r.stale_locks_removed
        );
    }
}

pub fn prune_cmd(cli: &Cli, o: &PruneOpts, dry_run: bool) -> Result<u8> {
    let opts = prune_options(o, dry_run).map_err(usage)?;
    let repo = open(cli)?;
    let lock = lock_maintenance(cli, &repo)?;
    let progress = Arc::new(Progress::default());
    let r = {
        let _r = Reporter::start("prune", progress.clone(), cli.json, cli.quiet);
        prune(lock.as_maintenance(), &opts, &progress)?
    };
    if cli.json {
        println!("{}", json!({"message_type": "prune", "report": r}));
    } else if !cli.quiet {
        print_prune(&r);
    }
    Ok(0)
}

pub fn check_cmd(cli: &Cli, a: &CheckArgs) -> Result<u8> {
    let read = if a.read_data {
        ReadData::All
    } else if let Some(s) = &a.read_data_subset {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| UsageError(format!("invalid --read-data-subset {s:?}")))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(
                    UsageError("--read-data-subset percentage must be 0-100".into()).into(),
                );
            }
            ReadData::Fraction(v / 100.0)
        } else if let Some((n, t)) = s.split_once('/') {
            let n: u32 = n
                .parse()
                .map_err(|_| UsageError(format!("invalid --read-data-subset {s:?}")))?;
            let t: u32 = t
                .parse()
                .map_err(|_| UsageError(format!("invalid --read-data-subset {s:?}")))?;
            if t == 0 || n == 0 || n > t || t > 256 {
                return Err(
                    UsageError("--read-data-subset n/t needs 1 <= n <= t <= 256".into()).into(),
                );
            }
            ReadData::Subset(n, t)
        } else {
            return Err(
                UsageError(format!("invalid --read-data-subset {s:?}: use n/t or P%")).into(),
            );
        }
    } else {
        ReadData::None
    };
    let repo = open(cli)?;
    let lock = lock_shared(cli, &repo)?;
    let progress = Arc::new(Progress::default());
    let r = {
        let _r = Reporter::start("check", progress.clone(), cli.json, cli.quiet);
        check(&lock, read, &progress)?
    };
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "check", "ok": r.errors.is_empty(), "report": r})
        );
    } else {
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        if (r.leftover_temp_files > 0 || r.stale_locks > 0) && !cli.quiet {
            println!(
                "{} temporary file(s) ({}) and {} stale lock(s) left by interrupted runs (`cairn prune` removes them)",
                r.leftover_temp_files,
                human_bytes(r.leftover_temp_bytes),
                r.stale_locks
            );
        }
        if r.condemned_packs > 0 && !cli.quiet {
            println!("{} pack(s) condemned by prune, deleted by a later prune once nothing that was running may use them", r.condemned_packs);
        }
        if !r.unreferenced_packs.is_empty() && !cli.quiet {
            if r.errors.is_empty() {
                println!("{} pack(s) not referenced by any index (left by an interrupted backup; `cairn prune` removes them)", r.unreferenced_packs.len());
            } else {
                // Beside errors they may be the lost index's packs, not leftovers to delete.
                println!(
                    "{} pack(s) not referenced by any index (`cairn repair index` indexes them)",
                    r.unreferenced_packs.len()
                );
            }
        }
        if !cli.quiet {
            let lists = if r.content_lists > 0 {
                format!(", {} content lists", r.content_lists)
            } else {
                String::new()
            };
            println!(
                "checked {} snapshots, {} trees{lists}, {} pack headers; read {} packs ({} blobs)",
                r.snapshots, r.trees, r.packs_checked, r.packs_read, r.blobs_read
            );
        }
    }
    if r.errors.is_empty() {
        if !cli.json && !cli.quiet {
            println!("no errors were found");
        }
        Ok(0)
    } else {
        if !cli.json && !r.hints.is_empty() {
            eprintln!("to repair:");
            for (i, h) in r.hints.iter().enumerate() {
                eprintln!("  {}. {h}", i + 1);
            }
        }
        eprintln!(
            "cairn: error: the repository has {} error(s)",
            r.errors.len()
        );
        Ok(13)
    }
}

pub fn migrate_cmd(cli: &Cli) -> Result<u8> {
    let repo = open(cli)?;
    let lock = lock_exclusive(cli, &repo)?;
    let r = cairn_engine::ops::migrate::migrate(&lock)?;
    if cli.json {
        println!("{}", json!({"message_type": "migrate", "report": r}));
    } else if r.from == r.to {
        println!("the repository is at format version {} already", r.to);
    } else {
        println!(
            "upgraded the repository from format version {} to {} ({} index files checked); \
             cairn builds older than format {} can no longer open it",
            r.from, r.to, r.index_files, r.to
        );
    }
    Ok(0)
}

pub fn repair_index_cmd(cli: &Cli) -> Result<u8> {
    let repo = open(cli)?;
    let lock = lock_exclusive(cli, &repo)?;
    let progress = Arc::new(Progress::default());
    let r = repair_index(&lock, &progress)?;
    if cli.json {
        println!("{}", json!({"message_type": "repair_index", "report": r}));
    } else {
        for p in &r.unreadable_packs {
            eprintln!("warning: pack {p} (not indexed)");
        }
        println!(
            "indexed {} packs with {} blobs; replaced {} index file(s)",
            r.packs, r.blobs, r.index_files_replaced
        );
    }
    Ok(0)
}

pub fn repair_packs_cmd(cli: &Cli, a: &crate::RepairPacksArgs) -> Result<u8> {
    let repo = open(cli)?;
    let lock = lock_exclusive(cli, &repo)?;
    let stored: Vec<Id> = repo.list_ids(FileKind::Pack)?;
    let mut ids = Vec::new();
    for p in &a.packs {
        let found: Vec<&Id> = stored.iter().filter(|i| i.has_hex_prefix(p)).collect();
        match found.as_slice() {
            [one] => ids.push(**one),
            // A pack that is gone from storage can only be named in full.
            [] => ids.push(Id::from_hex(p).map_err(|_| {
                anyhow!("no stored pack with id {p}; name a missing pack by its full id")
            })?),
            _ => bail!("pack id prefix {p} is ambiguous"),
        }
    }
    let progress = Arc::new(Progress::default());
    let r = {
        let _r = Reporter::start("repair packs", progress.clone(), cli.json, cli.quiet);
        cairn_engine::ops::repair::repair_packs(&lock, &ids, a.dry_run, &progress)?
    };
    if cli.json {
        println!("{}", json!({"message_type": "repair_packs", "report": r}));
    } else {
        for (p, why) in &r.packs {
            println!("pack {}: {why}", &p[..8]);
        }
        let verb = if r.dry_run { "would drop" } else { "dropped" };
        println!(
            "{verb} {} pack(s): {} blob(s) salvaged, {} lost",
            r.packs.len(),
            r.blobs_salvaged,
            r.blobs_lost
        );
        if r.blobs_lost > 0 && !r.dry_run {
            println!("next: back up the same sources (lost data that still exists there is stored again), then run `cairn repair snapshots --forget`");
        }
    }
    Ok(0)
}

pub fn repair_snapshots_cmd(cli: &Cli, a: &crate::RepairSnapshotsArgs) -> Result<u8> {
    let repo = open(cli)?;
    let lock = lock_exclusive(cli, &repo)?;
    let progress = Arc::new(Progress::default());
    let opts = cairn_engine::ops::repair::RepairSnapshotsOptions {
        forget: a.forget,
        dry_run: a.dry_run,
    };
    let r = {
        let _r = Reporter::start("repair snapshots", progress.clone(), cli.json, cli.quiet);
        cairn_engine::ops::repair::repair_snapshots(&lock, &opts, &progress)?
    };
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "repair_snapshots", "report": r})
        );
    } else {
        for (id, why) in &r.damaged {
            println!("snapshot {} does not decode: {why}", &id[..8]);
        }
        for p in &r.paths_dropped {
            println!("  dropped {p}");
        }
        if r.paths_dropped_total > r.paths_dropped.len() as u64 {
            println!(
                "  … and {} more",
                r.paths_dropped_total - r.paths_dropped.len() as u64
            );
        }
        for (old, new) in &r.rewritten {
            if new.is_empty() {
                println!("snapshot {} would be rewritten", &old[..8]);
            } else {
                println!("snapshot {} rewritten as {}", &old[..8], &new[..8]);
            }
        }
        println!(
            "{} snapshot(s) read, {} rewritten, {} damaged, {} removed",
            r.snapshots,
            r.rewritten.len(),
            r.damaged.len(),
            r.removed
        );
        if !a.forget && !a.dry_run && (!r.rewritten.is_empty() || !r.damaged.is_empty()) {
            println!("the originals are kept; run again with --forget to remove them");
        }
    }
    Ok(0)
}

pub fn rewrite_cmd(cli: &Cli, a: &crate::RewriteArgs) -> Result<u8> {
    use cairn_engine::ops::rewrite::{rewrite, RewriteOptions};
    let repo = crate::hiargs::open(cli)?;
    let lock = crate::hiargs::lock_exclusive(cli, &repo)?;
    let all = repo.load_snapshots()?;
    let f = crate::hiargs::filter(&a.filter);
    let snaps = crate::explore::select(&all, &a.ids, &f)?;
    let report = rewrite(
        &lock,
        &snaps,
        &RewriteOptions {
            excludes: a.excludes.clone(),
            forget: a.forget,
            dry_run: a.dry_run,
        },
    )?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"message_type": "rewrite", "report": report})
        );
        return Ok(0);
    }
    for r in &report.rewritten {
        if a.dry_run {
            println!(
                "snapshot {}: would remove {} path(s)",
                &r.old[..8],
                r.removed.len()
            );
        } else {
            println!(
                "snapshot {} -> {}: removed {} path(s)",
                &r.old[..8],
                &r.new[..8],
                r.removed.len()
            );
        }
        for p in r.removed.iter().take(20) {
            println!("  {p}");
        }
        if r.removed.len() > 20 {
            println!("  … and {} more", r.removed.len() - 20);
        }
    }
    println!(
        "{} of {} snapshot(s) {}{}",
        report.rewritten.len(),
        report.snapshots,
        if a.dry_run {
            "would be rewritten"
        } else {
            "rewritten"
        },
        if report.forgotten > 0 {
            format!(
                "; {} original(s) removed (run `cairn prune` to free their data)",
                report.forgotten
            )
        } else if !a.dry_run && !a.forget && !report.rewritten.is_empty() {
            "; originals kept (--forget removes them)".to_owned()
        } else {
            String::new()
        }
    );
    Ok(0)
}

pub fn copy_cmd(cli: &Cli, a: &crate::CopyArgs) -> Result<u8> {
    let src = crate::hiargs::open_source(cli, &a.from)?;
    let dst = crate::hiargs::open(cli)?;
    let src_lock = crate::hiargs::lock_shared(cli, &src)?;
    let dst_lock = crate::hiargs::lock_shared(cli, &dst)?;
    let ix = src.indexed()?;
    let all = src.load_snapshots()?;
    let f = crate::hiargs::filter(&a.filter);
    let snaps = crate::explore::select(&all, &a.ids, &f)?;
    let progress = std::sync::Arc::new(cairn_engine::Progress::default());
    let started = std::time::Instant::now();
    let report = {
        let _r = crate::ui::Reporter::start("copy", progress.clone(), cli.json, cli.quiet);
        cairn_engine::ops::copy::copy(&ix, &dst_lock, &snaps, &progress)?
    };
    drop(src_lock);
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"message_type": "copy", "report": report})
        );
        return Ok(0);
    }
    for (old, new) in &report.copied {
        println!("snapshot {} copied as {}", &old[..8], &new[..8]);
    }
    println!(
        "copied {} snapshot(s), skipped {} already there: {} blobs sent ({}), {} already present, {} read from the source, {:.1}s{}",
        report.copied.len(),
        report.skipped,
        report.blobs_sent,
        crate::ui::human_bytes(report.bytes_sent),
        report.blobs_present,
        report.blobs_read,
        started.elapsed().as_secs_f64(),
        if report.same_ids {
            ""
        } else {
            " (the repositories name blobs differently: every blob of a new snapshot is read; `init --copy-chunker-params --from-repo` avoids that)"
        }
    );
    Ok(0)
}
