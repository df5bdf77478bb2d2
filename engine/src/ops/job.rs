//! `cairn run`: the nightly job described by one TOML file — named sources, each backed up
//! as its own snapshot with its own tags and retention, then one prune.
//!
//! ```toml
//! [repository]
//! path = "/srv/backup/repo"
//! password-file = "/etc/cairn/password"
//!
//! [defaults]                       # retention for sources that set none
//! keep-daily = 7
//! keep-weekly = 4
//! keep-monthly = 12
//!
//! [[source]]
//! name = "etcd"
//! kind = "k3s-etcd"                # newest etcd snapshot + the server token
//!
//! [[source]]
//! name = "manifests"
//! kind = "command"
//! command = "kubectl get all -A -o yaml"
//! filename = "manifests.yaml"
//!
//! [[source]]
//! name = "agent"
//! kind = "path"
//! paths = ["/var/lib/rancher/k3s/agent"]
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ops::backup::{backup, BackupOptions, BackupResult, WarnFn};
use crate::ops::forget::{self as forget_op, ForgetOptions};
use crate::ops::prune::{prune, PruneOptions, PruneReport};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::retention::{Duration, GroupBy, Policy};
use crate::snapshots::SnapshotFilter;
use crate::util::{hostname, now_timestamp};
use crate::{Error, Result};

/// The tag of a snapshot its source stored although it is incomplete (an API export with
/// kinds it could not list).
pub const PARTIAL_TAG: &str = "cairn-partial";

/// The tag that marks which source a snapshot came from.
pub fn source_tag(name: &str) -> String {
    format!("cairn-source={name}")
}

/// The whole job file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JobConfig {
    /// Where to store.
    pub repository: RepoConfig,
    /// Retention for sources without their own.
    #[serde(default)]
    pub defaults: Retention,
    /// Sources, backed up in order.
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
    /// Prune settings.
    #[serde(default)]
    pub prune: PruneConfig,
    /// Monitoring output.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// When the job runs (for `cairn schedule`).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// The run as a whole: its time limit, what to do when it fails.
    #[serde(default)]
    pub run: RunConfig,
}

/// `[run]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunConfig {
    /// How long the whole run may take (`4h`); past it the run stops where it is (the
    /// repository stays consistent, as after Ctrl-C) and fails. Default: no limit beyond
    /// each source's `timeout`.
    pub timeout: Option<String>,
    /// A shell command run when the run fails (a source, retention, prune, or the run
    /// itself): `CAIRN_RUN_STATUS` holds the exit code, `CAIRN_FAILED_SOURCES` the failed
    /// sources' names, `CAIRN_RUN_SUMMARY` one line per failure, and its standard input the
    /// `--json` report (empty when the run stopped before its sources ran).
    pub on_failure: Option<String>,
    /// Where sources that prepare what they store (the SQLite copy, the API export) do so,
    /// in a private `cairn-staging-UID` directory inside it (default: the cache directory).
    /// Needs room for one copy of state.db.
    pub staging_dir: Option<PathBuf>,
}

impl RunConfig {
    /// `timeout`, parsed.
    pub fn timeout(&self) -> Result<Option<std::time::Duration>> {
        self.timeout
            .as_deref()
            .map(crate::util::parse_wait)
            .transpose()
    }
}

/// `[repository]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RepoConfig {
    /// Path or URL.
    pub path: String,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Command printing the password.
    pub password_command: Option<String>,
    /// Host name to record (default: this host).
    pub host: Option<String>,
    /// Backend options, as `-o key=value` on the command line (`s3.region = "garage"`).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// How long to wait for another run's (or another node's) lock before giving up:
    /// `0`, `30m`, `2h` (default `1h`; `--retry-lock` on the command line wins).
    pub retry_lock: Option<String>,
}

/// How long the job waits for a lock unless the job file or the command line says.
pub const DEFAULT_JOB_RETRY_LOCK: std::time::Duration = std::time::Duration::from_secs(3600);

impl RepoConfig {
    /// `retry-lock`, parsed.
    pub fn retry_lock(&self) -> Result<std::time::Duration> {
        self.retry_lock
            .as_deref()
            .map_or(Ok(DEFAULT_JOB_RETRY_LOCK), crate::util::parse_wait)
    }
}

/// Retention rules (all optional; counts accept a number or "unlimited").
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Retention {
    /// keep-last.
    pub keep_last: Option<Count>,
    /// keep-hourly.
    pub keep_hourly: Option<Count>,
    /// keep-daily.
    pub keep_daily: Option<Count>,
    /// keep-weekly.
    pub keep_weekly: Option<Count>,
    /// keep-monthly.
    pub keep_monthly: Option<Count>,
    /// keep-yearly.
    pub keep_yearly: Option<Count>,
    /// keep-within.
    pub keep_within: Option<String>,
    /// keep-within-hourly.
    pub keep_within_hourly: Option<String>,
    /// keep-within-daily.
    pub keep_within_daily: Option<String>,
    /// keep-within-weekly.
    pub keep_within_weekly: Option<String>,
    /// keep-within-monthly.
    pub keep_within_monthly: Option<String>,
    /// keep-within-yearly.
    pub keep_within_yearly: Option<String>,
    /// keep-tag (each entry `a,b`).
    #[serde(default)]
    pub keep_tag: Vec<String>,
}

/// A count: number or "unlimited".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Count {
    /// N.
    N(i64),
    /// "unlimited".
    Word(String),
}

impl Count {
    fn value(&self) -> Result<i64> {
        match self {
            Count::N(n) if *n >= -1 => Ok(*n),
            Count::N(n) => Err(Error::Invalid(format!("invalid count {n}"))),
            Count::Word(w) => crate::retention::parse_count(w),
        }
    }
}

impl Retention {
    fn is_set(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_hourly.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.keep_yearly.is_some()
            || self.keep_within.is_some()
            || self.keep_within_hourly.is_some()
            || self.keep_within_daily.is_some()
            || self.keep_within_weekly.is_some()
            || self.keep_within_monthly.is_some()
            || self.keep_within_yearly.is_some()
            || !self.keep_tag.is_empty()
    }

    /// As a policy: the same rules as `cairn forget --keep-*`.
    pub fn policy(&self) -> Result<Policy> {
        let c = |o: &Option<Count>| o.as_ref().map_or(Ok(0), Count::value);
        let d = |o: &Option<String>| {
            o.as_deref()
                .map_or(Ok(Duration::default()), Duration::parse)
        };
        Ok(Policy {
            last: c(&self.keep_last)?,
            hourly: c(&self.keep_hourly)?,
            daily: c(&self.keep_daily)?,
            weekly: c(&self.keep_weekly)?,
            monthly: c(&self.keep_monthly)?,
            yearly: c(&self.keep_yearly)?,
            within: d(&self.keep_within)?,
            within_hourly: d(&self.keep_within_hourly)?,
            within_daily: d(&self.keep_within_daily)?,
            within_weekly: d(&self.keep_within_weekly)?,
            within_monthly: d(&self.keep_within_monthly)?,
            within_yearly: d(&self.keep_within_yearly)?,
            tags: crate::retention::parse_keep_tags(&self.keep_tag),
        })
    }
}

/// What a source reads.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Files and directories.
    Path,
    /// A command's standard output, stored as one file.
    Command,
    /// The newest K3s etcd snapshot plus the server token.
    K3sEtcd,
    /// A consistent copy of K3s's SQLite datastore (kine `state.db`) plus the server token.
    K3sSqlite,
    /// Every listable API resource as YAML, one file per namespace and kind.
    K3sManifests,
}

/// `[[source]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name (also a tag `cairn-source=NAME`).
    pub name: String,
    /// Kind.
    pub kind: SourceKind,
    /// `path`: what to back up.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// `path`: exclude globs. A path source whose paths include a K3s agent dir excludes
    /// `agent/containerd` (image layers, re-pullable) unless `include-containerd = true`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `path`: keep the containerd image store in agent dirs.
    #[serde(default)]
    pub include_containerd: bool,
    /// `path`: stay on one file system.
    #[serde(default)]
    pub one_file_system: bool,
    /// `command`: shell command whose stdout is stored.
    pub command: Option<String>,
    /// `command`: file name for the stored output.
    pub filename: Option<String>,
    /// `k3s-etcd`: snapshot directory.
    pub snapshot_dir: Option<PathBuf>,
    /// `k3s-etcd`, `k3s-sqlite`: server token file.
    pub token_file: Option<PathBuf>,
    /// `k3s-sqlite`: the datastore (default `/var/lib/rancher/k3s/server/db/state.db`).
    pub database: Option<PathBuf>,
    /// `k3s-manifests`: kubeconfig (default: the pod's service account inside a cluster,
    /// else `/etc/rancher/k3s/k3s.yaml`).
    pub kubeconfig: Option<PathBuf>,
    /// `k3s-manifests`: resources to leave out (`secrets`, `*.cattle.io`), besides events
    /// and metrics.
    #[serde(default)]
    pub exclude_resources: Vec<String>,
    /// `k3s-manifests`: resources to keep that are excluded by default (`events`).
    #[serde(default)]
    pub include_resources: Vec<String>,
    /// `k3s-manifests`: keep the fields the server sets (status, uid, resourceVersion, …)
    /// instead of writing objects ready for `kubectl apply`.
    #[serde(default)]
    pub raw: bool,
    /// `k3s-etcd`: run this first to take a fresh snapshot (e.g.
    /// `k3s etcd-snapshot save --name cairn`); otherwise the newest existing one is used.
    pub save_command: Option<String>,
    /// How long the source may take to prepare what is stored: a `command`, a
    /// `save-command`, the SQLite copy or the API export (`30s`, `10m`, `1h`; default 1h).
    pub timeout: Option<String>,
    /// Extra tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Retention for this source (else `[defaults]`).
    #[serde(default, flatten)]
    pub retention: Retention,
}

impl SourceConfig {
    /// The source's command timeout.
    pub fn command_timeout(&self) -> Result<std::time::Duration> {
        self.timeout
            .as_deref()
            .map_or(Ok(DEFAULT_COMMAND_TIMEOUT), crate::util::parse_wait)
    }
}

/// `[prune]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PruneConfig {
    /// Run prune after retention (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Tolerated unused share in percent (default 5).
    #[serde(default = "five")]
    pub max_unused_percent: f64,
    /// How far the clocks of the nodes writing the repository may disagree (`prune
    /// --clock-skew`; default 10m).
    #[serde(default)]
    pub clock_skew: Option<String>,
}

fn yes() -> bool {
    true
}
fn five() -> f64 {
    5.0
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            enabled: true,
            max_unused_percent: 5.0,
            clock_skew: None,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MetricsConfig {
    /// node-exporter textfile collector output (`…/cairn.prom`).
    pub textfile: Option<PathBuf>,
}

/// `[schedule]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Local time of day, `HH:MM`.
    #[serde(default = "two_am")]
    pub at: String,
    /// Random delay up to this many minutes (the systemd timer, the cron line and
    /// `cairn run --daemon`).
    #[serde(default)]
    pub randomized_delay_minutes: u32,
}

fn two_am() -> String {
    "02:00".into()
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            at: two_am(),
            randomized_delay_minutes: 0,
        }
    }
}

const K3S_SNAPSHOT_DIR: &str = "/var/lib/rancher/k3s/server/db/snapshots";
const K3S_TOKEN: &str = "/var/lib/rancher/k3s/server/token";
const K3S_STATE_DB: &str = "/var/lib/rancher/k3s/server/db/state.db";

impl JobConfig {
    /// Parse and validate a job file.
    pub fn parse(text: &str) -> Result<JobConfig> {
        let cfg: JobConfig =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("job config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(Error::Invalid("job config: no [[source]]".into()));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::Invalid(format!(
                    "source name {:?}: use letters, digits, - _ .",
                    s.name
                )));
            }
            if !names.insert(&s.name) {
                return Err(Error::Invalid(format!(
                    "source {:?} is defined twice",
                    s.name
                )));
            }
            match s.kind {
                SourceKind::Path if s.paths.is_empty() => {
                    return Err(Error::Invalid(format!(
                        "source {:?}: kind = \"path\" needs paths = [...]",
                        s.name
                    )))
                }
                SourceKind::Command if s.command.is_none() || s.filename.is_none() => {
                    return Err(Error::Invalid(format!(
                        "source {:?}: kind = \"command\" needs command and filename",
                        s.name
                    )))
                }
                _ => {}
            }
            s.retention.policy()?;
            s.command_timeout()?;
        }
        self.defaults.policy()?;
        self.run.timeout()?;
        let (h, m) = self
            .schedule
            .at
            .split_once(':')
            .ok_or_else(|| Error::Invalid("schedule.at must be HH:MM".into()))?;
        match (h.parse::<u8>(), m.parse::<u8>()) {
            (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok(()),
            _ => Err(Error::Invalid("schedule.at must be HH:MM".into())),
        }
    }
}

/// The outcome of one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceResult {
    /// Source name.
    pub name: String,
    /// Succeeded?
    pub ok: bool,
    /// Error or warning text.
    pub message: Option<String>,
    /// New snapshot id.
    pub snapshot: Option<String>,
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes read or reused.
    pub bytes: u64,
    /// Bytes added to the repository (stored size).
    pub bytes_added: u64,
    /// Wall time.
    pub seconds: f64,
    /// Snapshots removed by retention.
    pub forgotten: u64,
}

/// What retention decided for one source (in a dry run: would decide).
#[derive(Debug, Clone, Serialize)]
pub struct SourceRetention {
    /// Source name.
    pub name: String,
    /// Snapshots removed.
    pub remove: Vec<String>,
    /// E.g. the policy would have emptied the source's history.
    pub warnings: Vec<String>,
}

/// The outcome of the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Per source.
    pub sources: Vec<SourceResult>,
    /// Retention per source.
    pub retention: Vec<SourceRetention>,
    /// Prune, if it ran.
    pub prune: Option<PruneReport>,
    /// Error of the retention/prune phase.
    pub maintenance_error: Option<String>,
    /// Every source succeeded and maintenance did too.
    pub ok: bool,
    /// Wall time.
    pub seconds: f64,
}

/// How long a source's command (or `save-command`) may run unless its `timeout` says.
pub const DEFAULT_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Runs `action` once `timeout` has passed, unless dropped first (which stops and joins
/// its thread at once). One mechanism for every time limit of the job: a command's (kill
/// its process group) and the whole run's (raise the interrupt flag).
struct Alarm {
    stop: Option<std::sync::mpsc::Sender<()>>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Alarm {
    fn start(
        name: &str,
        timeout: std::time::Duration,
        action: impl FnOnce() + Send + 'static,
    ) -> Alarm {
        let (stop, wake) = std::sync::mpsc::channel::<()>();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wake.recv_timeout(timeout)
                {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    action();
                }
            })
            .ok();
        Alarm {
            stop: Some(stop),
            fired,
            thread,
        }
    }

    /// Kills a command's whole process group once its time is up: a hung `kubectl` must
    /// fail its source, not hold the repository's lock (and every later night) for ever.
    fn watchdog(pid: u32, timeout: std::time::Duration) -> Alarm {
        Alarm::start("cairn-timeout", timeout, move || {
            // The command runs in its own process group (see `shell`): kill it all.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-(pid as i32)),
                nix::sys::signal::Signal::SIGKILL,
            );
        })
    }

    fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `sh -c cmd` in a process group of its own.
fn shell(cmd: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).stdin(Stdio::null()).process_group(0);
    c
}

/// A command's stdout as a reader that fails at EOF if the command failed or ran out of
/// time, so a failed `kubectl` never becomes a truncated file stored as good.
struct CommandReader {
    child: Child,
    out: std::process::ChildStdout,
    what: String,
    watchdog: Alarm,
    timeout: std::time::Duration,
}

impl Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 {
            let status = self.child.wait()?;
            if self.watchdog.fired() {
                return Err(std::io::Error::other(format!(
                    "{} did not finish within its timeout ({:?}) and was killed",
                    self.what, self.timeout
                )));
            }
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "{} exited with {status}",
                    self.what
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for CommandReader {
    fn drop(&mut self) {
        // Dropped before its end (an interrupt, a repository error): the command must not
        // outlive the run.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-(self.child.id() as i32)),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.child.wait();
        }
    }
}

fn spawn_shell(cmd: &str, timeout: std::time::Duration) -> Result<CommandReader> {
    let mut child = shell(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("command {cmd:?}"), e))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| Error::Invalid("no stdout".into()))?;
    let watchdog = Alarm::watchdog(child.id(), timeout);
    Ok(CommandReader {
        child,
        out,
        what: format!("command {cmd:?}"),
        watchdog,
        timeout,
    })
}

fn run_checked(cmd: &str, timeout: std::time::Duration) -> Result<()> {
    let mut child = shell(cmd)
        .spawn()
        .map_err(|e| Error::io(format!("command {cmd:?}"), e))?;
    let watchdog = Alarm::watchdog(child.id(), timeout);
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("command {cmd:?}"), e))?;
    if watchdog.fired() {
        return Err(Error::Invalid(format!(
            "command {cmd:?} did not finish within its timeout ({timeout:?}) and was killed"
        )));
    }
    if status.success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "command {cmd:?} exited with {status}"
        )))
    }
}

/// How long the `on-failure` command may run.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Run the job's `on-failure` command for a run that failed with exit code `status`:
/// `report` when the sources ran, `error` when the run stopped before or during them. The
/// hook's own failure is returned for the caller to print; it never changes the run's exit.
pub fn run_on_failure(
    cmd: &str,
    status: u8,
    report: Option<&RunReport>,
    error: Option<&str>,
) -> Result<()> {
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    if let Some(r) = report {
        for s in r.sources.iter().filter(|s| !s.ok) {
            failed.push(s.name.clone());
            summary.push(format!(
                "source {}: {}",
                s.name,
                s.message.as_deref().unwrap_or("failed")
            ));
        }
        if let Some(e) = &r.maintenance_error {
            summary.push(format!("retention/prune: {e}"));
        }
    }
    if let Some(e) = error {
        summary.push(e.to_owned());
    }
    let json = report
        .and_then(|r| serde_json::to_vec(r).ok())
        .unwrap_or_default();
    // An environment value cannot hold NUL (an API error body might): the alert must go out.
    let env_safe = |s: String| s.replace('\0', "\u{fffd}");
    let mut child = shell(cmd)
        .stdin(Stdio::piped())
        .env("CAIRN_RUN_STATUS", status.to_string())
        .env("CAIRN_FAILED_SOURCES", env_safe(failed.join(" ")))
        .env("CAIRN_RUN_SUMMARY", env_safe(summary.join("\n")))
        .spawn()
        .map_err(|e| Error::io(format!("on-failure command {cmd:?}"), e))?;
    let watchdog = Alarm::watchdog(child.id(), HOOK_TIMEOUT);
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input must not block the run: write from a thread
        // and ignore a closed pipe.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &json);
        });
    }
    let st = child
        .wait()
        .map_err(|e| Error::io(format!("on-failure command {cmd:?}"), e))?;
    if watchdog.fired() {
        return Err(Error::Invalid(format!(
            "on-failure command {cmd:?} did not finish within {HOOK_TIMEOUT:?} and was killed"
        )));
    }
    if !st.success() {
        return Err(Error::Invalid(format!(
            "on-failure command {cmd:?} exited with {st}"
        )));
    }
    Ok(())
}

/// The newest etcd snapshot file in `dir` (by mtime, then name); the caller verifies it.
pub fn newest_etcd_snapshot(dir: &Path) -> Result<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let meta = e.metadata().map_err(|err| Error::io(e.path(), err))?;
        if !meta.is_file()
            || name.starts_with('.')
            || name.ends_with(".tmp")
            || name.ends_with(".part")
        {
            continue;
        }
        let m = meta.modified().map_err(|err| Error::io(e.path(), err))?;
        if best
            .as_ref()
            .is_none_or(|(bm, bp)| (m, e.path()) > (*bm, bp.clone()))
        {
            best = Some((m, e.path()));
        }
    }
    let (_, path) =
        best.ok_or_else(|| Error::Invalid(format!("no etcd snapshot in {}", dir.display())))?;
    Ok(path)
}

/// The whole run's time limit: past it, the interrupt flag is raised (the run stops where
/// it is, as after Ctrl-C) and the run reports why.
struct Deadline {
    end: Option<Instant>,
    limit: Option<std::time::Duration>,
    alarm: Option<Alarm>,
}

impl Deadline {
    fn start(limit: Option<std::time::Duration>) -> Deadline {
        Deadline {
            end: limit.map(|l| Instant::now() + l),
            limit,
            alarm: limit.map(|l| {
                Alarm::start("cairn-run-timeout", l, || {
                    crate::progress::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
                })
            }),
        }
    }

    fn fired(&self) -> bool {
        self.alarm.as_ref().is_some_and(Alarm::fired)
    }

    /// Time left, if the run has a limit.
    fn remaining(&self) -> Option<std::time::Duration> {
        self.end
            .map(|e| e.saturating_duration_since(Instant::now()))
    }

    fn message(&self) -> String {
        format!(
            "the run exceeded its timeout ({}) and was stopped",
            self.limit.map(|l| format!("{l:?}")).unwrap_or_default()
        )
    }

    fn interrupted_error(&self) -> Error {
        if self.fired() {
            Error::Invalid(self.message())
        } else {
            Error::Interrupted
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // The deadline raised the process-wide interrupt flag to stop the run; the run is
        // over now, and what comes after it (metrics, the failure hook, the report) must
        // not be cut short as if Ctrl-C had been pressed. The alarm is stopped first, so it
        // cannot fire after this check.
        let fired = self.alarm.take().is_some_and(|a| {
            let f = a.fired.clone();
            drop(a);
            f.load(std::sync::atomic::Ordering::SeqCst)
        });
        if fired {
            crate::progress::INTERRUPTED.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Run the job: every source under one shared lock, then retention and prune under an
/// exclusive one. Both wait up to `wait` for other holders (another run, another node's
/// backup or prune) instead of failing.
pub fn run_job(
    repo: &Repository,
    cfg: &JobConfig,
    dry_run: bool,
    wait: std::time::Duration,
    warn: &WarnFn,
) -> Result<RunReport> {
    let started = Instant::now();
    let host = cfg.repository.host.clone().unwrap_or_else(hostname);
    let deadline = Deadline::start(cfg.run.timeout()?);
    let mut results = Vec::new();
    {
        let shared = if dry_run {
            None
        } else {
            Some(repo.lock_shared(wait)?)
        };
        for src in &cfg.sources {
            let t0 = Instant::now();
            let mut res = SourceResult {
                name: src.name.clone(),
                ok: false,
                message: None,
                snapshot: None,
                files: 0,
                bytes: 0,
                bytes_added: 0,
                seconds: 0.0,
                forgotten: 0,
            };
            let limit = match deadline.remaining() {
                Some(left) if left.is_zero() => {
                    res.message = Some(deadline.message());
                    results.push(res);
                    continue;
                }
                Some(left) => left.min(src.command_timeout()?),
                None => src.command_timeout()?,
            };
            let outcome = run_source(shared.as_ref(), repo, cfg, src, &host, limit, warn);
            res.seconds = t0.elapsed().as_secs_f64();
            match outcome {
                Ok(SourceOutcome {
                    backup: Some(r),
                    problems,
                }) => {
                    let s = r.snapshot.summary.clone().unwrap_or_default();
                    res.ok = s.errors == 0 && problems.is_empty();
                    let mut msgs = problems;
                    if s.errors > 0 {
                        msgs.push(format!("{} path(s) could not be read completely", s.errors));
                    }
                    if !msgs.is_empty() {
                        res.message = Some(msgs.join("; "));
                    }
                    res.snapshot = Some(r.id.to_hex());
                    res.files = s.total_files_processed;
                    res.bytes = s.total_bytes_processed;
                    res.bytes_added = s.data_added_packed;
                }
                Ok(SourceOutcome { backup: None, .. }) => {
                    res.ok = true;
                    res.message = Some("dry run: readable".into());
                }
                Err(e) => res.message = Some(e.to_string()),
            }
            results.push(res);
            if crate::progress::interrupted() {
                return Err(deadline.interrupted_error());
            }
        }
    }

    // Retention per source (the same plan as `cairn forget`), then one prune.
    let mut maintenance_error = None;
    let mut prune_report = None;
    let mut retention = Vec::new();
    let maint = (|| -> Result<()> {
        // Plans for every source with rules, from one snapshot list.
        let plan_all = |snaps: &[(cairn_format::Id, cairn_format::Snapshot)]| -> Result<Vec<_>> {
            let now = now_timestamp().unix_nanos;
            let mut plans = Vec::new();
            for (i, src) in cfg.sources.iter().enumerate() {
                // A source that failed tonight keeps its history untouched: retention must
                // not remove yesterday's good snapshot because tonight's was bad.
                if !results.get(i).is_some_and(|r| r.ok) {
                    continue;
                }
                let opts = source_forget_options(cfg, src, &host)?;
                if !opts.policy.is_empty() {
                    plans.push((i, forget_op::plan(snaps, &opts, now)?));
                }
            }
            Ok(plans)
        };
        // A first look without a lock decides whether the exclusive lock is needed at all;
        // the plans applied are made again under it, from the snapshots as they are then
        // (another run or node may have added or removed some meanwhile).
        let mut plans = plan_all(&repo.load_snapshots()?)?;
        if !plans.is_empty() && !repo.backend().may_delete()? {
            // A node of a `cairn serve` repository: retention is the server host's job.
            warn("retention and prune skipped: this node's credential is append-only (run forget and prune on the repository server)");
            return Ok(());
        }
        let excl = if dry_run || plans.iter().all(|(_, p)| p.remove.is_empty()) {
            None
        } else {
            let lock = repo.lock_maintenance(wait)?;
            plans = plan_all(&repo.load_snapshots()?)?;
            Some(lock)
        };
        for (i, plan) in &plans {
            let src = &cfg.sources[*i];
            for w in &plan.warnings {
                warn(&format!("source {}: {w}", src.name));
            }
            results[*i].forgotten = plan.remove.len() as u64;
            retention.push(SourceRetention {
                name: src.name.clone(),
                remove: plan.remove.iter().map(|i| i.to_hex()).collect(),
                warnings: plan.warnings.clone(),
            });
        }
        let Some(excl) = excl else {
            return Ok(());
        };
        for (_, plan) in &plans {
            forget_op::apply(excl.as_maintenance(), plan)?;
        }
        if cfg.prune.enabled {
            let opts = PruneOptions {
                max_unused: crate::ops::prune::MaxUnused::Fraction(
                    cfg.prune.max_unused_percent / 100.0,
                ),
                clock_skew: match &cfg.prune.clock_skew {
                    Some(v) => crate::util::parse_wait(v)?,
                    None => crate::ops::prune::DEFAULT_CLOCK_SKEW,
                },
                ..PruneOptions::default()
            };
            prune_report = Some(prune(excl.as_maintenance(), &opts, &Progress::default())?);
        }
        Ok(())
    })();
    if let Err(e) = maint {
        maintenance_error = Some(match e {
            Error::Interrupted => deadline.interrupted_error().to_string(),
            e => e.to_string(),
        });
    }
    let ok = results.iter().all(|r| r.ok) && maintenance_error.is_none();
    Ok(RunReport {
        sources: results,
        retention,
        prune: prune_report,
        maintenance_error,
        ok,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The `forget` options of one source's retention: its own rules (or `[defaults]`) over the
/// snapshots of this host tagged with the source, as one group. `cairn forget` with the
/// same rules, `--host HOST --tag cairn-source=NAME --group-by ''` decides the same.
pub fn source_forget_options(
    cfg: &JobConfig,
    src: &SourceConfig,
    host: &str,
) -> Result<ForgetOptions> {
    let retention = if src.retention.is_set() {
        &src.retention
    } else {
        &cfg.defaults
    };
    Ok(ForgetOptions {
        policy: retention.policy()?,
        filter: SnapshotFilter {
            hosts: vec![host.to_owned()],
            tags: vec![source_tag(&src.name)],
            paths: Vec::new(),
        },
        group_by: GroupBy::default(),
        ids: Vec::new(),
        allow_empty_group: false,
    })
}

/// What one source did besides its backup.
struct SourceOutcome {
    /// `None` in a dry run.
    backup: Option<BackupResult>,
    /// What went wrong while preparing what was stored (kinds the API export could not
    /// list): the snapshot is kept, as partial, and the source fails.
    problems: Vec<String>,
}

/// A directory of this run's own, where a source prepares what it stores; removed when
/// dropped. Left-overs of killed runs (their pid gone) are removed by the next one.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(cfg: &JobConfig, source: &str) -> Result<Staging> {
        use std::os::unix::fs::MetadataExt;
        let base = cfg.run.staging_dir.clone().unwrap_or_else(|| {
            crate::cache::default_cache_dir().unwrap_or_else(std::env::temp_dir)
        });
        std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
        // A directory of this user's own inside the base: the base may be shared (/tmp, a
        // backup volume), and nothing there but our own staging is ever touched.
        let euid = nix::unistd::geteuid().as_raw();
        let root = base.join(format!("cairn-staging-{euid}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&root, e)),
        }
        let m = std::fs::symlink_metadata(&root).map_err(|e| Error::io(&root, e))?;
        if !m.is_dir() || m.uid() != euid || m.mode() & 0o077 != 0 {
            return Err(Error::Invalid(format!(
                "{} is not a private directory of this user (mode 0700, owner uid {euid}); refusing to stage cluster state there",
                root.display()
            )));
        }
        // Left-overs of killed runs: `<source>.<pid>` whose process is gone.
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let name = e.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.rsplit_once('.'))
                    .and_then(|(_, p)| p.parse::<i32>().ok());
                let gone = pid.is_some_and(|p| {
                    p != std::process::id() as i32
                        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                            == Err(nix::errno::Errno::ESRCH)
                });
                if gone {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!("{source}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Back up one source under `lock`; without a lock (a dry run), only check that it can be
/// read. `limit` is the time the source may take to prepare what it stores.
fn run_source(
    lock: Option<&crate::lock::SharedLock<'_>>,
    repo: &Repository,
    cfg: &JobConfig,
    src: &SourceConfig,
    host: &str,
    limit: std::time::Duration,
    warn: &WarnFn,
) -> Result<SourceOutcome> {
    let dry_run = lock.is_none();
    let mut tags = vec![source_tag(&src.name)];
    tags.extend(src.tags.iter().cloned());
    let mut opts = BackupOptions {
        paths: Vec::new(),
        stdin: None,
        staged: None,
        tags,
        host: Some(host.to_owned()),
        time: None,
        parent: None,
        force: false,
        excludes: src.exclude.clone(),
        one_file_system: src.one_file_system,
    };
    let mut problems = Vec::new();
    let mut _staging = None;
    let token_path = || {
        src.token_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(K3S_TOKEN))
    };
    let dry = |problems| {
        Ok(SourceOutcome {
            backup: None,
            problems,
        })
    };
    match src.kind {
        SourceKind::Path => {
            opts.paths = src.paths.clone();
            if !src.include_containerd {
                for p in &src.paths {
                    if p.file_name().is_some_and(|n| n == "agent")
                        || p.join("containerd").is_dir() && p.join("etc").is_dir()
                    {
                        opts.excludes.push(format!(
                            "{}/containerd",
                            crate::ops::backup::normalize_path(p)?.display()
                        ));
                    }
                }
            }
            if dry_run {
                for p in &opts.paths {
                    std::fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
                }
                return dry(problems);
            }
        }
        SourceKind::Command => {
            let cmd = src.command.as_deref().unwrap_or_default();
            if dry_run {
                return dry(problems);
            }
            opts.stdin = Some((
                src.filename.clone().unwrap_or_default(),
                Box::new(spawn_shell(cmd, limit)?),
            ));
        }
        SourceKind::K3sEtcd => {
            if let Some(cmd) = &src.save_command {
                if !dry_run {
                    run_checked(cmd, limit)?;
                }
            }
            let dir = src
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(K3S_SNAPSHOT_DIR));
            let token = token_path();
            let snap = newest_etcd_snapshot(&dir)?;
            // Never store a snapshot etcd could not restore as if it were good: a failed
            // verification fails the source (and spares its retention, see `run_job`).
            crate::k3s::verify_etcd_snapshot(&snap)?;
            std::fs::metadata(&token).map_err(|e| Error::io(&token, e))?;
            if dry_run {
                return dry(problems);
            }
            // Which file is which goes into the snapshot: restore never guesses by name.
            let snap = crate::ops::backup::normalize_path(&snap)?;
            let token = crate::ops::backup::normalize_path(&token)?;
            opts.tags
                .extend(crate::k3s::role_tag(crate::k3s::Role::EtcdSnapshot, &snap));
            opts.tags
                .extend(crate::k3s::role_tag(crate::k3s::Role::Token, &token));
            opts.paths = vec![snap, token];
        }
        SourceKind::K3sSqlite => {
            let db = src
                .database
                .clone()
                .unwrap_or_else(|| PathBuf::from(K3S_STATE_DB));
            let token = token_path();
            std::fs::metadata(&db).map_err(|e| Error::io(&db, e))?;
            std::fs::metadata(&token).map_err(|e| Error::io(&token, e))?;
            if dry_run {
                return dry(problems);
            }
            let stage = Staging::new(cfg, &src.name)?;
            // A consistent copy through SQLite's backup API, checked before it is stored.
            crate::k3s::backup_sqlite(&db, &stage.dir.join("state.db"), limit)?;
            let to = stage.dir.join("token");
            std::fs::copy(&token, &to).map_err(|e| Error::io(&token, e))?;
            opts.tags.extend(crate::k3s::role_tag(
                crate::k3s::Role::Sqlite,
                Path::new("/state.db"),
            ));
            opts.tags.extend(crate::k3s::role_tag(
                crate::k3s::Role::Token,
                Path::new("/token"),
            ));
            opts.staged = Some(stage.dir.clone());
            _staging = Some(stage);
        }
        SourceKind::K3sManifests => {
            let access = crate::k3s::kube::KubeAccess::discover(src.kubeconfig.as_deref())?;
            if dry_run {
                crate::k3s::kube::probe(&access)?;
                return dry(problems);
            }
            let stage = Staging::new(cfg, &src.name)?;
            let export = crate::k3s::kube::export(
                &access,
                &stage.dir,
                &crate::k3s::kube::ExportOptions {
                    exclude: src.exclude_resources.clone(),
                    include: src.include_resources.clone(),
                    raw: src.raw,
                    timeout: limit.min(std::time::Duration::from_secs(300)),
                    ..Default::default()
                },
            )?;
            if export.objects == 0 {
                return Err(Error::Invalid(format!(
                    "the API server at {} listed no objects{}",
                    access.server,
                    export
                        .errors
                        .iter()
                        .map(|e| format!("; {e}"))
                        .collect::<String>()
                )));
            }
            for e in &export.errors {
                warn(&format!("source {}: {e}", src.name));
            }
            if !export.errors.is_empty() {
                // Marked in the snapshot itself: a partial export never counts as the
                // source's last success (metrics), whatever its file counts say.
                opts.tags.push(PARTIAL_TAG.to_owned());
            }
            problems = export.errors;
            opts.staged = Some(stage.dir.clone());
            _staging = Some(stage);
        }
    }
    // Find the parent among this source's snapshots (paths of a k3s-etcd source change daily).
    let snaps = repo.load_snapshots()?;
    let tag = source_tag(&src.name);
    opts.parent = crate::snapshots::latest(&snaps, |s| s.hostname == host && s.tags.contains(&tag))
        .map(|(id, _)| *id);
    let Some(lock) = lock else {
        return dry(problems);
    };
    let progress = Progress::default();
    let backup = backup(lock, opts, &progress, warn)?;
    Ok(SourceOutcome {
        backup: Some(backup),
        problems,
    })
}

/// The `cairn_run_last_success_timestamp_seconds` value in an earlier metrics text, so that
/// a failed run keeps reporting when the last fully successful one was.
pub fn previous_last_success(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("cairn_run_last_success_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

/// Prometheus node-exporter textfile content. `report` is `None` for a run that stopped
/// before its sources ran (no repository, wrong password, interrupted, …): every source
/// then reports 0. `last_success` maps each source to the time (unix seconds) of its newest
/// snapshot that read every file; `last_full_success` is when a whole run last succeeded.
pub fn prometheus_text(
    cfg: &JobConfig,
    report: Option<&RunReport>,
    last_success: &BTreeMap<String, f64>,
    last_full_success: Option<f64>,
) -> String {
    let mut s = String::new();
    let gauge = |s: &mut String, name: &str, help: &str| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
    };
    let find = |name: &str| report.and_then(|r| r.sources.iter().find(|x| x.name == name));
    gauge(
        &mut s,
        "cairn_source_success",
        "Whether the last run of the source succeeded.",
    );
    for src in &cfg.sources {
        let ok = find(&src.name).is_some_and(|r| r.ok);
        s.push_str(&format!(
            "cairn_source_success{{source=\"{}\"}} {}\n",
            src.name,
            u8::from(ok)
        ));
    }
    gauge(
        &mut s,
        "cairn_source_last_success_timestamp_seconds",
        "Time of the newest snapshot of the source that read every file.",
    );
    for src in &cfg.sources {
        if let Some(t) = last_success.get(&src.name) {
            s.push_str(&format!(
                "cairn_source_last_success_timestamp_seconds{{source=\"{}\"}} {t:.0}\n",
                src.name
            ));
        }
    }
    gauge(
        &mut s,
        "cairn_source_bytes_added",
        "Bytes the last run added to the repository.",
    );
    for src in &cfg.sources {
        let b = find(&src.name).map_or(0, |r| r.bytes_added);
        s.push_str(&format!(
            "cairn_source_bytes_added{{source=\"{}\"}} {b}\n",
            src.name
        ));
    }
    gauge(
        &mut s,
        "cairn_source_duration_seconds",
        "Wall time of the last run of the source.",
    );
    for src in &cfg.sources {
        let t = find(&src.name).map_or(0.0, |r| r.seconds);
        s.push_str(&format!(
            "cairn_source_duration_seconds{{source=\"{}\"}} {t:.3}\n",
            src.name
        ));
    }
    gauge(
        &mut s,
        "cairn_run_success",
        "Whether the whole last run succeeded.",
    );
    s.push_str(&format!(
        "cairn_run_success {}\n",
        u8::from(report.is_some_and(|r| r.ok))
    ));
    gauge(
        &mut s,
        "cairn_run_timestamp_seconds",
        "When the last run ended.",
    );
    s.push_str(&format!(
        "cairn_run_timestamp_seconds {}\n",
        now_timestamp().unix_nanos / 1_000_000_000
    ));
    if let Some(t) = last_full_success {
        gauge(
            &mut s,
            "cairn_run_last_success_timestamp_seconds",
            "When a whole run last succeeded.",
        );
        s.push_str(&format!(
            "cairn_run_last_success_timestamp_seconds {t:.0}\n"
        ));
    }
    // What the run's prune did, and what waits: condemned packs that operations running on
    // other nodes hold back (a long-running one shows as a number that does not go down).
    if let Some(p) = report.and_then(|r| r.prune.as_ref()) {
        for (name, help, v) in [
            ("cairn_prune_bytes_freed", "Bytes the last prune freed.", p.bytes_freed),
            (
                "cairn_prune_packs_waiting",
                "Condemned packs the last prune left for a later one (held back by running operations).",
                p.packs_waiting,
            ),
            (
                "cairn_prune_bytes_waiting",
                "Bytes of those packs.",
                p.bytes_waiting,
            ),
        ] {
            gauge(&mut s, name, help);
            s.push_str(&format!("{name} {v}\n"));
        }
    }
    s
}
