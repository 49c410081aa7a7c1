//! The state manager: the replicated state on disk, in checkpoints that survive `kill -9`.
//!
//! The only module that touches the state directory. It reads and writes
//! [`ReplicatedState`] through its own versioned records (`records.rs`) and hands page bytes to
//! [`crate::memory`] through page files, so [`crate::memory::PageMap`] stays the only place that
//! knows what a page is and where its bytes live.
//!
//! # The directory (`spec/durability.md` is the reference)
//!
//! ```text
//! <state-dir>/
//!   LOCK                                  held (flock) by the one process using the directory
//!   tip/                                  the checkpoint being written; deleted at open
//!   merges/                               the files of pending merges and their progress,
//!                                         continued across checkpoints and processes
//!                                         (`merges.rs`); what no pending merge names is
//!                                         deleted at open
//!   checkpoints/<height: 16 hex digits>/  the last completed checkpoint
//!     manifest.bin                        every other file's size and SHA-256, then its own
//!     state.bin                           the state records (postcard)
//!     merges.bin                          the merges left pending, with their credit
//!     node.bin                            the node's own record, if it gave one
//!                                         ([`StateManager::set_node_record`]): opaque here
//!     pages/<height>_<n>.pages            page files (pages, leaf hashes, group table, block
//!                                         table, index, footer), immutable, shared by hard links;
//!                                         `<height>_merge_<n>.pages` for merged ones
//!     wasm/<sha256>.wasm                  modules, immutable, shared by hard links
//!     unverified                          present until the checkpoint has been loaded once
//!   node_secret                           the node's keys (mode 0600, written once, before any
//!                                         checkpoint: [`StateManager::node_secret`])
//! ```
//!
//! # Writing a checkpoint, and what a crash at each step leaves
//!
//! 1. The merge thread is stopped and every pending merge written up to the credit this
//!    checkpoint grants it (`merges.rs`: at most a multiple of what the checkpoint writes);
//!    then `tip/` is emptied and filled: a page file per memory with the pages written since
//!    the last checkpoint (never the others: those files are hard-linked from the last
//!    checkpoint), on top of the merged files due now (linked from `merges/`), new modules,
//!    `state.bin`, `merges.bin`, `manifest.bin`, `unverified`. Each new file is written, `fsync`ed and made read-only; then the
//!    directories are `fsync`ed. *A crash here leaves a partial `tip/`, deleted at the next
//!    open; the last checkpoint is untouched.* A failed write (a full disk) stops here with an
//!    error, deletes `tip/` and changes nothing in memory; except that a merge with no room is
//!    left out (merges are an optimisation): the checkpoint commits without it, and
//!    [`StateManager::merges_left_out`] says so (`spec/durability.md`, "A full disk").
//! 2. The new page files are mapped (so nothing can fail after the next step).
//! 3. `tip/` is renamed to `checkpoints/<height>` and `checkpoints/` is `fsync`ed: the atomic
//!    commit point. *A crash before the rename keeps the old checkpoint; after it, the new one.*
//! 4. In memory, every memory is put on its new files (its written pages leave the heap).
//! 5. A background thread starts. It first lets go of the older checkpoint (its directory,
//!    the mappings of files nothing else uses, the inputs of merges taken in: freeing a file
//!    costs tens of milliseconds per 40 MiB, kept off the checkpoint's time), then writes the
//!    pending merges further in `merges/` until the next checkpoint stops it. *A crash leaves
//!    an older checkpoint beside the new one (the newest wins at open, which then deletes the
//!    older) and `merges/` as far as its progress records say (continued from there).*
//!
//! Every operation that decides what a power loss keeps (creating and writing files, `fsync`
//! of files and directories, renames, hard links, removals) goes through `disk.rs`, where a
//! test can record it (`spec/durability.md`, "What a power loss keeps").
//!
//! # Opening
//!
//! Lock, delete `tip/`, pick the highest checkpoint, and check it before anything
//! is loaded: regular files only (a symbolic link is refused, not followed), the manifest's own
//! checksum and version, then every file against it (no file
//! missing, none extra, each of the recorded size and SHA-256; for a page file, the SHA-256 of
//! its tail: block table, index and footer, O(pages / 16384)). Any difference is an error naming
//! the file; nothing is loaded silently. Then the records are decoded and the page files mapped.
//! No page, no leaf hash and no group table is read: a block of 128 group table entries is
//! checked against the block table and a group of 128 leaf hashes against the group table when
//! first used, and each page against its leaf hash when first read (`rs/memory/page_file.rs`);
//! hashing a memory uses the stored leaf hashes. Last, the merges the checkpoint left pending
//! are continued where `merges/` says (`merges.rs`).

#![forbid(unsafe_code)]

pub mod disk;
mod merges;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fs4::{FileExt, TryLockError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::memory::{
    Hash, Memory, PageFile, PageLayers, PageMap, PageMapIdentity, checksum::hex, write_page_file,
};
use crate::replicated_state::ReplicatedState;
use crate::state::WasmModule;

use disk::sync_dir;
pub use merges::{MERGE_CREDIT_MIN_PAGES, MERGE_CREDIT_RATE};
use merges::{Merged, Merges, MergesRecord, PendingMerge, Retired, find_run};
pub use records::STATE_FORMAT_VERSION;
use records::{MemoryRecord, StateRecord, Store};

/// The version of the manifest (and so of the directory layout) this build writes and the
/// newest it reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// The most page files one memory keeps: more are merged (the replica keeps at most 7).
pub const MAX_FILES_PER_MEMORY: usize = 7;

const MANIFEST: &str = "manifest.bin";
const STATE: &str = "state.bin";
const NODE: &str = "node.bin";
const MERGES_FILE: &str = "merges.bin";
const NODE_SECRET: &str = "node_secret";
const UNVERIFIED: &str = "unverified";
const PAGES: &str = "pages";
const WASM: &str = "wasm";
const LOCK: &str = "LOCK";
const TIP: &str = "tip";
const MERGES: &str = "merges";
const CHECKPOINTS: &str = "checkpoints";

/// Bytes of a page.
const PAGE_BYTES: u64 = crate::memory::PAGE_SIZE as u64;

/// Pages of the memories of `state` not yet in a checkpoint (each distinct memory once): what
/// the next checkpoint writes in its overlays. O(memories).
fn unsaved_pages(state: &ReplicatedState) -> u64 {
    // Looked up by key only, never iterated.
    let mut seen = std::collections::HashSet::new();
    let mut memories: Vec<&Memory> = Vec::new();
    for execution in state
        .canisters
        .values()
        .filter_map(|c| c.execution_state.as_ref())
    {
        memories.extend([&execution.wasm_memory, &execution.stable_memory]);
    }
    for snapshot in state.snapshots.iter() {
        let content = snapshot.content();
        memories.extend([&content.wasm_memory, &content.stable_memory]);
    }
    memories
        .into_iter()
        .filter(|m| seen.insert(m.page_map().identity()))
        .map(|m| m.resident_bytes() / PAGE_BYTES)
        .fold(0u64, u64::saturating_add)
}

/// Why the state directory could not be opened or checkpointed. Each names the file or
/// directory at fault and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateManagerError {
    #[error("state directory {}: {reason}", dir.display())]
    Directory { dir: PathBuf, reason: String },
    #[error(
        "state directory {} is in use by another process (its lock file {} is held); stop that \
         process or choose another --state-dir",
        dir.display(), lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error(
        "{} has format version {found}, newer than this build reads ({supported}); open it with \
         a newer build",
        file.display()
    )]
    NewerFormat {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "checkpoint {}: {}: {reason}; nothing was loaded. Restore the directory from a backup, \
         or move it away to start afresh",
        checkpoint.display(), file.display()
    )]
    Corrupt {
        checkpoint: PathBuf,
        file: PathBuf,
        reason: String,
    },
    #[error(
        "writing checkpoint {height} failed at {}: {source}; the previous checkpoint is kept and \
         the state in memory is unchanged",
        file.display()
    )]
    Write {
        height: u64,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateManagerError {
    /// Whether this is a write that failed for want of room (a full disk or quota).
    pub fn is_no_room(&self) -> bool {
        matches!(self, StateManagerError::Write { source, .. } if no_room(source))
    }
}

/// One file of a checkpoint as its manifest records it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct FileEntry {
    size: u64,
    /// SHA-256 of the whole file, or for a page file of its last `tail` bytes (block table,
    /// index, footer; for a version-2 page file, from the group table on; for a version-1 page
    /// file, from the leaf hashes on): its group table, leaf hashes and pages are checked
    /// against them when first used.
    sha256: Hash,
    /// 0 for a whole-file checksum.
    tail: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestRecord {
    version: u32,
    height: u64,
    /// Path relative to the checkpoint directory → entry; every file but the manifest itself
    /// and the `unverified` marker.
    files: BTreeMap<String, FileEntry>,
}

/// The last completed checkpoint.
struct Checkpoint {
    height: u64,
    dir: PathBuf,
    files: BTreeMap<String, FileEntry>,
}

/// Owner of one state directory, for as long as it lives (it holds the lock).
pub struct StateManager {
    /// Declared (so dropped) before the lock: the background thread (older checkpoint let go
    /// of, merges) is stopped and joined while the directory is still locked, so no other
    /// owner's `open` can clear `merges/` or `checkpoints/` under it.
    merges: Merges,
    /// The stacks of page files of the checkpoint `load` just loaded, and the merges it left
    /// pending (`None` for a checkpoint without `merges.bin`: planned from the stacks), until
    /// `open` starts them.
    loaded_stacks: BTreeMap<Vec<String>, Arc<PageLayers>>,
    loaded_pending: Option<Vec<PendingMerge>>,
    root: PathBuf,
    _lock: File,
    current: Option<Checkpoint>,
    /// Page files of the current checkpoint already mapped, by name.
    mapped: BTreeMap<String, Arc<PageFile>>,
    /// Test hooks: the disk faults the next checkpoints meet.
    faults: Faults,
    /// The merges the last checkpoint left out for want of room.
    merges_left_out: Vec<MergeLeftOut>,
    /// The node's record (`node.bin`): loaded with the last checkpoint, written with the next.
    node_record: Option<Vec<u8>>,
    /// [`Self::merge_pages_written`].
    merge_pages_written: u64,
}

/// A merge a checkpoint left out because the disk had no room for it: the memory keeps the
/// files it would have merged, and a later checkpoint merges them (`spec/durability.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeLeftOut {
    /// The merged page file's name.
    pub file: String,
    /// The page bytes of the files it would have merged: at most what it needs on disk,
    /// besides its leaf hashes (1/128 of that) and tail.
    pub page_bytes: u64,
}

impl std::fmt::Debug for StateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateManager")
            .field("root", &self.root)
            .field("height", &self.checkpoint_height())
            .finish()
    }
}

fn io_dir(dir: &Path, what: &str, err: std::io::Error) -> StateManagerError {
    StateManagerError::Directory {
        dir: dir.to_path_buf(),
        reason: format!("{what}: {err}"),
    }
}

/// The name of a checkpoint directory: the height in 16 hex digits, so names sort by height.
fn checkpoint_name(height: u64) -> String {
    format!("{height:016x}")
}

/// Encodes `value` after its version and appends the SHA-256 of all that: the self-checking
/// framing of `manifest.bin` and `state.bin`.
fn framed<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut bytes = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
    let hash = crate::memory::checksum::sha256(&bytes);
    bytes.extend_from_slice(&hash);
    Ok(bytes)
}

/// Checks the framing of [`framed`], refuses a version newer than `supported` (the records
/// start with their version) and decodes.
fn unframe<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    supported: u32,
    checkpoint: &Path,
    file: &Path,
) -> Result<T, StateManagerError> {
    unframe_with(bytes, supported, checkpoint, file, |body, _| {
        postcard::from_bytes(body)
    })
}

/// [`unframe`] with the decoding of the body given its version.
fn unframe_with<T>(
    bytes: &[u8],
    supported: u32,
    checkpoint: &Path,
    file: &Path,
    decode: impl FnOnce(&[u8], u32) -> postcard::Result<T>,
) -> Result<T, StateManagerError> {
    let corrupt = |reason: String| StateManagerError::Corrupt {
        checkpoint: checkpoint.to_path_buf(),
        file: file.to_path_buf(),
        reason,
    };
    if bytes.len() < 32 {
        return Err(corrupt(format!("{} bytes is too short", bytes.len())));
    }
    let (body, hash) = bytes.split_at(bytes.len().saturating_sub(32));
    if crate::memory::checksum::sha256(body) != hash {
        return Err(corrupt("its checksum does not match its contents".into()));
    }
    let (version, _) =
        postcard::take_from_bytes::<u32>(body).map_err(|e| corrupt(e.to_string()))?;
    if version > supported {
        return Err(StateManagerError::NewerFormat {
            file: file.to_path_buf(),
            found: version,
            supported,
        });
    }
    decode(body, version).map_err(|e| corrupt(format!("cannot be decoded: {e}")))
}

/// Test hooks: the disk faults that writes meet, and the background work held back.
#[derive(Debug, Clone)]
struct Faults {
    /// Bytes that may still be written before writes fail like a full disk ([`UNLIMITED`]: no
    /// limit). One disk: shared by the checkpoints and the merge thread (also one started
    /// before the budget is set), and given back when a file written under it is removed.
    budget: Arc<AtomicU64>,
    /// Whether the early flushes of page files fail, like an `fdatasync` reporting EIO.
    early_flush: bool,
    /// Whether the background work of a checkpoint waits until the next one needs it.
    hold_merges: bool,
    /// The merge credit every checkpoint grants besides its writes ([`MERGE_CREDIT_MIN_PAGES`]).
    credit_min_pages: u64,
}

/// The write budget of a disk without the fault.
const UNLIMITED: u64 = u64::MAX;

/// Test hook: the write budget every state manager this process opens starts with
/// ([`StateManager::set_initial_write_budget`]), so that the merges `open` starts meet it too.
static INITIAL_BUDGET: AtomicU64 = AtomicU64::new(UNLIMITED);

thread_local! {
    /// Test hook: whether the state managers this thread opens hold their background merges
    /// from the start, and the merge credit they grant besides writes
    /// ([`StateManager::set_merges_at_open`]).
    static MERGES_AT_OPEN: std::cell::Cell<(bool, u64)> =
        const { std::cell::Cell::new((false, MERGE_CREDIT_MIN_PAGES)) };
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            // A plain value read once: `Relaxed`.
            budget: Arc::new(AtomicU64::new(INITIAL_BUDGET.load(Ordering::Relaxed))),
            early_flush: false,
            hold_merges: MERGES_AT_OPEN.with(|m| m.get().0),
            credit_min_pages: MERGES_AT_OPEN.with(|m| m.get().1),
        }
    }
}

impl Faults {
    /// Takes `bytes` from the budget; `false` if it does not hold that many.
    fn spend(&self, bytes: u64) -> bool {
        // A counter only: no other memory is published through it, so `Relaxed`.
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left == UNLIMITED)
                    .then_some(left)
                    .or(left.checked_sub(bytes))
            })
            .is_ok()
    }

    /// Gives back to the budget the `bytes` of a file written under it and removed.
    fn free(&self, bytes: u64) {
        let _ = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != UNLIMITED).then(|| left.saturating_add(bytes).min(UNLIMITED - 1))
            });
    }

    fn limited(&self) -> bool {
        self.budget.load(Ordering::Relaxed) != UNLIMITED
    }
}

/// Whether `err` says the disk (or the user's quota) has no room.
fn no_room(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// A writer that hashes and counts what goes through it, and fails like a full disk once a
/// budget (a test hook) is spent.
struct CheckedWriter<'b, W: Write> {
    inner: W,
    /// `None` for a page file, whose own tail carries what is checked.
    hasher: Option<Sha256>,
    written: u64,
    faults: &'b Faults,
}

impl<W: Write> Write for CheckedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.faults.spend(buf.len() as u64) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        let n = self.inner.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(buf.get(..n).unwrap_or(buf));
        }
        self.written = self.written.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a new immutable file with `fill`, syncs it and makes it read-only. Returns its entry.
fn write_file(
    path: &Path,
    faults: &mut Faults,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<FileEntry> {
    write_new_file(path, faults, true, |w| fill(w).map(|()| None))
}

/// Writes a new page file of `pages`, like [`write_file`]; its entry checks the file's tail.
fn write_pages_file<'p>(
    path: &Path,
    faults: &mut Faults,
    pages: impl Iterator<Item = (u64, &'p [u8; crate::memory::PAGE_SIZE], Option<Hash>)>,
) -> std::io::Result<FileEntry> {
    write_new_file(path, faults, false, |w| {
        write_page_file(w, pages).map(|summary| Some((summary.tail_bytes, summary.tail_sha256)))
    })
}

/// Bytes of a page file written between two early flushes: see [`EarlyFlush`].
const FLUSH_EVERY: u64 = 8 << 20;

/// A file that, every [`FLUSH_EVERY`] bytes, asks a second thread to `fdatasync` it, so that
/// the disk writes a large file while the rest of it is still being copied into the page cache,
/// and the final `fsync` waits for the tail only: a page file costs about max(copy, disk), not
/// their sum. An early flush that fails fails the file (its error is never dropped: a failed
/// `fsync` may not be reported twice).
struct EarlyFlush {
    file: File,
    since: u64,
    flush: Option<std::sync::mpsc::Sender<()>>,
}

impl Write for EarlyFlush {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = disk::write(&mut self.file, buf)?;
        self.since = self.since.saturating_add(n as u64);
        if self.since >= FLUSH_EVERY {
            self.since = 0;
            if let Some(flush) = &self.flush {
                // The thread is gone only after a failed flush, which the caller gets at join.
                let _ = flush.send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `fill` returns the (tail length, tail checksum) of a file it checksums itself; `hash_whole`
/// files are small records and modules, the others page files, flushed early. A file that
/// fails is removed: a full disk is not made fuller by the attempt.
fn write_new_file(
    path: &Path,
    faults: &mut Faults,
    hash_whole: bool,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<Option<(u64, Hash)>>,
) -> std::io::Result<FileEntry> {
    let file = disk::create_new(path)?;
    let written = write_opened_file(path, file, faults, hash_whole, fill);
    if written.is_err() {
        discard_file(path, faults);
    }
    written
}

/// Best effort: removes the file at `path`, written under `faults`, and gives its bytes back.
fn discard_file(path: &Path, faults: &Faults) {
    let size = fs::symlink_metadata(path).map_or(0, |m| m.len());
    if disk::remove_file(path).is_ok() {
        faults.free(size);
    }
}

/// [`write_new_file`] once the file is created.
fn write_opened_file(
    path: &Path,
    file: File,
    faults: &mut Faults,
    hash_whole: bool,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<Option<(u64, Hash)>>,
) -> std::io::Result<FileEntry> {
    let (entry, file) = if hash_whole {
        fill_file(
            EarlyFlush {
                file,
                since: 0,
                flush: None,
            },
            faults,
            true,
            fill,
        )?
    } else {
        let flushing = file.try_clone()?;
        let (sender, requests) = std::sync::mpsc::channel::<()>();
        let fail = faults.early_flush;
        std::thread::scope(|scope| {
            let flusher = scope.spawn(move || -> std::io::Result<()> {
                for () in requests.iter() {
                    // Requests that queued up while the last flush ran are served by one.
                    while requests.try_recv().is_ok() {}
                    if fail {
                        return Err(std::io::Error::other(
                            "fdatasync: input/output error (injected)",
                        ));
                    }
                    disk::sync_data(&flushing)?;
                }
                Ok(())
            });
            let out = EarlyFlush {
                file,
                since: 0,
                flush: Some(sender),
            };
            // `fill_file` drops the sender with the writer, which ends the thread's loop.
            let filled = fill_file(out, faults, false, fill);
            let flushed = flusher
                .join()
                .map_err(|_| std::io::Error::other("the flushing thread panicked"))?;
            let filled = filled?;
            flushed.map(|()| filled)
        })?
    };
    disk::sync_all(&file)?;
    let mut permissions = file.metadata()?.permissions();
    permissions.set_readonly(true);
    fs::set_permissions(path, permissions)?;
    Ok(entry)
}

/// Runs `fill` into `out` through the hashing, counting and budget-checking writer; returns
/// the file's entry and the file, unsynced.
fn fill_file(
    out: EarlyFlush,
    faults: &Faults,
    hash_whole: bool,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<Option<(u64, Hash)>>,
) -> std::io::Result<(FileEntry, File)> {
    let mut writer = CheckedWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: hash_whole.then(Sha256::new),
        written: 0,
        faults,
    };
    let tail = fill(&mut writer)?;
    writer.flush()?;
    let entry = match (tail, writer.hasher.take()) {
        (Some((tail, sha256)), _) => FileEntry {
            size: writer.written,
            sha256,
            tail,
        },
        (None, Some(hasher)) => FileEntry {
            size: writer.written,
            sha256: hasher.finalize().into(),
            tail: 0,
        },
        (None, None) => return Err(std::io::Error::other("a file without a checksum")),
    };
    let out = writer.inner.into_inner().map_err(|e| e.into_error())?;
    Ok((entry, out.file))
}

/// The size of the file at `path` and the SHA-256 of its last `tail` bytes (all of it for 0;
/// a file shorter than `tail` hashes as empty, and its size tells).
fn file_sha256(path: &Path, tail: u64) -> std::io::Result<(u64, Hash)> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    if tail > 0 {
        if size < tail {
            return Ok((size, [0; 32]));
        }
        file.seek(SeekFrom::Start(size.saturating_sub(tail)))?;
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or(&buf));
    }
    Ok((size, hasher.finalize().into()))
}

/// What [`list_files`] found under a checkpoint directory.
enum Listing {
    /// Every file, as paths relative to the directory with `/` separators, in sorted order.
    Files(Vec<String>),
    /// The first entry (relative path) that is neither a regular file nor a directory: a
    /// symbolic link, a FIFO, a socket or a device.
    NotRegular(String),
}

/// Every file under `dir`. Symbolic links are not followed but refused: a checkpoint holds
/// regular files only, or its state would depend on a path outside the state directory (and
/// the next checkpoint would hard-link the link itself).
fn list_files(dir: &Path) -> std::io::Result<Listing> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            // `DirEntry::file_type` does not follow a symbolic link: it reports the link.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() {
                out.push(rel);
            } else {
                return Ok(Listing::NotRegular(rel));
            }
        }
    }
    out.sort();
    Ok(Listing::Files(out))
}

impl StateManager {
    /// Opens (creating it if absent, but not its parent) and locks the state directory `root`,
    /// and loads its last checkpoint; a directory without one gives a fresh state.
    pub fn open(
        root: &Path,
        max_snapshots_per_canister: usize,
    ) -> Result<(StateManager, ReplicatedState), StateManagerError> {
        match fs::metadata(root) {
            Ok(meta) if !meta.is_dir() => {
                return Err(StateManagerError::Directory {
                    dir: root.to_path_buf(),
                    reason: "is not a directory".into(),
                });
            }
            Ok(_) => {}
            Err(_) => fs::create_dir(root).map_err(|e| {
                io_dir(
                    root,
                    "does not exist and cannot be created (does its parent exist?)",
                    e,
                )
            })?,
        }
        let lock_path = root.join(LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_dir(root, "cannot create its lock file (is it writable?)", e))?;
        match FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateManagerError::Locked {
                    dir: root.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_dir(root, "cannot lock it", e)),
        }
        let tip = root.join(TIP);
        if tip.exists() {
            disk::remove_dir_all(&tip)
                .map_err(|e| io_dir(root, "cannot remove an unfinished checkpoint (tip/)", e))?;
        }
        // `merges/` stays: once a checkpoint is loaded, the files of the merges it left pending
        // are continued and the rest removed (`merges.rs`); without one, all of it goes.
        let merges = root.join(MERGES);
        let checkpoints = root.join(CHECKPOINTS);
        if !checkpoints.is_dir() {
            // A power loss must not lose the name that every checkpoint is reached by.
            disk::create_dir(&checkpoints)
                .and_then(|()| sync_dir(root))
                .map_err(|e| io_dir(root, "cannot create checkpoints/ (is it writable?)", e))?;
        }
        let mut manager = StateManager {
            merges: Merges::none(root),
            loaded_stacks: BTreeMap::new(),
            loaded_pending: None,
            root: root.to_path_buf(),
            _lock: lock,
            current: None,
            mapped: BTreeMap::new(),
            faults: Faults::default(),
            merges_left_out: Vec::new(),
            node_record: None,
            merge_pages_written: 0,
        };
        let Some(height) = manager.last_checkpoint_height()? else {
            if merges.exists() {
                disk::remove_dir_all(&merges)
                    .map_err(|e| io_dir(root, "cannot remove unfinished merges (merges/)", e))?;
            }
            return Ok((manager, ReplicatedState::new(max_snapshots_per_canister)));
        };
        let state = manager.load(height, max_snapshots_per_canister)?;
        manager.remove_checkpoints_below(height);
        // Last, so that its writes slow nothing `open` does: the merges the loaded checkpoint
        // left pending, continued where `merges/` says they are.
        let stacks = std::mem::take(&mut manager.loaded_stacks);
        let pending = manager
            .loaded_pending
            .take()
            .unwrap_or_else(|| merges::plan(height, &stacks, &[]));
        manager.merges = Merges::resume(&manager.root, &pending);
        let faults = manager.faults.clone();
        manager
            .merges
            .start(pending, &manager.mapped, Retired::none(), faults);
        Ok((manager, state))
    }

    /// The node's record of the loaded checkpoint (`node.bin`), if it had one.
    pub fn node_record(&self) -> Option<&[u8]> {
        self.node_record.as_deref()
    }

    /// Sets the record the next checkpoint writes beside the state (`node.bin`): what the node
    /// (`crate::replica`) must find again with this state after a restart, such as its
    /// ingress history. Committed atomically with the state, at the same fsync and rename.
    pub fn set_node_record(&mut self, record: Vec<u8>) {
        self.node_record = Some(record);
    }

    /// The node's secret (its keys) in `<state-dir>/node_secret`, created by `create` on the
    /// first call and kept for the directory's life, so that clients that pinned the root key
    /// keep working across restarts. Written with mode 0600 to a temporary file, `fsync`ed,
    /// renamed into place and the directory `fsync`ed: a crash leaves either no secret or the
    /// whole one.
    pub fn node_secret(
        &self,
        create: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, StateManagerError> {
        let path = self.root.join(NODE_SECRET);
        match fs::read(&path) {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_dir(&self.root, "cannot read its node_secret", e)),
        }
        let secret = create();
        let tmp = self.root.join(format!("{NODE_SECRET}.tmp"));
        let written = (|| {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(&secret)?;
            disk::sync_all(&file)?;
            disk::rename(&tmp, &path)?;
            sync_dir(&self.root)
        })();
        written.map_err(|e| io_dir(&self.root, "cannot write its node_secret", e))?;
        Ok(secret)
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The height (round) of the last completed checkpoint, if any.
    pub fn checkpoint_height(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.height)
    }

    /// The directory of the last completed checkpoint, if any.
    pub fn checkpoint_dir(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.dir.as_path())
    }

    /// Test hook: the following writes (checkpoints, and the background merges, also those
    /// already running) fail like a full disk once `bytes` more have been written (`None`: no
    /// limit); a file removed after a failed write gives its bytes back.
    #[doc(hidden)]
    pub fn set_write_budget(&mut self, bytes: Option<u64>) {
        let bytes = bytes.map_or(UNLIMITED, |b| b.min(UNLIMITED - 1));
        self.faults.budget.store(bytes, Ordering::Relaxed);
    }

    /// Test hook for a whole process (the command line's): every state manager opened after
    /// this starts with a write budget of `bytes` ([`Self::set_write_budget`]), the background
    /// merges its `open` starts included, so a merge cannot finish before the budget is set.
    #[doc(hidden)]
    pub fn set_initial_write_budget(bytes: Option<u64>) {
        let bytes = bytes.map_or(UNLIMITED, |b| b.min(UNLIMITED - 1));
        INITIAL_BUDGET.store(bytes, Ordering::Relaxed);
    }

    /// Test hook for this thread: the state managers it opens from now on hold their
    /// background merges from the start (`hold`: until each checkpoint, which stops them, so
    /// every merge is written by the checkpoints themselves, across processes as a command
    /// line's invocations) and grant `credit_min_pages` of merging per checkpoint besides
    /// their writes instead of [`MERGE_CREDIT_MIN_PAGES`].
    #[doc(hidden)]
    pub fn set_merges_at_open(hold: bool, credit_min_pages: u64) {
        MERGES_AT_OPEN.with(|m| m.set((hold, credit_min_pages)));
    }

    /// Pages of merged files the last checkpoint wrote itself (what the background thread had
    /// not): at most [`MERGE_CREDIT_RATE`] × the pages it wrote + [`MERGE_CREDIT_MIN_PAGES`],
    /// plus a merge of overlays on a stack that would otherwise pass
    /// [`MAX_FILES_PER_MEMORY`] files (`spec/durability.md`).
    pub fn merge_pages_written(&self) -> u64 {
        self.merge_pages_written
    }

    /// Test hook: whether the early flushes of the page files the following checkpoints write
    /// fail, like an `fdatasync` that reports an I/O error.
    #[doc(hidden)]
    pub fn set_failing_early_flushes(&mut self, fail: bool) {
        self.faults.early_flush = fail;
    }

    /// Test hook: whether the background work of the following checkpoints (the older
    /// checkpoint let go of, the merges) waits, before it starts, until the next checkpoint (or
    /// [`Self::finish_merges`]) needs it: the checkpoint meets it still running, and a test
    /// sees its disk operations at one place.
    #[doc(hidden)]
    pub fn set_holding_merges(&mut self, hold: bool) {
        self.faults.hold_merges = hold;
    }

    /// Best effort: removes checkpoints older than `height` (left by a crash between a commit
    /// and its clean-up). Their files live on where `height` links them.
    fn remove_checkpoints_below(&self, height: u64) {
        let dir = self.root.join(CHECKPOINTS);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let mut removed = false;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if u64::from_str_radix(&name, 16).is_ok_and(|h| h < height) {
                removed |= disk::remove_dir_all(&entry.path()).is_ok();
            }
        }
        if removed {
            let _ = sync_dir(&dir);
        }
    }

    fn last_checkpoint_height(&self) -> Result<Option<u64>, StateManagerError> {
        let dir = self.root.join(CHECKPOINTS);
        let entries = fs::read_dir(&dir).map_err(|e| io_dir(&dir, "cannot be listed", e))?;
        let mut best = None;
        for entry in entries {
            let entry = entry.map_err(|e| io_dir(&dir, "cannot be listed", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let height = (name.len() == 16)
                .then(|| u64::from_str_radix(&name, 16).ok())
                .flatten()
                .ok_or_else(|| StateManagerError::Directory {
                    dir: dir.clone(),
                    reason: format!(
                        "{name} is not a checkpoint (16 hex digits); remove it or restore the \
                         directory"
                    ),
                })?;
            best = best.max(Some(height));
        }
        Ok(best)
    }

    /// Checks checkpoint `height` against its manifest, then decodes it and maps its pages.
    fn load(
        &mut self,
        height: u64,
        max_snapshots_per_canister: usize,
    ) -> Result<ReplicatedState, StateManagerError> {
        let dir = self.root.join(CHECKPOINTS).join(checkpoint_name(height));
        let corrupt = |file: &str, reason: String| StateManagerError::Corrupt {
            checkpoint: dir.clone(),
            file: dir.join(file),
            reason,
        };
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(corrupt(
                ".",
                "is not a directory (a symbolic link?): a checkpoint is a directory inside the \
                 state directory; put the checkpoint itself in its place"
                    .into(),
            ));
        }
        let manifest_bytes = fs::read(dir.join(MANIFEST))
            .map_err(|e| corrupt(MANIFEST, format!("cannot be read: {e}")))?;
        let manifest: ManifestRecord = unframe(
            &manifest_bytes,
            MANIFEST_FORMAT_VERSION,
            &dir,
            &dir.join(MANIFEST),
        )?;
        if manifest.height != height {
            return Err(corrupt(
                MANIFEST,
                format!("records height {}, not {height}", manifest.height),
            ));
        }
        let present =
            match list_files(&dir).map_err(|e| corrupt(".", format!("cannot be listed: {e}")))? {
                Listing::Files(files) => files,
                Listing::NotRegular(name) => {
                    return Err(corrupt(
                        &name,
                        "is not a regular file (a symbolic link, or a special file): a \
                         checkpoint holds regular files only; put the file itself in its place"
                            .into(),
                    ));
                }
            };
        for name in &present {
            if name != MANIFEST && name != UNVERIFIED && !manifest.files.contains_key(name) {
                return Err(corrupt(
                    name,
                    "is not in the manifest (an extra file)".into(),
                ));
            }
        }
        for (name, entry) in &manifest.files {
            if present.binary_search(name).is_err() {
                return Err(corrupt(name, "is missing (listed in the manifest)".into()));
            }
            let (size, sha256) = file_sha256(&dir.join(name), entry.tail)
                .map_err(|e| corrupt(name, format!("cannot be read: {e}")))?;
            if size != entry.size {
                return Err(corrupt(
                    name,
                    format!(
                        "has {size} bytes, the manifest records {} (truncated or extended)",
                        entry.size
                    ),
                ));
            }
            if sha256 != entry.sha256 {
                return Err(corrupt(
                    name,
                    "its SHA-256 differs from the manifest's (the file was changed)".into(),
                ));
            }
        }
        let state_bytes = fs::read(dir.join(STATE))
            .map_err(|e| corrupt(STATE, format!("cannot be read: {e}")))?;
        let record = unframe_with(
            &state_bytes,
            STATE_FORMAT_VERSION,
            &dir,
            &dir.join(STATE),
            StateRecord::decode,
        )?;
        let mut loader = Loader {
            dir: &dir,
            mapped: BTreeMap::new(),
            layers: BTreeMap::new(),
            modules: BTreeMap::new(),
        };
        let state = record
            .into_state(max_snapshots_per_canister, &mut loader)
            .map_err(|reason| corrupt(STATE, reason))?;
        // Checked against the manifest above like every file; what it holds is the node's.
        self.node_record = if manifest.files.contains_key(NODE) {
            Some(
                fs::read(dir.join(NODE))
                    .map_err(|e| corrupt(NODE, format!("cannot be read: {e}")))?,
            )
        } else {
            None
        };
        self.loaded_pending = if manifest.files.contains_key(MERGES_FILE) {
            let bytes = fs::read(dir.join(MERGES_FILE))
                .map_err(|e| corrupt(MERGES_FILE, format!("cannot be read: {e}")))?;
            Some(MergesRecord::decode(&bytes, &dir, &dir.join(MERGES_FILE))?)
        } else {
            None
        };
        self.mapped = loader.mapped;
        self.loaded_stacks = loader.layers;
        self.current = Some(Checkpoint {
            height,
            dir: dir.clone(),
            files: manifest.files,
        });
        let marker = dir.join(UNVERIFIED);
        if marker.exists() {
            disk::remove_file(&marker)
                .and_then(|()| sync_dir(&dir))
                .map_err(|e| io_dir(&dir, "cannot remove its unverified marker", e))?;
        }
        Ok(state)
    }

    /// Writes a checkpoint of `state` at its round (see the module docs) and puts every memory
    /// of `state` on the checkpoint's files. Does nothing if the last checkpoint is at this
    /// round already. On error the previous checkpoint stays and `state` is unchanged.
    pub fn checkpoint(&mut self, state: &mut ReplicatedState) -> Result<(), StateManagerError> {
        let height = state.round;
        if self.checkpoint_height() == Some(height) {
            return Ok(());
        }
        // The thread stops where it is: this checkpoint writes no more of the pending merges
        // than its credit (`merges.rs`).
        self.merges.stop();
        let credited = merges::credited(
            self.merges.pending(),
            unsaved_pages(state),
            self.faults.credit_min_pages,
        );
        self.merges.pages_written_here = 0;
        let tip = self.root.join(TIP);
        let mut result = self.write_tip(state, height, &tip, true, &credited);
        // Merges are an optimisation: a checkpoint that has no room with the merges it wrote
        // itself is written again without them (their files removed; those complete before
        // cost no room).
        if let Err(failed) = &result
            && failed.wrote_merges
            && failed.error.is_no_room()
        {
            self.remove_tip(&tip);
            self.merges.discard_written_here(&self.faults);
            result = self.write_tip(state, height, &tip, false, &credited);
        }
        let (plan, new_files) = match result {
            Ok(done) => done,
            Err(failed) => {
                self.remove_tip(&tip);
                return Err(failed.error);
            }
        };
        let final_dir = self.root.join(CHECKPOINTS).join(checkpoint_name(height));
        let write_err = |file: &Path, source| StateManagerError::Write {
            height,
            file: file.to_path_buf(),
            source,
        };
        if let Err(e) = disk::rename(&tip, &final_dir) {
            self.remove_tip(&tip);
            return Err(write_err(&final_dir, e));
        }
        let checkpoints = self.root.join(CHECKPOINTS);
        sync_dir(&checkpoints).map_err(|e| write_err(&checkpoints, e))?;
        // Committed. From here on nothing can fail that would leave memory and disk apart.
        plan.apply(state);
        let Plan {
            memories,
            mapped,
            left_out,
            pending,
            merge_pages,
        } = plan;
        self.merge_pages_written = merge_pages.saturating_add(self.merges.pages_written_here);
        self.merges_left_out = left_out;
        let previous = self.current.replace(Checkpoint {
            height,
            dir: final_dir,
            files: new_files,
        });
        let mapped = std::mem::replace(&mut self.mapped, mapped);
        // The older checkpoint and what mapped its files go on the background thread, off
        // this checkpoint's time.
        let retired = Retired {
            dir: previous.map(|p| p.dir),
            held: Box::new((memories, mapped)),
        };
        let faults = self.faults.clone();
        self.merges.start(pending, &self.mapped, retired, faults);
        Ok(())
    }

    /// The merges the last checkpoint written by this manager left out for want of room
    /// (`spec/durability.md`, "A full disk"): empty on a disk with room.
    pub fn merges_left_out(&self) -> &[MergeLeftOut] {
        &self.merges_left_out
    }

    /// Removes the unfinished checkpoint `tip/` (best effort: open removes it too), giving the
    /// budget (a test hook) the bytes of the files written into it, not those linked.
    fn remove_tip(&self, tip: &Path) {
        use std::os::unix::fs::MetadataExt;
        let written: u64 = match (self.faults.limited(), list_files(tip)) {
            (true, Ok(Listing::Files(files))) => files
                .iter()
                .filter_map(|rel| fs::symlink_metadata(tip.join(rel)).ok())
                .filter(|m| m.nlink() == 1)
                .map(|m| m.len())
                .sum(),
            _ => 0,
        };
        if disk::remove_dir_all(tip).is_ok() {
            self.faults.free(written);
        }
    }

    /// Waits until the background work of the last checkpoint is done: the older checkpoint
    /// let go of and the planned merges written (`merges.rs`). The next checkpoint waits for it
    /// itself if it is not; a replica calls this between checkpoints (or a benchmark, to time
    /// a checkpoint apart from the work before it).
    pub fn finish_merges(&mut self) {
        self.merges.finish();
    }

    /// Whether the last checkpoint's background work (see [`Self::finish_merges`]) still runs.
    pub fn merges_pending(&self) -> bool {
        self.merges.pending_work()
    }

    /// Step 1 and 2 of the module docs: fills `tip/` and maps the new page files. Merges the
    /// background thread did not deliver are written here only if `write_merges`.
    fn write_tip(
        &mut self,
        state: &ReplicatedState,
        height: u64,
        tip: &Path,
        write_merges: bool,
        credited: &[PendingMerge],
    ) -> Result<(Plan, BTreeMap<String, FileEntry>), TipFailed> {
        let mut wrote_merges = false;
        self.fill_tip(
            state,
            height,
            tip,
            write_merges,
            credited,
            &mut wrote_merges,
        )
        .map_err(|error| TipFailed {
            error,
            wrote_merges,
        })
    }

    fn fill_tip(
        &mut self,
        state: &ReplicatedState,
        height: u64,
        tip: &Path,
        write_merges: bool,
        credited: &[PendingMerge],
        wrote_merges: &mut bool,
    ) -> Result<(Plan, BTreeMap<String, FileEntry>), StateManagerError> {
        let write_err = |file: &Path, source| StateManagerError::Write {
            height,
            file: file.to_path_buf(),
            source,
        };
        // The pending merges, each written up to its credit (a due one to the end) unless the
        // background thread did; a due merge that has no room is left out, one that is not due
        // just waits.
        let mut due: Vec<(PendingMerge, Option<Merged>)> = Vec::new();
        let mut waiting: Vec<Vec<String>> = Vec::new();
        for merge in credited {
            let merged = if write_merges {
                let advanced = self.merges.advance_to_credit(merge, &self.faults);
                *wrote_merges |= self.merges.wrote_here();
                match advanced {
                    Ok(merged) => merged,
                    Err(e) if no_room(&e) || !merge.due() => None,
                    Err(e) => return Err(write_err(&self.merges.path(&merge.name), e)),
                }
            } else {
                self.merges.merged(&merge.name)
            };
            if merge.due() {
                due.push((merge.clone(), merged));
            } else {
                waiting.push(merge.inputs.clone());
            }
        }
        if tip.exists() {
            disk::remove_dir_all(tip).map_err(|e| write_err(tip, e))?;
        }
        for dir in [tip.to_path_buf(), tip.join(PAGES), tip.join(WASM)] {
            disk::create_dir(&dir).map_err(|e| write_err(&dir, e))?;
        }
        let mut writer = Writer {
            height,
            tip,
            previous: self.current.as_ref(),
            mapped: &self.mapped,
            merges: &self.merges,
            due: &due,
            waiting: &waiting,
            faults: &mut self.faults,
            files: BTreeMap::new(),
            memories: HashMap::new(),
            new_mapped: BTreeMap::new(),
            layers: BTreeMap::new(),
            next_file: 0,
            error: None,
            write_merges,
            merges_written: false,
            left_out: BTreeMap::new(),
            merge_pages: 0,
        };
        let record = StateRecord::from_state(state, &mut writer);
        *wrote_merges |= writer.merges_written;
        if let Some(err) = writer.error.take() {
            return Err(err);
        }
        let record = record.map_err(|reason| {
            write_err(
                tip,
                std::io::Error::other(format!("cannot encode the state: {reason}")),
            )
        })?;
        let bytes =
            framed(&record.encoded()).map_err(|e| write_err(tip, std::io::Error::other(e)))?;
        let path = tip.join(STATE);
        let entry = write_file(&path, writer.faults, |w| w.write_all(&bytes))
            .map_err(|e| write_err(&path, e))?;
        writer.files.insert(STATE.to_string(), entry);
        // What stays pending (merges not due whose files some stack still holds in a row) and
        // what this checkpoint's stacks plan.
        let still: Vec<PendingMerge> = credited
            .iter()
            .filter(|m| {
                !m.due()
                    && writer
                        .layers
                        .keys()
                        .any(|n| find_run(n, &m.inputs).is_some())
            })
            .cloned()
            .collect();
        let planned = merges::plan(height, &writer.layers, &still);
        let mut pending = still;
        pending.extend(planned);
        if !pending.is_empty() {
            let bytes = MergesRecord::encode(&pending)
                .map_err(|e| write_err(tip, std::io::Error::other(e)))?;
            let path = tip.join(MERGES_FILE);
            let entry = write_file(&path, writer.faults, |w| w.write_all(&bytes))
                .map_err(|e| write_err(&path, e))?;
            writer.files.insert(MERGES_FILE.to_string(), entry);
        }
        if let Some(node) = &self.node_record {
            let path = tip.join(NODE);
            let entry = write_file(&path, writer.faults, |w| w.write_all(node))
                .map_err(|e| write_err(&path, e))?;
            writer.files.insert(NODE.to_string(), entry);
        }
        let manifest = ManifestRecord {
            version: MANIFEST_FORMAT_VERSION,
            height,
            files: writer.files.clone(),
        };
        let bytes = framed(&manifest).map_err(|e| write_err(tip, std::io::Error::other(e)))?;
        let path = tip.join(MANIFEST);
        write_file(&path, writer.faults, |w| w.write_all(&bytes))
            .map_err(|e| write_err(&path, e))?;
        let path = tip.join(UNVERIFIED);
        write_file(&path, writer.faults, |_| Ok(())).map_err(|e| write_err(&path, e))?;
        for dir in [tip.join(PAGES), tip.join(WASM), tip.to_path_buf()] {
            sync_dir(&dir).map_err(|e| write_err(&dir, e))?;
        }
        let files = writer.files;
        let plan = Plan {
            memories: writer.memories,
            mapped: writer.new_mapped,
            pending,
            merge_pages: writer.merge_pages,
            left_out: writer
                .left_out
                .into_iter()
                .map(|(file, page_bytes)| MergeLeftOut { file, page_bytes })
                .collect(),
        };
        Ok((plan, files))
    }
}

/// Each distinct memory (by page identity) of a checkpoint being written, once: the page map
/// it had (kept, so that its identity stays its own) and the one it gets once the checkpoint
/// is committed. Looked up by key only, never iterated.
type Memories = HashMap<PageMapIdentity, (PageMap, PageMap)>;

/// A `tip/` that could not be filled, and whether it failed after writing merges itself.
struct TipFailed {
    error: StateManagerError,
    wrote_merges: bool,
}

/// What a written checkpoint changes in memory once committed.
struct Plan {
    /// The merges left out for want of room.
    left_out: Vec<MergeLeftOut>,
    memories: Memories,
    mapped: BTreeMap<String, Arc<PageFile>>,
    /// The merges the checkpoint leaves pending (its `merges.bin`).
    pending: Vec<PendingMerge>,
    /// Pages of the merges of overlays it wrote into `tip/` (a stack past the bound).
    merge_pages: u64,
}

impl Plan {
    fn new_pages(&self, old: &PageMap) -> Option<PageMap> {
        self.memories
            .get(&old.identity())
            .map(|(_, after)| after.clone())
    }

    fn rebase(&self, memory: &mut Memory) {
        if let Some(pages) = self.new_pages(memory.page_map()) {
            *memory = Memory::from_page_map(pages, memory.size_bytes());
        }
    }

    /// Puts every memory of `state` on its checkpointed files. Contents are unchanged, so
    /// every memoised checksum stays valid.
    fn apply(&self, state: &mut ReplicatedState) {
        for canister in state.canisters.values_mut() {
            if let Some(execution) = &mut canister.execution_state {
                self.rebase(&mut execution.wasm_memory);
                self.rebase(&mut execution.stable_memory);
            }
        }
        let ids: Vec<_> = state
            .snapshots
            .iter()
            .map(|s| (s.canister_id(), s.id().clone()))
            .collect();
        for (canister, id) in ids {
            if let Ok(snapshot) = state.snapshots.get_mut(canister, &id) {
                snapshot.rebase_memories(|memory| self.rebase(memory));
            }
        }
    }
}

/// [`Store`] for writing: new page files and modules into `tip/`, the rest hard-linked.
struct Writer<'a> {
    height: u64,
    tip: &'a Path,
    previous: Option<&'a Checkpoint>,
    mapped: &'a BTreeMap<String, Arc<PageFile>>,
    /// The pending merges and their files.
    merges: &'a Merges,
    /// The merges due at this checkpoint, with their files (`None`: left out for want of room).
    due: &'a [(PendingMerge, Option<Merged>)],
    /// The inputs of the pending merges not due: no other merge cuts into them.
    waiting: &'a [Vec<String>],
    faults: &'a mut Faults,
    files: BTreeMap<String, FileEntry>,
    memories: Memories,
    new_mapped: BTreeMap<String, Arc<PageFile>>,
    layers: BTreeMap<Vec<String>, Arc<PageLayers>>,
    next_file: u64,
    /// The first I/O error, kept typed (the `Store` trait carries strings).
    error: Option<StateManagerError>,
    /// Whether merges the background thread did not deliver are written here (else left out).
    write_merges: bool,
    /// Whether a merge was written here (its room may be what the checkpoint lacks).
    merges_written: bool,
    /// Merged file name → page bytes of its inputs, for each merge left out for want of room.
    left_out: BTreeMap<String, u64>,
    /// Pages of the merges written into `tip/`.
    merge_pages: u64,
}

impl Writer<'_> {
    fn fail(&mut self, file: &Path, source: std::io::Error) -> String {
        let message = format!("{}: {source}", file.display());
        if self.error.is_none() {
            self.error = Some(StateManagerError::Write {
                height: self.height,
                file: file.to_path_buf(),
                source,
            });
        }
        message
    }

    /// Makes `rel` part of the new checkpoint: hard-links it from the last one.
    fn link(&mut self, rel: &str) -> Result<(), String> {
        if self.files.contains_key(rel) {
            return Ok(());
        }
        let Some(previous) = self.previous else {
            return Err(format!("{rel} is not in any checkpoint"));
        };
        let Some(entry) = previous.files.get(rel).cloned() else {
            return Err(format!("{rel} is not in the last checkpoint"));
        };
        let target = self.tip.join(rel);
        if let Err(e) = disk::hard_link(&previous.dir.join(rel), &target) {
            return Err(self.fail(&target, e));
        }
        self.files.insert(rel.to_string(), entry);
        Ok(())
    }

    /// Writes a new page file of `pages` and maps it.
    fn new_page_file<'p>(
        &mut self,
        pages: impl Iterator<Item = (u64, &'p [u8; crate::memory::PAGE_SIZE], Option<Hash>)>,
    ) -> Result<(String, Arc<PageFile>), String> {
        let name = format!("{:016x}_{:04x}.pages", self.height, self.next_file);
        self.next_file = self.next_file.saturating_add(1);
        self.named_page_file(name, pages)
    }

    /// Writes the merge of `files` (oldest first) as the page file `name`; `None` if it is
    /// left out for want of room (the disk has none, or this is the attempt without merges).
    fn merge_file(
        &mut self,
        name: String,
        files: &[Arc<PageFile>],
    ) -> Result<Option<(String, Arc<PageFile>)>, String> {
        if self.left_out.contains_key(&name) {
            return Ok(None);
        }
        let page_bytes = files
            .iter()
            .map(|f| f.page_count().saturating_mul(PAGE_BYTES))
            .fold(0u64, u64::saturating_add);
        if !self.write_merges {
            self.left_out.insert(name, page_bytes);
            return Ok(None);
        }
        self.merges_written = true;
        let pages = PageLayers::pages_of(files).map_err(|e| e.to_string())?;
        let pages = pages.map(|(i, bytes, hash)| (i, bytes, Some(hash)));
        match self.write_page_file(&name, pages) {
            Ok(entry) => {
                let mapped = self.map_page_file(name, entry)?;
                self.merge_pages = self.merge_pages.saturating_add(mapped.1.page_count());
                Ok(Some(mapped))
            }
            Err((_, e)) if no_room(&e) => {
                // The partial file is already removed (`write_new_file`).
                self.left_out.insert(name, page_bytes);
                Ok(None)
            }
            Err((path, e)) => Err(self.fail(&path, e)),
        }
    }

    /// The merge `merge`, due at this checkpoint, linked from `merges/` (its file complete:
    /// written by the thread or by this checkpoint), or `None` if it is left out for want of
    /// room (`spec/durability.md`, "A full disk").
    fn due_merge(
        &mut self,
        merge: &PendingMerge,
        merged: Option<&Merged>,
    ) -> Result<Option<(String, Arc<PageFile>)>, String> {
        let name = &merge.name;
        if let Some(file) = self.new_mapped.get(name) {
            return Ok(Some((name.clone(), file.clone())));
        }
        let Some(merged) = merged else {
            let page_bytes = self
                .merges
                .inputs(name)
                .iter()
                .map(|f| f.page_count().saturating_mul(PAGE_BYTES))
                .fold(0u64, u64::saturating_add);
            self.left_out.insert(name.clone(), page_bytes);
            return Ok(None);
        };
        let rel = format!("{PAGES}/{name}");
        let target = self.tip.join(&rel);
        if let Err(e) = disk::hard_link(&self.merges.path(name), &target) {
            return Err(self.fail(&target, e));
        }
        self.files.insert(rel, merged.entry.clone());
        Ok(Some((name.clone(), merged.file.clone())))
    }

    /// Writes a new page file `name` of `pages` into `tip/pages/`: its entry, or its path and
    /// the error (the file removed).
    fn write_page_file<'p>(
        &mut self,
        name: &str,
        pages: impl Iterator<Item = (u64, &'p [u8; crate::memory::PAGE_SIZE], Option<Hash>)>,
    ) -> Result<FileEntry, (PathBuf, std::io::Error)> {
        let path = self.tip.join(PAGES).join(name);
        write_pages_file(&path, self.faults, pages).map_err(|e| (path, e))
    }

    /// Writes a new page file `name` of `pages` and maps it.
    fn named_page_file<'p>(
        &mut self,
        name: String,
        pages: impl Iterator<Item = (u64, &'p [u8; crate::memory::PAGE_SIZE], Option<Hash>)>,
    ) -> Result<(String, Arc<PageFile>), String> {
        match self.write_page_file(&name, pages) {
            Ok(entry) => self.map_page_file(name, entry),
            Err((path, e)) => Err(self.fail(&path, e)),
        }
    }

    /// Maps the page file `name` just written into `tip/pages/` and records its `entry`.
    fn map_page_file(
        &mut self,
        name: String,
        entry: FileEntry,
    ) -> Result<(String, Arc<PageFile>), String> {
        let rel = format!("{PAGES}/{name}");
        let path = self.tip.join(&rel);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => return Err(self.fail(&path, e)),
        };
        let mapped = PageFile::map(&file, &name)
            .map_err(|e| self.fail(&path, std::io::Error::other(e.to_string())))?;
        self.files.insert(rel, entry);
        Ok((name, Arc::new(mapped)))
    }

    fn layers_for(&mut self, files: &[(String, Arc<PageFile>)]) -> PageMap {
        if files.is_empty() {
            return PageMap::new();
        }
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let layers = self
            .layers
            .entry(names)
            .or_insert_with(|| {
                Arc::new(PageLayers::new(
                    files.iter().map(|(_, f)| f.clone()).collect(),
                ))
            })
            .clone();
        PageMap::with_base(layers)
    }
}

impl Store for Writer<'_> {
    fn memory_record(&mut self, memory: &Memory) -> Result<MemoryRecord, String> {
        let pages = memory.page_map();
        let after = match self.memories.get(&pages.identity()) {
            Some((_, after)) => after.clone(),
            None => {
                // The files under the memory, then one with the pages written since.
                let mut files: Vec<(String, Arc<PageFile>)> = pages
                    .base()
                    .map(|b| {
                        b.files()
                            .iter()
                            .map(|f| (f.name().to_string(), f.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                // The merges due at this checkpoint, each in place of its files (under the files
                // written since it was planned).
                for (merge, merged) in self.due {
                    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
                    if let Some(at) = find_run(&names, &merge.inputs)
                        && let Some(merged) = self.due_merge(merge, merged.as_ref())?
                    {
                        let above = files.split_off(at.saturating_add(merge.inputs.len()));
                        files.truncate(at);
                        files.push(merged);
                        files.extend(above);
                    }
                }
                if pages.heap_iter().next().is_some() {
                    // Leaf hashes the tree has cached are stored as they are.
                    let mut heap = pages.heap_iter();
                    let with_hashes = std::iter::from_fn(move || {
                        let (index, page) = heap.next()?;
                        Some((index, page.bytes(), heap.cached_hash_of_last()))
                    });
                    files.push(self.new_page_file(with_hashes)?);
                }
                // Never more than MAX files: only if no merge was planned for a full stack (the
                // plans leave room for one overlay) or the planned one was left out for want
                // of room, merge the newest down to the bound here (if there is room: else the
                // stack stays longer until a later checkpoint merges it).
                // Counting each merge still pending as the one file it becomes, and never into
                // its files.
                let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
                let (mut floor, mut pending_extra) = (0, 0usize);
                for inputs in self.waiting {
                    if let Some(at) = find_run(&names, inputs) {
                        floor = floor.max(at.saturating_add(inputs.len()));
                        pending_extra =
                            pending_extra.saturating_add(inputs.len().saturating_sub(1));
                    }
                }
                let effective = files.len().saturating_sub(pending_extra);
                let excess = effective.saturating_sub(MAX_FILES_PER_MEMORY);
                let from = files
                    .len()
                    .saturating_sub(excess.saturating_add(1))
                    .max(floor);
                if excess > 0 && files.len() >= from.saturating_add(2) {
                    let merging: Vec<Arc<PageFile>> =
                        files.iter().skip(from).map(|(_, f)| f.clone()).collect();
                    let name = format!("{:016x}_{:04x}.pages", self.height, self.next_file);
                    self.next_file = self.next_file.saturating_add(1);
                    if let Some(merged) = self.merge_file(name, &merging)? {
                        files.truncate(from);
                        files.push(merged);
                    }
                }
                for (name, file) in &files {
                    let rel = format!("{PAGES}/{name}");
                    if !self.files.contains_key(&rel) {
                        self.link(&rel)?;
                    }
                    self.new_mapped
                        .entry(name.clone())
                        .or_insert_with(|| self.mapped.get(name).cloned().unwrap_or(file.clone()));
                }
                let after = self.layers_for(&files);
                self.memories
                    .insert(pages.identity(), (pages.clone(), after.clone()));
                after
            }
        };
        Ok(MemoryRecord {
            size_bytes: memory.size_bytes(),
            files: after
                .base()
                .map(|b| b.files().iter().map(|f| f.name().to_string()).collect())
                .unwrap_or_default(),
        })
    }

    fn module_name(&mut self, module: &WasmModule) -> Result<String, String> {
        let name = format!("{}.wasm", hex(module.hash()));
        let rel = format!("{WASM}/{name}");
        if self.files.contains_key(&rel) {
            return Ok(name);
        }
        if self.previous.is_some_and(|p| p.files.contains_key(&rel)) {
            self.link(&rel)?;
            return Ok(name);
        }
        let path = self.tip.join(&rel);
        match write_file(&path, self.faults, |w| w.write_all(module.bytes())) {
            Ok(entry) => {
                self.files.insert(rel, entry);
                Ok(name)
            }
            Err(e) => Err(self.fail(&path, e)),
        }
    }

    fn memory(&mut self, _: &MemoryRecord) -> Result<Memory, String> {
        Err("the writer reads no memory".into())
    }

    fn module(&mut self, _: &str) -> Result<WasmModule, String> {
        Err("the writer reads no module".into())
    }
}

/// [`Store`] for loading: maps page files and reads modules of one checkpoint, each once, so
/// memories and modules that were shared before the checkpoint are shared again.
struct Loader<'a> {
    dir: &'a Path,
    mapped: BTreeMap<String, Arc<PageFile>>,
    layers: BTreeMap<Vec<String>, Arc<PageLayers>>,
    modules: BTreeMap<String, WasmModule>,
}

impl Store for Loader<'_> {
    fn memory_record(&mut self, _: &Memory) -> Result<MemoryRecord, String> {
        Err("the loader writes no memory".into())
    }

    fn module_name(&mut self, _: &WasmModule) -> Result<String, String> {
        Err("the loader writes no module".into())
    }

    fn memory(&mut self, record: &MemoryRecord) -> Result<Memory, String> {
        if record.files.is_empty() {
            return Ok(Memory::from_page_map(PageMap::new(), record.size_bytes));
        }
        if let Some(layers) = self.layers.get(&record.files) {
            return Ok(Memory::from_page_map(
                PageMap::with_base(layers.clone()),
                record.size_bytes,
            ));
        }
        let mut files = Vec::with_capacity(record.files.len());
        for name in &record.files {
            if let Some(file) = self.mapped.get(name) {
                files.push(file.clone());
                continue;
            }
            if name.contains('/') || name.contains("..") {
                return Err(format!("page file name {name:?} is not a plain name"));
            }
            let path = self.dir.join(PAGES).join(name);
            let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mapped = Arc::new(PageFile::map(&file, name).map_err(|e| e.to_string())?);
            self.mapped.insert(name.clone(), mapped.clone());
            files.push(mapped);
        }
        let layers = Arc::new(PageLayers::new(files));
        self.layers.insert(record.files.clone(), layers.clone());
        Ok(Memory::from_page_map(
            PageMap::with_base(layers),
            record.size_bytes,
        ))
    }

    fn module(&mut self, name: &str) -> Result<WasmModule, String> {
        if let Some(module) = self.modules.get(name) {
            return Ok(module.clone());
        }
        if name.contains('/') || name.contains("..") {
            return Err(format!("module file name {name:?} is not a plain name"));
        }
        let path = self.dir.join(WASM).join(name);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let module = WasmModule::new(bytes);
        self.modules.insert(name.to_string(), module.clone());
        Ok(module)
    }
}
