//! The durability operations of the state manager, in one place: every file it creates and
//! writes, every `fsync` of a file or a directory, every rename, hard link and removal in the
//! state directory goes through a function here.
//!
//! Each function is the plain `std::fs` call. What a power loss keeps is decided by the order
//! of these calls (`spec/durability.md`, "Writing a checkpoint"), and a `kill -9` cannot test
//! that order: it never loses the page cache. So a test can *record* them
//! ([`DiskRecording`]): the operations on files and directories under one root, in the order
//! they returned, as [`DiskOp`]s over numbered nodes (files and directories, as inodes are),
//! with every byte written. From such a recording `crate::testing::power_loss` builds the
//! directory that a power loss at any point would leave, and the tests check the protocol on
//! it (`tests/durability.rs`, "Power loss").
//!
//! Recording is a test hook, like the state manager's injected faults: while no recording is
//! active, the only cost is one relaxed atomic load per call. While one is, a call on an open
//! file looks up the file's name (`/proc/self/fd`, Linux), and a call on a path under a
//! recorded root updates a mirror of that root's names. Recordings of different roots do not
//! see each other's calls, so tests in one process may record in parallel.
//!
//! What is recorded and when: an operation that changes the directory or a file is recorded
//! after it returned; a sync is recorded after it returned, with what it covers read before it
//! started (so a write racing with a sync on another thread counts as not synced by it).
//! `remove_dir_all` is one [`DiskOp::RemoveTree`]: the model keeps or drops a removed tree as a
//! whole.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A file or directory of a recording: 0 is the recorded root, the others are numbered in the
/// order they appear.
pub type NodeId = usize;

/// The root of every recording.
pub const ROOT: NodeId = 0;

/// One durability operation, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// A new, empty file `node`, named `name` in the directory `dir`.
    CreateFile {
        dir: NodeId,
        name: String,
        node: NodeId,
    },
    /// A new, empty directory `node`, named `name` in `dir`.
    CreateDir {
        dir: NodeId,
        name: String,
        node: NodeId,
    },
    /// Bytes appended to the file `node` (files are written once, front to back): its length
    /// is now `end`.
    Write { node: NodeId, end: u64 },
    /// `fsync` of the file `node`: its first `len` bytes (its length when the sync started)
    /// are durable.
    SyncFile { node: NodeId, len: u64 },
    /// `fdatasync` of the file `node`, likewise.
    SyncData { node: NodeId, len: u64 },
    /// `fsync` of the directory `node`: its names, as they are now, are durable.
    SyncDir { node: NodeId },
    /// `node` renamed from `from_name` in `from_dir` to `to_name` in `to_dir`.
    Rename {
        from_dir: NodeId,
        from_name: String,
        to_dir: NodeId,
        to_name: String,
        node: NodeId,
    },
    /// A new name `name` in `dir` for the existing file `node`.
    Link {
        dir: NodeId,
        name: String,
        node: NodeId,
    },
    /// The name `name` of `node` removed from `dir` (a file, or a directory with everything
    /// under it).
    RemoveTree {
        dir: NodeId,
        name: String,
        node: NodeId,
    },
}

impl DiskOp {
    /// The directories whose names this operation changes.
    pub fn dirs(&self) -> Vec<NodeId> {
        match self {
            DiskOp::CreateFile { dir, .. }
            | DiskOp::CreateDir { dir, .. }
            | DiskOp::Link { dir, .. }
            | DiskOp::RemoveTree { dir, .. } => vec![*dir],
            DiskOp::Rename {
                from_dir, to_dir, ..
            } => vec![*from_dir, *to_dir],
            DiskOp::Write { .. }
            | DiskOp::SyncFile { .. }
            | DiskOp::SyncData { .. }
            | DiskOp::SyncDir { .. } => Vec::new(),
        }
    }
}

/// What a recording saw: the operations in order, every byte written to each file, and the
/// path (relative to the root) each node was first given, to name it in messages.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub ops: Vec<DiskOp>,
    pub contents: BTreeMap<NodeId, Vec<u8>>,
    pub paths: BTreeMap<NodeId, String>,
    /// Whether each node is a directory.
    pub dirs: BTreeMap<NodeId, bool>,
}

impl Recorded {
    /// The path `node` was first given (`.` for the root), for messages.
    pub fn path(&self, node: NodeId) -> &str {
        match self.paths.get(&node) {
            _ if node == ROOT => ".",
            Some(path) => path,
            None => "?",
        }
    }
}

/// One active recording.
struct Recording {
    id: u64,
    root: PathBuf,
    /// The root with its symbolic links resolved, as `/proc/self/fd` names files.
    canonical_root: PathBuf,
    seen: Recorded,
    /// The names under the root now (relative, `/`-separated; "" is the root).
    live: BTreeMap<String, NodeId>,
    next_node: NodeId,
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static RECORDINGS: Mutex<Vec<Recording>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Runs `f` on the recording whose root holds `path` (with the path relative to it), if any.
fn with_path<R>(path: &Path, f: impl FnOnce(&mut Recording, &str) -> R) -> Option<R> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut recordings = RECORDINGS.lock().unwrap_or_else(|e| e.into_inner());
    let (recording, rel) = recordings.iter_mut().find_map(|r| {
        let rel = path
            .strip_prefix(&r.root)
            .or_else(|_| path.strip_prefix(&r.canonical_root))
            .ok()?;
        Some((r, rel.to_str()?.to_string()))
    })?;
    Some(f(recording, &rel))
}

/// Runs `f` on the recording that holds the open `file`, if any, found by the file's name
/// now (`/proc/self/fd`: an inode number alone may be reused by another test's file).
fn with_file<R>(file: &File, f: impl FnOnce(&mut Recording, NodeId) -> R) -> Option<R> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let path = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    with_path(&path, |r, rel| {
        let node = r.node_at(rel)?;
        Some(f(r, node))
    })?
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl Recording {
    fn node_at(&self, rel: &str) -> Option<NodeId> {
        self.live.get(rel).copied()
    }

    fn new_node(&mut self, rel: &str, is_dir: bool) -> NodeId {
        let node = self.next_node;
        self.next_node = self.next_node.saturating_add(1);
        self.seen.paths.insert(node, rel.to_string());
        self.seen.dirs.insert(node, is_dir);
        if !is_dir {
            self.seen.contents.insert(node, Vec::new());
        }
        node
    }

    /// Records a new file or directory at `rel`.
    fn create(&mut self, rel: &str, is_dir: bool) {
        let (parent, name) = split(rel);
        let Some(dir) = self.node_at(parent) else {
            return;
        };
        let node = self.new_node(rel, is_dir);
        self.live.insert(rel.to_string(), node);
        let name = name.to_string();
        if is_dir {
            self.seen.ops.push(DiskOp::CreateDir { dir, name, node });
        } else {
            self.seen.ops.push(DiskOp::CreateFile { dir, name, node });
        }
    }

    /// Forgets every name at or under `rel`; returns the node that was at `rel`.
    fn forget_tree(&mut self, rel: &str) -> Option<NodeId> {
        let node = self.live.remove(rel)?;
        let prefix = format!("{rel}/");
        let under: Vec<String> = self
            .live
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for name in under {
            self.live.remove(&name);
        }
        Some(node)
    }

    /// Adds what is on disk at `path` (`rel`) as created, written and synced: the durable
    /// state a recording starts from.
    fn adopt(&mut self, rel: &str, path: &Path) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            if !rel.is_empty() {
                self.create(rel, true);
            }
            let mut entries: Vec<PathBuf> = fs::read_dir(path)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            entries.sort();
            for entry in entries {
                let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let child = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                self.adopt(&child, &entry);
            }
            if let Some(node) = self.node_at(rel) {
                self.seen.ops.push(DiskOp::SyncDir { node });
            }
        } else {
            self.create(rel, false);
            let Some(node) = self.node_at(rel) else {
                return;
            };
            let bytes = fs::read(path).unwrap_or_default();
            let end = bytes.len() as u64;
            self.seen.contents.insert(node, bytes);
            self.seen.ops.push(DiskOp::Write { node, end });
            self.seen.ops.push(DiskOp::SyncFile { node, len: end });
        }
    }
}

/// A test hook: records the durability operations under one root until stopped or dropped
/// (see the module docs). What is under the root when it starts is taken as durable.
#[derive(Debug)]
pub struct DiskRecording {
    id: u64,
}

impl DiskRecording {
    /// Starts recording the operations on `root` and under it. The paths the state manager is
    /// given must start with `root` as written here (it is not canonicalised).
    pub fn start(root: &Path) -> DiskRecording {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) as u64;
        let mut recording = Recording {
            id,
            root: root.to_path_buf(),
            canonical_root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
            seen: Recorded::default(),
            live: BTreeMap::new(),
            next_node: ROOT.saturating_add(1),
        };
        recording.live.insert(String::new(), ROOT);
        recording.seen.paths.insert(ROOT, String::new());
        recording.seen.dirs.insert(ROOT, true);
        recording.adopt("", root);
        let mut recordings = RECORDINGS.lock().unwrap_or_else(|e| e.into_inner());
        recordings.push(recording);
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        DiskRecording { id }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Recording) -> R) -> Option<R> {
        let mut recordings = RECORDINGS.lock().unwrap_or_else(|e| e.into_inner());
        recordings.iter_mut().find(|r| r.id == self.id).map(f)
    }

    /// How many operations have been recorded so far: a position in [`Self::recorded`]'s
    /// operations (a test notes it when a checkpoint returns).
    pub fn len(&self) -> usize {
        self.with(|r| r.seen.ops.len()).unwrap_or(0)
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of what has been recorded so far.
    pub fn recorded(&self) -> Recorded {
        self.with(|r| r.seen.clone()).unwrap_or_default()
    }
}

impl Drop for DiskRecording {
    fn drop(&mut self) {
        let mut recordings = RECORDINGS.lock().unwrap_or_else(|e| e.into_inner());
        let before = recordings.len();
        recordings.retain(|r| r.id != self.id);
        if recordings.len() < before {
            ACTIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Creates a new file at `path` for writing (it must not exist).
pub(super) fn create_new(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    with_path(path, |r, rel| r.create(rel, false));
    Ok(file)
}

/// Opens the existing file at `path` to write at its end (a merge continued: `merges.rs`).
pub(super) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).open(path)
}

/// Writes some of `buf` to the end of `file`, as [`Write::write`].
pub(super) fn write(file: &mut File, buf: &[u8]) -> io::Result<usize> {
    let n = file.write(buf)?;
    with_file(file, |r, node| {
        let content = r.seen.contents.entry(node).or_default();
        content.extend_from_slice(buf.get(..n).unwrap_or(buf));
        let end = content.len() as u64;
        r.seen.ops.push(DiskOp::Write { node, end });
    });
    Ok(n)
}

/// `fsync` of `file` (`File::sync_all`).
pub(super) fn sync_all(file: &File) -> io::Result<()> {
    sync_file(file, File::sync_all, |node, len| DiskOp::SyncFile {
        node,
        len,
    })
}

/// `fdatasync` of `file` (`File::sync_data`).
pub(super) fn sync_data(file: &File) -> io::Result<()> {
    sync_file(file, File::sync_data, |node, len| DiskOp::SyncData {
        node,
        len,
    })
}

/// Runs `sync` on `file` and records `op` with the length the file had when it started.
fn sync_file(
    file: &File,
    sync: fn(&File) -> io::Result<()>,
    op: fn(NodeId, u64) -> DiskOp,
) -> io::Result<()> {
    let len = with_file(file, |r, node| {
        r.seen.contents.get(&node).map_or(0, |c| c.len() as u64)
    });
    sync(file)?;
    if let Some(len) = len {
        with_file(file, |r, node| r.seen.ops.push(op(node, len)));
    }
    Ok(())
}

/// `fsync` of the directory `dir`: the names in it are durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    with_path(dir, |r, rel| {
        if let Some(node) = r.node_at(rel) {
            r.seen.ops.push(DiskOp::SyncDir { node });
        }
    });
    Ok(())
}

/// Creates the directory `dir` (its parent must exist).
pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)?;
    with_path(dir, |r, rel| r.create(rel, true));
    Ok(())
}

/// Renames `from` to `to` (a file or a directory; `to` must not be a non-empty directory).
pub(super) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    with_path(from, |r, from_rel| {
        let to_rel = to
            .strip_prefix(&r.root)
            .or_else(|_| to.strip_prefix(&r.canonical_root))
            .ok()?
            .to_str()?
            .to_string();
        let (from_parent, from_name) = split(from_rel);
        let (to_parent, to_name) = split(&to_rel);
        let (from_dir, to_dir) = (r.node_at(from_parent)?, r.node_at(to_parent)?);
        let node = r.node_at(from_rel)?;
        let moved: Vec<(String, NodeId)> = r
            .live
            .iter()
            .filter(|(k, _)| *k == from_rel || k.starts_with(&format!("{from_rel}/")))
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        for (old, _) in &moved {
            r.live.remove(old);
        }
        for (old, n) in moved {
            let new = format!("{to_rel}{}", old.get(from_rel.len()..).unwrap_or(""));
            r.live.insert(new, n);
        }
        r.seen.ops.push(DiskOp::Rename {
            from_dir,
            from_name: from_name.to_string(),
            to_dir,
            to_name: to_name.to_string(),
            node,
        });
        Some(())
    });
    Ok(())
}

/// Gives the file `from` the new name `to`.
pub(super) fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    with_path(to, |r, rel| {
        let (parent, name) = split(rel);
        let dir = r.node_at(parent)?;
        // A link to a file outside the root (the state manager makes none) is not recorded.
        let from_rel = from
            .strip_prefix(&r.root)
            .or_else(|_| from.strip_prefix(&r.canonical_root))
            .ok()?
            .to_str()?;
        let node = r.node_at(from_rel)?;
        r.live.insert(rel.to_string(), node);
        r.seen.ops.push(DiskOp::Link {
            dir,
            name: name.to_string(),
            node,
        });
        Some(())
    });
    Ok(())
}

/// Removes the name of the file `path`.
pub(super) fn remove_file(path: &Path) -> io::Result<()> {
    fs::remove_file(path)?;
    record_removal(path);
    Ok(())
}

/// Removes the directory `dir` and everything under it.
pub(super) fn remove_dir_all(dir: &Path) -> io::Result<()> {
    fs::remove_dir_all(dir)?;
    record_removal(dir);
    Ok(())
}

fn record_removal(path: &Path) {
    with_path(path, |r, rel| {
        let (parent, name) = split(rel);
        let dir = r.node_at(parent)?;
        let node = r.forget_tree(rel)?;
        r.seen.ops.push(DiskOp::RemoveTree {
            dir,
            name: name.to_string(),
            node,
        });
        Some(())
    });
}
