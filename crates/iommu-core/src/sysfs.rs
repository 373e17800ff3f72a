//! The sysfs view held by the core: directories, attribute files and
//! symlinks, rooted like `/sys`.
//!
//! Paths are relative to the root (`kernel/iommu_groups/0/type`). Links store
//! their target as a root-relative path and read back relative to the link's
//! own directory, as `readlink` shows them on Linux. Group attribute files are
//! computed on read (and parsed on write) by the group they belong to, so the
//! model can never show stale contents.

use crate::prelude::*;
use alloc::collections::{BTreeMap, BTreeSet};
use core::fmt::Write as _;
use iommu_types::Errno;

/// Attribute files whose contents the core computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    /// `kernel/iommu_groups/<id>/type`.
    GroupType(u32),
    /// `kernel/iommu_groups/<id>/reserved_regions`.
    GroupResvRegions(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File(String),
    Attr(Attr),
    Link(String),
}

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular (attribute) file.
    File,
    /// A symbolic link, with its target as `readlink` shows it.
    Link(String),
}

/// The tree itself; callers hold the subsystem's sysfs lock around it.
#[derive(Debug, Default)]
pub(crate) struct SysfsTree {
    nodes: BTreeMap<String, Node>,
    /// Directories that belong to a device; a device's directory may hold
    /// its children's (a bridge's functions), which outlive its removal.
    device_dirs: BTreeSet<String>,
    /// Directories of removed devices kept only for the children inside;
    /// each goes with its last child.
    orphan_dirs: BTreeSet<String>,
}

/// Whether `name` can be one path component: not empty, not `.` or `..`,
/// without `/` or NUL, and at most 255 bytes (Linux's `NAME_MAX`).
pub(crate) fn is_valid_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\0'])
}

/// Whether `dir` is a place for a device: `devices/` followed by valid
/// components (so never inside `kernel/` or `bus/`).
pub(crate) fn is_valid_device_dir(dir: &str) -> bool {
    let mut comps = dir.split('/');
    comps.next() == Some("devices") && {
        let rest: Vec<&str> = comps.collect();
        !rest.is_empty() && rest.iter().all(|c| is_valid_component(c))
    }
}

const MAX_LINK_HOPS: usize = 40;

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// `target` written relative to the directory holding `link`.
fn relative_target(link: &str, target: &str) -> String {
    let dir: Vec<&str> = parent_of(link)
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let tgt: Vec<&str> = target.split('/').filter(|s| !s.is_empty()).collect();
    let common = dir.iter().zip(&tgt).take_while(|(a, b)| a == b).count();
    let mut out: Vec<&str> = vec![".."; dir.len() - common];
    out.extend(&tgt[common..]);
    out.join("/")
}

impl SysfsTree {
    pub(crate) fn new() -> Self {
        let mut t = Self::default();
        for d in ["bus", "devices", "kernel", "kernel/iommu_groups"] {
            t.nodes.insert(d.to_string(), Node::Dir);
        }
        t
    }

    fn check_parent(&self, path: &str) -> Result<(), Errno> {
        let parent = parent_of(path);
        if parent.is_empty() || matches!(self.nodes.get(parent), Some(Node::Dir)) {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        }
    }

    /// Creates a directory and any missing parents (`mkdir -p`).
    pub(crate) fn mkdir_p(&mut self, path: &str) -> Result<(), Errno> {
        let mut cur = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            match self.nodes.get(&cur) {
                None => {
                    self.nodes.insert(cur.clone(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => return Err(Errno::EEXIST),
            }
        }
        Ok(())
    }

    /// Adds a node whose parent directory exists; `EEXIST` if the name is taken.
    pub(crate) fn create(&mut self, path: &str, node: Node) -> Result<(), Errno> {
        self.check_parent(path)?;
        if self.nodes.contains_key(path) {
            return Err(Errno::EEXIST);
        }
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    pub(crate) fn exists(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// Replaces a file's contents (creating it if needed).
    pub(crate) fn set_file(&mut self, path: &str, contents: String) -> Result<(), Errno> {
        self.check_parent(path)?;
        self.nodes.insert(path.to_string(), Node::File(contents));
        Ok(())
    }

    /// Removes one node (not its children).
    pub(crate) fn remove(&mut self, path: &str) {
        self.nodes.remove(path);
    }

    /// Removes a node and everything below it.
    pub(crate) fn remove_tree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        self.nodes.remove(path);
    }

    /// Makes `dir` (and any missing parents) a device's directory.
    /// `EEXIST` if another device has it or something other than a plain
    /// directory is there; a plain directory (made earlier as a parent of a
    /// child device's) is taken over.
    pub(crate) fn add_device_dir(&mut self, dir: &str) -> Result<(), Errno> {
        if self.device_dirs.contains(dir) {
            return Err(Errno::EEXIST);
        }
        match self.nodes.get(dir) {
            None | Some(Node::Dir) => {}
            Some(_) => return Err(Errno::EEXIST),
        }
        self.mkdir_p(dir)?;
        self.orphan_dirs.remove(dir);
        self.device_dirs.insert(dir.to_string());
        Ok(())
    }

    /// Removes a device's directory and what is in it, except the
    /// directories of other devices inside it (and the path to them).
    pub(crate) fn remove_device_dir(&mut self, dir: &str) {
        self.device_dirs.remove(dir);
        let prefix = format!("{dir}/");
        let keep: Vec<String> = self
            .device_dirs
            .range(prefix.clone()..)
            .take_while(|d| d.starts_with(&prefix))
            .cloned()
            .collect();
        let kept = |p: &str| {
            keep.iter().any(|k| {
                k == p
                    || (k.starts_with(p) && k.as_bytes().get(p.len()) == Some(&b'/'))
                    || (p.starts_with(k.as_str()) && p.as_bytes().get(k.len()) == Some(&b'/'))
            })
        };
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !kept(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        if !keep.is_empty() {
            self.orphan_dirs.insert(dir.to_string());
            return;
        }
        self.nodes.remove(dir);
        // A removed parent kept for this device goes with it.
        let mut up = parent_of(dir).to_string();
        while self.orphan_dirs.contains(&up) && self.list(&up).is_ok_and(|l| l.is_empty()) {
            self.orphan_dirs.remove(&up);
            self.nodes.remove(&up);
            up = parent_of(&up).to_string();
        }
    }

    /// Follows links in every component; returns the canonical path and its node.
    pub(crate) fn lookup(&self, path: &str) -> Result<(String, &Node), Errno> {
        self.lookup_inner(path, true)
    }

    /// Like `lookup` but does not follow a link in the final component.
    fn lookup_nofollow(&self, path: &str) -> Result<(String, &Node), Errno> {
        self.lookup_inner(path, false)
    }

    fn lookup_inner(&self, path: &str, follow_last: bool) -> Result<(String, &Node), Errno> {
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur = String::new();
        let mut hops = 0;
        if pending.is_empty() {
            return Err(Errno::EINVAL);
        }
        while let Some(comp) = pending.pop() {
            if comp == ".." {
                cur = parent_of(&cur).to_string();
                continue;
            }
            let next = if cur.is_empty() {
                comp
            } else {
                format!("{cur}/{comp}")
            };
            match self.nodes.get(&next) {
                None => return Err(Errno::ENOENT),
                Some(Node::Link(target)) if follow_last || !pending.is_empty() => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Errno::EINVAL);
                    }
                    pending.extend(
                        target
                            .split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                    cur.clear();
                }
                Some(Node::Dir) => cur = next,
                Some(_) if !pending.is_empty() => return Err(Errno::ENOENT),
                Some(_) => cur = next,
            }
        }
        let node = self.nodes.get(&cur).ok_or(Errno::ENOENT)?;
        Ok((cur, node))
    }

    pub(crate) fn list(&self, path: &str) -> Result<Vec<String>, Errno> {
        let (dir, node) = if path.is_empty() || path == "/" {
            (String::new(), &Node::Dir)
        } else {
            self.lookup(path)?
        };
        if *node != Node::Dir {
            return Err(Errno::EINVAL);
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        Ok(self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect())
    }

    pub(crate) fn read_link(&self, path: &str) -> Result<String, Errno> {
        let (canon, node) = self.lookup_nofollow(path)?;
        match node {
            Node::Link(target) => Ok(relative_target(&canon, target)),
            _ => Err(Errno::EINVAL),
        }
    }

    pub(crate) fn kind(&self, path: &str) -> Result<EntryKind, Errno> {
        let (canon, node) = self.lookup_nofollow(path)?;
        Ok(match node {
            Node::Dir => EntryKind::Dir,
            Node::File(_) | Node::Attr(_) => EntryKind::File,
            Node::Link(t) => EntryKind::Link(relative_target(&canon, t)),
        })
    }

    /// Inserts without checks (for building a snapshot copy).
    pub(crate) fn insert_raw(&mut self, path: String, node: Node) {
        self.nodes.insert(path, node);
    }

    /// Every node in path order, for rendering.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }
}

/// Renders `entries` as an indented tree; `read` supplies attribute contents.
pub(crate) fn render(
    tree: &SysfsTree,
    mut read: impl FnMut(&str, &Node) -> Option<String>,
) -> String {
    let mut out = String::from("/sys\n");
    for (path, node) in tree.entries() {
        let depth = path.matches('/').count();
        let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
        let pad = "  ".repeat(depth + 1);
        match node {
            Node::Dir => {
                let _ = writeln!(out, "{pad}{name}/");
            }
            Node::Link(t) => {
                let _ = writeln!(out, "{pad}{name} -> {}", relative_target(path, t));
            }
            Node::File(_) | Node::Attr(_) => {
                let body = read(path, node).unwrap_or_default();
                let lines: Vec<&str> = body.lines().collect();
                match lines.as_slice() {
                    [] => {
                        let _ = writeln!(out, "{pad}{name}");
                    }
                    [one] => {
                        let _ = writeln!(out, "{pad}{name}: {one}");
                    }
                    many => {
                        let _ = writeln!(out, "{pad}{name}:");
                        for l in many {
                            let _ = writeln!(out, "{pad}  | {l}");
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_read_back_relative_to_their_directory() {
        assert_eq!(
            relative_target(
                "kernel/iommu_groups/3/devices/dev0",
                "devices/platform/dev0"
            ),
            "../../../../devices/platform/dev0"
        );
        assert_eq!(
            relative_target("devices/platform/dev0/iommu_group", "kernel/iommu_groups/3"),
            "../../../kernel/iommu_groups/3"
        );
    }

    #[test]
    fn lookup_follows_links_and_dotdot() {
        let mut t = SysfsTree::new();
        t.mkdir_p("devices/platform/dev0").unwrap();
        t.create("devices/platform/dev0/uevent", Node::File("x".into()))
            .unwrap();
        t.mkdir_p("kernel/iommu_groups/0/devices").unwrap();
        t.create(
            "kernel/iommu_groups/0/devices/dev0",
            Node::Link("devices/platform/dev0".into()),
        )
        .unwrap();
        let (canon, node) = t
            .lookup("kernel/iommu_groups/0/devices/dev0/uevent")
            .unwrap();
        assert_eq!(canon, "devices/platform/dev0/uevent");
        assert_eq!(*node, Node::File("x".into()));
        assert_eq!(
            t.lookup("kernel/iommu_groups/0/devices/dev0/../dev0")
                .unwrap()
                .0,
            "devices/platform/dev0"
        );
        assert_eq!(t.lookup("kernel/nothing").unwrap_err(), Errno::ENOENT);
        assert_eq!(t.create("nowhere/x", Node::Dir).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn link_loops_are_refused() {
        let mut t = SysfsTree::new();
        t.create("kernel/a", Node::Link("kernel/b".into())).unwrap();
        t.create("kernel/b", Node::Link("kernel/a".into())).unwrap();
        assert_eq!(t.lookup("kernel/a").unwrap_err(), Errno::EINVAL);
    }
}
