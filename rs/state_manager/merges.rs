//! Merges of page files: planned at a checkpoint, written a bounded amount at a time by the
//! checkpoints after it (and ahead of them by a background thread), taken in by the checkpoint
//! at which they are due. The replica's tip thread merges the same way (`MergeCandidate` in
//! dfinity/ic `rs/replicated_state/src/page_map/storage.rs`); what is added here is that a
//! merge may span many checkpoints and processes, so that no checkpoint, and no command-line
//! invocation, pays for more merging than a bounded multiple of what it writes
//! (`spec/durability.md`, "Merges across checkpoints").
//!
//! - **Plan.** When a checkpoint is written, the merges of its stacks of files are planned from
//!   the stacks alone (file names and page counts), counting each merge still pending as the
//!   file it will become: the pyramid rule and the bound of [`MAX_FILES_PER_MEMORY`] files, over
//!   files newer than any pending merge. Each planned merge ([`PendingMerge`]: its name, its
//!   input files, its page count) is recorded in the checkpoint (`merges.bin`).
//! - **Credit.** Each later checkpoint grants the pending merges, smallest first, a *credit* of
//!   [`MERGE_CREDIT_RATE`] × the pages it writes (its overlays) + [`MERGE_CREDIT_MIN_PAGES`]. A
//!   merge is *due* at the checkpoint whose credit reaches its page count: that checkpoint
//!   takes it in (each stack holding its input files in a row holds the merged file instead).
//!   The credits are recorded in `merges.bin`, so which checkpoint takes in which merge is a
//!   function of the batches executed, never of timing, restarts or the thread.
//! - **Progress.** A merge's file, `merges/<name>`, is written in page order. Each checkpoint
//!   writes it, if nothing did before, up to the merge's credit (a due merge to the end: its
//!   leaf hashes, tables and footer), syncs it and records the pages written in
//!   `merges/<name>.progress` before it commits; between checkpoints the background thread
//!   writes further (recording its progress when it stops), so the checkpoints usually find the
//!   work done. A new process continues where the record says. So a checkpoint writes at most
//!   its own credit of merges, whatever the merges' sizes. The files in `merges/` are a cache:
//!   lost or damaged, a merge starts again from nothing (the checkpoint that needs it writes
//!   it), and nothing in a checkpoint depends on them until a checkpoint links a complete one.
//!
//! Before merging, the thread lets go of what the committed checkpoint no longer needs
//! ([`Retired`]): the older checkpoint and the mappings of files nothing else uses. On a disk
//! with no room, a merge's file is removed and a due merge is left out (`spec/durability.md`,
//! "A full disk").

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::{
    CheckedWriter, EarlyFlush, Faults, FileEntry, MAX_FILES_PER_MEMORY, MERGES, discard_file, disk,
    file_sha256, framed, sync_dir, unframe, write_file,
};
use crate::memory::{PAGE_SIZE, PageFile, PageLayers, write_page_file_tail};

/// Pages of merging a checkpoint grants per page it writes (`spec/durability.md`).
pub const MERGE_CREDIT_RATE: u64 = 4;

/// Pages of merging every checkpoint grants besides (64 MiB): merges up to this size are due
/// at the checkpoint after the one that planned them, as in the replica.
pub const MERGE_CREDIT_MIN_PAGES: u64 = 16_384;

/// The version of `merges.bin` and of the progress records this build writes and reads.
const MERGES_FORMAT_VERSION: u32 = 1;

/// Pages of a merge's file written between two syncs of it (64 MiB).
const SYNC_EVERY_PAGES: u64 = 16_384;

/// A merge planned at a checkpoint and not yet taken in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct PendingMerge {
    /// The merged file's name: `<planning height>_merge_<n>.pages`.
    pub(super) name: String,
    /// The files merged, oldest first; a stack holding them in a row takes the merged file
    /// in their place.
    pub(super) inputs: Vec<String>,
    /// Pages of the merged file.
    pub(super) pages: u64,
    /// Pages of merging the checkpoints since the plan granted it; due when it reaches
    /// `pages`.
    pub(super) credit: u64,
}

impl PendingMerge {
    pub(super) fn due(&self) -> bool {
        self.credit >= self.pages
    }
}

/// `merges.bin`: the merges a checkpoint leaves pending.
#[derive(Serialize, Deserialize)]
pub(super) struct MergesRecord {
    version: u32,
    pending: Vec<PendingMerge>,
}

impl MergesRecord {
    pub(super) fn encode(pending: &[PendingMerge]) -> Result<Vec<u8>, String> {
        framed(&MergesRecord {
            version: MERGES_FORMAT_VERSION,
            pending: pending.to_vec(),
        })
    }

    pub(super) fn decode(
        bytes: &[u8],
        checkpoint: &Path,
        file: &Path,
    ) -> Result<Vec<PendingMerge>, super::StateManagerError> {
        unframe::<MergesRecord>(bytes, MERGES_FORMAT_VERSION, checkpoint, file).map(|r| r.pending)
    }
}

/// `merges/<name>.progress`: how far `merges/<name>` is written, and for which inputs.
#[derive(Serialize, Deserialize)]
struct ProgressRecord {
    version: u32,
    inputs: Vec<String>,
    pages: u64,
    complete: bool,
}

/// A merged file complete, synced and mapped.
#[derive(Clone)]
pub(super) struct Merged {
    pub(super) entry: FileEntry,
    pub(super) file: Arc<PageFile>,
}

/// How far a merge's file is written.
#[derive(Clone)]
pub(super) enum Progress {
    /// This many data pages, synced and recorded.
    Partial(u64),
    Done(Merged),
}

/// What a committed checkpoint no longer needs: the directory of the checkpoint before it and
/// whatever still maps or holds that one's files. The background thread lets go of it before
/// merging (or `start` itself, if no thread can be started): the last unmap or unlink of a
/// page file frees its page cache and its blocks, tens of milliseconds per 40 MiB on the disk
/// measured (`benches/README.md`), which the replica also leaves to a thread (the checkpoint
/// removal thread of dfinity/ic `rs/state_layout`).
pub(super) struct Retired {
    /// Deleted, then its parent synced; a crash first leaves it for the next open to delete.
    pub(super) dir: Option<PathBuf>,
    /// Mappings and page maps of files that may be used by nothing else, dropped first.
    pub(super) held: Box<dyn Send>,
}

impl Retired {
    /// Nothing to let go of.
    pub(super) fn none() -> Retired {
        Retired {
            dir: None,
            held: Box::new(()),
        }
    }

    fn retire(self) {
        drop(self.held);
        if let Some(dir) = self.dir {
            // Best effort: a leftover older checkpoint is harmless (the newest wins at open).
            if disk::remove_dir_all(&dir).is_ok()
                && let Some(parent) = dir.parent()
            {
                let _ = sync_dir(parent);
            }
        }
    }
}

/// Name → progress of every pending merge.
type ProgressMap = BTreeMap<String, Progress>;

/// The merges the last checkpoint left pending, how far their files are, and the thread
/// writing them.
pub(super) struct Merges {
    dir: PathBuf,
    pending: Vec<PendingMerge>,
    /// Each pending merge's input files, by merge name.
    inputs: BTreeMap<String, Vec<Arc<PageFile>>>,
    /// Taken by the thread while it runs, given back when it is joined.
    progress: ProgressMap,
    worker: Option<JoinHandle<ProgressMap>>,
    /// Test hook: while set, the thread waits before it starts (dropped to let it go on).
    hold: Option<std::sync::mpsc::Sender<()>>,
    cancel: Arc<AtomicBool>,
    /// Merges whose files the checkpoint being written wrote to.
    written_here: BTreeSet<String>,
    /// Pages the checkpoint being written wrote into them.
    pub(super) pages_written_here: u64,
}

/// Where a stack of files with these page counts (oldest first) merges: the index of the
/// first of its newest files that become one, or `None` for no merge.
///
/// Each file is kept at least as large as all newer ones together (a pyramid: a page is
/// rewritten O(log) times), and the stack is left with at most `MAX_FILES_PER_MEMORY - 1`
/// files, so that the next checkpoint's overlay keeps it within the bound.
pub(super) fn merge_start(page_counts: &[u64]) -> Option<usize> {
    let mut newer = 0u64;
    let mut from = page_counts.len();
    for (i, &count) in page_counts.iter().enumerate().rev() {
        if count < newer {
            from = i;
        }
        newer = newer.saturating_add(count);
    }
    if page_counts.len() >= MAX_FILES_PER_MEMORY {
        from = from.min(MAX_FILES_PER_MEMORY.saturating_sub(2));
    }
    (from.saturating_add(1) < page_counts.len()).then_some(from)
}

/// Where the files `inputs` stand in a row in `names`, if they do.
pub(super) fn find_run(names: &[String], inputs: &[String]) -> Option<usize> {
    if inputs.is_empty() {
        return None;
    }
    names.windows(inputs.len()).position(|w| w == inputs)
}

/// The merges planned at checkpoint `height` for its `stacks` (by their file names, so in a
/// deterministic order), given the merges still `pending`: each pending run counts as the one
/// file it will become, and a new merge takes only files newer than the last of them.
pub(super) fn plan(
    height: u64,
    stacks: &BTreeMap<Vec<String>, Arc<PageLayers>>,
    pending: &[PendingMerge],
) -> Vec<PendingMerge> {
    let mut planned: Vec<PendingMerge> = Vec::new();
    for (names, layers) in stacks {
        let files = layers.files();
        // The stack once its pending merges are taken in: page counts, and where each of its
        // files starts in the real stack.
        let (mut counts, mut starts) = (Vec::new(), Vec::new());
        let mut floor = 0;
        let mut i = 0;
        while let Some(file) = files.get(i) {
            let rest = names.get(i..).unwrap_or_default();
            starts.push(i);
            match pending
                .iter()
                .find(|m| rest.starts_with(&m.inputs) && !m.inputs.is_empty())
            {
                Some(merge) => {
                    counts.push(merge.pages);
                    i = i.saturating_add(merge.inputs.len());
                    floor = counts.len();
                }
                None => {
                    counts.push(file.page_count());
                    i = i.saturating_add(1);
                }
            }
        }
        let Some(from) = merge_start(&counts).map(|from| from.max(floor)) else {
            continue;
        };
        // A merge of one file would only copy it.
        if from.saturating_add(2) > counts.len() {
            continue;
        }
        let Some(&first) = starts.get(from) else {
            continue;
        };
        let inputs = names.get(first..).unwrap_or_default().to_vec();
        // The same files are merged once, under one name, whichever stacks hold them.
        if planned.iter().any(|m| m.inputs == inputs) {
            continue;
        }
        let name = format!("{height:016x}_merge_{:04x}.pages", planned.len());
        let pages = PageFile::union_page_count(files.get(first..).unwrap_or_default());
        planned.push(PendingMerge {
            name,
            inputs,
            pages,
            credit: 0,
        });
    }
    planned
}

/// `pending` with the credit of a checkpoint that writes `written_pages` pages given out
/// (`min_pages`: [`MERGE_CREDIT_MIN_PAGES`] but in tests), smallest merge first (then by
/// name).
pub(super) fn credited(
    pending: &[PendingMerge],
    written_pages: u64,
    min_pages: u64,
) -> Vec<PendingMerge> {
    let mut left = written_pages
        .saturating_mul(MERGE_CREDIT_RATE)
        .saturating_add(min_pages);
    let mut out = pending.to_vec();
    let mut order: Vec<&mut PendingMerge> = out.iter_mut().collect();
    order.sort_by(|a, b| (a.pages, &a.name).cmp(&(b.pages, &b.name)));
    for merge in order {
        let give = merge.pages.saturating_sub(merge.credit).min(left);
        merge.credit = merge.credit.saturating_add(give);
        left = left.saturating_sub(give);
    }
    out
}

impl Merges {
    /// No merge pending (a state directory without a checkpoint).
    pub(super) fn none(root: &Path) -> Merges {
        Merges {
            dir: root.join(MERGES),
            pending: Vec::new(),
            inputs: BTreeMap::new(),
            progress: BTreeMap::new(),
            worker: None,
            hold: None,
            cancel: Arc::new(AtomicBool::new(false)),
            written_here: BTreeSet::new(),
            pages_written_here: 0,
        }
    }

    /// The progress `merges/` records for the merges a checkpoint just loaded left pending
    /// (to be [`Self::start`]ed); everything else in `merges/` is removed (left by a crash, or
    /// by a checkpoint that never committed).
    pub(super) fn resume(root: &Path, pending: &[PendingMerge]) -> Merges {
        let mut merges = Merges::none(root);
        remove_others(&merges.dir, pending);
        for merge in pending {
            let progress = read_progress(&merges.dir, merge).unwrap_or(Progress::Partial(0));
            merges.progress.insert(merge.name.clone(), progress);
        }
        merges
    }

    /// Makes `pending` the merges to write, their inputs found in `mapped` (a merge with an
    /// input missing is dropped: nothing could take it in).
    fn set_pending(
        &mut self,
        pending: Vec<PendingMerge>,
        mapped: &BTreeMap<String, Arc<PageFile>>,
    ) {
        self.pending.clear();
        self.inputs.clear();
        for merge in pending {
            let inputs: Option<Vec<Arc<PageFile>>> = merge
                .inputs
                .iter()
                .map(|n| mapped.get(n).cloned())
                .collect();
            if let Some(inputs) = inputs {
                self.inputs.insert(merge.name.clone(), inputs);
                self.pending.push(merge);
            }
        }
        let names: BTreeSet<&String> = self.pending.iter().map(|m| &m.name).collect();
        self.progress.retain(|name, _| names.contains(name));
        for name in names {
            self.progress
                .entry(name.clone())
                .or_insert(Progress::Partial(0));
        }
    }

    /// The merges pending.
    pub(super) fn pending(&self) -> &[PendingMerge] {
        &self.pending
    }

    /// Takes `pending` as the merges left pending by the checkpoint just committed (inputs in
    /// `mapped`), and starts the background thread: it first lets go of `retired`, then writes
    /// the pending merges, smallest first, as far as it gets before it is stopped (meeting
    /// `faults`, a test hook). With `faults.hold_merges` (a test hook) the thread waits, before
    /// it does anything, until the next checkpoint needs it ([`Self::stop`], [`Self::finish`]).
    pub(super) fn start(
        &mut self,
        pending: Vec<PendingMerge>,
        mapped: &BTreeMap<String, Arc<PageFile>>,
        retired: Retired,
        faults: Faults,
    ) {
        self.stop();
        self.set_pending(pending, mapped);
        self.written_here.clear();
        self.pages_written_here = 0;
        self.cancel = Arc::new(AtomicBool::new(false));
        let mut jobs: Vec<(PendingMerge, Vec<Arc<PageFile>>)> = self
            .pending
            .iter()
            .filter_map(|m| Some((m.clone(), self.inputs.get(&m.name)?.clone())))
            .collect();
        jobs.sort_by(|(a, _), (b, _)| (a.pages, &a.name).cmp(&(b.pages, &b.name)));
        let mut progress = std::mem::take(&mut self.progress);
        let (dir, cancel) = (self.dir.clone(), self.cancel.clone());
        // Handed over through a slot: if no thread can be started, it is let go of here.
        let slot = Arc::new(Mutex::new(Some(retired)));
        let handed = Arc::clone(&slot);
        let held = faults.hold_merges.then(|| {
            let (release, held) = std::sync::mpsc::channel::<()>();
            self.hold = Some(release);
            held
        });
        let names: Vec<String> = jobs.iter().map(|(m, _)| m.name.clone()).collect();
        let worker = std::thread::Builder::new()
            .name("checkpoint-merges".into())
            .spawn(move || {
                if let Some(held) = held {
                    // Returns when the sender is dropped.
                    let _ = held.recv();
                }
                if let Some(retired) = handed.lock().ok().and_then(|mut r| r.take()) {
                    retired.retire();
                }
                // The files of merges taken in (linked by the checkpoint) or no longer needed.
                let pending: Vec<PendingMerge> = jobs.iter().map(|(m, _)| m.clone()).collect();
                remove_others(&dir, &pending);
                if !jobs.is_empty() && (dir.is_dir() || disk::create_dir(&dir).is_ok()) {
                    for (merge, inputs) in &jobs {
                        if cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        let Some(at) = progress.get_mut(&merge.name) else {
                            continue;
                        };
                        // A merge that fails is removed and starts again when needed.
                        let _ = advance(&dir, merge, inputs, at, merge.pages, &cancel, &faults);
                    }
                }
                progress
            });
        match worker {
            Ok(worker) => self.worker = Some(worker),
            Err(_) => {
                // No thread: the progress went with the closure; the merges start again.
                for name in names {
                    self.progress.insert(name, Progress::Partial(0));
                }
                if let Some(retired) = slot.lock().ok().and_then(|mut r| r.take()) {
                    retired.retire();
                }
            }
        }
    }

    /// Whether the background thread is still writing.
    pub(super) fn pending_work(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Waits for the background thread to finish everything it does.
    pub(super) fn finish(&mut self) {
        self.hold = None;
        self.join();
    }

    /// Stops the background thread between two pages (it records how far it got) and waits
    /// for it; the older checkpoint is let go of all the same.
    pub(super) fn stop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.hold = None;
        self.join();
    }

    fn join(&mut self) {
        if let Some(worker) = self.worker.take() {
            // A panicked thread leaves no record of its progress: the merges start again.
            let progress = worker.join().unwrap_or_default();
            for merge in &self.pending {
                self.progress.insert(
                    merge.name.clone(),
                    progress
                        .get(&merge.name)
                        .cloned()
                        .unwrap_or(Progress::Partial(0)),
                );
            }
        }
    }

    /// Writes `merge` (one of [`Self::pending`], as credited by the checkpoint being written)
    /// up to its credit, to the end if it is due. The merged file if it is complete; an error
    /// (its file removed) if it could not be written.
    pub(super) fn advance_to_credit(
        &mut self,
        merge: &PendingMerge,
        faults: &Faults,
    ) -> std::io::Result<Option<Merged>> {
        let inputs = self.inputs.get(&merge.name).cloned().unwrap_or_default();
        let path = self.dir.join(&merge.name);
        let at = self
            .progress
            .entry(merge.name.clone())
            .or_insert(Progress::Partial(0));
        // `merges/` is a cache: a file lost or changed since it was written starts again.
        let len = fs::metadata(&path).ok().map(|m| m.len());
        let intact = match at {
            Progress::Partial(0) => true,
            Progress::Partial(pages) => len == Some(pages.saturating_mul(PAGE_SIZE as u64)),
            Progress::Done(merged) => len == Some(merged.entry.size),
        };
        if !intact {
            *at = Progress::Partial(0);
        }
        let behind = match at {
            Progress::Partial(done) => *done < merge.credit.min(merge.pages) || merge.due(),
            Progress::Done(_) => false,
        };
        if behind {
            self.written_here.insert(merge.name.clone());
            if !self.dir.is_dir() {
                disk::create_dir(&self.dir)?;
            }
            let before = pages_of(at, merge);
            let never = AtomicBool::new(false);
            let advanced = advance(&self.dir, merge, &inputs, at, merge.credit, &never, faults);
            let written = pages_of(at, merge).saturating_sub(before);
            self.pages_written_here = self.pages_written_here.saturating_add(written);
            advanced?;
        }
        Ok(match at {
            Progress::Done(merged) => Some(merged.clone()),
            Progress::Partial(_) => None,
        })
    }

    /// Removes the files of the merges the checkpoint being written wrote to (for a second
    /// attempt without merges, on a disk without room for them).
    pub(super) fn discard_written_here(&mut self, faults: &Faults) {
        self.pages_written_here = 0;
        for name in std::mem::take(&mut self.written_here) {
            discard(&self.dir, &name, faults);
            self.progress.insert(name, Progress::Partial(0));
        }
    }

    /// The merge `name`'s file, if it is complete.
    pub(super) fn merged(&self, name: &str) -> Option<Merged> {
        match self.progress.get(name) {
            Some(Progress::Done(merged)) => Some(merged.clone()),
            _ => None,
        }
    }

    /// Whether the checkpoint being written wrote to a merge's file.
    pub(super) fn wrote_here(&self) -> bool {
        !self.written_here.is_empty()
    }

    /// The files the merge `name` is made of, oldest first.
    pub(super) fn inputs(&self, name: &str) -> &[Arc<PageFile>] {
        self.inputs.get(name).map_or(&[], Vec::as_slice)
    }

    /// The path of the merge `name`'s file.
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Merges {
    /// Stops the thread between two pages (it records its progress) and joins it.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes from `dir` (`merges/`) every file but those of the `pending` merges.
fn remove_others(dir: &Path, pending: &[PendingMerge]) {
    let keep: BTreeSet<String> = pending
        .iter()
        .flat_map(|m| [m.name.clone(), progress_name(&m.name)])
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = disk::remove_file(&entry.path());
            }
        }
    }
}

/// Pages of `merge`'s file written, by `at`.
fn pages_of(at: &Progress, merge: &PendingMerge) -> u64 {
    match at {
        Progress::Partial(pages) => *pages,
        Progress::Done(_) => merge.pages,
    }
}

fn progress_name(name: &str) -> String {
    format!("{name}.progress")
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Removes the merge `name`'s file and its record.
fn discard(dir: &Path, name: &str, faults: &Faults) {
    discard_file(&dir.join(name), faults);
    discard_file(&dir.join(progress_name(name)), faults);
}

/// The progress `merges/` records for `merge`, if its record is readable, names the same
/// inputs and agrees with the file.
fn read_progress(dir: &Path, merge: &PendingMerge) -> Option<Progress> {
    let record_path = dir.join(progress_name(&merge.name));
    let bytes = fs::read(&record_path).ok()?;
    let record =
        unframe::<ProgressRecord>(&bytes, MERGES_FORMAT_VERSION, dir, &record_path).ok()?;
    if record.inputs != merge.inputs || record.pages > merge.pages {
        return None;
    }
    let path = dir.join(&merge.name);
    if record.complete {
        let file = File::open(&path).ok()?;
        let mapped = PageFile::map(&file, &merge.name).ok()?;
        if mapped.page_count() != merge.pages {
            return None;
        }
        let tail = mapped.tail_bytes();
        let (size, sha256) = file_sha256(&path, tail).ok()?;
        return Some(Progress::Done(Merged {
            entry: FileEntry { size, sha256, tail },
            file: Arc::new(mapped),
        }));
    }
    let len = fs::metadata(&path).ok()?.len();
    (len == record.pages.saturating_mul(PAGE_SIZE as u64))
        .then_some(Progress::Partial(record.pages))
}

/// Writes `merges/<name>.progress` anew: `pages` written, `complete` or not.
fn write_progress(
    dir: &Path,
    merge: &PendingMerge,
    pages: u64,
    complete: bool,
    faults: &mut Faults,
) -> std::io::Result<()> {
    let path = dir.join(progress_name(&merge.name));
    if path.exists() {
        discard_file(&path, faults);
    }
    let bytes = framed(&ProgressRecord {
        version: MERGES_FORMAT_VERSION,
        inputs: merge.inputs.clone(),
        pages,
        complete,
    })
    .map_err(other)?;
    write_file(&path, faults, |w| w.write_all(&bytes))?;
    sync_dir(dir)
}

/// Writes the merge `merge` of `inputs` (oldest first) in `dir` from where `at` says it
/// stands up to `until` pages; at the last page, its tail too (leaf hashes, tables, index,
/// footer), synced, read-only and mapped. Stops early when `cancel` is set. What it wrote is
/// synced and recorded before it returns, so that a later process continues from there. A
/// failure removes the file and its record (on a full disk a partial file would hold the very
/// room the next checkpoint needs) and the merge starts again from nothing.
fn advance(
    dir: &Path,
    merge: &PendingMerge,
    inputs: &[Arc<PageFile>],
    at: &mut Progress,
    until: u64,
    cancel: &AtomicBool,
    faults: &Faults,
) -> std::io::Result<()> {
    let Progress::Partial(done) = *at else {
        return Ok(());
    };
    let until = until.min(merge.pages);
    if done >= until && until < merge.pages {
        return Ok(());
    }
    let mut faults = faults.clone();
    let written = write_merge_pages(dir, merge, inputs, done, until, cancel, &mut faults);
    match written {
        Ok(progress) => {
            *at = progress;
            Ok(())
        }
        Err(e) => {
            discard(dir, &merge.name, &faults);
            *at = Progress::Partial(0);
            Err(e)
        }
    }
}

/// [`advance`]'s writing: pages `done..until` of the merge appended to its file (created for
/// `done == 0`), then the tail if the merge is complete, else a progress record.
fn write_merge_pages(
    dir: &Path,
    merge: &PendingMerge,
    inputs: &[Arc<PageFile>],
    done: u64,
    until: u64,
    cancel: &AtomicBool,
    faults: &mut Faults,
) -> std::io::Result<Progress> {
    let path = dir.join(&merge.name);
    let file = if done == 0 {
        discard(dir, &merge.name, faults);
        disk::create_new(&path)?
    } else {
        disk::open_append(&path)?
    };
    if file.metadata()?.len() != done.saturating_mul(PAGE_SIZE as u64) {
        return Err(other(format!(
            "{}: its length differs from its progress record",
            path.display()
        )));
    }
    let pages = PageLayers::pages_of(inputs).map_err(other)?;
    let skip = usize::try_from(done).unwrap_or(usize::MAX);
    let take = usize::try_from(until.saturating_sub(done)).unwrap_or(usize::MAX);
    let mut out = checked(file, faults);
    let mut written = done;
    for (_, bytes, _) in pages.skip(skip).take(take) {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        out.write_all(bytes)?;
        written = written.saturating_add(1);
        // Synced as it goes, so that stopping syncs little.
        if written.is_multiple_of(SYNC_EVERY_PAGES) {
            out.flush()?;
            disk::sync_data(&out.inner.get_ref().file)?;
        }
    }
    out.flush()?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?.file;
    if written < merge.pages {
        disk::sync_data(&file)?;
        write_progress(dir, merge, written, false, faults)?;
        return Ok(Progress::Partial(written));
    }
    // Complete: the leaf hashes and the index of every page, from the inputs (32 bytes per
    // page read, no page), then the tables and the footer.
    let mut hashes =
        Vec::with_capacity(usize::try_from(merge.pages.saturating_mul(32)).unwrap_or(0));
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (index, _, hash) in PageLayers::pages_of(inputs).map_err(other)? {
        hashes.extend_from_slice(&hash);
        match ranges.last_mut() {
            Some((_, end)) if *end == index => *end = index.saturating_add(1),
            _ => ranges.push((index, index.saturating_add(1))),
        }
    }
    let mut out = checked(file, faults);
    let summary = write_page_file_tail(&mut out, &hashes, &ranges)?;
    out.flush()?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?.file;
    disk::sync_all(&file)?;
    let size = file.metadata()?.len();
    let mut permissions = file.metadata()?.permissions();
    permissions.set_readonly(true);
    fs::set_permissions(&path, permissions)?;
    let mapped = PageFile::map(&File::open(&path)?, &merge.name).map_err(other)?;
    write_progress(dir, merge, written, true, faults)?;
    Ok(Progress::Done(Merged {
        entry: FileEntry {
            size,
            sha256: summary.tail_sha256,
            tail: summary.tail_bytes,
        },
        file: Arc::new(mapped),
    }))
}

/// `file` behind the budget-checking writer (a test hook) and a 1 MiB buffer.
fn checked(file: File, faults: &Faults) -> CheckedWriter<'_, BufWriter<EarlyFlush>> {
    CheckedWriter {
        inner: BufWriter::with_capacity(
            1 << 20,
            EarlyFlush {
                file,
                since: 0,
                flush: None,
            },
        ),
        hasher: None,
        written: 0,
        faults,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pyramid_stays_and_a_smaller_file_under_newer_ones_merges() {
        assert_eq!(merge_start(&[]), None);
        assert_eq!(merge_start(&[10]), None);
        assert_eq!(merge_start(&[10, 10]), None);
        assert_eq!(merge_start(&[8, 4, 2, 1]), None);
        // 1 < 2: the two newest merge; 10 ≥ 3 stays.
        assert_eq!(merge_start(&[10, 1, 2]), Some(1));
        // 3 < 2 + 2: everything from it merges.
        assert_eq!(merge_start(&[100, 3, 2, 2]), Some(1));
    }

    #[test]
    fn a_full_stack_merges_to_leave_room_for_the_next_overlay() {
        let pyramid: Vec<u64> = (0..MAX_FILES_PER_MEMORY as u32)
            .map(|i| 1 << (20 - i))
            .collect();
        assert_eq!(merge_start(&pyramid), Some(MAX_FILES_PER_MEMORY - 2));
        assert_eq!(merge_start(&pyramid[1..]), None);
        // A longer stack (the state manager never leaves one) merges down to the same bound.
        let longer: Vec<u64> = (0..MAX_FILES_PER_MEMORY as u32 + 3)
            .map(|i| 1 << (30 - i))
            .collect();
        assert_eq!(merge_start(&longer), Some(MAX_FILES_PER_MEMORY - 2));
    }

    fn pending(name: &str, pages: u64, credit: u64) -> PendingMerge {
        PendingMerge {
            name: name.into(),
            inputs: vec![format!("{name}-input")],
            pages,
            credit,
        }
    }

    #[test]
    fn credit_goes_to_the_smallest_merges_first_and_makes_them_due() {
        let big = MERGE_CREDIT_MIN_PAGES * 10;
        let merges = [pending("b", big, 0), pending("a", 10, 0)];
        // No pages written: the minimum credit, the small merge first.
        let after = credited(&merges, 0, MERGE_CREDIT_MIN_PAGES);
        assert!(after[1].due());
        assert_eq!(after[0].credit, MERGE_CREDIT_MIN_PAGES - 10);
        assert!(!after[0].due());
        // Written pages add their multiple; the big merge is due once the credits add up.
        let after = credited(&after, big, MERGE_CREDIT_MIN_PAGES);
        assert!(after[0].due());
        assert_eq!(after[0].credit, big);
    }

    #[test]
    fn find_run_finds_inputs_in_a_row_only() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let run = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(find_run(&names, &run(&["b", "c"])), Some(1));
        assert_eq!(find_run(&names, &run(&["b", "d"])), None);
        assert_eq!(find_run(&names, &[]), None);
    }
}
