//! Opening, creating and reading a repository: keys, config, typed objects, blobs.

use std::collections::HashSet;
use std::sync::Arc;

use cairn_format::{
    check_preamble, decode_sealed, encode_sealed, open_blob_in_place, BlobType, Config, Content,
    FileKind, FormatError, Id, IndexFile, KdfParams, KeyFile, MasterKey, Snapshot, Tree, NONCE_LEN,
};
use rand::RngCore;
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Backend;
use crate::index::{BlobLocation, IndexBuilder, MasterIndex};
use crate::util::{hostname, now_timestamp, username};
use crate::{Error, Result};

/// Bytes a sealed file adds around its payload: preamble, nonce and tag.
const SEALED_FILE_OVERHEAD: u64 = (cairn_format::PREAMBLE_LEN + cairn_format::SEAL_OVERHEAD) as u64;

/// Largest key file read: an envelope of a few hundred bytes, with generous room for long
/// host and user names.
const MAX_KEY_FILE_LEN: u64 = 64 << 10;

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Repository config to write (repo id is generated).
    pub chunker: cairn_format::ChunkerParams,
    /// zstd level.
    pub compression_level: i32,
    /// Target pack size.
    pub pack_size: u32,
    /// KDF cost for the first key.
    pub kdf: KdfParams,
    /// How database files are cut (see `cairn_format::pages`).
    pub page_rules: Vec<cairn_format::PageRule>,
    /// Cut and name blobs like this repository (its id key, chunker seed, chunker and page
    /// rules), so that `copy` between the two moves only blobs the destination lacks and
    /// never reads one it has (restic's `--copy-chunker-params`). The encryption key stays
    /// the new repository's own.
    pub same_blobs_as: Option<Arc<Repository>>,
    /// Repository format version (FORMAT.md §2): the newest by default; 1 for repositories
    /// that nodes running an older cairn must keep reading.
    pub format_version: u16,
}

/// zstd level of new repositories: on a 2 GB tree of real files level 2 took 24 % less CPU
/// than level 3 for a 3.5 % larger repository, still no larger than restic's
/// (`scripts/bench-compare.sh`; level 1 saved another 10 % of CPU for +5 % size).
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 2;

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: cairn_format::ChunkerParams::default_bulk(),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            pack_size: 16 << 20,
            kdf: KdfParams::new_default(),
            page_rules: cairn_format::default_page_rules(),
            same_blobs_as: None,
            format_version: cairn_format::FORMAT_VERSION,
        }
    }
}

/// An unlocked repository.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Arc<MasterKey>,
    config: Config,
    key_id: Id,
    /// Bytes of index files read (from the cache or the repository), shared by clones.
    index_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Repository {
    /// Create a new repository with one key for `password`.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        opts: InitOptions,
    ) -> Result<Repository> {
        if backend.exists()? && backend.stat(FileKind::Config, "config")?.is_some() {
            return Err(Error::RepoExists(backend.location()));
        }
        let mut repo_id = [0u8; 32];
        rand::rng().fill_bytes(&mut repo_id);
        let mut key = MasterKey::generate();
        let (chunker, page_rules) = match &opts.same_blobs_as {
            Some(other) => {
                key.id_key = other.key.id_key;
                key.chunker_seed = other.key.chunker_seed;
                (
                    other.config.chunker.clone(),
                    other.config.page_rules.clone(),
                )
            }
            None => (opts.chunker, opts.page_rules),
        };
        let config = Config {
            version: opts.format_version,
            repo_id,
            chunker,
            compression_level: opts.compression_level,
            pack_size: opts.pack_size,
            page_rules,
        };
        config.validate()?;
        backend.create()?;
        // Key before config: a crash in between leaves no config, i.e. "not a repository",
        // and `init` can simply be run again.
        let key_id = add_key_file(backend.as_ref(), &key, password, opts.kdf)?;
        backend.put(
            FileKind::Config,
            "config",
            &encode_sealed(&key, FileKind::Config, &config, 3),
        )?;
        Ok(Repository {
            backend,
            key: Arc::new(key),
            config,
            key_id,
            index_bytes: Arc::default(),
        })
    }

    /// Open an existing repository with `password`.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let probed = Self::probe(backend.as_ref())?;
        Self::open_probed(backend, probed, password)
    }

    /// [`Repository::open`] with what [`Repository::probe`] already returned, for callers
    /// that probe before asking for a password (on S3 a probe costs three requests).
    pub fn open_probed(
        backend: Arc<dyn Backend>,
        (config_bytes, keys): (Vec<u8>, Vec<crate::backend::ObjectInfo>),
        password: &[u8],
    ) -> Result<Repository> {
        let mut last_err = Error::Format(FormatError::WrongPassword);
        // Decode every key file first and derive the cheapest first: a key file planted with
        // a costly (if in-range) KDF then costs nothing when the password opens another.
        let mut candidates = Vec::with_capacity(keys.len());
        for k in keys {
            // A damaged or planted key file is skipped: it must not lock out the others.
            let kf = backend
                .get_max(FileKind::Key, &k.name, MAX_KEY_FILE_LEN)
                .and_then(|data| {
                    verify_name(FileKind::Key, &k.name, &data)?;
                    Ok(KeyFile::decode(&data)?)
                });
            match kf {
                Ok(kf) => candidates.push((k.name, kf)),
                Err(e) if e.is_damage() => {
                    tracing::warn!("key file {}: {e}; skipped", &k.name[..k.name.len().min(8)]);
                    last_err = e;
                }
                Err(e) => return Err(e),
            }
        }
        // Keys made by earlier builds with a KDF above today's range open only on request,
        // so that they can be replaced (`key passwd`).
        let legacy = std::env::var_os("CAIRN_ALLOW_COSTLY_KDF").is_some_and(|v| v == "1");
        candidates.sort_by_key(|(name, kf)| {
            (
                u64::from(kf.kdf.memory_kib) * u64::from(kf.kdf.iterations),
                name.clone(),
            )
        });
        for (name, kf) in candidates {
            let unwrapped = match kf.unwrap_key(password) {
                Err(FormatError::InvalidParameter(_)) if legacy => kf.unwrap_key_legacy(password),
                other => other,
            };
            match unwrapped {
                Ok(key) => {
                    let config: Config = decode_sealed(&key, FileKind::Config, &config_bytes)?;
                    config.validate()?;
                    let key_id = Id::from_hex(&name)?;
                    return Ok(Repository {
                        backend,
                        key: Arc::new(key),
                        config,
                        key_id,
                        index_bytes: Arc::default(),
                    });
                }
                Err(FormatError::WrongPassword) => {}
                // A key file with an out-of-range KDF (planted, or from a hostile tool) is
                // never derived: it cannot be ours to use, and must not hide the others.
                Err(e @ FormatError::InvalidParameter(_)) => {
                    tracing::warn!(
                        "key file {}: {e}; skipped (a key of an earlier build? open it once with CAIRN_ALLOW_COSTLY_KDF=1 and run `cairn key passwd`)",
                        &name[..name.len().min(8)]
                    );
                }
                Err(e) => last_err = e.into(),
            }
        }
        Err(last_err)
    }

    /// Check that `backend` holds a repository this build can read, before asking for a
    /// password; returns the config bytes and key list.
    pub fn probe(backend: &dyn Backend) -> Result<(Vec<u8>, Vec<crate::backend::ObjectInfo>)> {
        if !backend.exists()? {
            return Err(Error::RepoNotFound(backend.location()));
        }
        let config_bytes = match backend.get(FileKind::Config, "config") {
            Ok(b) => b,
            Err(Error::ObjectNotFound { .. }) => {
                return Err(Error::NotARepository(format!(
                    "{} is not a cairn repository (no config file)",
                    backend.location()
                )))
            }
            Err(e) => return Err(e),
        };
        check_preamble(&config_bytes, FileKind::Config)?;
        let keys = backend.list(FileKind::Key)?;
        if keys.is_empty() {
            return Err(Error::NotARepository(format!(
                "{} has a config but no key files (keys/ is empty or unreadable): the repository cannot be opened; put back a copy of keys/",
                backend.location()
            )));
        }
        Ok((config_bytes, keys))
    }

    /// Keep snapshots, index files and tree packs of this repository in a verified local
    /// cache under `base/<repo id>` (see [`crate::cache`]).
    pub fn enable_cache(&mut self, base: &std::path::Path) -> Result<()> {
        let dir = base.join(hex::encode(self.config.repo_id));
        let cached = crate::cache::CachedBackend::new(self.backend.clone(), dir)?;
        self.backend = Arc::new(cached);
        Ok(())
    }

    /// The backend: the engine's own; front ends go through operations and typed loads.
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A printable location of the repository.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Whether the repository is remote (reads cost round trips).
    pub fn is_remote(&self) -> bool {
        self.backend.is_remote()
    }

    /// One line of request counts, for backends that count them.
    pub fn request_summary(&self) -> Option<String> {
        self.backend.request_summary()
    }

    /// Names and sizes of all objects of a kind.
    pub fn list(&self, kind: FileKind) -> Result<Vec<crate::backend::ObjectInfo>> {
        self.backend.list(kind)
    }

    /// A whole pack, verified against its name (for `cat pack`).
    pub fn read_pack(&self, id: &Id) -> Result<Vec<u8>> {
        let name = id.to_hex();
        let data = self.backend.get(FileKind::Pack, &name)?;
        verify_name(FileKind::Pack, &name, &data)?;
        Ok(data)
    }

    /// The repository with its index loaded (damaged index files skipped and named).
    pub fn indexed(&self) -> Result<Indexed<'_>> {
        Ok(Indexed {
            repo: self,
            index: self.load_index()?,
        })
    }

    /// Replace the config with `config` (the one object ever rewritten: `migrate`), as one
    /// atomic write. The caller holds the exclusive lock.
    pub(crate) fn rewrite_config(&mut self, config: Config) -> Result<()> {
        config.validate()?;
        self.backend.put(
            FileKind::Config,
            "config",
            &encode_sealed(&self.key, FileKind::Config, &config, 3),
        )?;
        self.config = config;
        Ok(())
    }

    /// A reader of the blobs of pack `pack` (see [`BlobOpener`]).
    pub(crate) fn opener(&self, pack: Id) -> BlobOpener<'_> {
        BlobOpener {
            repo: self,
            pack,
            group: None,
        }
    }

    /// The master key.
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key file that unlocked this session.
    pub fn key_id(&self) -> Id {
        self.key_id
    }

    /// Encode, seal and store a typed object; returns its name.
    pub(crate) fn save<T: Serialize>(&self, kind: FileKind, value: &T) -> Result<Id> {
        let level = self.config.compression_level.max(1);
        self.put_object(kind, &encode_sealed(&self.key, kind, value, level))
    }

    /// Encode, seal and store a lock in the repository's lock version.
    pub(crate) fn save_lock(&self, lock: &cairn_format::Lock) -> Result<Id> {
        let version = cairn_format::object_version(FileKind::Lock, self.config.version);
        self.put_object(FileKind::Lock, &lock.encode_sealed(&self.key, version, 0)?)
    }

    /// Load, verify and decode a lock (of any version).
    pub fn load_lock(&self, id: &Id) -> Result<cairn_format::Lock> {
        self.load_with(FileKind::Lock, id, |data| {
            cairn_format::Lock::decode_sealed(&self.key, data)
        })
    }

    /// Encode, seal and store an index file in the repository's format version.
    pub(crate) fn save_index(&self, file: &IndexFile) -> Result<Id> {
        let version = cairn_format::object_version(FileKind::Index, self.config.version);
        let level = self.config.compression_level.max(1);
        self.put_object(
            FileKind::Index,
            &file.encode_sealed(&self.key, version, level)?,
        )
    }

    /// Store a content-addressed object under its name.
    fn put_object(&self, kind: FileKind, data: &[u8]) -> Result<Id> {
        let id = Id::of_object(data);
        self.backend.put(kind, &id.to_hex(), data)?;
        Ok(id)
    }

    /// Load, verify and decode an index file (of any version).
    pub fn load_index_file(&self, id: &Id) -> Result<IndexFile> {
        self.load_with(FileKind::Index, id, |data| {
            self.index_bytes
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            IndexFile::decode_sealed(&self.key, data)
        })
    }

    /// What loading index files cost so far: bytes read, and of those the bytes fetched from
    /// the repository rather than the local cache (`None` without a cache: all of them).
    pub fn index_io(&self) -> (u64, Option<u64>) {
        (
            self.index_bytes.load(std::sync::atomic::Ordering::Relaxed),
            self.backend.fetched_bytes(FileKind::Index),
        )
    }

    /// The version new packs are written in.
    pub(crate) fn pack_version(&self) -> u16 {
        cairn_format::object_version(FileKind::Pack, self.config.version)
    }

    /// Load, verify and decode a typed object. Nothing larger than the format allows for
    /// `kind` is read or inflated (FORMAT.md, "Limits").
    pub fn load<T: DeserializeOwned>(&self, kind: FileKind, id: &Id) -> Result<T> {
        self.load_with(kind, id, |data| decode_sealed(&self.key, kind, data))
    }

    /// Read object `id` of `kind` within the format's size limit, verify its name, decode it.
    fn load_with<T>(
        &self,
        kind: FileKind,
        id: &Id,
        decode: impl FnOnce(&[u8]) -> std::result::Result<T, cairn_format::FormatError>,
    ) -> Result<T> {
        let name = id.to_hex();
        let max = cairn_format::max_decoded_len(kind) as u64 + 1 + SEALED_FILE_OVERHEAD;
        let data = self.backend.get_max(kind, &name, max)?;
        verify_name(kind, &name, &data)?;
        Ok(decode(&data)?)
    }

    /// The one object of `kind` whose name starts with `prefix` (hex): ids as users type them.
    pub fn find_id(&self, kind: FileKind, prefix: &str) -> Result<Id> {
        let ids = self.list_ids(kind)?;
        let found: Vec<&Id> = ids.iter().filter(|i| i.has_hex_prefix(prefix)).collect();
        match found.as_slice() {
            [one] => Ok(**one),
            [] => Err(Error::Invalid(format!(
                "no {} with id {prefix}",
                kind.name()
            ))),
            _ => Err(Error::Invalid(format!(
                "{} id prefix {prefix} is ambiguous",
                kind.name()
            ))),
        }
    }

    /// Names of all objects of a kind.
    pub fn list_ids(&self, kind: FileKind) -> Result<Vec<Id>> {
        self.backend
            .list(kind)?
            .into_iter()
            .map(|o| Ok(Id::from_hex(&o.name)?))
            .collect()
    }

    /// Load the index in force into a master index. Damaged index files are skipped with a
    /// warning that names them (see [`Repository::load_index_lenient`]): their packs'
    /// blobs look absent, so a backup stores them again and a restore reports exactly the
    /// files it cannot restore.
    pub fn load_index(&self) -> Result<MasterIndex> {
        let (index, damaged) = self.load_index_lenient()?;
        for (id, e) in &damaged {
            tracing::warn!(
                "index file {} is damaged ({e}); run `cairn repair index`",
                id.short()
            );
        }
        Ok(index)
    }

    /// The index a backup deduplicates against: only blobs in packs that exist. A blob whose
    /// pack is gone (lost from storage, or named by index files that a damaged one should
    /// have superseded, whose packs a prune deleted) would make a snapshot that cannot be
    /// restored; stored again, it heals the newest snapshot. The index is loaded before the
    /// listing, so a pack written meanwhile by another writer is not taken for missing.
    pub(crate) fn load_index_for_writing(&self) -> Result<MasterIndex> {
        let (mut index, damaged) = self.load_index_lenient()?;
        for (id, e) in &damaged {
            tracing::warn!(
                "index file {} is damaged ({e}); deduplicating only against packs that exist; run `cairn repair index`",
                id.short()
            );
        }
        let missing = self.drop_missing_packs(&mut index, !damaged.is_empty())?;
        if missing > 0 {
            tracing::warn!(
                "{missing} indexed pack(s) are missing from the repository: their blobs are stored again where this run needs them; run `cairn check`"
            );
        }
        Ok(index)
    }

    /// Leave out of `index` the packs that are missing from storage (one listing), and all
    /// packs not stored with `always`; returns how many live indexed packs are missing.
    /// Condemned packs may be gone without harm: a prune deletes them, and writers never
    /// use them.
    fn drop_missing_packs(&self, index: &mut MasterIndex, always: bool) -> Result<usize> {
        let stored: std::collections::HashSet<Id> = self
            .backend
            .list(FileKind::Pack)?
            .into_iter()
            .filter_map(|o| Id::from_hex(&o.name).ok())
            .collect();
        let missing = index
            .packs()
            .iter()
            .enumerate()
            .filter(|(p, id)| index.condemned_at(*p as u32).is_none() && !stored.contains(*id))
            .count();
        if always || missing > 0 {
            index.retain_packs(|id| stored.contains(id));
        }
        Ok(missing)
    }

    /// [`Repository::indexed`] for reading files back (restore): packs missing from storage
    /// are left out, so that a blob stored again elsewhere (as the next backup after a
    /// pack's loss does) is read from its other copy instead of failing; a blob with no
    /// other copy is reported missing. Costs one listing of the packs.
    pub fn indexed_for_reading(&self) -> Result<Indexed<'_>> {
        let mut index = self.load_index()?;
        let missing = self.drop_missing_packs(&mut index, false)?;
        if missing > 0 {
            tracing::warn!(
                "{missing} indexed pack(s) are missing from the repository: blobs that have another copy are read from it; run `cairn check`"
            );
        }
        Ok(Indexed { repo: self, index })
    }

    /// The index in force, or an error if any index file is damaged: for operations that
    /// delete (prune), which must know every pack in use.
    pub fn load_index_strict(&self) -> Result<MasterIndex> {
        let (index, damaged) = self.load_index_lenient()?;
        refuse_damaged_index(&damaged)?;
        Ok(index)
    }

    /// The index in force and the index files that did not decode. Each file is merged as
    /// soon as it is decoded and then dropped, so memory is the merged index (48 bytes a
    /// blob) plus one decoded file per thread, never every file at once. A file that decodes
    /// but has entries beyond the format's limits keeps its other entries (and its
    /// `supersedes`) and is reported as damaged all the same; files another one supersedes
    /// are left out ([`IndexBuilder::finish`]). Transient errors (I/O, network) fail:
    /// skipping an index file that is merely unreachable would make a restore report good
    /// data as missing.
    #[allow(clippy::type_complexity)]
    pub fn load_index_lenient(&self) -> Result<(MasterIndex, Vec<(Id, Error)>)> {
        crate::alloc::transient(|| self.load_index_lenient_inner())
    }

    #[allow(clippy::type_complexity)]
    fn load_index_lenient_inner(&self) -> Result<(MasterIndex, Vec<(Id, Error)>)> {
        let builder = parking_lot::Mutex::new(IndexBuilder::new());
        let damaged = parking_lot::Mutex::new(Vec::new());
        // A file deleted between listing and reading was replaced by a prune running beside
        // this reader: its replacement (written before the deletion) is in a new listing, and
        // without it the files the deleted one superseded would seem in force again.
        self.read_until_settled(FileKind::Index, |ids| {
            let vanished = std::sync::atomic::AtomicBool::new(false);
            ids.par_iter().try_for_each(|id| -> Result<()> {
                match self.load_index_file(id) {
                    Ok(f) => {
                        let f = self.within_limits(id, f, &damaged);
                        builder.lock().add_file(*id, &f);
                    }
                    Err(e) if e.is_damage() => damaged.lock().push((*id, e)),
                    Err(Error::ObjectNotFound { .. }) => {
                        vanished.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
                Ok(())
            })?;
            Ok(vanished.into_inner())
        })?;
        let mut damaged = damaged.into_inner();
        damaged.sort_by_key(|(id, _)| *id);
        Ok((builder.into_inner().finish(), damaged))
    }

    /// List the objects of `kind` and give `read` the ids it has not had yet; `read` says
    /// whether one of them was gone when read. Such an object was replaced or released by
    /// another process meanwhile (a prune's index replacement, a lock's refresh: both write
    /// the new object before deleting the old one), so the objects are listed again and the
    /// new ids read, until a round finds none gone. No id is read twice, so a listing that
    /// keeps naming a deleted object (Garage does, for a while, through a node that
    /// rejoined) ends the loop too. Returns the last listing.
    pub(crate) fn read_until_settled(
        &self,
        kind: FileKind,
        mut read: impl FnMut(&[Id]) -> Result<bool>,
    ) -> Result<Vec<Id>> {
        let mut attempted: HashSet<Id> = HashSet::new();
        for _ in 0..20 {
            let listed = self.list_ids(kind)?;
            let new: Vec<Id> = listed
                .iter()
                .copied()
                .filter(|id| attempted.insert(*id))
                .collect();
            if !read(&new)? {
                return Ok(listed);
            }
        }
        Err(Error::Backend(format!(
            "the repository's {} files kept changing while they were read (20 listings); try again",
            kind.name()
        )))
    }

    /// An index file without its entries beyond the format's limits (each reported once, the
    /// file recorded as damaged).
    fn within_limits(
        &self,
        id: &Id,
        mut f: IndexFile,
        damaged: &parking_lot::Mutex<Vec<(Id, Error)>>,
    ) -> IndexFile {
        if let Some((e, err)) = f.drop_over_limit(&self.config).into_iter().next() {
            tracing::warn!(
                "index file {}: entry for blob {} ignored ({err})",
                id.short(),
                e.id.short()
            );
            damaged.lock().push((*id, Error::Format(err)));
        }
        f
    }

    /// The index files in force, in listing order: every index file except those another
    /// one lists in `supersedes` (replaced by prune or repair; a crash may have left them
    /// behind, and they must not resurrect deleted packs). Any damaged index file is an
    /// error. For `repair packs`, which needs each file's own listing; everything else loads
    /// the merged index without holding the files ([`Repository::load_index_strict`]).
    pub fn load_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let (files, damaged) = self.load_index_files_lenient()?;
        refuse_damaged_index(&damaged)?;
        Ok(files)
    }

    /// [`Repository::load_index_files`] that sets damaged index files aside instead of
    /// failing. A file that decodes but has entries beyond the format's limits keeps its
    /// other entries (and its `supersedes`); it is reported as damaged all the same, so that
    /// prune (strict) refuses until `repair index` rewrote it. Transient errors (I/O,
    /// network) still fail: skipping an index file that is merely unreachable would make a
    /// restore report good data as missing.
    #[allow(clippy::type_complexity)]
    pub fn load_index_files_lenient(&self) -> Result<(Vec<(Id, IndexFile)>, Vec<(Id, Error)>)> {
        let ids = self.list_ids(FileKind::Index)?;
        let loaded: Vec<(Id, Result<IndexFile>)> = ids
            .par_iter()
            .map(|id| (*id, self.load_index_file(id)))
            .collect();
        let damaged = parking_lot::Mutex::new(Vec::new());
        let mut files = Vec::new();
        for (id, r) in loaded {
            match r {
                Ok(f) => files.push((id, self.within_limits(&id, f, &damaged))),
                Err(e) if e.is_damage() => damaged.lock().push((id, e)),
                // A file deleted between listing and reading was superseded by a prune.
                Err(Error::ObjectNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let damaged = damaged.into_inner();
        let superseded: std::collections::HashSet<Id> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let files = files
            .into_iter()
            .filter(|(id, _)| !superseded.contains(id))
            .collect();
        Ok((files, damaged))
    }

    /// Load every readable snapshot, oldest first. Damaged snapshot files are skipped with a
    /// warning that names them: one bad file must not hide the others or stop a backup.
    pub fn load_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.load_snapshots_choosing(false)
    }

    /// [`Repository::load_snapshots`], to choose one from: by `latest` (`latest` true) or by
    /// id. With a damaged snapshot file, which snapshot is the latest cannot be known (its
    /// time does not read, and it may be the newest): rather than quietly take an older one,
    /// which would restore older data than asked for (or reset a cluster to an older state),
    /// choosing the latest fails. Ids still resolve.
    pub fn load_snapshots_choosing(&self, latest: bool) -> Result<Vec<(Id, Snapshot)>> {
        let (snaps, damaged) = self.load_snapshots_lenient()?;
        if let (true, Some((id, e))) = (latest, damaged.first()) {
            return Err(Error::Integrity(format!(
                "snapshot file {} is damaged ({e}), so which snapshot is the latest cannot be known: name the snapshot by its id (`cairn snapshots` lists the readable ones), or remove the damaged file with `cairn repair snapshots` (or put back an intact copy)",
                id.short()
            )));
        }
        for (id, e) in &damaged {
            tracing::warn!(
                "snapshot {} is damaged and was skipped ({e}); `cairn repair snapshots` removes it",
                id.short()
            );
        }
        Ok(snaps)
    }

    /// Every snapshot, or an error if any is damaged: for prune, which must not delete the
    /// data of a snapshot it cannot read.
    pub fn load_snapshots_strict(&self) -> Result<Vec<(Id, Snapshot)>> {
        let (snaps, damaged) = self.load_snapshots_lenient()?;
        if let Some((id, e)) = damaged.first() {
            return Err(Error::Integrity(format!(
                "snapshot {} is damaged ({e}); refusing to delete data it may use: remove it with `cairn repair snapshots` (or put back an intact copy of the file), then prune again",
                id.short()
            )));
        }
        Ok(snaps)
    }

    /// Readable snapshots, oldest first, and the damaged ones with their errors.
    #[allow(clippy::type_complexity)]
    pub fn load_snapshots_lenient(&self) -> Result<(Vec<(Id, Snapshot)>, Vec<(Id, Error)>)> {
        let ids = self.list_ids(FileKind::Snapshot)?;
        let loaded: Vec<(Id, Result<Snapshot>)> = ids
            .par_iter()
            .map(|id| (*id, self.load::<Snapshot>(FileKind::Snapshot, id)))
            .collect();
        let mut snaps = Vec::new();
        let mut damaged = Vec::new();
        for (id, r) in loaded {
            match r {
                Ok(s) => snaps.push((id, s)),
                Err(e) if e.is_damage() => damaged.push((id, e)),
                // Removed by a concurrent forget between listing and reading.
                Err(Error::ObjectNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        snaps.sort_by(|a, b| {
            a.1.time
                .unix_nanos
                .cmp(&b.1.time.unix_nanos)
                .then(a.0.cmp(&b.0))
        });
        Ok((snaps, damaged))
    }

    /// Read, authenticate and verify one blob.
    pub(crate) fn read_blob(
        &self,
        index: &MasterIndex,
        blob_type: BlobType,
        id: &Id,
    ) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| {
            Error::Integrity(format!(
                "blob {id} is not in the index (`cairn check` tells what is damaged)"
            ))
        })?;
        if loc.blob_type != blob_type {
            return Err(Error::Integrity(format!(
                "blob {id} is a {:?} blob, not {blob_type:?}",
                loc.blob_type
            )));
        }
        let entry = crate::index::entry_of(*id, &loc);
        // Checked before the read: the read allocates `length` bytes.
        cairn_format::check_entry_limits(&entry, self.config.max_blob_len(blob_type))?;
        let pack = index.pack_id(&loc);
        if entry.grouped() {
            return self.read_grouped(index, &loc, pack, &entry);
        }
        let mut sealed = self.read_box(index, &loc, id)?;
        Ok(self.opener(pack).open(&entry, &mut sealed)?.into_owned())
    }

    /// Read the sealed box (a blob alone or a group) at `loc`, which holds blob `id`.
    fn read_box(&self, index: &MasterIndex, loc: &BlobLocation, id: &Id) -> Result<Vec<u8>> {
        let pack = index.pack_id(loc);
        let (name, offset, len) = (pack.to_hex(), u64::from(loc.offset), u64::from(loc.length));
        // Tree packs hold only tree blobs (the packer keeps the types apart): cacheable
        // metadata, whether a tree is sealed alone or in a group (format 5).
        let read = if loc.blob_type == BlobType::Tree {
            self.backend.get_tree_range(&name, offset, len)
        } else {
            self.backend.get_range(FileKind::Pack, &name, offset, len)
        };
        read.map_err(|e| match e {
            // A live pack the index names is gone: damage (exit 13), like a blob that does
            // not open. (A condemned one may have been deleted by a prune: not damage.)
            Error::ObjectNotFound { .. } if index.condemned_at(loc.pack).is_none() => {
                Error::Integrity(format!(
                    "pack {} holding blob {} is indexed but missing from the repository (`cairn check` tells what is damaged)",
                    pack.short(),
                    id.short()
                ))
            }
            e => e,
        })
    }

    /// Read one grouped blob. The groups this thread read last are kept (a few, at most
    /// `MAX_GROUP_LEN` each): readers that go through a file blob by blob (`dump`, `mount`,
    /// `copy`) find its next pages there instead of reading and inflating a group per page,
    /// also when the file's pages were stored in a few groups side by side.
    fn read_grouped(
        &self,
        index: &MasterIndex,
        loc: &BlobLocation,
        pack: Id,
        e: &cairn_format::PackEntry,
    ) -> Result<Vec<u8>> {
        type Key = ([u8; 32], Id, u32, u32);
        const KEEP: usize = 4;
        thread_local! {
            static RECENT: std::cell::RefCell<Vec<(Key, Arc<Vec<u8>>)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        // Keyed by repository too: the plaintext depends on the repository's key.
        let key = (self.config.repo_id, pack, e.offset, e.length);
        let cached = RECENT.with(|r| {
            let mut r = r.borrow_mut();
            let i = r.iter().position(|(k, _)| *k == key)?;
            let hit = r.remove(i);
            let group = hit.1.clone();
            r.push(hit);
            Some(group)
        });
        let group = match cached {
            Some(g) => g,
            None => {
                let mut sealed = self.read_box(index, loc, &e.id)?;
                let group = Arc::new(
                    cairn_format::open_group_in_place(&self.key, e.blob_type, &mut sealed)
                        .map_err(|err| {
                            // The group is shared: name the blob the caller asked for too.
                            damaged_pack(
                                &pack,
                                format!(
                                    "{err} (the group holding {:?} blob {})",
                                    e.blob_type,
                                    e.id.short()
                                ),
                            )
                        })?
                        .into_owned(),
                );
                RECENT.with(|r| {
                    let mut r = r.borrow_mut();
                    if r.len() >= KEEP {
                        r.remove(0);
                    }
                    r.push((key, group.clone()));
                });
                group
            }
        };
        // The cached group was authenticated when it was opened; every blob taken from it
        // is still checked against its own id.
        cairn_format::blob_in_group(&self.key, e, &group)
            .map(<[u8]>::to_vec)
            .map_err(|err| damaged_pack(&pack, err))
    }

    /// Read and decode a tree blob.
    pub(crate) fn load_tree(&self, index: &MasterIndex, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(index, BlobType::Tree, id)?;
        Tree::decode(&bytes).map_err(|e| Error::Integrity(format!("tree {}: {e}", id.short())))
    }

    /// Read and decode a content list (format 4): the data blob ids it holds.
    pub(crate) fn load_content_list(&self, index: &MasterIndex, id: &Id) -> Result<Vec<Id>> {
        let bytes = self.read_blob(index, BlobType::Tree, id)?;
        cairn_format::decode_content_list(&bytes)
            .map_err(|e| Error::Integrity(format!("content list {}: {e}", id.short())))
    }

    /// A file's data blob ids in order: named by its node, or read from the content lists it
    /// names. At most `MAX_CONTENT_IDS`, whatever the lists claim.
    pub(crate) fn file_blobs<'c>(
        &self,
        index: &MasterIndex,
        content: &'c Content,
    ) -> Result<std::borrow::Cow<'c, [Id]>> {
        let lists = match content {
            Content::Blobs(ids) => return Ok(std::borrow::Cow::Borrowed(ids)),
            Content::Lists(lists) => lists,
        };
        let mut ids = Vec::new();
        for list in lists {
            ids.extend(self.load_content_list(index, list)?);
            if ids.len() > cairn_format::MAX_CONTENT_IDS {
                return Err(Error::Integrity(format!(
                    "a file's content lists name more than {} blobs",
                    cairn_format::MAX_CONTENT_IDS
                )));
            }
        }
        Ok(std::borrow::Cow::Owned(ids))
    }

    /// Add a key file for another password.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<Id> {
        add_key_file(self.backend.as_ref(), &self.key, password, kdf)
    }

    /// All key files, decoded (envelopes only).
    pub fn list_keys(&self) -> Result<Vec<(Id, KeyFile)>> {
        let mut out = Vec::new();
        for o in self.backend.list(FileKind::Key)? {
            let data = self.backend.get(FileKind::Key, &o.name)?;
            verify_name(FileKind::Key, &o.name, &data)?;
            out.push((Id::from_hex(&o.name)?, KeyFile::decode(&data)?));
        }
        Ok(out)
    }

    /// Remove a key file. Refuses the last key and the key in use.
    pub fn remove_key(&self, id: &Id) -> Result<()> {
        self.require_delete_rights("key remove")?;
        let keys = self.list_keys()?;
        if !keys.iter().any(|(k, _)| k == id) {
            return Err(Error::not_found(FileKind::Key, &id.to_hex()));
        }
        if keys.len() <= 1 {
            return Err(Error::Invalid(
                "refusing to remove the last key: the repository would be unreadable".into(),
            ));
        }
        if *id == self.key_id {
            return Err(Error::Invalid(
                "refusing to remove the key this session is using; use `key passwd` to change it"
                    .into(),
            ));
        }
        self.backend.delete(FileKind::Key, &id.to_hex())
    }

    /// Replace the current key with one for `password` (add, then remove: never zero keys).
    pub fn change_password(&mut self, password: &[u8], kdf: KdfParams) -> Result<Id> {
        // It deletes the old key file: find out before adding the new one.
        self.require_delete_rights("key passwd")?;
        let new_id = self.add_key(password, kdf)?;
        let old = self.key_id;
        self.key_id = new_id;
        self.backend.delete(FileKind::Key, &old.to_hex())?;
        Ok(new_id)
    }
}

fn add_key_file(
    backend: &dyn Backend,
    key: &MasterKey,
    password: &[u8],
    kdf: KdfParams,
) -> Result<Id> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let kf = KeyFile::wrap(
        key,
        password,
        kdf,
        now_timestamp(),
        hostname(),
        username(),
        nonce,
    )?;
    let data = kf.encode();
    let id = Id::of_object(&data);
    backend.put(FileKind::Key, &id.to_hex(), &data)?;
    Ok(id)
}

/// A repository whose index is loaded: what reading trees and blobs needs.
#[derive(Debug)]
pub struct Indexed<'r> {
    repo: &'r Repository,
    index: MasterIndex,
}

impl<'r> Indexed<'r> {
    /// The repository.
    pub fn repo(&self) -> &'r Repository {
        self.repo
    }

    /// The index.
    pub fn index(&self) -> &MasterIndex {
        &self.index
    }

    /// Read and decode a tree blob.
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        self.repo.load_tree(&self.index, id)
    }

    /// Read, authenticate and verify one blob.
    pub fn read_blob(&self, blob_type: BlobType, id: &Id) -> Result<Vec<u8>> {
        self.repo.read_blob(&self.index, blob_type, id)
    }

    /// Read and decode a content list (format 4).
    pub fn load_content_list(&self, id: &Id) -> Result<Vec<Id>> {
        self.repo.load_content_list(&self.index, id)
    }

    /// A file's data blob ids in order, through its content lists if it names them.
    pub fn file_blobs<'c>(&self, content: &'c Content) -> Result<std::borrow::Cow<'c, [Id]>> {
        self.repo.file_blobs(&self.index, content)
    }
}

/// Opens the blobs of one pack from buffers that hold its bytes. A blob sealed alone is
/// opened in place. A group's box (format version 2) is opened once and its blobs are then
/// served from the decoded group: callers walk a pack's entries in order, so the blobs of a
/// group come one after the other, and only the first of them reads the box (which is left
/// decrypted in the caller's buffer).
pub(crate) struct BlobOpener<'r> {
    repo: &'r Repository,
    pack: Id,
    /// The last group opened: its box (offset, length) and its plaintext, or why it failed.
    group: Option<OpenedGroup>,
}

/// A group's box (offset, length) and its plaintext, or why it did not open.
type OpenedGroup = ((u32, u32), std::result::Result<Vec<u8>, String>);

impl BlobOpener<'_> {
    /// Open the blob of entry `e`; `sealed` holds its box (`e.offset .. e.offset + e.length`
    /// of the pack). Authenticated, decompressed within the format's limits and verified
    /// against the id and length; errors name the pack.
    pub(crate) fn open<'s>(
        &'s mut self,
        e: &cairn_format::PackEntry,
        sealed: &'s mut [u8],
    ) -> Result<std::borrow::Cow<'s, [u8]>> {
        let pack = self.pack;
        let damaged = move |err: String| damaged_pack(&pack, err);
        // Checked before anything is opened: the decoders allocate what an entry claims.
        cairn_format::check_entry_limits(e, self.repo.config.max_blob_len(e.blob_type))?;
        if !e.grouped() {
            return open_blob_in_place(&self.repo.key, e.blob_type, &e.id, sealed, e.raw_length)
                .map_err(|err| damaged(err.to_string()));
        }
        let span = (e.offset, e.length);
        if self.group.as_ref().map(|(k, _)| *k) != Some(span) {
            let opened = cairn_format::open_group_in_place(&self.repo.key, e.blob_type, sealed)
                .map(std::borrow::Cow::into_owned)
                .map_err(|err| err.to_string());
            self.group = Some((span, opened));
        }
        match &self.group {
            Some((_, Ok(group))) => cairn_format::blob_in_group(&self.repo.key, e, group)
                .map(std::borrow::Cow::Borrowed)
                .map_err(|err| damaged(err.to_string())),
            Some((_, Err(msg))) => Err(damaged(msg.clone())),
            None => Err(damaged("no group".into())),
        }
    }

    /// The plaintext length of the group opened last, if it opened: `check` compares it
    /// with what the pack header says the group holds.
    pub(crate) fn group_len(&self) -> Option<usize> {
        match &self.group {
            Some((_, Ok(g))) => Some(g.len()),
            _ => None,
        }
    }
}

/// A blob or group of `pack` that failed authentication or verification.
fn damaged_pack(pack: &Id, err: impl std::fmt::Display) -> Error {
    Error::Integrity(format!("pack {}: {err}", pack.short()))
}

/// The error of an operation that deletes (prune, repair) when an index file is damaged: it
/// cannot know every pack in use.
fn refuse_damaged_index(damaged: &[(Id, Error)]) -> Result<()> {
    match damaged.first() {
        Some((id, e)) => Err(Error::Integrity(format!(
            "index file {} is damaged ({e}); refusing to go on without knowing every pack in use: run `cairn repair index` first",
            id.short()
        ))),
        None => Ok(()),
    }
}

/// Check that an object's bytes hash to its name (config is named, not hashed).
pub fn verify_name(kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
    if kind == FileKind::Config {
        return Ok(());
    }
    let actual = Id::of_object(data);
    if actual.to_hex() != name {
        return Err(Error::ObjectHashMismatch {
            kind: kind.name(),
            name: name.to_owned(),
            actual: actual.to_hex(),
        });
    }
    Ok(())
}
