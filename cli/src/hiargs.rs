//! Arguments turned once into what the engine needs: the backend and opened repository a
//! location names, locks with the `--retry-lock` wait, snapshot filters.

use std::sync::Arc;

use anyhow::Result;
use cairn_engine::{
    Backend, ExclusiveLock, MaintenanceLock, Repository, SharedLock, SnapshotFilter,
};

use crate::{Cli, FilterArgs};

/// A shared lock, waiting as `--retry-lock` says (default: not at all); none with
/// `--no-lock` (commands that write then refuse to run).
pub(crate) fn lock_shared<'r>(cli: &Cli, repo: &'r Repository) -> Result<SharedLock<'r>> {
    lock_shared_waiting(cli, repo, cli.retry_lock.unwrap_or_default())
}

/// [`lock_shared`], waiting up to `wait` (the job file's `retry-lock` for `k3s`).
pub(crate) fn lock_shared_waiting<'r>(
    cli: &Cli,
    repo: &'r Repository,
    wait: std::time::Duration,
) -> Result<SharedLock<'r>> {
    if cli.no_lock {
        return Ok(repo.read_unlocked());
    }
    repo.lock_shared(wait).map_err(suggest_no_lock)
}

/// A lock that could not be written on read-only storage: say how to read it anyway.
pub(crate) fn suggest_no_lock(e: cairn_engine::Error) -> anyhow::Error {
    let read_only = matches!(&e, cairn_engine::Error::Io { source, .. }
        if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem);
    if read_only {
        anyhow::Error::new(e).context(
            "the repository is on read-only storage: `--no-lock` reads it without a lock (restore, check, k3s restore/verify, mount)",
        )
    } else {
        e.into()
    }
}

/// A maintenance lock (forget, prune), waiting as `--retry-lock` says (default: not at all).
pub(crate) fn lock_maintenance<'r>(cli: &Cli, repo: &'r Repository) -> Result<MaintenanceLock<'r>> {
    Ok(repo.lock_maintenance(cli.retry_lock.unwrap_or_default())?)
}

/// An exclusive lock, waiting as `--retry-lock` says (default: not at all).
pub(crate) fn lock_exclusive<'r>(cli: &Cli, repo: &'r Repository) -> Result<ExclusiveLock<'r>> {
    Ok(repo.lock_exclusive(cli.retry_lock.unwrap_or_default())?)
}

pub(crate) fn backend(cli: &Cli) -> Result<Arc<dyn Backend>> {
    let loc = cli.repo.as_deref().ok_or_else(|| {
        crate::UsageError("no repository given: use -r/--repo or CAIRN_REPOSITORY".into())
    })?;
    backend_at(loc, &cli.options)
}

/// The backend for a repository location (see [`cairn_engine::backend::from_location`]).
pub(crate) fn backend_at(loc: &str, options: &[(String, String)]) -> Result<Arc<dyn Backend>> {
    Ok(cairn_engine::backend::from_location(loc, options)?)
}

pub(crate) fn open(cli: &Cli) -> Result<Repository> {
    open_with(cli, backend(cli)?, &cli.password)
}

/// Open the repository at `location` (with backend `options`) with the passwords `pw` names.
pub(crate) fn open_at(
    cli: &Cli,
    location: &str,
    options: &[(String, String)],
    pw: &crate::password::PasswordArgs,
) -> Result<Repository> {
    open_with(cli, backend_at(location, options)?, pw)
}

/// The source repository of `copy` / `init --copy-chunker-params`: `--from-repo` with its
/// own password (`--from-password-file`, `--from-password-command`, `CAIRN_FROM_PASSWORD`,
/// or a prompt) and backend options (`--from-option`).
pub(crate) fn open_source(cli: &Cli, from: &crate::FromRepoArgs) -> Result<Repository> {
    let loc = from.from_repo.as_deref().ok_or_else(|| {
        crate::UsageError("no source repository: use --from-repo or CAIRN_FROM_REPOSITORY".into())
    })?;
    let be = backend_at(loc, &from.from_options)?;
    let probed = Repository::probe(be.as_ref())?;
    let pw = crate::password::source_password(
        from.from_password_file.as_ref(),
        from.from_password_command.as_deref(),
        cli.password.password_command_timeout,
    )?;
    finish_open(cli, be, probed, &pw)
}

fn open_with(
    cli: &Cli,
    be: Arc<dyn Backend>,
    pw: &crate::password::PasswordArgs,
) -> Result<Repository> {
    // Fail on a missing or foreign repository before asking for a password.
    let probed = Repository::probe(be.as_ref())?;
    let pw = pw.get("enter password for repository: ", false)?;
    finish_open(cli, be, probed, &pw)
}

fn finish_open(
    cli: &Cli,
    be: Arc<dyn Backend>,
    probed: (Vec<u8>, Vec<cairn_engine::ObjectInfo>),
    pw: &str,
) -> Result<Repository> {
    let remote = be.is_remote();
    let mut repo = Repository::open_probed(be, probed, pw.as_bytes())?;
    if remote && !cli.no_cache {
        match cli
            .cache_dir
            .clone()
            .or_else(cairn_engine::cache::default_cache_dir)
        {
            Some(dir) => {
                if let Err(e) = repo.enable_cache(&dir) {
                    tracing::warn!("no local cache ({e}); reading metadata from the repository");
                }
            }
            None => tracing::warn!("no cache directory (HOME unset); use --cache-dir"),
        }
    }
    Ok(repo)
}

pub(crate) fn filter(f: &FilterArgs) -> SnapshotFilter {
    SnapshotFilter {
        hosts: f.hosts.clone(),
        tags: f.tags.clone(),
        paths: f.paths.clone(),
    }
}
