//! Merges of page files, planned at a checkpoint and written in the background before the
//! next one, as the replica's tip thread does (`MergeCandidate` in dfinity/ic
//! `rs/replicated_state/src/page_map/storage.rs`).
//!
//! A checkpoint writes only the pages changed since the last one; the merges that keep a
//! memory's files bounded are planned when it commits (and again when it is loaded), from its
//! stacks of files alone, written into `<state-dir>/merges/` by one background thread, and
//! linked into the *next* checkpoint, which waits for them only if they are not done yet.
//! Before merging, the same thread lets go of what the committed checkpoint no longer needs
//! ([`Retired`]): the older checkpoint and the mappings of files nothing else uses.
//!
//! The plan is a function of the checkpoint's stacks (their file names and page counts), and
//! every checkpoint applies the whole plan of the one before it, whether the thread finished,
//! failed or never ran: a merge that is not ready is written by the checkpoint itself, under
//! the same name. So the files of every checkpoint are the same on every replica and across
//! restarts, whatever the timing. Only a disk with no room for a merge changes that: the
//! thread removes what it wrote, and the checkpoint leaves the merge out
//! (`spec/durability.md`, "A full disk").

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{
    Faults, FileEntry, MAX_FILES_PER_MEMORY, MERGES, discard_file, disk, sync_dir, write_pages_file,
};
use crate::memory::{PageFile, PageLayers};

/// A merged file the background thread wrote, synced and mapped.
pub(super) struct Merged {
    pub(super) entry: FileEntry,
    pub(super) file: Arc<PageFile>,
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

/// Merged file name → the file, or why it could not be written.
type Outcomes = BTreeMap<String, Result<Merged, String>>;

/// The merges planned at the last checkpoint for the next one, and the thread writing them.
pub(super) struct Merges {
    dir: PathBuf,
    /// A stack (its files' names, oldest first) → the index of its first merged file and the
    /// merged file's name: the stack becomes `files[..from]`, then the merged file.
    plan: BTreeMap<Vec<String>, (usize, String)>,
    /// The merged files' inputs, by name: what the checkpoint merges itself if the thread did
    /// not deliver.
    inputs: BTreeMap<String, Vec<Arc<PageFile>>>,
    worker: Option<JoinHandle<Outcomes>>,
    /// Test hook: while set, the thread waits before it starts (dropped to let it go on).
    hold: Option<std::sync::mpsc::Sender<()>>,
    done: Outcomes,
    cancel: Arc<AtomicBool>,
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

impl Merges {
    /// No merge planned (a state directory without a checkpoint).
    pub(super) fn none(root: &Path) -> Merges {
        Merges {
            dir: root.join(MERGES),
            plan: BTreeMap::new(),
            inputs: BTreeMap::new(),
            worker: None,
            hold: None,
            done: BTreeMap::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Plans the merges of checkpoint `height`'s stacks (by their file names, so in a
    /// deterministic order) and starts a background thread that first lets go of `retired`,
    /// then empties `merges/` and writes them (meeting `faults`, a test hook). Nothing here
    /// fails: a merge the thread cannot write is removed and written by the next checkpoint.
    /// With `faults.hold_merges` (a test hook) the thread waits, before it does anything, until
    /// the next checkpoint needs the merges ([`Self::finish`]).
    pub(super) fn start(
        root: &Path,
        height: u64,
        stacks: &BTreeMap<Vec<String>, Arc<PageLayers>>,
        retired: Retired,
        mut faults: Faults,
    ) -> Merges {
        let mut merges = Merges::none(root);
        // The same files are merged once, under one name, whichever stacks share them.
        let mut by_inputs: BTreeMap<Vec<String>, String> = BTreeMap::new();
        for (names, layers) in stacks {
            let files = layers.files();
            let counts: Vec<u64> = files.iter().map(|f| f.page_count()).collect();
            let Some(from) = merge_start(&counts) else {
                continue;
            };
            let merged_names = names.get(from..).unwrap_or_default().to_vec();
            let next = by_inputs.len();
            let name = by_inputs
                .entry(merged_names)
                .or_insert_with(|| format!("{height:016x}_merge_{next:04x}.pages"))
                .clone();
            merges
                .inputs
                .entry(name.clone())
                .or_insert_with(|| files.get(from..).unwrap_or_default().to_vec());
            merges.plan.insert(names.clone(), (from, name));
        }
        let jobs: Vec<(String, Vec<Arc<PageFile>>)> = merges
            .inputs
            .iter()
            .map(|(name, files)| (name.clone(), files.clone()))
            .collect();
        let (dir, cancel) = (merges.dir.clone(), merges.cancel.clone());
        // Handed over through a slot: if no thread can be started, it is let go of here.
        let slot = Arc::new(Mutex::new(Some(retired)));
        let handed = Arc::clone(&slot);
        let held = faults.hold_merges.then(|| {
            let (release, held) = std::sync::mpsc::channel::<()>();
            merges.hold = Some(release);
            held
        });
        merges.worker = std::thread::Builder::new()
            .name("checkpoint-merges".into())
            .spawn(move || {
                if let Some(held) = held {
                    // Returns when the sender is dropped.
                    let _ = held.recv();
                }
                if let Some(retired) = handed.lock().ok().and_then(|mut r| r.take()) {
                    retired.retire();
                }
                let mut done = Outcomes::new();
                // What the last plan left (taken in, or not needed) goes; nothing is written
                // if the directory cannot be made afresh.
                let cleared = disk::remove_dir_all(&dir).is_ok() || !dir.exists();
                if jobs.is_empty() || !cleared || disk::create_dir(&dir).is_err() {
                    return done;
                }
                for (name, inputs) in jobs {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let merged =
                        write_merge(&dir.join(&name), &name, &inputs, &cancel, &mut faults);
                    done.insert(name, merged);
                }
                done
            })
            .ok();
        if merges.worker.is_none()
            && let Some(retired) = slot.lock().ok().and_then(|mut r| r.take())
        {
            retired.retire();
        }
        merges
    }

    /// Whether the background thread is still writing.
    pub(super) fn pending(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Waits for the background thread, if it runs, and keeps what it wrote.
    pub(super) fn finish(&mut self) {
        self.hold = None;
        if let Some(worker) = self.worker.take() {
            // A panicked thread delivered nothing: the checkpoint merges itself.
            self.done = worker.join().unwrap_or_default();
        }
    }

    /// The merge planned for the stack `names`: its first merged index and the merged name.
    pub(super) fn planned(&self, names: &[String]) -> Option<(usize, &str)> {
        self.plan
            .get(names)
            .map(|(from, name)| (*from, name.as_str()))
    }

    /// The merged file `name` if the background thread wrote it (after [`Self::finish`]), with
    /// its path in `merges/`.
    pub(super) fn written(&self, name: &str) -> Option<(&Merged, PathBuf)> {
        match self.done.get(name) {
            Some(Ok(merged)) => Some((merged, self.dir.join(name))),
            _ => None,
        }
    }

    /// The files the merged file `name` is made of, oldest first.
    pub(super) fn inputs(&self, name: &str) -> &[Arc<PageFile>] {
        self.inputs.get(name).map_or(&[], Vec::as_slice)
    }
}

impl Drop for Merges {
    /// Stops the thread between two pages and joins it; what it left in `merges/` is removed
    /// by the next `open` (or the next plan).
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.hold = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Writes the merge of `inputs` (oldest first) at `path`, synced and read-only, and maps it.
/// A merge that fails or is cancelled removes what it wrote: on a full disk its partial file
/// would hold the very space the next checkpoint needs (and that checkpoint writes the merge
/// again, or commits without it: `spec/durability.md`).
fn write_merge(
    path: &Path,
    name: &str,
    inputs: &[Arc<PageFile>],
    cancel: &AtomicBool,
    faults: &mut Faults,
) -> Result<Merged, String> {
    let pages = PageLayers::pages_of(inputs).map_err(|e| e.to_string())?;
    let pages = pages.map_while(|(index, bytes, hash)| {
        (!cancel.load(Ordering::Relaxed)).then_some((index, bytes, Some(hash)))
    });
    // `write_pages_file` removes a file it fails to write; what fails after it is removed here.
    let entry =
        write_pages_file(path, faults, pages).map_err(|e| format!("{}: {e}", path.display()))?;
    let mapped = if cancel.load(Ordering::Relaxed) {
        Err("cancelled".to_string())
    } else {
        File::open(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|file| PageFile::map(&file, name).map_err(|e| e.to_string()))
    };
    match mapped {
        Ok(file) => Ok(Merged {
            entry,
            file: Arc::new(file),
        }),
        Err(e) => {
            discard_file(path, faults);
            Err(e)
        }
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
}
