//! K3s's default datastore: kine's SQLite database (`server/db/state.db`).
//!
//! K3s keeps writing while the job runs, in WAL mode: a plain file copy can pair a main file
//! with a WAL from another moment, or miss committed transactions still in the WAL. The copy
//! here goes through SQLite's online backup API in a single step, which reads every page
//! inside one read transaction: a consistent database as of one commit, while K3s goes on
//! writing (WAL readers never block writers). The copy is converted to a self-contained
//! rollback-journal file (no `-wal`/`-shm` beside it) and must pass `PRAGMA
//! integrity_check` and hold kine's table before it is stored; the same check runs after a
//! restore.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{Error, Result};

/// What a checked copy holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SqliteInfo {
    /// Database pages.
    pub pages: u64,
    /// Page size.
    pub page_size: u64,
    /// Rows in kine's table.
    pub rows: u64,
    /// The newest kine revision (the row id K3s's watch resumes from).
    pub revision: i64,
}

fn sql_err<'a>(path: &'a Path, what: &str) -> impl Fn(rusqlite::Error) -> Error + 'a {
    let what = what.to_owned();
    move |e| Error::Invalid(format!("{}: {what}: {e}", path.display()))
}

/// Copy the live database `src` to `dst` (which must not exist) consistently, then check the
/// copy. `busy` bounds how long a lock held by the writer may delay the copy.
pub fn backup_sqlite(src: &Path, dst: &Path, busy: Duration) -> Result<SqliteInfo> {
    // Opening read-only never creates a database where none was.
    std::fs::metadata(src).map_err(|e| Error::io(src, e))?;
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(src, "open"))?;
    from.busy_timeout(busy)
        .map_err(sql_err(src, "busy timeout"))?;
    {
        let mut to = Connection::open(dst).map_err(sql_err(dst, "create"))?;
        let backup =
            rusqlite::backup::Backup::new(&from, &mut to).map_err(sql_err(src, "backup"))?;
        // -1: every page in one step, i.e. one read transaction (a consistent copy). Busy or
        // locked answers are retried until `busy` has passed.
        let deadline = std::time::Instant::now() + busy;
        loop {
            match backup.step(-1).map_err(sql_err(src, "backup"))? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => continue,
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{}: the database stayed locked for {busy:?}; no consistent copy",
                        src.display()
                    )))
                }
            }
        }
        drop(backup);
        // A self-contained file: what restore puts back needs nothing beside it.
        let mode: String = to
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .map_err(sql_err(dst, "journal mode"))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(Error::Invalid(format!(
                "{}: could not leave WAL mode (journal_mode {mode})",
                dst.display()
            )));
        }
        to.close().map_err(|(_, e)| sql_err(dst, "close")(e))?;
    }
    check_sqlite(dst)
}

/// [`check_sqlite`] of a restored file that is to be installed alone: it must be a
/// self-contained rollback-journal database with no WAL or journal beside it, or what was
/// checked (the database with a WAL merged in) would not be what gets installed.
pub fn check_restored_sqlite(path: &Path) -> Result<SqliteInfo> {
    check(path, true)
}

/// `PRAGMA integrity_check` plus kine's table: the checks a copy passes before it is stored
/// and a restored file before it is offered for K3s.
pub fn check_sqlite(path: &Path) -> Result<SqliteInfo> {
    check(path, false)
}

fn check(path: &Path, standalone: bool) -> Result<SqliteInfo> {
    // The header: magic, then (bytes 18 and 19) the write/read format, 2 in WAL mode.
    let mut head = Vec::with_capacity(20);
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 20), &mut head))
        .map_err(|e| Error::io(path, e))?;
    if !head.starts_with(b"SQLite format 3\0") {
        return Err(Error::Invalid(format!(
            "{} is not an SQLite database",
            path.display()
        )));
    }
    if standalone {
        if head.get(18..20) != Some(&[1u8, 1][..]) {
            return Err(Error::Invalid(format!(
                "{} is in WAL mode: not a database cairn stored (those are self-contained)",
                path.display()
            )));
        }
        for suffix in ["-wal", "-journal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            if std::fs::symlink_metadata(&side).is_ok() {
                return Err(Error::Invalid(format!(
                    "{} has a {suffix} file beside it: what would be installed is not what is checked",
                    path.display()
                )));
            }
        }
    }
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(path, "open"))?;
    // The schema is the file's, i.e. possibly hostile: no functions from it, and `kine`
    // must be a real table (a recursive view would never finish counting).
    db.execute_batch("PRAGMA trusted_schema = OFF")
        .map_err(sql_err(path, "trusted_schema"))?;
    let is_table: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kine'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err(path, "schema"))?;
    if is_table != 1 {
        return Err(Error::Invalid(format!(
            "{} is not a K3s (kine) datastore: it has no kine table",
            path.display()
        )));
    }
    let mut stmt = db
        .prepare("PRAGMA integrity_check(20)")
        .map_err(sql_err(path, "integrity_check"))?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql_err(path, "integrity_check"))?
        .collect::<std::result::Result<_, _>>()
        .map_err(sql_err(path, "integrity_check"))?;
    if problems != ["ok"] {
        return Err(Error::Invalid(format!(
            "{} fails SQLite's integrity check: {}",
            path.display(),
            problems.join("; ")
        )));
    }
    let pragma = |name: &str| -> Result<u64> {
        db.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64)
            .map_err(sql_err(path, name))
    };
    let (pages, page_size) = (pragma("page_count")?, pragma("page_size")?);
    let (rows, revision) = db
        .query_row("SELECT count(*), coalesce(max(id), 0) FROM kine", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(|e| {
            Error::Invalid(format!(
                "{} is not a K3s (kine) datastore: {e}",
                path.display()
            ))
        })?;
    Ok(SqliteInfo {
        pages,
        page_size,
        rows: rows.max(0) as u64,
        revision,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kine(path: &Path, rows: i64) {
        let db = Connection::open(path).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB);",
        )
        .unwrap();
        for i in 0..rows {
            db.execute(
                "INSERT INTO kine (name, value) VALUES (?1, ?2)",
                (format!("/registry/x/{i}"), vec![i as u8; 300]),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_copy_of_a_wal_database_is_whole_and_self_contained() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("state.db");
        kine(&src, 500);
        // The writer's connection is still open, its commits still (partly) in the WAL.
        let writer = Connection::open(&src).unwrap();
        writer
            .execute("INSERT INTO kine (name, value) VALUES ('last', x'00')", [])
            .unwrap();
        let dst = dir.path().join("copy.db");
        let info = backup_sqlite(&src, &dst, Duration::from_secs(5)).unwrap();
        assert_eq!(info.rows, 501);
        assert_eq!(info.revision, 501);
        assert!(!dir.path().join("copy.db-wal").exists());
        drop(writer);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        std::fs::write(&p, b"not a database at all, not even close....").unwrap();
        assert!(check_sqlite(&p)
            .unwrap_err()
            .to_string()
            .contains("not an SQLite"));

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(check_sqlite(&other)
            .unwrap_err()
            .to_string()
            .contains("kine"));

        let db = dir.path().join("state.db");
        kine(&db, 2000);
        let copy = dir.path().join("copy.db");
        backup_sqlite(&db, &copy, Duration::from_secs(5)).unwrap();
        let mut bytes = std::fs::read(&copy).unwrap();
        // Scribble over a b-tree page in the middle of the table.
        let mid = bytes.len() / 2 / 4096 * 4096;
        for b in &mut bytes[mid..mid + 64] {
            *b = 0x5a;
        }
        std::fs::write(&copy, &bytes).unwrap();
        assert!(check_sqlite(&copy).is_err());

        assert!(backup_sqlite(
            &dir.path().join("absent.db"),
            &dir.path().join("c2"),
            Duration::from_secs(1)
        )
        .is_err());
    }
}
