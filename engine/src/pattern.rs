//! The pattern language of `--exclude` (backup, restore) and `--include` (restore): one
//! language, the same in both places, restic's.
//!
//! - A pattern **without `/`** matches an entry's base name anywhere in the tree:
//!   `*.tmp` matches `/var/log/x.tmp` and `/x.tmp`; `cache` matches every entry named
//!   `cache`.
//! - A pattern **with `/`** matches the whole path. Starting with `/` it is anchored at the
//!   root (`/var/lib/*/cache` matches `/var/lib/app/cache`, not `/var/lib/a/b/cache`);
//!   otherwise it may start at any directory (`lib/*/cache` matches `/var/lib/app/cache`).
//!   A trailing `/` is ignored.
//! - `*` and `?` never match `/`; `**` matches any number of whole path components
//!   (`/srv/**/*.log` matches `/srv/a.log` and `/srv/x/y/a.log`); `[abc]`, `[!abc]`
//!   and `{a,b}` work as in a shell; `\` escapes the next character.
//!
//! Paths are those inside the snapshot (for restore) or on the file system (for backup),
//! absolute. An entry matched by an exclude is skipped with everything below it. For
//! restore, an entry is included when it or any of its ancestors matches an include, and a
//! directory is created when anything below it is.

use std::ffi::OsStr;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{Error, Result};

/// A compiled set of patterns (see the module documentation).
#[derive(Debug, Clone)]
pub struct Patterns {
    /// Patterns with a `/`: matched against the whole path.
    paths: GlobSet,
    /// Patterns without: matched against the base name.
    names: GlobSet,
}

impl Patterns {
    /// Compile `patterns`; a malformed one is an error naming it.
    pub fn new(patterns: &[String]) -> Result<Patterns> {
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for p in patterns {
            let compile = |pat: &str| {
                GlobBuilder::new(pat)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| Error::Invalid(format!("bad pattern {p:?}: {e}")))
            };
            if p.contains('/') {
                let pat = p.trim_end_matches('/');
                // `/` (or `//`) names the root: everything.
                let pat = if pat.is_empty() { "/**" } else { pat };
                let full = if pat.starts_with('/') {
                    pat.to_owned()
                } else {
                    format!("**/{pat}")
                };
                paths.add(compile(&full)?);
            } else {
                names.add(compile(p)?);
            }
        }
        Ok(Patterns {
            paths: paths.build().map_err(|e| Error::Invalid(e.to_string()))?,
            names: names.build().map_err(|e| Error::Invalid(e.to_string()))?,
        })
    }

    /// Whether the entry at absolute `path`, whose base name is `name`, matches.
    pub fn matches(&self, path: &Path, name: &OsStr) -> bool {
        self.names.is_match(Path::new(name)) || self.paths.is_match(path)
    }

    /// Whether `path` or one of its ancestors matches (for includes: everything below an
    /// included directory is included).
    pub fn matches_path_or_ancestor(&self, path: &Path) -> bool {
        path.ancestors()
            .any(|a| a.file_name().is_some_and(|n| self.matches(a, n)))
    }

    /// No patterns at all.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.names.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(pats: &[&str], path: &str) -> bool {
        let p = Patterns::new(&pats.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        let path = Path::new(path);
        p.matches(path, path.file_name().unwrap())
    }

    #[test]
    fn documented_examples() {
        assert!(m(&["*.tmp"], "/var/log/x.tmp"));
        assert!(m(&["*.tmp"], "/x.tmp"));
        assert!(!m(&["*.tmp"], "/x.tmp/y"));
        assert!(m(&["cache"], "/home/u/cache"));
        assert!(m(&["/var/lib/*/cache"], "/var/lib/app/cache"));
        assert!(!m(&["/var/lib/*/cache"], "/var/lib/a/b/cache"));
        assert!(m(&["lib/*/cache"], "/var/lib/app/cache"));
        assert!(m(&["/srv/**/*.log"], "/srv/a.log"));
        assert!(m(&["/srv/**/*.log"], "/srv/x/y/a.log"));
        assert!(m(&["/srv/data/"], "/srv/data"));
        assert!(m(&["*.{yaml,json}"], "/m/a.json"));
        // `*` never crosses `/`, in includes as in excludes (it did in includes before).
        assert!(!m(&["/srv/*.log"], "/srv/x/a.log"));
    }

    #[test]
    fn ancestors_include_everything_below() {
        let p = Patterns::new(&["/srv/data".to_owned()]).unwrap();
        assert!(p.matches_path_or_ancestor(Path::new("/srv/data/x/y")));
        assert!(!p.matches_path_or_ancestor(Path::new("/srv/other/x")));
    }
}
