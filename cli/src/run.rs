//! `run` (the nightly job), `schedule` (systemd / cron units for it) and the K3s etcd
//! restore drill.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cairn_engine::ops::job::{prometheus_text, run_job, source_tag, JobConfig};
use cairn_engine::ops::k3s_restore::{is_cluster_state, restore_cluster_state, Datastore};
use cairn_engine::Repository;
use serde_json::json;

use crate::password::PasswordArgs;
use crate::ui::human_bytes;
use crate::{Cli, K3sCommand, RunArgs, ScheduleArgs};

fn load_config(path: &Path) -> Result<JobConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(JobConfig::parse(&text)?)
}

/// Open the job's repository: `-r`/password options on the command line win over the file.
fn open_job_repo(cli: &Cli, cfg: &JobConfig) -> Result<Repository> {
    let location = cli
        .repo
        .clone()
        .unwrap_or_else(|| cfg.repository.path.clone());
    let pw_args = PasswordArgs {
        password_file: cli
            .password
            .password_file
            .clone()
            .or_else(|| cfg.repository.password_file.clone()),
        password_command: cli
            .password
            .password_command
            .clone()
            .or_else(|| cfg.repository.password_command.clone()),
        password_command_timeout: cli.password.password_command_timeout,
    };
    // Command-line options win over the file's.
    let mut options: Vec<(String, String)> = cfg
        .repository
        .options
        .iter()
        .filter(|(k, _)| !cli.options.iter().any(|(c, _)| c == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    options.extend(cli.options.iter().cloned());
    crate::hiargs::open_at(cli, &location, &options, &pw_args)
}

pub fn run(cli: &Cli, a: &RunArgs) -> Result<u8> {
    let mut cfg = load_config(&a.config)?;
    if let Some(host) = &a.host {
        cfg.repository.host = Some(host.clone());
    }
    if a.daemon {
        return daemon(cli, a, &cfg);
    }
    let previous = cfg
        .metrics
        .textfile
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|t| cairn_engine::ops::job::previous_last_success(&t));
    run_once(cli, a, &cfg, previous).0
}

/// One run of the job: its exit code (or error), and its metrics text (also written to the
/// textfile, if the job file names one). `previous`: the last successful run's time.
fn run_once(
    cli: &Cli,
    a: &RunArgs,
    cfg: &JobConfig,
    previous: Option<f64>,
) -> (Result<u8>, String) {
    let outcome = run_job_and_times(cli, a, cfg);
    let now = cairn_engine::util::now_timestamp().unix_nanos as f64 / 1e9;
    let text = match &outcome {
        Ok((report, last)) => prometheus_text(
            cfg,
            Some(report),
            last,
            if report.ok { Some(now) } else { previous },
        ),
        Err(_) => prometheus_text(cfg, None, &BTreeMap::new(), previous),
    };
    // The metrics file is written on every exit path once the job file is read: a run that
    // stops early (no repository, wrong password, Ctrl-C) says cairn_run_success 0 instead
    // of leaving last night's 1 in place. World-readable: node-exporter runs as nobody.
    if let (Some(path), false) = (&cfg.metrics.textfile, a.dry_run) {
        if let Err(e) = cairn_engine::write_atomic_mode(path, text.as_bytes(), 0o644) {
            eprintln!("warning: writing metrics to {}: {e}", path.display());
        }
    }
    (report_run(cli, a, cfg, outcome), text)
}

type Outcome = Result<(cairn_engine::ops::job::RunReport, BTreeMap<String, f64>)>;

/// Hooks and output of one run; its exit code.
fn report_run(cli: &Cli, a: &RunArgs, cfg: &JobConfig, outcome: Outcome) -> Result<u8> {
    let (report, _) = match outcome {
        Ok(v) => v,
        Err(e) => {
            if let (Some(hook), false) = (&cfg.run.on_failure, a.dry_run) {
                let msg = crate::error_message(&e);
                if let Err(h) = cairn_engine::ops::job::run_on_failure(
                    hook,
                    u8::try_from(crate::exit_code_of(&e)).unwrap_or(1),
                    None,
                    Some(&msg),
                ) {
                    eprintln!("warning: {h}");
                }
            }
            return Err(e);
        }
    };
    if !report.ok && !a.dry_run {
        if let Some(hook) = &cfg.run.on_failure {
            if let Err(h) = cairn_engine::ops::job::run_on_failure(hook, 1, Some(&report), None) {
                eprintln!("warning: {h}");
            }
        }
    }
    if cli.json {
        println!(
            "{}",
            json!({"message_type": "run", "dry_run": a.dry_run, "report": report})
        );
    } else {
        for s in &report.sources {
            let status = if s.ok { "ok  " } else { "FAIL" };
            let detail = match (&s.snapshot, &s.message) {
                (Some(id), msg) => format!(
                    "snapshot {} ({} files, {}, +{} stored{}){}",
                    &id[..8],
                    s.files,
                    human_bytes(s.bytes),
                    human_bytes(s.bytes_added),
                    if s.forgotten > 0 {
                        format!(", {} old removed", s.forgotten)
                    } else {
                        String::new()
                    },
                    msg.as_ref().map(|m| format!(" — {m}")).unwrap_or_default()
                ),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            };
            println!("{status} {:<14} {:>6.1}s  {detail}", s.name, s.seconds);
        }
        for r in &report.retention {
            if !r.remove.is_empty() {
                let ids: Vec<&str> = r.remove.iter().map(|i| &i[..8]).collect();
                println!(
                    "retention {:<10} {} {} snapshot(s): {}",
                    r.name,
                    if a.dry_run { "would remove" } else { "removed" },
                    r.remove.len(),
                    ids.join(" ")
                );
            }
        }
        if let Some(p) = &report.prune {
            println!(
                "prune: freed {}, {} packs deleted, {} repacked",
                human_bytes(p.bytes_freed),
                p.packs_deleted,
                p.packs_repacked
            );
        }
        if let Some(e) = &report.maintenance_error {
            eprintln!("error: retention/prune: {e}");
        }
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// Open the repository, run the job, and find each source's newest snapshot that read every
/// file (for the metrics).
fn run_job_and_times(
    cli: &Cli,
    a: &RunArgs,
    cfg: &JobConfig,
) -> Result<(cairn_engine::ops::job::RunReport, BTreeMap<String, f64>)> {
    let repo = open_job_repo(cli, cfg)?;
    let json_mode = cli.json;
    let warn = move |msg: &str| {
        if json_mode {
            println!("{}", json!({"message_type": "warning", "warning": msg}));
        }
        eprintln!("warning: {msg}");
    };
    let report = run_job(&repo, cfg, a.dry_run, job_wait(cli, cfg)?, &warn)?;
    let mut last = BTreeMap::new();
    if !a.dry_run && (cfg.metrics.textfile.is_some() || a.daemon) {
        for (_, s) in repo.load_snapshots()? {
            let complete = s.summary.as_ref().is_some_and(|x| x.errors == 0)
                && !s
                    .tags
                    .iter()
                    .any(|t| t == cairn_engine::ops::job::PARTIAL_TAG);
            for src in &cfg.sources {
                if complete && s.tags.contains(&source_tag(&src.name)) {
                    let t = s.time.unix_nanos as f64 / 1e9;
                    let e = last.entry(src.name.clone()).or_insert(t);
                    *e = f64::max(*e, t);
                }
            }
        }
    }
    Ok((report, last))
}

/// `run --daemon`: run the job at the job file's `[schedule] at` (local time) plus a random
/// delay of up to `randomized-delay-minutes`, every day, until SIGTERM; serve the last run's
/// metrics (and `/healthz`) on `--metrics-listen` meanwhile. For a DaemonSet: one pod per
/// node, no CronJob per node.
fn daemon(cli: &Cli, a: &RunArgs, cfg: &JobConfig) -> Result<u8> {
    use cairn_engine::progress::interrupted;
    let (h, m) = parse_at(&cfg.schedule.at)?;
    let state = std::sync::Arc::new(parking_lot::Mutex::new(DaemonMetrics {
        last_run: String::new(),
        next_run: None,
    }));
    if let Some(addr) = &a.metrics_listen {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listening on {addr} for /metrics"))?;
        println!(
            "serving metrics on http://{}/metrics",
            listener.local_addr()?
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let state = state.clone();
        std::thread::spawn(move || serve_metrics(&listener, &state));
    }
    let mut previous = cfg
        .metrics
        .textfile
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|t| cairn_engine::ops::job::previous_last_success(&t));
    let mut run_now = a.run_now;
    loop {
        if !run_now {
            let delay = std::time::Duration::from_secs(
                (rand::random::<f64>() * f64::from(cfg.schedule.randomized_delay_minutes) * 60.0)
                    as u64,
            );
            let at = next_time_of_day(h, m)? + delay;
            let unix = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            state.lock().next_run = Some(unix);
            eprintln!(
                "cairn: next run at {} (in {})",
                cairn_engine::util::format_timestamp(&cairn_format::Timestamp {
                    unix_nanos: unix as i64 * 1_000_000_000,
                    utc_offset_secs: 0,
                }),
                humantime(
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                )
            );
            while std::time::SystemTime::now() < at {
                if interrupted() {
                    return Ok(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        run_now = false;
        let (result, text) = run_once(cli, a, cfg, previous);
        previous = cairn_engine::ops::job::previous_last_success(&text).or(previous);
        state.lock().last_run = text;
        match result {
            Ok(code) if code != 0 => {
                eprintln!("cairn: the run failed (exit {code}); next one tomorrow")
            }
            Ok(_) => {}
            Err(e) => eprintln!("cairn: error: {}", crate::error_message(&e)),
        }
        if interrupted() {
            return Ok(130);
        }
    }
}

struct DaemonMetrics {
    /// The last run's metrics text (empty before the first run).
    last_run: String,
    /// When the next run starts (Unix seconds).
    next_run: Option<u64>,
}

fn parse_at(at: &str) -> Result<(u8, u8)> {
    let (h, m) = at
        .split_once(':')
        .ok_or_else(|| anyhow!("schedule.at must be HH:MM"))?;
    let (h, m): (u8, u8) = (h.parse()?, m.parse()?);
    if h > 23 || m > 59 {
        bail!("schedule.at {at:?} is not a time of day");
    }
    Ok((h, m))
}

/// The next time the local clock shows `h:m`.
fn next_time_of_day(h: u8, m: u8) -> Result<std::time::SystemTime> {
    let now = jiff::Zoned::now();
    let mut at = now
        .with()
        .hour(h as i8)
        .minute(m as i8)
        .second(0)
        .subsec_nanosecond(0)
        .build()?;
    if at <= now {
        at = at.tomorrow()?;
    }
    let secs = at.timestamp().as_second();
    Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs)?))
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m", s / 3600, s / 60 % 60)
}

/// A minimal HTTP/1.1 responder for `GET /metrics` and `GET /healthz`, one connection at a
/// time (Prometheus scrapes once a minute): requests are read up to 8 KiB with a timeout.
fn serve_metrics(listener: &std::net::TcpListener, state: &parking_lot::Mutex<DaemonMetrics>) {
    use std::io::{Read, Write};
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(5)));
        let mut buf = [0u8; 8192];
        let mut len = 0;
        while len < buf.len() {
            match conn.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let request = String::from_utf8_lossy(&buf[..len]);
        let target = request.lines().next().unwrap_or_default();
        let (status, body) = if target.starts_with("GET /metrics ") {
            let st = state.lock();
            let mut body = st.last_run.clone();
            body.push_str("# HELP cairn_daemon_next_run_timestamp_seconds When the next run of the job starts.\n");
            body.push_str("# TYPE cairn_daemon_next_run_timestamp_seconds gauge\n");
            body.push_str(&format!(
                "cairn_daemon_next_run_timestamp_seconds {}\n",
                st.next_run.unwrap_or(0)
            ));
            ("200 OK", body)
        } else if target.starts_with("GET /healthz ") {
            ("200 OK", "ok\n".to_owned())
        } else {
            (
                "404 Not Found",
                "not found: GET /metrics or /healthz\n".to_owned(),
            )
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

pub fn schedule(a: &ScheduleArgs) -> Result<u8> {
    let cfg = load_config(&a.config)?;
    let config = std::path::absolute(&a.config).unwrap_or_else(|_| a.config.clone());
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/cairn"));
    let (h, m) = parse_at(&cfg.schedule.at)?;
    let delay = cfg.schedule.randomized_delay_minutes;
    match a.print.as_str() {
        "systemd" => {
            println!("# /etc/systemd/system/cairn-backup.service");
            println!("[Unit]\nDescription=cairn nightly backup ({})\nWants=network-online.target\nAfter=network-online.target k3s.service\n", config.display());
            println!("[Service]\nType=oneshot");
            println!("# Reading K3s's state (etcd snapshots, the token, agent dirs, volumes) needs root.");
            println!("User=root\nEnvironment=HOME=/root");
            println!("# S3 credentials (AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=...), if any; mode 0600.");
            println!("EnvironmentFile=-/etc/cairn/cairn.env");
            println!(
                "ExecStart={} run --config {} --quiet",
                exe.display(),
                config.display()
            );
            println!(
                "# A run that hangs is stopped (and reported as failed) after this long. The timer"
            );
            println!(
                "# never starts a second run while one is active; runs from other nodes wait for"
            );
            println!("# the repository's lock (retry-lock in the job file).");
            println!("TimeoutStartSec=6h\nNice=10\nIOSchedulingClass=best-effort\nIOSchedulingPriority=7\n");
            println!("# /etc/systemd/system/cairn-backup.timer");
            println!("[Unit]\nDescription=Run cairn nightly backup at {h:02}:{m:02}\n");
            println!("[Timer]\nOnCalendar=*-*-* {h:02}:{m:02}:00\nPersistent=true");
            if delay > 0 {
                println!("RandomizedDelaySec={delay}m");
            }
            println!("\n[Install]\nWantedBy=timers.target");
            println!("\n# Enable with: systemctl daemon-reload && systemctl enable --now cairn-backup.timer");
        }
        "cron" => {
            println!("# /etc/cron.d/cairn-backup");
            println!(
                "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            );
            println!("# cron mails what a job prints: only a failed run prints anything.");
            println!("MAILTO=root");
            // flock: a run still going when the next one is due makes the new one exit at
            // once instead of piling up; the sleep spreads nodes started by the same crontab.
            let sleep = if delay > 0 {
                // `%` ends a cron command line unless escaped.
                format!(
                    "sleep $(( $(od -An -N2 -tu2 /dev/urandom) \\% {} )); ",
                    u64::from(delay) * 60
                )
            } else {
                String::new()
            };
            println!(
                "{m} {h} * * * root {sleep}flock -n /run/lock/cairn-backup.lock timeout 6h {} run --config {} --quiet >> /var/log/cairn-backup.log 2>&1 || echo \"cairn backup failed (exit $?); see /var/log/cairn-backup.log\"",
                exe.display(),
                config.display()
            );
        }
        other => bail!("unknown --print {other:?}: use systemd or cron"),
    }
    Ok(0)
}

/// How long commands driven by a job file wait for a lock: its `retry-lock` (1 h by
/// default: other runs and nodes are expected), unless `--retry-lock` says otherwise.
fn job_wait(cli: &Cli, cfg: &JobConfig) -> Result<std::time::Duration> {
    match cli.retry_lock {
        Some(w) => Ok(w),
        None => Ok(cfg.repository.retry_lock()?),
    }
}

/// Open the repository a `k3s` subcommand names, and lock it shared, waiting as the job
/// file's `retry-lock` says (the command line's `--retry-lock` wins).
fn open_for_k3s(cli: &Cli, config: Option<&Path>) -> Result<(Repository, std::time::Duration)> {
    match config {
        Some(c) => {
            let cfg = load_config(c)?;
            Ok((open_job_repo(cli, &cfg)?, job_wait(cli, &cfg)?))
        }
        None => Ok((
            crate::hiargs::open(cli)?,
            cli.retry_lock.unwrap_or_default(),
        )),
    }
}

/// The cluster-state snapshot a `k3s` subcommand means: `spec` (an id or `latest`), or the
/// newest one, of `source` if given.
fn pick_cluster_state(
    snaps: &[(cairn_format::Id, cairn_format::Snapshot)],
    spec: Option<&str>,
    source: Option<&str>,
) -> Result<(cairn_format::Id, cairn_format::Snapshot)> {
    let of_source = |s: &cairn_format::Snapshot| match source {
        Some(name) => s.tags.contains(&source_tag(name)),
        None => is_cluster_state(s),
    };
    let (id, snap) = match spec {
        Some(spec) if spec != "latest" => {
            cairn_engine::snapshots::resolve(snaps, spec, &cairn_engine::SnapshotFilter::default())?
        }
        _ => cairn_engine::snapshots::latest(snaps, of_source).ok_or_else(|| match source {
            Some(name) => anyhow!("no snapshot of source {name:?} (tag {})", source_tag(name)),
            None => anyhow!(
                "no cluster-state snapshot (of a k3s-etcd or k3s-sqlite source) in the repository"
            ),
        })?,
    };
    Ok((*id, snap.clone()))
}

fn print_verified(cli: &Cli, file: &Path, r: Result<Verified>) -> bool {
    match r {
        Ok(v) => {
            if cli.json {
                println!("{}", json!({"file": file, "ok": true, "info": v}));
            } else {
                match v {
                    Verified::Etcd(info) => println!(
                        "ok   {} (etcd snapshot{}: {} pages of {} bytes, txid {})",
                        file.display(),
                        if info.compressed { ", zip" } else { "" },
                        info.pages,
                        info.page_size,
                        info.txid
                    ),
                    Verified::Sqlite(info) => println!(
                        "ok   {} (SQLite datastore: {} pages of {} bytes, {} kine rows, revision {})",
                        file.display(),
                        info.pages,
                        info.page_size,
                        info.rows,
                        info.revision
                    ),
                }
            }
            true
        }
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    json!({"file": file, "ok": false, "error": format!("{e:#}")})
                );
            } else {
                // The whole chain: "reading F: No such file or directory", not "reading F".
                println!("FAIL {e:#}");
            }
            false
        }
    }
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Verified {
    Etcd(cairn_engine::k3s::EtcdSnapshotInfo),
    Sqlite(cairn_engine::k3s::SqliteInfo),
}

/// An SQLite file is checked as a datastore, anything else as an etcd snapshot.
fn verify_file(f: &Path) -> Result<Verified> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(f)
        .and_then(|mut h| std::io::Read::read(&mut h, &mut head))
        .with_context(|| format!("reading {}", f.display()))?;
    if n == 16 && &head == b"SQLite format 3\0" {
        Ok(Verified::Sqlite(cairn_engine::k3s::check_sqlite(f)?))
    } else {
        Ok(Verified::Etcd(cairn_engine::k3s::verify_etcd_snapshot(f)?))
    }
}

/// `p` as one shell word for the commands printed to copy and paste: plain when it is
/// safe, else single-quoted. A path with a control character (a newline could end the
/// command and start another) is refused.
fn sh(p: &Path) -> Result<String> {
    let s = p.to_string_lossy();
    if s.chars().any(char::is_control) {
        bail!(
            "{:?} contains a control character: refusing to print it into a shell command",
            s
        );
    }
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c))
    {
        return Ok(s.into_owned());
    }
    Ok(format!("'{}'", s.replace('\'', "'\\''")))
}

pub fn k3s(cli: &Cli, k: &K3sCommand) -> Result<u8> {
    match k {
        K3sCommand::Verify {
            files,
            snapshot,
            config,
        } => {
            if let Some(spec) = snapshot {
                let (repo, wait) = open_for_k3s(cli, config.as_deref())?;
                let lock = crate::hiargs::lock_shared_waiting(cli, &repo, wait)?;
                let ix = repo.indexed_for_reading()?;
                let snaps = repo.load_snapshots_choosing(spec == "latest")?;
                let (id, snap) = pick_cluster_state(&snaps, Some(spec), None)?;
                let tmp = tempfile::Builder::new()
                    .prefix("cairn-k3s-verify-")
                    .tempdir_in(
                        cairn_engine::cache::default_cache_dir()
                            .filter(|d| std::fs::create_dir_all(d).is_ok())
                            .unwrap_or_else(std::env::temp_dir),
                    )?;
                let r = restore_cluster_state(&lock, &ix, &id, &snap, tmp.path())?;
                let (file, v) = match r.datastore {
                    Datastore::Etcd { path, info } => (path, Verified::Etcd(info)),
                    Datastore::Sqlite { path, info } => (path, Verified::Sqlite(info)),
                };
                let shown = PathBuf::from(format!(
                    "snapshot {}: {}",
                    id.short(),
                    file.strip_prefix(tmp.path()).unwrap_or(&file).display()
                ));
                print_verified(cli, &shown, Ok(v));
                return Ok(0);
            }
            let failed = files
                .iter()
                .filter(|f| !print_verified(cli, f, verify_file(f)))
                .count();
            if failed > 0 {
                bail!("{failed} of {} file(s) failed verification", files.len());
            }
            Ok(0)
        }
        K3sCommand::Restore {
            config,
            source,
            target,
            snapshot,
        } => {
            let (repo, wait) = open_for_k3s(cli, config.as_deref())?;
            let lock = crate::hiargs::lock_shared_waiting(cli, &repo, wait)?;
            let ix = repo.indexed_for_reading()?;
            // No snapshot named: the source's newest, which a damaged file may hide.
            let newest = snapshot.as_deref().is_none_or(|s| s == "latest");
            let (id, snap) = pick_cluster_state(
                &repo.load_snapshots_choosing(newest)?,
                snapshot.as_deref(),
                source.as_deref(),
            )?;
            let r = restore_cluster_state(&lock, &ix, &id, &snap, target)?;
            if cli.json {
                println!("{}", json!({"message_type": "k3s_restore", "report": r}));
                return Ok(0);
            }
            println!(
                "restored snapshot {} ({}) into {}",
                id.short(),
                cairn_engine::util::format_timestamp(&snap.time),
                target.display()
            );
            // Quoted once, for every command printed below.
            let token = r.token.as_deref().map(sh).transpose()?;
            match &r.datastore {
                Datastore::Etcd { path, info } => {
                    let p = sh(path)?;
                    println!(
                        "  etcd snapshot: {p} (verified: SHA-256 trailer, bbolt meta pages; txid {})",
                        info.txid
                    );
                    if let Some(t) = &token {
                        println!("  server token:  {t}");
                    }
                    println!("\nStop K3s on every server, then on the server to restore:\n");
                    println!("  systemctl stop k3s");
                    match &token {
                        Some(t) => println!(
                            "  k3s server --cluster-reset --cluster-reset-restore-path={p} --token-file={t}"
                        ),
                        None => {
                            println!("  k3s server --cluster-reset --cluster-reset-restore-path={p}")
                        }
                    }
                    println!("  systemctl start k3s");
                    println!("\nOn every other server (HA): before it rejoins, remove its old datastore:\n");
                    println!("  systemctl stop k3s");
                    println!("  rm -rf /var/lib/rancher/k3s/server/db/");
                    println!("  systemctl start k3s");
                }
                Datastore::Sqlite { path, info } => {
                    let p = sh(path)?;
                    println!(
                        "  SQLite datastore: {p} (verified: integrity_check ok, {} kine rows, revision {})",
                        info.rows,
                        info.revision
                    );
                    if let Some(t) = &token {
                        println!("  server token:     {t}");
                    }
                    println!("\nOn the server (K3s with SQLite has one):\n");
                    println!("  systemctl stop k3s");
                    println!("  mkdir -p /var/lib/rancher/k3s/server/db/before-restore");
                    println!("  mv /var/lib/rancher/k3s/server/db/state.db* /var/lib/rancher/k3s/server/db/before-restore/");
                    println!("  install -m 0600 {p} /var/lib/rancher/k3s/server/db/state.db");
                    if let Some(t) = &token {
                        println!("  install -m 0600 {t} /var/lib/rancher/k3s/server/token");
                    }
                    println!("  systemctl start k3s");
                }
            }
            Ok(0)
        }
        K3sCommand::Export {
            dir,
            kubeconfig,
            exclude,
            include,
            raw,
            page_size,
        } => {
            use cairn_engine::k3s::kube;
            match std::fs::read_dir(dir) {
                Ok(mut d) => {
                    if d.next().is_some() {
                        bail!("{} is not empty", dir.display());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            }
            let access = kube::KubeAccess::discover(kubeconfig.as_deref())?;
            // Objects count as files, their YAML as bytes.
            let progress = std::sync::Arc::new(cairn_engine::Progress::default());
            let report = {
                let _r =
                    crate::ui::Reporter::start("export", progress.clone(), cli.json, cli.quiet);
                kube::export(
                    &access,
                    dir,
                    &kube::ExportOptions {
                        exclude: exclude.clone(),
                        include: include.clone(),
                        raw: *raw,
                        page_size: *page_size,
                        progress: Some(progress.clone()),
                        ..Default::default()
                    },
                )?
            };
            if cli.json {
                println!(
                    "{}",
                    json!({"message_type": "k3s_export", "report": report})
                );
            } else {
                println!(
                    "exported {} objects of {} kinds into {} files under {}",
                    report.objects,
                    report.kinds,
                    report.files,
                    dir.display()
                );
                if !report.excluded.is_empty() {
                    println!("  left out: {}", report.excluded.join(", "));
                }
                for e in &report.errors {
                    eprintln!("warning: {e}");
                }
            }
            if report.errors.is_empty() {
                return Ok(0);
            }
            if !cli.json {
                eprintln!(
                    "error: {} kind(s) or group(s) could not be listed; the rest were exported",
                    report.errors.len()
                );
            }
            // As a backup with unreadable files: finished, incomplete.
            Ok(3)
        }
    }
}
