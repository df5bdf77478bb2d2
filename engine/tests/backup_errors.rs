//! A repository that cannot be written (full disk, unwritable temp dir) must fail the backup,
//! never be reported as unreadable *source* files that the backup skips.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use cairn_engine::ops::backup::backup;
use cairn_engine::{
    Backend, BackupOptions, Error, InitOptions, LocalBackend, ObjectInfo, Progress, Repository,
    Result,
};
use cairn_format::{FileKind, KdfParams};

/// A local backend whose temporary pack files must go to a directory that does not exist,
/// as if the repository's disk refused every new file.
#[derive(Debug)]
struct NoSpace(LocalBackend);

impl Backend for NoSpace {
    fn location(&self) -> String {
        self.0.location()
    }
    fn exists(&self) -> Result<bool> {
        self.0.exists()
    }
    fn create(&self) -> Result<()> {
        self.0.create()
    }
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.0.put(kind, name, data)
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.0.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.0.get_range(kind, name, offset, len)
    }
    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        self.0.stat(kind, name)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        self.0.list(kind)
    }
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.0.delete(kind, name)
    }
    fn temp_dir(&self) -> PathBuf {
        PathBuf::from("/nonexistent/cairn-test-no-space")
    }
}

#[test]
fn repository_write_errors_abort_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a"), vec![7u8; 300_000]).unwrap();
    std::fs::write(src.join("sub/b"), vec![9u8; 300_000]).unwrap();
    let opts = InitOptions {
        kdf: KdfParams::new(8 * 1024, 1, 1),
        ..InitOptions::default()
    };
    let be: Arc<dyn Backend> = Arc::new(NoSpace(LocalBackend::new(tmp.path().join("repo"))));
    let repo = Repository::init(be, b"pw", opts).unwrap();
    let backup_opts = BackupOptions {
        paths: vec![src.clone()],
        stdin: None,
        staged: None,
        tags: vec![],
        host: None,
        time: None,
        parent: None,
        force: false,
        excludes: vec![],
        one_file_system: false,
    };
    let warn =
        move |w: &str| panic!("a repository write error was reported as a source warning: {w}");
    let lock = repo.lock_shared(std::time::Duration::ZERO).unwrap();
    let res = backup(&lock, backup_opts, &Progress::default(), &warn);
    assert!(
        matches!(res, Err(Error::Io { .. })),
        "expected an I/O error, got {res:?}"
    );
    assert!(
        repo.load_snapshots().unwrap().is_empty(),
        "no snapshot may be written"
    );
}
