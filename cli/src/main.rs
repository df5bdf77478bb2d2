//! `cairn`: the command-line interface. Parses arguments, asks for passwords, renders
//! progress and output; all repository work is in `cairn-engine`.

mod commands;
mod explore;
mod hiargs;
mod maint;
mod mount;
mod password;
mod run;
mod serve;
mod ui;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::password::PasswordArgs;

/// Deduplicating, encrypted backups for K3s clusters and everything else.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, max_term_width = 100)]
pub struct Cli {
    /// Repository location: a directory, s3:http[s]://host[:port]/bucket[/prefix],
    /// sftp:user@host:/path or rest:https://[user:password@]host:port/path.
    #[arg(
        short = 'r',
        long = "repo",
        global = true,
        help_heading = "Global options",
        env = "CAIRN_REPOSITORY",
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// Backend option `key=value`, repeatable: s3.region, s3.bucket-lookup=path|dns,
    /// s3.ca-file, s3.profile, s3.connections, s3.retries, s3.ec2-metadata; sftp.command,
    /// sftp.connections; rest.ca-file, rest.username, rest.password-file, rest.connections,
    /// rest.retries.
    #[arg(short = 'o', long = "option", global = true, help_heading = "Global options", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// Local cache of index, snapshot and tree data for remote repositories
    /// (default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CAIRN_CACHE_DIR",
        value_name = "DIR"
    )]
    pub cache_dir: Option<PathBuf>,
    /// Do not use the local cache.
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_cache: bool,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// No progress output.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Wait up to this long for a conflicting lock to go away (`0`, `30s`, `10m`, `1h30m`)
    /// instead of failing at once. `cairn run` waits by default (its job file's
    /// `retry-lock`, 1h unless set).
    #[arg(long, global = true, help_heading = "Global options", value_name = "DURATION", value_parser = parse_wait)]
    pub retry_lock: Option<std::time::Duration>,
    /// Read the repository without taking a lock (restore, check, k3s restore/verify, mount):
    /// for read-only storage or a full disk. A prune running meanwhile may delete what is
    /// being read; commands that write refuse it.
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_lock: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up paths (or standard input) into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the files of a snapshot: `ls latest:/some/dir`.
    Ls(LsArgs),
    /// Restore a snapshot, or a path in it, into a directory.
    Restore(RestoreArgs),
    /// Print a decoded repository object as JSON (for debugging).
    Cat(CatArgs),
    /// Manage passwords (key files).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove stale locks (or all with --remove-all).
    Unlock(UnlockArgs),
    /// Remove snapshots by a retention policy (restic's semantics), optionally prune.
    Forget(Box<ForgetArgs>),
    /// Delete data no snapshot references, repacking partly used packs.
    Prune(PruneArgs),
    /// Verify the repository's structure (and with --read-data its contents).
    Check(CheckArgs),
    /// Repair repository metadata.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Upgrade the repository to the newest format version (FORMAT.md §16). Upgrade cairn
    /// on every node that uses the repository first: older builds cannot read it afterwards.
    Migrate,
    /// Run the nightly job described by a TOML file (sources, retention, prune, metrics).
    Run(RunArgs),
    /// Print a systemd timer/service pair or a cron line for a job file.
    Schedule(ScheduleArgs),
    /// Serve the repositories under a directory over HTTP(S) to `rest:` clients, with
    /// per-client credentials and append-only access for nodes.
    Serve(serve::ServeArgs),
    /// Print a `cairn serve` credentials-file line (the password hashed with Argon2id).
    ServeCredential(serve::ServeCredentialArgs),
    /// K3s helpers.
    #[command(subcommand)]
    K3s(K3sCommand),
    /// Repository statistics: snapshots, packs, blobs, sizes, index memory.
    Stats,
    /// Show what changed between two snapshots: `diff A B`, or `diff A:/dir B:/dir`.
    Diff(DiffArgs),
    /// Find files by name (`*.db`) or path (`/var/lib/**/token`) across snapshots.
    Find(FindArgs),
    /// Write a file of a snapshot to standard output, or a directory as a tar stream.
    Dump(DumpArgs),
    /// Add, remove or set the tags of snapshots.
    Tag(TagArgs),
    /// Copy snapshots from another repository (--from-repo) into this one.
    Copy(CopyArgs),
    /// Remove paths from existing snapshots (new snapshots; originals kept unless --forget).
    Rewrite(RewriteArgs),
    /// Mount the repository read-only (FUSE): snapshots/, hosts/, tags/, ids/, with `latest`.
    Mount {
        /// An empty directory to mount on.
        dir: PathBuf,
        /// Let other users (e.g. a backup-reading service account) see the mount; needs
        /// `user_allow_other` in /etc/fuse.conf unless root.
        #[arg(long)]
        allow_other: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List objects by id: snapshots, index, packs, keys, locks, or blobs (type, id, pack).
    List {
        /// snapshots | index | packs | keys | locks | blobs
        kind: String,
    },
    /// Print the version.
    Version,
    /// Print a shell completion script: `cairn completion bash > /etc/bash_completion.d/cairn`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (cairn.1, cairn-backup.1, …) into a directory.
    Man {
        /// Where to write them, e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
}

/// `snapshots` options.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    /// Only the newest N snapshots of each host and set of paths.
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `diff` options.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older side: `SNAPSHOT[:PATH]`.
    pub first: OsString,
    /// The newer side: `SNAPSHOT[:PATH]`.
    pub second: OsString,
    /// Also list paths whose metadata alone changed (mode, owner, mtime, xattrs).
    #[arg(long)]
    pub metadata: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `find` options.
#[derive(Debug, clap::Args)]
pub struct FindArgs {
    /// Name globs (`*.db`) or, with a `/`, path patterns (`/var/lib/**/token`).
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Only in this snapshot (repeatable; default: every snapshot the filters allow).
    #[arg(short = 's', long = "snapshot", value_name = "ID")]
    pub snapshots: Vec<String>,
    /// Ignore case in name globs.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Only entries modified at or after this time (`2024-05-07`, `2024-05-07 02:00:00`).
    #[arg(short = 'O', long, value_name = "TIME")]
    pub oldest: Option<String>,
    /// Only entries modified at or before this time.
    #[arg(short = 'N', long, value_name = "TIME")]
    pub newest: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `dump` options.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// Snapshot id or `latest`.
    pub snapshot: String,
    /// Path in the snapshot (`/` for all of it).
    pub path: OsString,
    /// Archive format for a directory (or, given, for a file too): `tar` (everything GNU
    /// tar can hold: owners, hardlinks, devices, xattrs) or `zip` (contents, modes, mtimes,
    /// symlinks).
    #[arg(short, long, value_name = "FORMAT")]
    pub archive: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `rewrite` options.
#[derive(Debug, clap::Args)]
pub struct RewriteArgs {
    /// Snapshots to rewrite (default: every snapshot the filters allow).
    pub ids: Vec<String>,
    /// Paths to remove (repeatable; the include/exclude pattern language).
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN", required = true)]
    pub excludes: Vec<String>,
    /// Remove the original snapshots (their data goes at the next prune).
    #[arg(long)]
    pub forget: bool,
    /// Show what would be removed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `tag` options.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Snapshots to change (default: every snapshot the filters allow).
    pub ids: Vec<String>,
    /// Add these tags (`a,b` or repeated).
    #[arg(long, value_name = "TAGS")]
    pub add: Vec<String>,
    /// Remove these tags.
    #[arg(long, value_name = "TAGS")]
    pub remove: Vec<String>,
    /// Replace all tags with these.
    #[arg(long, value_name = "TAGS")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `run` options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job file (see docs/k3s.md).
    #[arg(short, long, default_value = "/etc/cairn/k3s.toml")]
    pub config: PathBuf,
    /// Check the sources and show what retention would remove; store nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// The host name snapshots are stored under, instead of the job file's `[repository]
    /// host` or this machine's name (a DaemonSet passes its node's name).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Stay running: run the job every day at the job file's `[schedule] at` plus a random
    /// delay of up to `randomized-delay-minutes`, until SIGTERM (for a Kubernetes DaemonSet).
    #[arg(long, conflicts_with = "dry_run")]
    pub daemon: bool,
    /// With --daemon: run once at start, then on the schedule.
    #[arg(long, requires = "daemon")]
    pub run_now: bool,
    /// With --daemon: serve the last run's metrics on `http://ADDR/metrics` (and `/healthz`).
    #[arg(long, value_name = "ADDR", requires = "daemon")]
    pub metrics_listen: Option<String>,
}

/// `schedule` options.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// `systemd` or `cron`.
    #[arg(long)]
    pub print: String,
    /// The job file.
    #[arg(short, long, default_value = "/etc/cairn/k3s.toml")]
    pub config: PathBuf,
}

/// `k3s` subcommands.
#[derive(Debug, Subcommand)]
pub enum K3sCommand {
    /// Verify cluster-state files before trusting them: etcd snapshots (SHA-256 trailer,
    /// bbolt meta pages; K3s `.zip` ones too) and SQLite datastores (integrity_check, kine).
    /// With --snapshot, a stored snapshot is restored into a temporary directory and verified.
    Verify {
        /// Files to verify.
        #[arg(required_unless_present = "snapshot")]
        files: Vec<PathBuf>,
        /// A stored cluster-state snapshot (id, or `latest`) to verify instead.
        #[arg(long, conflicts_with = "files")]
        snapshot: Option<String>,
        /// Job file naming the repository (else -r and the password options).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Restore the newest cluster-state snapshot (etcd snapshot or SQLite datastore, with
    /// the server token), verify it, and print the commands that put it back.
    #[command(alias = "restore-etcd")]
    Restore {
        /// Job file naming the repository (else -r and the password options).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Only snapshots of this source (default: any k3s-etcd or k3s-sqlite source).
        #[arg(long)]
        source: Option<String>,
        /// Directory to restore into.
        #[arg(short, long)]
        target: PathBuf,
        /// A specific snapshot instead of the newest.
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Export every API resource kind the account may list into DIR, one YAML file per
    /// namespace and kind, as the k3s-manifests source stores them, without storing
    /// anything: for a look at what the nightly job would keep, or a copy by hand. Exits 3
    /// when some kinds could not be listed (the others are written).
    Export {
        /// Directory to write into (created; must be empty if it exists).
        dir: PathBuf,
        /// Kubeconfig (default: the pod's service account inside a cluster, else
        /// /etc/rancher/k3s/k3s.yaml, as the k3s-manifests source).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Resources to leave out, kubectl names (`secrets`, `*.cattle.io`).
        #[arg(long = "exclude-resource", value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Resources taken out of the default excludes (`events`).
        #[arg(long = "include-resource", value_name = "PATTERN")]
        include: Vec<String>,
        /// Keep the fields the server sets (status, managedFields, uid, ...).
        #[arg(long)]
        raw: bool,
        /// Objects per list request.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10000))]
        page_size: u32,
    },
}

/// `forget` options.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// Snapshot ids to remove explicitly (no policy needed).
    pub ids: Vec<String>,
    /// Keep the N newest snapshots (`unlimited` for all).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_last: Option<String>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_hourly: Option<String>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_daily: Option<String>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_weekly: Option<String>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_monthly: Option<String>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_yearly: Option<String>,
    /// Keep snapshots newer than the newest minus DURATION (e.g. 2y5m7d3h).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep hourly snapshots within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_hourly: Option<String>,
    /// Keep daily snapshots within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_daily: Option<String>,
    /// Keep weekly snapshots within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_weekly: Option<String>,
    /// Keep monthly snapshots within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_monthly: Option<String>,
    /// Keep yearly snapshots within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_yearly: Option<String>,
    /// Keep snapshots that have all these tags (`a,b`; repeatable).
    #[arg(long, value_name = "TAGS")]
    pub keep_tag: Vec<String>,
    /// Group snapshots by these fields before applying the policy (`host,paths,tags`; "" = one group).
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only show what would be removed.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run prune afterwards if snapshots were removed.
    #[arg(long)]
    pub prune: bool,
    /// Allow the policy to remove every snapshot of a group (refused otherwise).
    #[arg(long)]
    pub allow_empty_group: bool,
    #[command(flatten)]
    pub prune_opts: PruneOpts,
}

/// Prune tuning.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneOpts {
    /// Tolerate this much unused space: a percentage (`5%`) of the repository or a size (`2G`).
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
    /// Repack at most this many bytes (`2G`, `500M`).
    #[arg(long)]
    pub max_repack_size: Option<String>,
    /// How far the clocks of the hosts using the repository may disagree (`30s`, `10m`):
    /// a pack prune condemned is deleted only when no operation that started before the
    /// condemnation plus this is still running.
    #[arg(long, default_value = "10m", value_parser = parse_wait)]
    pub clock_skew: std::time::Duration,
    /// Delete what the index says holds nothing used, without reading the headers of the
    /// packs that go (saves a read per pack). Only where every writer is trusted: an
    /// append-only client with the password can forge index files (docs/serve.md).
    #[arg(long)]
    pub trust_index: bool,
}

/// `prune` options.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub opts: PruneOpts,
    /// Only report what would be done.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// `check` options.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Read and verify every blob of every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read a part: `n/t` (deterministic bucket n of t) or `P%` (random).
    #[arg(long, value_name = "n/t|P%")]
    pub read_data_subset: Option<String>,
}

/// `repair` subcommands.
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers.
    Index,
    /// Drop damaged or missing packs from the index, keeping their intact blobs. Lost blobs
    /// are then stored again by the next backup of the same sources.
    Packs(RepairPacksArgs),
    /// Rewrite snapshots around data that is lost (files dropped, unreadable directories
    /// emptied; tagged `repaired`), and with `--forget` remove the originals and snapshot
    /// files that do not decode.
    Snapshots(RepairSnapshotsArgs),
}

/// `repair packs` options.
#[derive(Debug, clap::Args)]
pub struct RepairPacksArgs {
    /// Packs to repair (ids or unique prefixes, as `check` prints them); none = read and
    /// verify every pack to find the damaged ones.
    pub packs: Vec<String>,
    /// Only report what would be done.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// `repair snapshots` options.
#[derive(Debug, clap::Args)]
pub struct RepairSnapshotsArgs {
    /// Remove each original snapshot once its repaired copy is saved, and remove snapshot
    /// files that cannot be decoded.
    #[arg(long)]
    pub forget: bool,
    /// Only report what would be done.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// `init` options.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// zstd level for the repository (0 = no compression, 1-22). The default, 2, took 24 %
    /// less CPU than level 3 on a 2 GB tree of real files for a 3.5 % larger repository
    /// (still no larger than restic's); higher levels trade backup speed for size.
    #[arg(long, default_value_t = cairn_engine::DEFAULT_COMPRESSION_LEVEL)]
    pub compression_level: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u32,
    /// Argon2id memory cost of the first key, in MiB.
    #[arg(long, default_value_t = 64)]
    pub kdf_memory_mib: u32,
    /// Argon2id passes of the first key.
    #[arg(long, default_value_t = 3)]
    pub kdf_iterations: u32,
    /// Repository format version: 5 (small trees and content lists compressed in groups), or
    /// 4 / 3 / 2 / 1 for a repository that nodes running an older cairn must keep using
    /// (`cairn migrate` upgrades it later). 2 adds small blobs compressed in groups, 3 prune
    /// beside running backups, 4 content lists for files of many blobs.
    #[arg(long, default_value_t = cairn_format::FORMAT_VERSION, value_parser = clap::value_parser!(u16).range(1..=i64::from(cairn_format::FORMAT_VERSION)))]
    pub format_version: u16,
    /// Name and cut blobs like the --from-repo repository, so that `copy` from it sends
    /// only what is missing and never reads a blob twice (the encryption key stays new).
    #[arg(long, requires = "from_repo")]
    pub copy_chunker_params: bool,
    #[command(flatten)]
    pub from: FromRepoArgs,
}

/// The source repository of `copy` (and of `init --copy-chunker-params`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FromRepoArgs {
    /// Source repository location (a directory or s3:…).
    #[arg(long, env = "CAIRN_FROM_REPOSITORY", value_name = "REPO")]
    pub from_repo: Option<String>,
    /// Read the source repository's password from this file (else CAIRN_FROM_PASSWORD, or a
    /// prompt).
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run this command for the source repository's password.
    #[arg(long, env = "CAIRN_FROM_PASSWORD_COMMAND", value_name = "CMD")]
    pub from_password_command: Option<String>,
    /// Backend option of the source repository (`s3.region=garage`), repeatable.
    #[arg(long = "from-option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub from_options: Vec<(String, String)>,
}

/// `copy` options.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Snapshots to copy (default: every snapshot the filters allow).
    pub ids: Vec<String>,
    #[command(flatten)]
    pub from: FromRepoArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Snapshot filters.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots with these tags (`a,b` = both; repeat for either).
    #[arg(long = "tag", value_name = "TAGS")]
    pub tags: Vec<String>,
    /// Only snapshots that include this path (repeatable).
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
}

/// `backup` options.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    /// Read the content of one file from standard input.
    #[arg(long, conflicts_with = "paths")]
    pub stdin: bool,
    /// File name under which standard input is stored.
    #[arg(long, default_value = "stdin", requires = "stdin")]
    pub stdin_filename: String,
    /// Tags for the new snapshot (repeatable, or comma-separated).
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Host name to record (default: this host's).
    #[arg(long)]
    pub host: Option<String>,
    /// Snapshot time to record (`2024-05-01 03:00:00` local, or RFC 3339).
    #[arg(long)]
    pub time: Option<String>,
    /// Parent snapshot to compare with (default: latest with the same host and paths).
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file even if the parent says it is unchanged.
    #[arg(long)]
    pub force: bool,
    /// Exclude paths matching this glob (repeatable). Without `/`: a base name.
    #[arg(short = 'e', long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from this file, one per line (`#` comments; repeatable).
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Read the paths to back up from this file, one per line (`-`: standard input).
    #[arg(long = "files-from", value_name = "FILE", conflicts_with = "stdin")]
    pub files_from: Vec<PathBuf>,
    /// Stay on the file system of each path.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
}

/// `ls` options.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// `SNAPSHOT[:PATH]`, e.g. `latest:/var/lib`.
    pub snapshot: OsString,
    /// Long listing: mode, owner, size, mtime.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// Descend into subdirectories (the default for a whole snapshot, as restic's `ls`).
    #[arg(long)]
    pub recursive: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `restore` options.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// `SNAPSHOT[:PATH]`: what to restore; a directory's contents go into the target.
    pub snapshot: OsString,
    /// Directory to restore into.
    #[arg(short, long)]
    pub target: PathBuf,
    /// Only restore paths matching this glob (repeatable).
    #[arg(short = 'i', long = "include", value_name = "GLOB")]
    pub includes: Vec<String>,
    /// Skip paths matching this glob (repeatable).
    #[arg(short = 'e', long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Remove files and directories in the target that the snapshot does not have (inside
    /// the restored directories only; excluded paths are kept).
    #[arg(long)]
    pub delete: bool,
    /// Show what would be restored (and, with --delete, removed); write nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Files already in the target: `always` replace them, `if-changed` leave those whose
    /// size and mtime match the snapshot, `if-newer` replace only those older than the
    /// snapshot's, `never` leave anything that exists.
    #[arg(long, value_enum, default_value = "always", value_name = "WHEN")]
    pub overwrite: OverwriteArg,
    /// Read every restored file back and compare it with the snapshot.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `restore --overwrite`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OverwriteArg {
    /// Replace existing files.
    Always,
    /// Leave files whose size and mtime match.
    IfChanged,
    /// Replace only files older than the snapshot's.
    IfNewer,
    /// Leave existing files alone.
    Never,
}

/// `cat` options.
#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// config | snapshot | tree | index | pack | key | lock | blob | masterkey
    pub kind: String,
    /// Object id (unique prefix for snapshots); for `tree`, also `SNAPSHOT[:PATH]`.
    pub id: Option<String>,
}

/// `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List key files.
    List,
    /// Add a password (asked twice, or from --new-password-file / CAIRN_NEW_PASSWORD).
    Add(NewKeyArgs),
    /// Remove a key file (not the last one, not the one in use).
    Remove {
        /// Key id (prefix).
        id: String,
    },
    /// Change the password of the key in use.
    Passwd(NewKeyArgs),
}

/// New key options.
#[derive(Debug, clap::Args)]
pub struct NewKeyArgs {
    /// Read the new password from this file.
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// Argon2id memory cost, MiB.
    #[arg(long, default_value_t = 64)]
    pub kdf_memory_mib: u32,
    /// Argon2id passes.
    #[arg(long, default_value_t = 3)]
    pub kdf_iterations: u32,
}

/// `unlock` options.
#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// Remove all locks, not only stale ones.
    #[arg(long)]
    pub remove_all: bool,
}

extern "C" fn on_signal(_: libc_int) {
    cairn_engine::progress::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}
#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;

/// Raise the soft limit on open files to the hard one, as Go programs (restic) do at start:
/// the soft default is often 1024, and a restore writes into many files at once. The restorer
/// also bounds its open files, so a low hard limit only costs reopening.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; with
        // SA_RESETHAND a second signal falls back to the default action and ends the process.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

fn parse_option(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Exit code when the reader of our output went away (`cairn cat index ID | head`): what a
/// shell reports for a process killed by SIGPIPE (128 + 13).
const BROKEN_PIPE_EXIT: i32 = 141;

/// Check a write to stdout made where an error cannot be returned (inside a tree walk's
/// callback): a closed pipe ends the process quietly, any other failure (a full disk behind a
/// redirect) with an error, never a silently cut listing.
pub fn output_written(r: std::io::Result<()>) {
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_EXIT)
        }
        Err(e) => {
            eprintln!("cairn: error: writing the output: {e}");
            std::process::exit(1)
        }
    }
}

/// Rust ignores SIGPIPE, so `println!` to a closed pipe panics. Stop quietly instead, as `cat`
/// would. SIGPIPE itself stays ignored: a reset S3 connection must be an error to retry, not
/// the end of the process. Stopping here is like a kill: the repository stays consistent.
fn quiet_broken_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default_hook(info);
    }));
}

fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    cairn_engine::util::parse_wait(s).map_err(|e| e.to_string())
}

/// A command line that makes no sense (exit 2, like clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code an error ends the process with.
pub(crate) fn exit_code_of(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    let code = e
        .downcast_ref::<cairn_engine::Error>()
        .map_or(1, cairn_engine::Error::exit_code);
    if code == 1 {
        e.chain()
            .find_map(|c| c.downcast_ref::<cairn_engine::Error>())
            .map_or(1, cairn_engine::Error::exit_code)
    } else {
        code
    }
}

/// An error's message: thiserror's I/O variant displays its cause and also chains it, so
/// each distinct piece of the chain is printed once.
pub(crate) fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

fn main() -> ExitCode {
    cairn_engine::alloc::tune();
    let cli = Cli::parse();
    // The TLS verifier logs every rejected certificate at ERROR; the request's own error says
    // the same, with a hint, so it is shown only with -v.
    let filter = match cli.verbose {
        // The server's refusals and failed logins are its audit log.
        0 if matches!(cli.command, Command::Serve(_)) => "info",
        // fuser warns about every ioctl it does not implement (isatty probes) and about
        // an unmount that `umount` already did.
        0 => "warn,rustls_platform_verifier=off,fuser=error",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    install_signal_handlers();
    quiet_broken_pipe();
    raise_open_file_limit();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code_of(&e);
            let msg = error_message(&e);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"message_type": "error", "error": msg, "exit_code": code})
                );
            }
            eprintln!("cairn: error: {msg}");
            ExitCode::from(code as u8)
        }
    }
}

/// Run the parsed command; returns the process exit code.
fn run(cli: &Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Init(a) => commands::init(cli, a),
        Command::Backup(a) => commands::cmd_backup(cli, a),
        Command::Snapshots(f) => commands::snapshots(cli, f),
        Command::Ls(a) => commands::ls(cli, a),
        Command::Restore(a) => commands::cmd_restore(cli, a),
        Command::Cat(a) => commands::cat(cli, a),
        Command::Key(k) => commands::key(cli, k),
        Command::Forget(a) => crate::maint::forget(cli, a),
        Command::Prune(a) => crate::maint::prune_cmd(cli, &a.opts, a.dry_run),
        Command::Check(a) => crate::maint::check_cmd(cli, a),
        Command::Repair(crate::RepairCommand::Index) => crate::maint::repair_index_cmd(cli),
        Command::Migrate => crate::maint::migrate_cmd(cli),
        Command::Repair(crate::RepairCommand::Packs(a)) => crate::maint::repair_packs_cmd(cli, a),
        Command::Repair(crate::RepairCommand::Snapshots(a)) => {
            crate::maint::repair_snapshots_cmd(cli, a)
        }
        Command::Stats => commands::stats(cli),
        Command::Diff(a) => explore::diff_cmd(cli, a),
        Command::Find(a) => explore::find_cmd(cli, a),
        Command::Dump(a) => explore::dump_cmd(cli, a),
        Command::Tag(a) => explore::tag_cmd(cli, a),
        Command::Copy(a) => crate::maint::copy_cmd(cli, a),
        Command::Rewrite(a) => crate::maint::rewrite_cmd(cli, a),
        Command::Version => explore::version(cli),
        Command::List { kind } => explore::list(cli, kind),
        Command::Mount {
            dir,
            allow_other,
            filter,
        } => {
            // The mounted file system must be 'static; the process ends with the mount.
            let repo: &'static cairn_engine::Repository = Box::leak(Box::new(hiargs::open(cli)?));
            let _lock = hiargs::lock_shared(cli, repo)?;
            let ix = repo.indexed()?;
            let f = hiargs::filter(filter);
            let snaps: Vec<_> = repo
                .load_snapshots()?
                .into_iter()
                .filter(|(_, s)| f.matches(s))
                .collect();
            mount::mount(ix, &snaps, dir, *allow_other)?;
            Ok(0)
        }
        Command::Completion { shell } => explore::completion(*shell),
        Command::Man { dir } => explore::man(dir),
        Command::Run(a) => crate::run::run(cli, a),
        Command::Schedule(a) => crate::run::schedule(a),
        Command::Serve(a) => crate::serve::serve(cli, a),
        Command::ServeCredential(a) => crate::serve::credential(a),
        Command::K3s(k) => crate::run::k3s(cli, k),
        Command::Unlock(a) => {
            let repo = hiargs::open(cli)?;
            let n = cairn_engine::lock::unlock(&repo, a.remove_all)?;
            if cli.json {
                println!("{}", serde_json::json!({"removed": n}));
            } else {
                println!("removed {n} lock(s)");
            }
            Ok(0)
        }
    }
}
