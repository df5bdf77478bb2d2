//! Reading a snapshot's tree: find a node by path, walk a directory (recursively, streaming).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cairn_format::{Id, Node, NodeKind, Tree};

use crate::progress::interrupted;
use crate::repository::Indexed;
use crate::{Error, Result};

/// The node at `path` (relative to the snapshot root, no `..`) of the tree `root`.
pub fn find_node(ix: &Indexed<'_>, root: &Id, path: &Path) -> Result<Option<Node>> {
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::Invalid(format!(
            "path {} contains '..'",
            path.display()
        )));
    }
    let mut tree = ix.load_tree(root)?;
    let comps: Vec<&[u8]> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let Some(node) = tree.get(c).cloned() else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(node));
        }
        match node.subtree {
            Some(id) if node.kind == NodeKind::Dir => tree = ix.load_tree(&id)?,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// What `ls SNAPSHOT:PATH` lists: the directory's entries with the path they are under, or
/// the one node when `path` names a file.
pub fn listing(ix: &Indexed<'_>, root: &Id, path: &Path) -> Result<(Tree, PathBuf)> {
    let abs = Path::new("/").join(path);
    if path.as_os_str().is_empty() || abs == Path::new("/") {
        return Ok((ix.load_tree(root)?, PathBuf::from("/")));
    }
    let node = find_node(ix, root, path)?
        .ok_or_else(|| Error::Invalid(format!("{} not found in snapshot", abs.display())))?;
    Ok(match node.subtree {
        Some(id) if node.kind == NodeKind::Dir => (ix.load_tree(&id)?, abs),
        _ => (
            Tree { nodes: vec![node] },
            abs.parent().unwrap_or(Path::new("/")).to_path_buf(),
        ),
    })
}

/// Call `f` with the path and node of every entry of `tree` (under `base`), and with
/// `recursive` of every entry below, depth first in name order. Iterative and streaming:
/// memory holds one tree per level of the current path, whatever the depth or size.
pub fn walk(
    ix: &Indexed<'_>,
    tree: Tree,
    base: &Path,
    recursive: bool,
    f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    // (entries of one directory, next index, its path)
    let mut stack: Vec<(Vec<Node>, usize, PathBuf)> = vec![(tree.nodes, 0, base.to_path_buf())];
    while let Some((nodes, i, dir)) = stack.last_mut() {
        let Some(n) = nodes.get(*i) else {
            stack.pop();
            continue;
        };
        *i += 1;
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let p = dir.join(OsStr::from_bytes(&n.name));
        f(&p, n)?;
        if recursive && n.kind == NodeKind::Dir {
            if let Some(id) = n.subtree {
                let sub = ix.load_tree(&id)?;
                stack.push((sub.nodes, 0, p));
            }
        }
    }
    Ok(())
}
