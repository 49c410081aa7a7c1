//! Power loss, simulated from a recording of the state manager's durability operations
//! ([`crate::state_manager::disk`]).
//!
//! A `kill -9` keeps the page cache, so it never shows a missing `fsync`. A power loss keeps
//! only what was synced. [`crash`] builds, from the operations recorded up to a point, the
//! directory a power loss at that point may leave, under this model (POSIX's, without the
//! ordering that journaling file systems add):
//!
//! - a file keeps the bytes an `fsync`/`fdatasync` covered; of those written after, a prefix
//!   may survive, each 4 KiB block of it either written or zeros (a torn write);
//! - a directory keeps every change to its names made before its last `fsync`; of the changes
//!   after, a prefix survives (each directory independently);
//! - a rename survives whole or not at all: it survives if its source's or its target's
//!   directory keeps it; a removed tree goes whole or stays whole.
//!
//! [`Loss`] picks within the model: everything not synced lost, names kept but unsynced bytes
//! lost, or a seeded random choice. [`Durability`] answers what is durable at a point, for
//! checks of the protocol itself (what must be synced before a rename, and after).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::workload::Rng;
use crate::state_manager::disk::{DiskOp, NodeId, ROOT, Recorded};

/// Which of the outcomes the model allows a crash to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Every change to a name not followed by a sync of its directory, and every byte not
    /// synced, is lost.
    Unsynced,
    /// Every change to a name survives, every byte not synced is lost: renamed files that are
    /// empty or short, as a file system that orders its metadata and not its data leaves them.
    UnsyncedBytes,
    /// A seeded choice: per directory, how many of its unsynced changes survive; per file, how
    /// much of its unsynced bytes, each block written or zeros.
    Random(u64),
}

/// What is durable after the first `at` operations of a recording.
pub struct Durability<'r> {
    recorded: &'r Recorded,
    at: usize,
    /// Directory → index of its last sync.
    last_sync: BTreeMap<NodeId, usize>,
    /// File → bytes written, and bytes synced.
    written: BTreeMap<NodeId, u64>,
    synced: BTreeMap<NodeId, u64>,
    /// Directory → indices of the operations that changed its names, in order.
    changes: BTreeMap<NodeId, Vec<usize>>,
    /// The names as they are (nothing lost): directory → name → node.
    names: BTreeMap<NodeId, BTreeMap<String, NodeId>>,
    /// (directory, name) → the operation that gave the name its node.
    named_by: BTreeMap<(NodeId, String), usize>,
}

/// Applies an operation that changes names to `names`.
fn apply(names: &mut BTreeMap<NodeId, BTreeMap<String, NodeId>>, op: &DiskOp) {
    match op {
        DiskOp::CreateFile { dir, name, node } | DiskOp::Link { dir, name, node } => {
            names.entry(*dir).or_default().insert(name.clone(), *node);
        }
        DiskOp::CreateDir { dir, name, node } => {
            names.entry(*dir).or_default().insert(name.clone(), *node);
            names.entry(*node).or_default();
        }
        DiskOp::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
            node,
        } => {
            let from = names.entry(*from_dir).or_default();
            if from.get(from_name) == Some(node) {
                from.remove(from_name);
            }
            names
                .entry(*to_dir)
                .or_default()
                .insert(to_name.clone(), *node);
        }
        DiskOp::RemoveTree { dir, name, node } => {
            let entries = names.entry(*dir).or_default();
            if entries.get(name) == Some(node) {
                entries.remove(name);
            }
        }
        DiskOp::Write { .. }
        | DiskOp::SyncFile { .. }
        | DiskOp::SyncData { .. }
        | DiskOp::SyncDir { .. } => {}
    }
}

impl<'r> Durability<'r> {
    /// Replays the first `at` operations of `recorded`.
    pub fn at(recorded: &'r Recorded, at: usize) -> Durability<'r> {
        let mut d = Durability {
            recorded,
            at: at.min(recorded.ops.len()),
            last_sync: BTreeMap::new(),
            written: BTreeMap::new(),
            synced: BTreeMap::new(),
            changes: BTreeMap::new(),
            names: BTreeMap::new(),
            named_by: BTreeMap::new(),
        };
        d.names.entry(ROOT).or_default();
        for (i, op) in recorded.ops.iter().take(d.at).enumerate() {
            match op {
                DiskOp::SyncDir { node } => {
                    d.last_sync.insert(*node, i);
                }
                DiskOp::Write { node, end } => {
                    d.written.insert(*node, *end);
                }
                DiskOp::SyncFile { node, len } | DiskOp::SyncData { node, len } => {
                    let synced = d.synced.entry(*node).or_default();
                    *synced = (*synced).max(*len);
                }
                _ => {}
            }
            let mut dirs = op.dirs();
            dirs.dedup();
            for dir in dirs {
                d.changes.entry(dir).or_default().push(i);
            }
            apply(&mut d.names, op);
            match op {
                DiskOp::CreateFile { dir, name, .. }
                | DiskOp::CreateDir { dir, name, .. }
                | DiskOp::Link { dir, name, .. } => {
                    d.named_by.insert((*dir, name.clone()), i);
                }
                DiskOp::Rename {
                    to_dir, to_name, ..
                } => {
                    d.named_by.insert((*to_dir, to_name.clone()), i);
                }
                _ => {}
            }
        }
        d
    }

    /// The node at `path` (relative to the root, `/`-separated) with nothing lost.
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        let mut node = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            node = *self.names.get(&node)?.get(part)?;
        }
        Some(node)
    }

    /// Whether operation `i` is covered by a later sync of directory `dir`.
    fn synced_in(&self, dir: NodeId, i: usize) -> bool {
        self.last_sync.get(&dir).is_some_and(|s| *s > i)
    }

    /// Whether every component of `path` is durably named: a power loss keeps the path.
    pub fn path_is_durable(&self, path: &str) -> Result<(), String> {
        let mut dir = ROOT;
        let mut so_far = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            so_far = if so_far.is_empty() {
                part.to_string()
            } else {
                format!("{so_far}/{part}")
            };
            let node = self
                .names
                .get(&dir)
                .and_then(|n| n.get(part))
                .ok_or_else(|| format!("{so_far} does not exist"))?;
            let Some(&i) = self.named_by.get(&(dir, part.to_string())) else {
                // Present when the recording started: durable.
                dir = *node;
                continue;
            };
            let durable = match self.recorded.ops.get(i) {
                Some(DiskOp::Rename { from_dir, .. }) => {
                    self.synced_in(dir, i) || self.synced_in(*from_dir, i)
                }
                _ => self.synced_in(dir, i),
            };
            if !durable {
                return Err(format!(
                    "the name {so_far} is not durable: {} was not synced after operation {i} \
                     ({:?})",
                    self.recorded.path(dir),
                    self.recorded.ops.get(i)
                ));
            }
            dir = *node;
        }
        Ok(())
    }

    /// What under `node` a power loss could lose: files not synced to their length, and
    /// directories changed after their last sync. Empty when the whole tree is durable.
    pub fn not_durable_under(&self, node: NodeId) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![node];
        let mut seen = BTreeSet::new();
        while let Some(node) = stack.pop() {
            if !seen.insert(node) {
                continue;
            }
            if let Some(entries) = self.names.get(&node) {
                if let Some(&last) = self.changes.get(&node).and_then(|c| c.last())
                    && !self.synced_in(node, last)
                {
                    out.push(format!(
                        "directory {} changed by operation {last} ({:?}) and not synced after",
                        self.recorded.path(node),
                        self.recorded.ops.get(last)
                    ));
                }
                stack.extend(entries.values().copied());
            } else {
                let written = self.written.get(&node).copied().unwrap_or(0);
                let synced = self.synced.get(&node).copied().unwrap_or(0);
                if synced < written {
                    out.push(format!(
                        "file {} has {written} bytes written, {synced} synced",
                        self.recorded.path(node)
                    ));
                }
            }
        }
        out
    }
}

/// Writes into `into` (an empty directory) the state directory a power loss after the first
/// `at` recorded operations may leave, as `loss` picks. Returns a digest of what it wrote, so
/// that a caller can skip states it has already checked.
pub fn crash(recorded: &Recorded, at: usize, loss: Loss, into: &Path) -> io::Result<[u8; 32]> {
    let d = Durability::at(recorded, at);
    let mut rng = Rng::new(match loss {
        Loss::Random(seed) => seed,
        _ => 0,
    });
    // Per directory: the index of the first of its changes that is lost.
    let mut kept_until: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (dir, changes) in &d.changes {
        let forced = changes.iter().filter(|i| d.synced_in(*dir, **i)).count();
        let unsynced = changes.len() - forced;
        let survive = match loss {
            Loss::Unsynced => 0,
            Loss::UnsyncedBytes => unsynced,
            Loss::Random(_) => rng.below(unsynced as u64 + 1) as usize,
        };
        let first_lost = changes.get(forced + survive).copied().unwrap_or(usize::MAX);
        kept_until.insert(*dir, first_lost);
    }
    let kept = |dir: &NodeId, i: usize| kept_until.get(dir).is_none_or(|lost| i < *lost);
    let mut names: BTreeMap<NodeId, BTreeMap<String, NodeId>> = BTreeMap::new();
    names.entry(ROOT).or_default();
    for (i, op) in recorded.ops.iter().take(d.at).enumerate() {
        let dirs = op.dirs();
        if !dirs.is_empty() && dirs.iter().any(|dir| kept(dir, i)) {
            apply(&mut names, op);
        }
    }
    let mut digest = Sha256::new();
    let mut stack = vec![(ROOT, into.to_path_buf(), String::new())];
    // Directories are entered once; a file with several names is linked again.
    let mut made: BTreeMap<NodeId, (std::path::PathBuf, String)> = BTreeMap::new();
    while let Some((node, path, rel)) = stack.pop() {
        if let Some((first, first_rel)) = made.get(&node) {
            if !names.contains_key(&node) {
                std::fs::hard_link(first, &path)?;
                digest.update(format!("l {rel} {first_rel}\n").as_bytes());
            }
            continue;
        }
        made.insert(node, (path.clone(), rel.clone()));
        if let Some(entries) = names.get(&node) {
            if node != ROOT {
                std::fs::create_dir(&path)?;
            }
            digest.update(format!("d {rel}\n").as_bytes());
            for (name, child) in entries.iter().rev() {
                stack.push((*child, path.join(name), format!("{rel}/{name}")));
            }
            continue;
        }
        let content = recorded.contents.get(&node).map_or(&[][..], Vec::as_slice);
        let written = (d.written.get(&node).copied().unwrap_or(0) as usize).min(content.len());
        let synced = (d.synced.get(&node).copied().unwrap_or(0) as usize).min(written);
        let mut bytes = content[..synced].to_vec();
        if let Loss::Random(_) = loss {
            let len = synced + rng.below((written - synced) as u64 + 1) as usize;
            while bytes.len() < len {
                let end = (bytes.len() / 4096 + 1) * 4096;
                let end = end.min(len);
                let block = &content[bytes.len()..end];
                if rng.percent(50) {
                    bytes.extend_from_slice(block);
                } else {
                    bytes.resize(end, 0);
                }
            }
        }
        std::fs::write(&path, &bytes)?;
        digest.update(format!("f {rel} {}\n", bytes.len()).as_bytes());
        digest.update(&bytes);
    }
    Ok(digest.finalize().into())
}
