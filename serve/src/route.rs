//! Request paths: which repository, which object or listing.
//!
//! `/<repo>/config`, `/<repo>/<kind dir>/<name>` (packs as `data/<name>`, like restic's REST
//! protocol), `/<repo>/<kind dir>/` for a listing, `POST /<repo>/?create=true` to lay out a
//! new repository. `<repo>` is zero or more path segments under the server root.

use cairn_format::FileKind;

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The repository itself (`POST …?create=true`).
    Repository,
    /// All objects of a kind.
    List(FileKind),
    /// One object.
    Object(FileKind, String),
}

/// A parsed request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The repository path under the root (`""`: the root itself).
    pub repo: String,
    /// What in it.
    pub target: Target,
}

/// Most path segments a repository path may have.
const MAX_REPO_DEPTH: usize = 8;

/// Whether `repo` is a repository path the server accepts: segments of letters, digits,
/// `.`, `_` and `-`, none starting with `.`, so that no path can leave the root or reach a
/// temporary file.
pub fn check_repo_path(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() {
        return Ok(());
    }
    let segs: Vec<&str> = repo.split('/').collect();
    if segs.len() > MAX_REPO_DEPTH {
        return Err("too many path segments");
    }
    for s in segs {
        if s.is_empty() || s.len() > 64 {
            return Err("empty or over-long path segment");
        }
        if s.starts_with('.') {
            return Err("path segments may not start with '.'");
        }
        // A repository inside another one's layout would show up in its listings.
        if s == "config" || FileKind::ALL.iter().any(|k| k.dir() == s) {
            return Err("path segments may not be named like a repository's own entries");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err("path segments are letters, digits, '.', '_' and '-'");
        }
    }
    Ok(())
}

fn kind_of_dir(dir: &str) -> Option<FileKind> {
    FileKind::ALL
        .into_iter()
        .find(|k| *k != FileKind::Config && k.dir() == dir)
}

/// Parse a request path (without the query). `create` is the `?create=true` of a POST.
pub fn parse(path: &str, create: bool) -> Result<Route, &'static str> {
    if path.contains('%') || path.contains("//") {
        return Err("encoded or empty path segments are not accepted");
    }
    let trimmed = path
        .strip_prefix('/')
        .ok_or("the path must start with '/'")?;
    let mut segs: Vec<&str> = trimmed.split('/').collect();
    let listing = segs.last() == Some(&"");
    if listing {
        segs.pop();
    }
    let route = |repo: &[&str], target| {
        let repo = repo.join("/");
        check_repo_path(&repo)?;
        Ok(Route { repo, target })
    };
    if create {
        return route(&segs, Target::Repository);
    }
    let n = segs.len();
    if n == 0 {
        return Err("no repository object in the path");
    }
    if segs[n - 1] == "config" && !listing {
        return route(
            &segs[..n - 1],
            Target::Object(FileKind::Config, "config".into()),
        );
    }
    if let Some(kind) = kind_of_dir(segs[n - 1]) {
        return route(&segs[..n - 1], Target::List(kind));
    }
    if n >= 2 && !listing {
        if let Some(kind) = kind_of_dir(segs[n - 2]) {
            let name = segs[n - 1];
            if name.len() != 64 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err("object names are 64 lowercase hex digits");
            }
            return route(&segs[..n - 2], Target::Object(kind, name.to_owned()));
        }
    }
    Err("no repository object in the path")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let name = "ab".repeat(32);
        assert_eq!(
            parse(&format!("/k3s/data/{name}"), false).unwrap(),
            Route {
                repo: "k3s".into(),
                target: Target::Object(FileKind::Pack, name.clone())
            }
        );
        assert_eq!(
            parse(&format!("/snapshots/{name}"), false).unwrap(),
            Route {
                repo: "".into(),
                target: Target::Object(FileKind::Snapshot, name.clone())
            }
        );
        assert_eq!(
            parse("/site-a/k3s/config", false).unwrap().target,
            Target::Object(FileKind::Config, "config".into())
        );
        assert_eq!(
            parse("/k3s/locks/", false).unwrap().target,
            Target::List(FileKind::Lock)
        );
        assert_eq!(
            parse("/k3s/", true).unwrap(),
            Route {
                repo: "k3s".into(),
                target: Target::Repository
            }
        );
        for bad in [
            "/../data/x",
            "/k3s/data/ABCD",
            "/k3s/data/../../etc/passwd",
            "/.ssh/config",
            "/k3s/data/%2e%2e",
            "/k3s//config",
            "/k3s/whatever",
            "/k3s/data/snapshots/",
            "/k3s/index/config",
            "/",
            "k3s/config",
        ] {
            assert!(parse(bad, false).is_err(), "{bad}");
        }
        assert!(parse(&format!("/k3s/data/{}", "ab".repeat(31)), false).is_err());
    }
}
