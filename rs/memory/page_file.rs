//! Page files: checkpointed pages, served from read-only memory mappings.
//!
//! # The format (`spec/durability.md`, version 1)
//!
//! ```text
//! [ data: page_count × 4096 bytes, at offset 0, so every page is 4 KiB-aligned in the file ]
//! [ leaf hashes: page_count × 32 bytes, the Merkle leaf hash of each page, in data order ]
//! [ index: range_count × (start_page u64 LE, end_page u64 LE), ascending, disjoint, end > start ]
//! [ footer, 32 bytes: range_count u64 LE, page_count u64 LE, version u32 LE, 4 zero bytes,
//!   magic "CSPAGES1" ]
//! ```
//!
//! Everything after the data is the file's *tail*: the state manager's manifest checks the tail
//! at open (O(pages · 32 bytes), never the pages). A page's bytes are checked against its
//! stored leaf hash the first time they are read, and a mismatch is an error naming the file
//! and the page, never data. Hashing a memory uses the stored leaf hashes and reads no page.
//!
//! The pages of range `i` are stored one after another, after the pages of ranges `0..i`: page
//! `p` of range `(start, end)` whose first page is stored at slot `s` is at byte
//! `(s + p - start) · 4096`. A memory is a stack of such files (a base, then overlays of the
//! pages changed since), newest on top: [`PageLayers`]. A read takes the newest file holding the
//! page, else zero. [`super::PageMap`] puts its in-memory tree of pages written since above the
//! stack, and nothing outside `rs/memory` knows whether a page's bytes live in the heap or in a
//! mapping.
//!
//! # Why the mapping is sound
//!
//! A `memmap2::Mmap` is a view of the file: if anyone truncates or rewrites the file while it is
//! mapped, reads of the view change under Rust's feet (or fault with `SIGBUS`). The files this
//! module maps are immutable by protocol: the state manager writes each one under a fresh name
//! in a scratch directory, syncs it, marks it read-only and never opens it for writing again;
//! checkpoints share it by hard link; the state directory is locked against a second process
//! (`spec/durability.md`). Editing a page file behind a running replica is outside that
//! contract, exactly as for the IC replica, whose checkpoints are mapped the same way.
//!
//! The other `unsafe` here turns a `&[u8; PAGE_SIZE]` into a `&Page`: `Page` is
//! `#[repr(transparent)]` over that array, so the two have the same layout, and the reference
//! keeps the lifetime of the mapping it points into.
//!
//! # Costs
//!
//! Opening a file maps it and reads its index and footer: O(ranges), never the page bytes.
//! A lookup is O(files · log ranges), files ≤ 7 per memory by the state manager's merges.
//! The Merkle hash of a part of the stack that no in-memory page shadows is computed from the
//! mapped bytes on first request and cached here, so a memory is hashed once per process
//! however many maps (a canister and its snapshots) share the stack.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use super::checksum::{self, Hash};
use super::page_map::{FANOUT, PAGE_SIZE, Page, span};

/// The newest page file format this build reads and the one it writes.
pub const PAGE_FILE_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"CSPAGES1";
const FOOTER_BYTES: usize = 32;
const RANGE_BYTES: usize = 16;

/// Why a page file was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PageFileError {
    #[error("page file {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("page file {file} is damaged: {reason}")]
    Corrupt { file: String, reason: String },
    #[error(
        "page file {file} has format version {found}; this build reads versions up to \
         {PAGE_FILE_VERSION}. Open the state directory with a newer build."
    )]
    NewerVersion { file: String, found: u32 },
}

/// One contiguous run of pages in a file: pages `[start, end)`, the first stored at `slot`.
#[derive(Clone, Copy, Debug)]
struct Range {
    start: u64,
    end: u64,
    slot: u64,
}

/// One immutable, mapped page file.
pub struct PageFile {
    name: String,
    map: Mmap,
    ranges: Vec<Range>,
    page_count: u64,
    /// One bit per slot: the page's bytes have been checked against their stored hash. Set
    /// once, never cleared (the file is immutable); a race only repeats a check.
    verified: Box<[AtomicU64]>,
}

/// What [`write_page_file`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFileSummary {
    pub pages: u64,
    /// Bytes after the page data: leaf hashes, index and footer.
    pub tail_bytes: u64,
    /// SHA-256 of those bytes.
    pub tail_sha256: Hash,
}

impl std::fmt::Debug for PageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageFile")
            .field("name", &self.name)
            .field("pages", &self.page_count)
            .finish()
    }
}

/// Writes `pages` (ascending, distinct page indices, each with its leaf hash if known; it is
/// computed otherwise) in the page file format. The caller syncs the file.
pub fn write_page_file<'a, W: Write + ?Sized>(
    out: &mut W,
    pages: impl Iterator<Item = (u64, &'a [u8; PAGE_SIZE], Option<Hash>)>,
) -> std::io::Result<PageFileSummary> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut hashes: Vec<u8> = Vec::new();
    let mut count = 0u64;
    for (index, bytes, hash) in pages {
        match ranges.last_mut() {
            // An index is below `MAX_PAGES` (2^32): `index + 1` cannot overflow.
            Some((_, end)) if *end == index => *end = index.saturating_add(1),
            Some((_, end)) if *end > index => {
                return Err(std::io::Error::other(format!(
                    "page {index} written out of order"
                )));
            }
            _ => ranges.push((index, index.saturating_add(1))),
        }
        out.write_all(bytes)?;
        hashes.extend_from_slice(&hash.unwrap_or_else(|| checksum::leaf_hash(bytes)));
        count = count.saturating_add(1);
    }
    let mut tail = hashes;
    tail.reserve(
        ranges
            .len()
            .saturating_mul(RANGE_BYTES)
            .saturating_add(FOOTER_BYTES),
    );
    for (start, end) in &ranges {
        tail.extend_from_slice(&start.to_le_bytes());
        tail.extend_from_slice(&end.to_le_bytes());
    }
    tail.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    tail.extend_from_slice(&count.to_le_bytes());
    tail.extend_from_slice(&PAGE_FILE_VERSION.to_le_bytes());
    tail.extend_from_slice(&[0; 4]);
    tail.extend_from_slice(MAGIC);
    out.write_all(&tail)?;
    Ok(PageFileSummary {
        pages: count,
        tail_bytes: tail.len() as u64,
        tail_sha256: checksum::sha256(&tail),
    })
}

/// The little-endian `u64` at the start of `bytes`; zero-padded if `bytes` is shorter (callers
/// pass 8-byte fields of a footer or index entry whose length is already checked).
fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    for (w, b) in word.iter_mut().zip(bytes) {
        *w = *b;
    }
    u64::from_le_bytes(word)
}

impl PageFile {
    /// Maps `file` read-only and checks its footer and index; `name` is how errors name it.
    /// Reads O(ranges) bytes, never the pages.
    pub fn map(file: &File, name: &str) -> Result<PageFile, PageFileError> {
        let corrupt = |reason: String| PageFileError::Corrupt {
            file: name.to_string(),
            reason,
        };
        let io = |source| PageFileError::Io {
            file: name.to_string(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        if len < FOOTER_BYTES as u64 {
            return Err(corrupt(format!(
                "{len} bytes is shorter than the {FOOTER_BYTES}-byte footer"
            )));
        }
        // SAFETY: the file is immutable while mapped (module docs: written once under a fresh
        // name, read-only afterwards, the state directory locked), so the view cannot change
        // or shrink under the references `page` hands out; the mapping is read-only, so no
        // reference into it is ever mutable.
        let map = unsafe { Mmap::map(file) }.map_err(io)?;
        // The length was checked against the file's metadata above; checked again here, on the
        // mapping itself, so a footer that is not there is an error rather than a panic.
        let Some((body, footer)) = map
            .len()
            .checked_sub(FOOTER_BYTES)
            .and_then(|at| map.split_at_checked(at))
        else {
            return Err(corrupt(format!(
                "{} bytes is shorter than the {FOOTER_BYTES}-byte footer",
                map.len()
            )));
        };
        let field = |range: std::ops::Range<usize>| footer.get(range).unwrap_or_default();
        if field(24..32) != MAGIC {
            return Err(corrupt("no page file footer (magic) at its end".into()));
        }
        // Four bytes, zero-extended: the value fits a `u32`.
        let version = le_u64(field(16..20)) as u32;
        if version > PAGE_FILE_VERSION {
            return Err(PageFileError::NewerVersion {
                file: name.to_string(),
                found: version,
            });
        }
        let (range_count, page_count) = (le_u64(field(0..8)), le_u64(field(8..16)));
        let expected = range_count
            .checked_mul(RANGE_BYTES as u64)
            .and_then(|r| {
                page_count
                    .checked_mul((PAGE_SIZE + 32) as u64)?
                    .checked_add(r)
            })
            .and_then(|b| b.checked_add(FOOTER_BYTES as u64));
        if expected != Some(len) {
            return Err(corrupt(format!(
                "{len} bytes, but its footer declares {page_count} pages in {range_count} \
                 ranges (truncated or extended?)"
            )));
        }
        // `expected == len` above puts the index between the hashes and the footer; checked
        // anyway rather than sliced.
        let index = (page_count as usize)
            .checked_mul(PAGE_SIZE + 32)
            .and_then(|at| body.get(at..))
            .ok_or_else(|| {
                corrupt(format!(
                    "its footer declares {page_count} pages, more than it holds"
                ))
            })?;
        let mut ranges = Vec::with_capacity(range_count as usize);
        let mut slot = 0u64;
        let mut previous_end = 0u64;
        for entry in index.chunks_exact(RANGE_BYTES) {
            let (start, end) = (le_u64(entry), le_u64(entry.get(8..).unwrap_or_default()));
            let pages = end.checked_sub(start).filter(|&n| n > 0);
            let Some(pages) = pages.filter(|_| ranges.is_empty() || start >= previous_end) else {
                return Err(corrupt(format!(
                    "index range [{start}, {end}) is empty or out of order"
                )));
            };
            ranges.push(Range { start, end, slot });
            slot = slot.saturating_add(pages);
            previous_end = end;
        }
        if slot != page_count {
            return Err(corrupt(format!(
                "its index covers {slot} pages but its footer declares {page_count}"
            )));
        }
        Ok(PageFile {
            name: name.to_string(),
            map,
            ranges,
            page_count,
            verified: (0..page_count.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// The slot of page `index`, if this file holds it. O(log ranges).
    fn slot_of(&self, index: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.start <= index);
        let range = self.ranges.get(i.checked_sub(1)?)?;
        let offset = index
            .checked_sub(range.start)
            .filter(|_| index < range.end)?;
        range.slot.checked_add(offset)
    }

    /// The bytes of page `index`, if this file holds it, checked against the stored leaf hash
    /// on first read. O(log ranges), plus one leaf hash the first time.
    pub fn page(&self, index: u64) -> Result<Option<&[u8; PAGE_SIZE]>, PageFileError> {
        let Some(slot) = self.slot_of(index) else {
            return Ok(None);
        };
        let bytes = self.slot_bytes(slot);
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        // Relaxed is enough: the bit only says that a check already passed on these immutable
        // bytes; a thread that misses it checks again.
        // `verified` has a word for every 64 slots and `slot < page_count`: `seen` is always
        // there; if it were not, the page would just be checked on every read.
        let seen = self.verified.get(word);
        if seen.is_none_or(|seen| seen.load(Ordering::Relaxed) & bit == 0) {
            if checksum::leaf_hash(bytes) != self.slot_hash(slot) {
                return Err(PageFileError::Corrupt {
                    file: self.name.clone(),
                    reason: format!(
                        "page {index} does not match its stored hash (the file was changed \
                         after it was written)"
                    ),
                });
            }
            if let Some(seen) = seen {
                seen.fetch_or(bit, Ordering::Relaxed);
            }
        }
        Ok(Some(bytes))
    }

    /// The stored leaf hash of page `index`, if this file holds it. Reads no page.
    pub fn stored_hash(&self, index: u64) -> Option<Hash> {
        self.slot_of(index).map(|slot| self.slot_hash(slot))
    }

    // Slot arithmetic: `map` checked that the file is exactly `page_count` pages, as many
    // hashes, the index and the footer, and that the index's ranges cover exactly
    // `page_count` slots; `slot_of` only returns a slot inside a range, so `slot < page_count`
    // and both areas hold it. On the page read path: no further checks here.
    #[allow(
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing,
        clippy::expect_used
    )]
    fn slot_bytes(&self, slot: u64) -> &[u8; PAGE_SIZE] {
        let at = slot as usize * PAGE_SIZE;
        self.map[at..at + PAGE_SIZE]
            .try_into()
            .expect("slot within the checked data area")
    }

    // As `slot_bytes`: `slot < page_count`, inside the checked hash area.
    #[allow(
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing,
        clippy::expect_used
    )]
    fn slot_hash(&self, slot: u64) -> Hash {
        let at = self.page_count as usize * PAGE_SIZE + slot as usize * 32;
        self.map[at..at + 32]
            .try_into()
            .expect("slot within the checked hash area")
    }

    /// Bytes after the page data (leaf hashes, index, footer): what the manifest checks.
    pub fn tail_bytes(&self) -> u64 {
        let data = (self.page_count as usize).saturating_mul(PAGE_SIZE);
        self.map.len().saturating_sub(data) as u64
    }

    /// Whether any page in `[first, end)` is in this file. O(log ranges).
    fn has_pages_in(&self, first: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= first);
        self.ranges.get(i).is_some_and(|r| r.start < end)
    }

    /// The file's pages in ascending index order with their stored hashes, unchecked: for
    /// copying into a merged file, where a damaged page keeps its stored hash and so stays
    /// detectable.
    fn pages(&self) -> impl Iterator<Item = (u64, &[u8; PAGE_SIZE], Hash)> + '_ {
        self.ranges.iter().flat_map(move |r| {
            (r.start..r.end)
                .zip(r.slot..)
                .map(move |(index, slot)| (index, self.slot_bytes(slot), self.slot_hash(slot)))
        })
    }
}

/// Views mapped bytes as a [`Page`] without copying them.
pub(super) fn as_page(bytes: &[u8; PAGE_SIZE]) -> &Page {
    // SAFETY: `Page` is `#[repr(transparent)]` over `[u8; PAGE_SIZE]` (see its definition), so
    // the two types have the same size, alignment (1) and validity; the returned reference
    // borrows from `bytes` and cannot outlive it.
    unsafe { &*(bytes as *const [u8; PAGE_SIZE] as *const Page) }
}

/// A stack of page files for one memory, oldest first; the newest file holding a page wins.
pub struct PageLayers {
    files: Vec<Arc<PageFile>>,
    /// Merkle hashes of subtrees `(level ≥ 1, first page)` of this stack, filled on demand.
    /// Looked up by key only, never iterated.
    hashes: Mutex<HashMap<(u32, u64), Hash>>,
}

impl std::fmt::Debug for PageLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.files).finish()
    }
}

impl PageLayers {
    pub fn new(files: Vec<Arc<PageFile>>) -> Self {
        PageLayers {
            files,
            hashes: Mutex::new(HashMap::new()),
        }
    }

    /// The files, oldest first.
    pub fn files(&self) -> &[Arc<PageFile>] {
        &self.files
    }

    /// The bytes of page `index` from the newest file that holds it, checked on first read.
    pub fn page(&self, index: u64) -> Result<Option<&[u8; PAGE_SIZE]>, PageFileError> {
        match self.files.iter().rev().find(|f| f.slot_of(index).is_some()) {
            Some(file) => file.page(index),
            None => Ok(None),
        }
    }

    /// The stored leaf hash of page `index` in the newest file that holds it.
    fn stored_hash(&self, index: u64) -> Option<Hash> {
        self.files.iter().rev().find_map(|f| f.stored_hash(index))
    }

    /// The indices of every page of the stack, ascending. Reads no page.
    pub fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages().map(|(index, _, _)| index)
    }

    fn has_pages_in(&self, first: u64, end: u64) -> bool {
        self.files.iter().any(|file| file.has_pages_in(first, end))
    }

    /// Every page of the stack in ascending index order, each from the newest file holding it,
    /// with its stored hash, unchecked (see `PageFile::pages`).
    fn pages(&self) -> LayeredPages<'_> {
        Self::pages_of(&self.files)
    }

    /// Like [`Self::pages`] over `files` alone (oldest first): what a merge of them holds.
    pub fn pages_of(files: &[Arc<PageFile>]) -> LayeredPages<'_> {
        LayeredPages {
            cursors: files
                .iter()
                .map(|file| Box::new(file.pages()) as Box<dyn Iterator<Item = _>>)
                .map(Iterator::peekable)
                .collect(),
        }
    }

    /// The Merkle hash of the subtree of this stack at `level` covering pages from
    /// `first_page` (the zero-subtree hash where no file has a page).
    pub(super) fn subtree_hash(&self, level: u32, first_page: u64) -> Hash {
        let Some(child_level) = level.checked_sub(1) else {
            return self
                .stored_hash(first_page)
                .unwrap_or(*checksum::zero_subtree_hash(0));
        };
        if !self.has_pages_in(first_page, first_page.saturating_add(span(level))) {
            return *checksum::zero_subtree_hash(level);
        }
        if let Some(hash) = self.cached(level, first_page) {
            return hash;
        }
        let child_span = span(child_level);
        let mut children = [[0u8; 32]; FANOUT];
        for (i, child) in children.iter_mut().enumerate() {
            let child_first = first_page.saturating_add(child_span.saturating_mul(i as u64));
            *child = self.subtree_hash(child_level, child_first);
        }
        let hash = checksum::node_hash(&children);
        if let Ok(mut cache) = self.hashes.lock() {
            cache.insert((level, first_page), hash);
        }
        hash
    }

    fn cached(&self, level: u32, first_page: u64) -> Option<Hash> {
        self.hashes.lock().ok()?.get(&(level, first_page)).copied()
    }
}

/// A page, its bytes and its stored leaf hash.
type StoredPage<'a> = (u64, &'a [u8; PAGE_SIZE], Hash);

/// Iterator over the pages of several files merged by index, newest file first on a tie.
pub struct LayeredPages<'a> {
    cursors: Vec<std::iter::Peekable<Box<dyn Iterator<Item = StoredPage<'a>> + 'a>>>,
}

impl<'a> Iterator for LayeredPages<'a> {
    type Item = StoredPage<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self
            .cursors
            .iter_mut()
            .filter_map(|c| c.peek().map(|(i, _, _)| *i))
            .min()?;
        let mut found = None;
        // Oldest to newest: the last file holding `next` wins.
        for cursor in &mut self.cursors {
            if let Some(&(index, bytes, hash)) = cursor.peek()
                && index == next
            {
                found = Some((bytes, hash));
                cursor.next();
            }
        }
        found.map(|(bytes, hash)| (next, bytes, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(byte: u8) -> [u8; PAGE_SIZE] {
        [byte; PAGE_SIZE]
    }

    fn file_with(dir: &std::path::Path, name: &str, pages: &[(u64, u8)]) -> Arc<PageFile> {
        let path = dir.join(name);
        let data: Vec<(u64, [u8; PAGE_SIZE])> =
            pages.iter().map(|&(i, b)| (i, page_of(b))).collect();
        let mut out = File::create(&path).unwrap();
        write_page_file(&mut out, data.iter().map(|(i, p)| (*i, p, None))).unwrap();
        drop(out);
        Arc::new(PageFile::map(&File::open(&path).unwrap(), name).unwrap())
    }

    #[test]
    fn mapped_pages_read_back_and_newer_files_win() {
        let dir = tempfile::tempdir().unwrap();
        let base = file_with(dir.path(), "base", &[(0, 1), (1, 2), (7, 3), (100, 4)]);
        let overlay = file_with(dir.path(), "overlay", &[(1, 9), (8, 5)]);
        assert_eq!(base.page_count(), 4);
        // Pages 0 and 1 are adjacent and share a range; 7 and 100 stand alone.
        assert_eq!(base.ranges.len(), 3);
        let layers = PageLayers::new(vec![base, overlay]);
        assert_eq!(layers.page(0).unwrap(), Some(&page_of(1)));
        assert_eq!(layers.page(1).unwrap(), Some(&page_of(9)));
        assert_eq!(layers.page(8).unwrap(), Some(&page_of(5)));
        assert_eq!(layers.page(100).unwrap(), Some(&page_of(4)));
        assert_eq!(layers.page(2).unwrap(), None);
        assert_eq!(layers.page(u64::MAX).unwrap(), None);
        assert_eq!(
            layers.stored_hash(1),
            Some(checksum::leaf_hash(&page_of(9)))
        );
        let merged: Vec<(u64, u8)> = layers.pages().map(|(i, p, _)| (i, p[0])).collect();
        assert_eq!(merged, vec![(0, 1), (1, 9), (7, 3), (8, 5), (100, 4)]);
        // The `&Page` view of mapped bytes reads the same bytes.
        let page = as_page(layers.page(7).unwrap().unwrap());
        assert_eq!(page.bytes(), &page_of(3));
    }

    #[test]
    fn a_file_without_pages_maps_and_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let empty = file_with(dir.path(), "empty", &[]);
        assert_eq!(empty.page(0).unwrap(), None);
        assert_eq!(PageLayers::new(vec![empty]).pages().count(), 0);
    }

    #[test]
    fn damaged_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        file_with(dir.path(), "f", &[(3, 1), (4, 2)]);
        let path = dir.path().join("f");
        let original = std::fs::read(&path).unwrap();
        let reopen = || PageFile::map(&File::open(&path).unwrap(), "f").map(|_| ());
        // Truncated.
        std::fs::write(&path, &original[..original.len() - 1]).unwrap();
        let err = reopen().unwrap_err().to_string();
        assert!(
            err.contains("page file f") && err.contains("footer"),
            "{err}"
        );
        // Extended.
        let mut longer = original.clone();
        longer.insert(0, 0);
        std::fs::write(&path, &longer).unwrap();
        assert!(
            reopen()
                .unwrap_err()
                .to_string()
                .contains("truncated or extended")
        );
        // A newer version.
        let mut newer = original.clone();
        let at = newer.len() - 16;
        newer[at] = 2;
        std::fs::write(&path, &newer).unwrap();
        assert!(matches!(
            PageFile::map(&File::open(&path).unwrap(), "f"),
            Err(PageFileError::NewerVersion { found: 2, .. })
        ));
        // An index range out of order.
        let mut bad_index = original.clone();
        let index_at = 2 * (PAGE_SIZE + 32);
        bad_index[index_at + 8..index_at + 16].copy_from_slice(&1u64.to_le_bytes());
        std::fs::write(&path, &bad_index).unwrap();
        assert!(reopen().unwrap_err().to_string().contains("out of order"));
        std::fs::write(&path, &original).unwrap();
        reopen().unwrap();
    }

    #[test]
    fn a_changed_page_is_an_error_naming_file_and_page_never_data() {
        let dir = tempfile::tempdir().unwrap();
        file_with(dir.path(), "f", &[(3, 1), (4, 2)]);
        let path = dir.path().join("f");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PAGE_SIZE + 100] ^= 1; // page 4, the second slot
        std::fs::write(&path, &bytes).unwrap();
        // The tail is intact, so the file maps; the damaged page is refused when read.
        let file = PageFile::map(&File::open(&path).unwrap(), "f").unwrap();
        assert_eq!(file.page(3).unwrap(), Some(&page_of(1)));
        let err = file.page(4).unwrap_err().to_string();
        assert!(
            err.contains("page file f") && err.contains("page 4"),
            "{err}"
        );
        // Hashing uses the stored hash and reads nothing.
        assert_eq!(file.stored_hash(4), Some(checksum::leaf_hash(&page_of(2))));
    }

    #[test]
    fn out_of_order_pages_are_not_written() {
        let a = page_of(1);
        let err = write_page_file(&mut Vec::new(), [(5, &a, None), (4, &a, None)].into_iter())
            .unwrap_err();
        assert!(err.to_string().contains("out of order"));
    }
}
