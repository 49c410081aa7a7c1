//! Page files: checkpointed pages, served from read-only memory mappings.
//!
//! # The format (`spec/durability.md`, version 3)
//!
//! ```text
//! [ data: page_count × 4096 bytes, at offset 0, so every page is 4 KiB-aligned in the file ]
//! [ leaf hashes: page_count × 32 bytes, the Merkle leaf hash of each page, in data order, in
//!   groups of 128 (4 KiB, 4 KiB-aligned; the last group may be shorter) ]
//! [ group table: ⌈page_count / 128⌉ × 32 bytes, the SHA-256 of each group's leaf hashes, in
//!   blocks of 128 entries (4 KiB; the last block may be shorter) ]
//! [ block table: ⌈group_count / 128⌉ × 32 bytes, the SHA-256 of each block of the group table ]
//! [ index: range_count × (start_page u64 LE, end_page u64 LE), ascending, disjoint, end > start ]
//! [ footer, 32 bytes: range_count u64 LE, page_count u64 LE, version u32 LE, 4 zero bytes,
//!   magic "CSPAGES1" ]
//! ```
//!
//! Everything after the group table is the file's *checked tail*: the state manager's manifest
//! checks its SHA-256 at open, O(pages / 16384 · 32 bytes) (8 KiB at 16 GiB), and opening reads
//! nothing else of the file but the index and the footer: neither a page, nor a leaf hash, nor
//! the group table. Verification is lazy, in three steps, each done once per process and
//! remembered in a bit:
//!
//! - a *block* of the group table (the entries of 128 groups, 16,384 pages) is checked against
//!   its block table entry the first time a group in it is checked;
//! - a *group* of leaf hashes is checked against its (so verified) table entry the first time
//!   anything uses a hash in it (reading a page of the group, hashing the memory, merging the
//!   file);
//! - a *page* is checked against its (so verified) leaf hash the first time it is read.
//!
//! A mismatch at any step is an error naming the file and the group (and its block) or the
//! page, never data. Hashing a memory uses the stored leaf hashes and reads no page; where a
//! group does not match its table entry, or its block its block table entry, hashing falls back
//! to the page bytes themselves (so damage to the leaf hashes or the group table alone never
//! changes a memory's hash, and damaged pages change it and fail to read).
//!
//! Older versions are still read as they were written. Version 2 has no block table: its
//! checked tail starts at the group table, which the manifest so checks at open
//! (O(pages / 128 · 32 bytes)), and its groups are checked against the table directly.
//! Version 1 has no group table either: its checked tail starts at the leaf hashes, which the
//! manifest checks at open, and they count as verified.
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
//! Opening a file maps it and reads its index and footer: O(ranges), never the page bytes, the
//! leaf hashes or the group table (the manifest check reads the block table:
//! O(pages / 16384)). The bits that remember the checks are allocated per block on first use:
//! opening allocates one empty cell per 16,384 pages, not a bit per page. The first use of a
//! block hashes its 4 KiB of group table, the first use of a group its 4 KiB of leaf hashes;
//! the first read of a page hashes its 4 KiB.
//! A lookup is O(files · log ranges), files ≤ 7 per memory by the state manager's merges.
//! The Merkle hash of a part of the stack that no in-memory page shadows is computed from the
//! mapped bytes on first request and cached here, so a memory is hashed once per process
//! however many maps (a canister and its snapshots) share the stack.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use memmap2::Mmap;

use super::checksum::{self, Hash};
use super::page_map::{FANOUT, PAGE_SIZE, Page, span};

#[cfg(test)]
thread_local! {
    /// Bytes of leaf hashes hashed by group checks on this thread: what tests measure to show
    /// that opening reads none and a read checks one group.
    static GROUP_BYTES_CHECKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Bytes of group table hashed by block checks on this thread: likewise, that opening reads
    /// none of the group table and a read checks one block.
    static BLOCK_BYTES_CHECKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Bytes of pages hashed by page checks on this thread: that a page is checked once.
    static PAGE_BYTES_CHECKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The newest page file format this build reads and the one it writes.
pub const PAGE_FILE_VERSION: u32 = 3;
/// The first version with a group table; version 1 files are read without one.
const GROUPED_VERSION: u32 = 2;
/// The first version with a block table; version 2 files are read without one.
const BLOCKED_VERSION: u32 = 3;
const MAGIC: &[u8; 8] = b"CSPAGES1";
const HASH_BYTES: usize = 32;
/// Leaf hashes per group: 128 × 32 bytes, one 4 KiB page of hashes.
const HASHES_PER_GROUP: u64 = 128;
const GROUP_BYTES: usize = HASHES_PER_GROUP as usize * HASH_BYTES;
/// Group table entries per block: 128 × 32 bytes, 4 KiB of the table.
const GROUPS_PER_BLOCK: u64 = 128;
const BLOCK_BYTES: usize = GROUPS_PER_BLOCK as usize * HASH_BYTES;
/// Pages under one block of the group table: 16,384, 64 MiB of data.
const PAGES_PER_BLOCK: u64 = GROUPS_PER_BLOCK * HASHES_PER_GROUP;
const FOOTER_BYTES: usize = 32;
const RANGE_BYTES: usize = 16;
/// Below this many pages without a known leaf hash, a page file is hashed on the writing thread.
const PARALLEL_HASH_MIN_PAGES: usize = 256;

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

/// Where the areas of a page file start, from its footer (module docs, "The format"). An area a
/// version does not have is empty: it starts where the next one does.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// The leaf hashes: the end of the data.
    hashes_at: usize,
    /// The group table: the end of the leaf hashes.
    group_table_at: usize,
    /// The block table: the end of the group table.
    block_table_at: usize,
    /// The index: the end of the block table.
    index_at: usize,
    /// The checked tail: the block table (version 3), the group table (2), the leaf hashes (1).
    checked_at: usize,
    /// The file's length: the end of the footer.
    len: usize,
}

impl Layout {
    /// The layout of a file of `version` with `page_count` pages in `range_count` ranges;
    /// `None` if it does not fit a `usize`.
    fn of(version: u32, page_count: u64, range_count: u64) -> Option<Layout> {
        let group_count = if version >= GROUPED_VERSION {
            page_count.div_ceil(HASHES_PER_GROUP)
        } else {
            0
        };
        let block_count = if version >= BLOCKED_VERSION {
            group_count.div_ceil(GROUPS_PER_BLOCK)
        } else {
            0
        };
        let bytes = |count: u64, each: usize| count.checked_mul(each as u64);
        let hashes_at = bytes(page_count, PAGE_SIZE)?;
        let group_table_at = hashes_at.checked_add(bytes(page_count, HASH_BYTES)?)?;
        let block_table_at = group_table_at.checked_add(bytes(group_count, HASH_BYTES)?)?;
        let index_at = block_table_at.checked_add(bytes(block_count, HASH_BYTES)?)?;
        let len = index_at
            .checked_add(bytes(range_count, RANGE_BYTES)?)?
            .checked_add(FOOTER_BYTES as u64)?;
        let checked_at = match version {
            ..GROUPED_VERSION => hashes_at,
            GROUPED_VERSION => group_table_at,
            _ => block_table_at,
        };
        let at = |offset: u64| usize::try_from(offset).ok();
        Some(Layout {
            hashes_at: at(hashes_at)?,
            group_table_at: at(group_table_at)?,
            block_table_at: at(block_table_at)?,
            index_at: at(index_at)?,
            checked_at: at(checked_at)?,
            len: at(len)?,
        })
    }
}

/// One immutable, mapped page file.
pub struct PageFile {
    name: String,
    map: Mmap,
    ranges: Vec<Range>,
    page_count: u64,
    version: u32,
    layout: Layout,
    /// What has been checked, per block: cell `b` covers slots
    /// `[b · PAGES_PER_BLOCK, (b + 1) · PAGES_PER_BLOCK)` and their groups (for versions 1 and
    /// 2, which have no block table, the same spans). A cell is filled on the first check in
    /// its span, so opening a file allocates an empty cell per 16,384 pages, not a bit per
    /// page.
    checks: Box<[OnceLock<BlockChecks>]>,
}

/// The checks passed in one block's span of a file. Bits are set once and never cleared (the
/// file is immutable); a thread that misses a bit only repeats a check.
struct BlockChecks {
    /// The block of the group table matched its block table entry. Set with `Release` after
    /// the check and read with `Acquire` before an entry of the block is used, as `groups`.
    block: AtomicBool,
    /// One bit per group of the block: the group matched its table entry. Set with `Release`
    /// after the check and read with `Acquire` before a hash of the group is used, as
    /// `ChildHashes` in `page_map.rs` does: a thread that sees the bit also sees everything the
    /// checking thread did before setting it. (The hashes themselves are immutable mapped
    /// bytes, so a thread that misses the bit only repeats the check.)
    groups: [AtomicU64; (GROUPS_PER_BLOCK / 64) as usize],
    /// One bit per slot of the block: the page's bytes matched their stored hash. `Relaxed`:
    /// the bit only says that a check already passed on immutable bytes.
    pages: Box<[AtomicU64]>,
}

impl BlockChecks {
    fn new(slots: u64) -> Self {
        BlockChecks {
            block: AtomicBool::new(false),
            groups: [const { AtomicU64::new(0) }; (GROUPS_PER_BLOCK / 64) as usize],
            pages: (0..slots.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Whether bit `i` of `bits` is set; `false` past the end, so a check that has no bit is
/// repeated rather than skipped.
fn bit_is_set(bits: &[AtomicU64], i: u64, order: Ordering) -> bool {
    bits.get((i / 64) as usize)
        .is_some_and(|word| word.load(order) & (1u64 << (i % 64)) != 0)
}

/// Sets bit `i` of `bits`, if there is one.
fn set_bit(bits: &[AtomicU64], i: u64, order: Ordering) {
    if let Some(word) = bits.get((i / 64) as usize) {
        word.fetch_or(1u64 << (i % 64), order);
    }
}

/// Why a group of leaf hashes failed its check: data, not text, so that the check allocates
/// nothing (`PageFile::page_in_signal_handler`).
#[derive(Clone, Copy, Debug)]
enum GroupFault {
    BlockOutside(u64),
    BlockMismatch(u64),
    Outside,
    Mismatch,
}

/// Why a page failed its check.
#[derive(Clone, Copy, Debug)]
enum SlotFault {
    Group(GroupFault),
    Page,
}

/// What [`write_page_file`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFileSummary {
    pub pages: u64,
    /// Bytes of the checked tail, after the group table: block table, index and footer.
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
    let pages: Vec<(&[u8; PAGE_SIZE], Option<Hash>)> = pages
        .map(|(index, bytes, hash)| {
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
            Ok((bytes, hash))
        })
        .collect::<std::io::Result<_>>()?;
    // The leaf hashes the caller did not have are computed on a second thread while this one
    // writes the pages: a first checkpoint costs max(write, hash), not their sum.
    let leaf_hashes = |pages: &[(&[u8; PAGE_SIZE], Option<Hash>)]| -> Vec<u8> {
        let mut hashes = Vec::with_capacity(pages.len().saturating_mul(HASH_BYTES));
        for (bytes, hash) in pages {
            hashes.extend_from_slice(&hash.unwrap_or_else(|| checksum::leaf_hash(bytes)));
        }
        hashes
    };
    let missing = pages.iter().filter(|(_, hash)| hash.is_none()).count();
    let hashes = if missing < PARALLEL_HASH_MIN_PAGES {
        for (bytes, _) in &pages {
            out.write_all(*bytes)?;
        }
        leaf_hashes(&pages)
    } else {
        std::thread::scope(|scope| {
            let hashing = scope.spawn(|| leaf_hashes(&pages));
            let written = pages
                .iter()
                .try_for_each(|(bytes, _)| out.write_all(*bytes));
            // `join` fails only if the hashing thread panicked, which `leaf_hash` cannot.
            let hashes = hashing
                .join()
                .map_err(|_| std::io::Error::other("the leaf-hashing thread panicked"))?;
            written.map(|()| hashes)
        })?
    };
    write_page_file_tail(out, &hashes, &ranges)
}

/// Writes what follows the pages of a page file (module docs, "The format"): the leaf hashes
/// `hashes` (32 bytes per page, in data order), their group and block tables, the index of
/// `ranges` and the footer. For a file whose pages were written apart ([`write_page_file`]
/// writes both; a merge continued across processes writes its pages over several and this
/// last).
pub fn write_page_file_tail<W: Write + ?Sized>(
    out: &mut W,
    hashes: &[u8],
    ranges: &[(u64, u64)],
) -> std::io::Result<PageFileSummary> {
    let count = (hashes.len() / HASH_BYTES) as u64;
    // Neither the leaf hashes nor the group table are part of the checked tail: the group
    // table stands for the leaf hashes, and the block table for the group table.
    out.write_all(hashes)?;
    let group_table = table_of(hashes, GROUP_BYTES);
    out.write_all(&group_table)?;
    let mut tail = table_of(&group_table, BLOCK_BYTES);
    tail.reserve(
        ranges
            .len()
            .saturating_mul(RANGE_BYTES)
            .saturating_add(FOOTER_BYTES),
    );
    for (start, end) in ranges {
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

/// The SHA-256 of each `chunk` bytes of `bytes` (the last chunk may be shorter), concatenated:
/// the group table of the leaf hashes, or the block table of the group table.
fn table_of(bytes: &[u8], chunk: usize) -> Vec<u8> {
    let mut table = Vec::with_capacity(bytes.len().div_ceil(chunk).saturating_mul(HASH_BYTES));
    for chunk in bytes.chunks(chunk) {
        table.extend_from_slice(&checksum::sha256(chunk));
    }
    table
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
    /// Maps `file` read-only and checks its footer, its length and its index; `name` is how
    /// errors name it. Reads O(ranges) bytes, never the pages, the leaf hashes or the group
    /// table.
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
        if version == 0 {
            return Err(corrupt("its footer declares format version 0".into()));
        }
        let (range_count, page_count) = (le_u64(field(0..8)), le_u64(field(8..16)));
        let layout = Layout::of(version, page_count, range_count);
        let Some(layout) = layout.filter(|layout| layout.len == map.len()) else {
            return Err(corrupt(format!(
                "{len} bytes, but its footer declares {page_count} pages in {range_count} \
                 ranges (truncated or extended?)"
            )));
        };
        // `layout.len == map.len()` above puts every area inside the file, the index between
        // the block table and the footer; checked anyway rather than sliced.
        let index = body.get(layout.index_at..).ok_or_else(|| {
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
            version,
            layout,
            checks: (0..page_count.div_ceil(PAGES_PER_BLOCK))
                .map(|_| OnceLock::new())
                .collect(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The distinct pages `files` hold together: the pages of their merge. O(ranges), reads
    /// no page.
    pub fn union_page_count(files: &[Arc<PageFile>]) -> u64 {
        let mut ranges: Vec<(u64, u64)> = files
            .iter()
            .flat_map(|f| f.ranges.iter().map(|r| (r.start, r.end)))
            .collect();
        ranges.sort_unstable();
        let (mut count, mut covered) = (0u64, 0u64);
        for (start, end) in ranges {
            let start = start.max(covered);
            if end > start {
                count = count.saturating_add(end.saturating_sub(start));
                covered = end;
            }
        }
        count
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

    /// The checks passed in block `block`'s span, allocated on first use. `None` only past the
    /// file's last block, which callers never ask for (a slot's block, a group's block); a
    /// check without its bits would just be repeated on every use.
    fn checks(&self, block: u64) -> Option<&BlockChecks> {
        let cell = self.checks.get(usize::try_from(block).ok()?)?;
        Some(cell.get_or_init(|| {
            let first = block.saturating_mul(PAGES_PER_BLOCK);
            BlockChecks::new(self.page_count.saturating_sub(first).min(PAGES_PER_BLOCK))
        }))
    }

    /// The bytes of page `index`, if this file holds it, checked against the stored leaf hash
    /// on first read. O(log ranges), plus one leaf hash the first time.
    pub fn page(&self, index: u64) -> Result<Option<&[u8; PAGE_SIZE]>, PageFileError> {
        let Some(slot) = self.slot_of(index) else {
            return Ok(None);
        };
        let checks = self.checks(slot / PAGES_PER_BLOCK);
        match self.check_slot(slot, checks) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(SlotFault::Group(fault)) => {
                Err(self.group_error(slot / HASHES_PER_GROUP, Some(index), fault))
            }
            Err(SlotFault::Page) => Err(PageFileError::Corrupt {
                file: self.name.clone(),
                reason: format!(
                    "page {index} does not match its stored hash (the file was changed after it \
                     was written)"
                ),
            }),
        }
    }

    /// Page `index` checked as [`Self::page`] checks it, for the memory tracker's fault handler
    /// (`rs/embedders/host_memory.rs`): no allocation, no lock, no error text. The check bits
    /// are read and set only where [`Self::allocate_check_bits`] made them (otherwise the
    /// checks are repeated, never skipped). `None`: the file does not hold the page;
    /// `Some(None)`: it does, and the page or its group of leaf hashes does not match (the
    /// caller names the file and the page).
    pub fn page_in_signal_handler(&self, index: u64) -> Option<Option<&[u8; PAGE_SIZE]>> {
        let slot = self.slot_of(index)?;
        let checks = usize::try_from(slot / PAGES_PER_BLOCK)
            .ok()
            .and_then(|block| self.checks.get(block))
            .and_then(OnceLock::get);
        Some(self.check_slot(slot, checks).ok())
    }

    /// Makes the check bits of every block of the file exist, so that
    /// [`Self::page_in_signal_handler`] remembers its checks. O(blocks), one per 16,384 pages;
    /// allocates only the first time.
    pub fn allocate_check_bits(&self) {
        for block in 0..self.checks.len() as u64 {
            self.checks(block);
        }
    }

    /// The checks of a page read, allocation-free: its group (`check_group`), then its bytes
    /// against its leaf hash, each once (remembered in `checks` when there is one).
    fn check_slot(
        &self,
        slot: u64,
        checks: Option<&BlockChecks>,
    ) -> Result<&[u8; PAGE_SIZE], SlotFault> {
        let bytes = self.slot_bytes(slot);
        let bit = slot % PAGES_PER_BLOCK;
        // Relaxed is enough: the bit only says that a check already passed on these immutable
        // bytes; a thread that misses it checks again.
        if checks.is_none_or(|checks| !bit_is_set(&checks.pages, bit, Ordering::Relaxed)) {
            self.check_group(slot / HASHES_PER_GROUP, checks)
                .map_err(SlotFault::Group)?;
            #[cfg(test)]
            PAGE_BYTES_CHECKED.with(|c| c.set(c.get() + PAGE_SIZE as u64));
            if checksum::leaf_hash(bytes) != self.slot_hash(slot) {
                return Err(SlotFault::Page);
            }
            if let Some(checks) = checks {
                set_bit(&checks.pages, bit, Ordering::Relaxed);
            }
        }
        Ok(bytes)
    }

    /// The stored leaf hash of page `index`, if this file holds it, its group checked against
    /// the group table on first use. Reads no page.
    pub fn stored_hash(&self, index: u64) -> Result<Option<Hash>, PageFileError> {
        let Some(slot) = self.slot_of(index) else {
            return Ok(None);
        };
        self.verify_group(slot / HASHES_PER_GROUP, Some(index))?;
        Ok(Some(self.slot_hash(slot)))
    }

    /// The leaf hash of page `index` for the memory's Merkle hash: the stored one, or where its
    /// group does not match the group table (or the group's block the block table), the hash of
    /// the page's bytes (the error is left to the reads, which refuse the page). Hashing is
    /// infallible (`PageMap::root_hash`), and so a damaged leaf-hash area or group table never
    /// changes a memory's hash.
    fn merkle_leaf_hash(&self, index: u64) -> Option<Hash> {
        let slot = self.slot_of(index)?;
        match self.stored_hash(index) {
            Ok(hash) => hash,
            Err(_) => Some(checksum::leaf_hash(self.slot_bytes(slot))),
        }
    }

    /// Checks group `group`'s leaf hashes against its table entry once, after checking the
    /// entry's block of the table against the block table once (version 2 files have no block
    /// table: the manifest checked their group table at open; version 1 files have no group
    /// table: it checked all their leaf hashes). `page` is named in the error.
    fn verify_group(&self, group: u64, page: Option<u64>) -> Result<(), PageFileError> {
        let checks = self.checks(group / GROUPS_PER_BLOCK);
        self.check_group(group, checks)
            .map_err(|fault| self.group_error(group, page, fault))
    }

    /// The error for a group that failed its check, naming the file, the group and `page`.
    fn group_error(&self, group: u64, page: Option<u64>, fault: GroupFault) -> PageFileError {
        let page = page.map(|p| format!(" (page {p})")).unwrap_or_default();
        let what = match fault {
            GroupFault::BlockOutside(block) => {
                format!("is in group table block {block}, outside the file")
            }
            GroupFault::BlockMismatch(block) => {
                format!("is in group table block {block}, which does not match the block table")
            }
            GroupFault::Outside => "is outside the file".into(),
            GroupFault::Mismatch => "does not match the group table".into(),
        };
        PageFileError::Corrupt {
            file: self.name.clone(),
            reason: format!(
                "leaf hash group {group}{page} {what} (the file was changed after it was written)"
            ),
        }
    }

    /// `verify_group` without the error text, allocation-free (the memory tracker's fault
    /// handler runs it): the group's block once (version 3), then the group once, each
    /// remembered in `checks` when there is one.
    fn check_group(&self, group: u64, checks: Option<&BlockChecks>) -> Result<(), GroupFault> {
        if self.version < GROUPED_VERSION {
            return Ok(());
        }
        let block = group / GROUPS_PER_BLOCK;
        let bit = group % GROUPS_PER_BLOCK;
        if checks.is_some_and(|checks| bit_is_set(&checks.groups, bit, Ordering::Acquire)) {
            return Ok(());
        }
        if self.version >= BLOCKED_VERSION {
            self.check_block(block, checks)?;
        }
        let Some((hashes, entry)) = self.chunk_and_entry(
            self.layout.hashes_at..self.layout.group_table_at,
            GROUP_BYTES,
            self.layout.group_table_at,
            group,
        ) else {
            return Err(GroupFault::Outside);
        };
        #[cfg(test)]
        GROUP_BYTES_CHECKED.with(|c| c.set(c.get() + hashes.len() as u64));
        if checksum::sha256(hashes) != entry {
            return Err(GroupFault::Mismatch);
        }
        if let Some(checks) = checks {
            set_bit(&checks.groups, bit, Ordering::Release);
        }
        Ok(())
    }

    /// Checks block `block` of the group table against its block table entry once (version 3).
    fn check_block(&self, block: u64, checks: Option<&BlockChecks>) -> Result<(), GroupFault> {
        if checks.is_some_and(|checks| checks.block.load(Ordering::Acquire)) {
            return Ok(());
        }
        let Some((table, entry)) = self.chunk_and_entry(
            self.layout.group_table_at..self.layout.block_table_at,
            BLOCK_BYTES,
            self.layout.block_table_at,
            block,
        ) else {
            return Err(GroupFault::BlockOutside(block));
        };
        #[cfg(test)]
        BLOCK_BYTES_CHECKED.with(|c| c.set(c.get() + table.len() as u64));
        if checksum::sha256(table) != entry {
            return Err(GroupFault::BlockMismatch(block));
        }
        if let Some(checks) = checks {
            checks.block.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Chunk `i` of `area`, cut in chunks of `chunk` bytes (the last may be shorter), and entry
    /// `i` of the table of their hashes at `table_at`: a group of leaf hashes and its group
    /// table entry, or a block of the group table and its block table entry. `None` if either
    /// is outside the file, which `map`'s length check rules out for `i` below the area's
    /// chunk count.
    fn chunk_and_entry(
        &self,
        area: std::ops::Range<usize>,
        chunk: usize,
        table_at: usize,
        i: u64,
    ) -> Option<(&[u8], &[u8])> {
        let i = usize::try_from(i).ok()?;
        let at = i.checked_mul(chunk)?.checked_add(area.start)?;
        let bytes = self
            .map
            .get(at..at.checked_add(chunk)?.min(area.end))
            .filter(|bytes| !bytes.is_empty())?;
        let entry_at = i.checked_mul(HASH_BYTES)?.checked_add(table_at)?;
        let entry = self.map.get(entry_at..entry_at.checked_add(HASH_BYTES)?)?;
        Some((bytes, entry))
    }

    /// Checks every group of leaf hashes (once): before the file's stored hashes are copied
    /// into a merged file, whose own group table would otherwise vouch for a damaged hash.
    /// O(pages · 32 bytes), against the merge's O(pages · 4 KiB).
    pub fn verify_leaf_hashes(&self) -> Result<(), PageFileError> {
        let groups = if self.version >= GROUPED_VERSION {
            self.page_count.div_ceil(HASHES_PER_GROUP)
        } else {
            0
        };
        (0..groups).try_for_each(|group| self.verify_group(group, None))
    }

    // Slot arithmetic: `map` checked that the file is exactly `page_count` pages, as many
    // hashes, the tables, the index and the footer, and that the index's ranges cover exactly
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

    // As `slot_bytes`: `slot < page_count`, inside the leaf-hash area from `hashes_at`. Callers
    // outside a merge check the slot's group first (`verify_group`).
    #[allow(
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing,
        clippy::expect_used
    )]
    fn slot_hash(&self, slot: u64) -> Hash {
        let at = self.layout.hashes_at + slot as usize * HASH_BYTES;
        self.map[at..at + HASH_BYTES]
            .try_into()
            .expect("slot within the checked hash area")
    }

    /// Bytes of the checked tail (block table, index, footer; for version 2, from the group
    /// table on; for version 1, from the leaf hashes on): what the manifest checks at open.
    pub fn tail_bytes(&self) -> u64 {
        self.map.len().saturating_sub(self.layout.checked_at) as u64
    }

    /// Whether any page in `[first, end)` is in this file. O(log ranges).
    fn has_pages_in(&self, first: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= first);
        self.ranges.get(i).is_some_and(|r| r.start < end)
    }

    /// The file's pages in ascending index order with their stored hashes, unchecked: for
    /// copying into a merged file (after `verify_leaf_hashes`), where a damaged page keeps its
    /// stored hash and so stays detectable.
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
        match self.file_of(index) {
            Some(file) => file.page(index),
            None => Ok(None),
        }
    }

    /// The newest file holding page `index`.
    fn file_of(&self, index: u64) -> Option<&PageFile> {
        self.layer_of(index).map(|(_, file)| file)
    }

    /// The newest file holding page `index` and its position in [`Self::files`]. No
    /// allocation, no lock (the memory tracker's fault handler calls it).
    pub fn layer_of(&self, index: u64) -> Option<(usize, &PageFile)> {
        self.files
            .iter()
            .enumerate()
            .rev()
            .find(|(_, f)| f.slot_of(index).is_some())
            .map(|(layer, f)| (layer, &**f))
    }

    /// The stored leaf hash of page `index` in the newest file that holds it.
    #[cfg(test)]
    fn stored_hash(&self, index: u64) -> Result<Option<Hash>, PageFileError> {
        self.file_of(index)
            .map_or(Ok(None), |f| f.stored_hash(index))
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
        Self::unverified_pages_of(&self.files)
    }

    /// Like [`Self::pages`] over `files` alone (oldest first): what a merge of them holds,
    /// after checking every group of their leaf hashes, so that the merged file's group table
    /// vouches only for hashes that matched their own.
    pub fn pages_of(files: &[Arc<PageFile>]) -> Result<LayeredPages<'_>, PageFileError> {
        files.iter().try_for_each(|f| f.verify_leaf_hashes())?;
        Ok(Self::unverified_pages_of(files))
    }

    fn unverified_pages_of(files: &[Arc<PageFile>]) -> LayeredPages<'_> {
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
                .file_of(first_page)
                .and_then(|f| f.merkle_leaf_hash(first_page))
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
            layers.stored_hash(1).unwrap(),
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
        newer[at] = 4;
        std::fs::write(&path, &newer).unwrap();
        assert!(matches!(
            PageFile::map(&File::open(&path).unwrap(), "f"),
            Err(PageFileError::NewerVersion { found: 4, .. })
        ));
        // An index range out of order (after 2 pages, 2 leaf hashes, 1 group table entry and 1
        // block table entry).
        let mut bad_index = original.clone();
        let index_at = 2 * (PAGE_SIZE + 32) + 32 + 32;
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
        assert_eq!(
            file.stored_hash(4).unwrap(),
            Some(checksum::leaf_hash(&page_of(2)))
        );
    }

    /// Writes a file of `pages` pages `0..pages`, page `i` filled with `i as u8`.
    fn file_of_pages(dir: &std::path::Path, name: &str, pages: u64) -> std::path::PathBuf {
        let spec: Vec<(u64, u8)> = (0..pages).map(|i| (i, i as u8)).collect();
        file_with(dir, name, &spec);
        dir.join(name)
    }

    /// Bytes hashed on this thread so far by block checks and by group checks.
    fn bytes_checked() -> (u64, u64) {
        (
            BLOCK_BYTES_CHECKED.with(|c| c.get()),
            GROUP_BYTES_CHECKED.with(|c| c.get()),
        )
    }

    /// What this thread hashed in block and group checks while `f` ran.
    fn checked_by<T>(f: impl FnOnce() -> T) -> (T, (u64, u64)) {
        let (blocks, groups) = bytes_checked();
        let value = f();
        let (blocks_after, groups_after) = bytes_checked();
        (value, (blocks_after - blocks, groups_after - groups))
    }

    /// Bytes of pages this thread hashed in page checks while `f` ran.
    fn pages_checked_by<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = PAGE_BYTES_CHECKED.with(|c| c.get());
        let value = f();
        (value, PAGE_BYTES_CHECKED.with(|c| c.get()) - before)
    }

    fn map_file(path: &std::path::Path, name: &str) -> Result<PageFile, PageFileError> {
        PageFile::map(&File::open(path).unwrap(), name)
    }

    /// Where the areas of the intact file at `path` start.
    fn layout_of(path: &std::path::Path) -> Layout {
        map_file(path, "layout").unwrap().layout
    }

    /// A copy of `path` named `name` in `dir`, with one bit of its byte `at` flipped.
    fn flipped(
        dir: &std::path::Path,
        path: &std::path::Path,
        name: &str,
        at: usize,
    ) -> std::path::PathBuf {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x04;
        let copy = dir.join(name);
        std::fs::write(&copy, &bytes).unwrap();
        copy
    }

    #[test]
    fn the_checked_tail_grows_with_pages_over_16384_not_with_pages() {
        // The manifest's check at open hashes the block table, 32 bytes per 16,384 pages: not
        // the 32 bytes per 128 pages of the group table (16 KiB here), nor the 32 bytes per
        // page of the leaf hashes (2 MiB here).
        let page = page_of(7);
        let tail = |pages: u64| {
            write_page_file(
                &mut std::io::sink(),
                (0..pages).map(|i| (i, &page, Some([0u8; 32]))),
            )
            .unwrap()
            .tail_bytes
        };
        let footer_and_index = (FOOTER_BYTES + RANGE_BYTES) as u64;
        assert_eq!(tail(64), 32 + footer_and_index);
        assert_eq!(tail(16_384), 32 + footer_and_index);
        assert_eq!(tail(16_385), 2 * 32 + footer_and_index);
        assert_eq!(tail(65_536), 4 * 32 + footer_and_index);
    }

    #[test]
    fn opening_reads_no_leaf_hash_and_no_group_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_of_pages(dir.path(), "f", 300); // groups of 128, 128 and 44 pages
        let layout = layout_of(&path);
        // Every leaf hash and every group table entry garbled: the file still maps, so opening
        // reads neither.
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[layout.hashes_at..layout.block_table_at] {
            *b ^= 0x5a;
        }
        let garbled = dir.path().join("garbled");
        std::fs::write(&garbled, &bytes).unwrap();
        let (file, checked) = checked_by(|| map_file(&garbled, "garbled").unwrap());
        assert_eq!(
            checked,
            (0, 0),
            "opening checked the group table or leaf hashes"
        );
        // The checked tail: one block table entry, one index range, the footer.
        assert_eq!(file.tail_bytes(), 32 + 16 + 32);
        let err = file.page(130).unwrap_err().to_string();
        assert!(
            err.contains("page file garbled") && err.contains("group 1 (page 130)"),
            "{err}"
        );
    }

    #[test]
    fn a_read_checks_one_block_and_one_group_once() {
        let dir = tempfile::tempdir().unwrap();
        // Two blocks: 128 groups of 128 pages, then 3 groups (128, 128 and 44 pages).
        let pages = PAGES_PER_BLOCK + 300;
        let path = file_of_pages(dir.path(), "f", pages);
        let file = map_file(&path, "f").unwrap();
        let reads = |index: u64| file.page(index).unwrap() == Some(&page_of(index as u8));
        // Opening allocated no check bits: a cell per block, each still empty.
        let filled = || {
            file.checks
                .iter()
                .map(|c| c.get().is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(filled(), [false, false]);
        // The first read in block 0 checks its 4 KiB of group table and its group's 4 KiB of
        // leaf hashes, and fills that block's cell only; more uses of the same group check
        // nothing.
        assert_eq!(checked_by(|| reads(5)), (true, (4096, 4096)));
        assert_eq!(filled(), [true, false]);
        let (hash, checked) = checked_by(|| file.stored_hash(7).unwrap());
        assert_eq!(hash, Some(checksum::leaf_hash(&page_of(7))));
        assert_eq!(checked, (0, 0));
        assert_eq!(checked_by(|| reads(6)), (true, (0, 0)));
        // Another group of a checked block: its group only.
        assert_eq!(checked_by(|| reads(200)), (true, (0, 4096)));
        // Block 1 holds 3 group table entries; page 16,514 is in group 129 (128 pages).
        assert_eq!(
            checked_by(|| reads(PAGES_PER_BLOCK + 130)),
            (true, (3 * 32, 4096))
        );
        // The last group is shorter (44 pages).
        assert_eq!(checked_by(|| reads(pages - 1)), (true, (0, 44 * 32)));
        // Each page is hashed on its first read only, in either block.
        for index in [5, 6, 200, PAGES_PER_BLOCK + 130, pages - 1] {
            assert_eq!(pages_checked_by(|| reads(index)), (true, 0), "page {index}");
        }
        for index in [4, PAGES_PER_BLOCK + 131] {
            assert_eq!(
                pages_checked_by(|| reads(index)),
                (true, 4096),
                "page {index}"
            );
            assert_eq!(pages_checked_by(|| reads(index)), (true, 0), "page {index}");
        }
    }

    #[test]
    fn a_changed_leaf_hash_is_an_error_naming_file_and_group_and_hashing_ignores_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_of_pages(dir.path(), "f", 200);
        let intact = PageLayers::new(vec![Arc::new(
            PageFile::map(&File::open(&path).unwrap(), "f").unwrap(),
        )]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[200 * PAGE_SIZE + 150 * 32 + 3] ^= 1; // the leaf hash of page 150, group 1
        std::fs::write(&path, &bytes).unwrap();
        let file = Arc::new(PageFile::map(&File::open(&path).unwrap(), "f").unwrap());
        // Group 0 is intact and serves its pages.
        assert_eq!(file.page(3).unwrap(), Some(&page_of(3)));
        for index in [128, 150, 199] {
            let err = file.page(index).unwrap_err().to_string();
            assert!(
                err.contains("page file f") && err.contains(&format!("group 1 (page {index})")),
                "{err}"
            );
            assert!(file.stored_hash(index).is_err());
        }
        // A merge refuses to copy the damaged hashes under a new group table.
        let err = PageLayers::pages_of(std::slice::from_ref(&file))
            .err()
            .unwrap();
        assert!(err.to_string().contains("group 1"), "{err}");
        // The memory's hash is that of the bytes on disk, as if nothing were damaged.
        let damaged = PageLayers::new(vec![file]);
        assert_eq!(damaged.subtree_hash(2, 0), intact.subtree_hash(2, 0));
    }

    #[test]
    fn a_changed_group_table_is_found_on_first_read_not_at_open_and_hashing_ignores_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_of_pages(dir.path(), "f", 200); // groups 0 and 1, both in block 0
        let layout = layout_of(&path);
        let intact = PageLayers::new(vec![Arc::new(map_file(&path, "f").unwrap())]);
        // A bit of group 1's table entry, then a bit of block 0's block table entry. In a
        // state directory the manifest refuses the second at open; the file itself maps.
        let group_entry = flipped(dir.path(), &path, "group", layout.group_table_at + 32 + 9);
        let block_entry = flipped(dir.path(), &path, "block", layout.block_table_at + 9);
        for (name, damaged) in [("group", group_entry), ("block", block_entry)] {
            let (file, checked) = checked_by(|| Arc::new(map_file(&damaged, name).unwrap()));
            assert_eq!(checked, (0, 0), "{name}: opening checked the group table");
            // The block no longer vouches for any of its entries: every group under it is
            // refused when first used, naming the file, the group, the page and the block.
            for index in [3, 150] {
                let err = file.page(index).unwrap_err().to_string();
                let group = index / HASHES_PER_GROUP;
                assert!(
                    err.contains(&format!("page file {name}"))
                        && err.contains(&format!("group {group} (page {index})"))
                        && err.contains("group table block 0, which does not match"),
                    "{err}"
                );
            }
            let err = PageLayers::pages_of(std::slice::from_ref(&file))
                .err()
                .unwrap();
            assert!(err.to_string().contains("group table block 0"), "{err}");
            // The memory's hash falls back to the bytes on disk: unchanged.
            let damaged = PageLayers::new(vec![file]);
            assert_eq!(
                damaged.subtree_hash(2, 0),
                intact.subtree_hash(2, 0),
                "{name}"
            );
        }
    }

    /// A page file committed in `tests/fixtures/page_files/`, written once by the writer of an
    /// older format (`tests/fixtures/page_files/README.md` says which commit and how): files
    /// this build must keep reading, never rebuilt with today's writer. Copied into `dir`, to
    /// be mapped and edited there.
    fn golden(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Vec<u8>) {
        let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/page_files")
            .join(name);
        let bytes = std::fs::read(&committed).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    /// The memory hash of the pages of `file` (level 2: 256 pages), and of the same pages
    /// written by today's writer: an old file must hash as a new one would.
    fn hashes_as_written_today(dir: &std::path::Path, file: PageFile, pages: &[(u64, u8)]) {
        let old = PageLayers::new(vec![Arc::new(file)]);
        let today = PageLayers::new(vec![file_with(dir, "today", pages)]);
        assert_eq!(old.subtree_hash(2, 0), today.subtree_hash(2, 0));
    }

    #[test]
    fn a_version_2_file_is_still_read() {
        // Written by the version 2 writer (commit afcae74^): pages 0..100 and 200..230, each
        // filled with its index as a byte. 130 pages: two groups, the second of 2 pages.
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes) = golden(dir.path(), "v2.pages");
        let pages: Vec<(u64, u8)> = (0..100).chain(200..230).map(|i| (i, i as u8)).collect();
        let file = map_file(&path, "v2").unwrap();
        assert_eq!((file.version, file.page_count()), (2, 130));
        // Its manifest checks the group table at open: two entries, two ranges, the footer.
        assert_eq!(file.tail_bytes(), 2 * 32 + 2 * 16 + 32);
        // A read checks its group against the table, and no block.
        let reads = |index: u64| file.page(index).unwrap() == Some(&page_of(index as u8));
        assert_eq!(checked_by(|| reads(99)), (true, (0, 4096)));
        assert!(reads(229) && file.page(100).unwrap().is_none());
        hashes_as_written_today(dir.path(), file, &pages);
        // A changed group (here its table entry) is refused on first use, as before version 3.
        let group_table_at = 130 * (PAGE_SIZE + 32);
        bytes[group_table_at + 32 + 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let file = map_file(&path, "v2").unwrap();
        assert_eq!(file.page(3).unwrap(), Some(&page_of(3)));
        let err = file.page(228).unwrap_err().to_string();
        assert!(
            err.contains("page file v2")
                && err.contains("group 1 (page 228) does not match the group table"),
            "{err}"
        );
        // The same bytes under a version 3 footer miss their block table.
        let at = bytes.len() - 16;
        bytes[at] = 3;
        std::fs::write(&path, &bytes).unwrap();
        let err = map_file(&path, "v2").unwrap_err().to_string();
        assert!(err.contains("truncated or extended"), "{err}");
    }

    #[test]
    fn a_version_1_file_is_still_read() {
        // Written by the version 1 writer (commit 79f3cc6^): data, leaf hashes, index, footer;
        // no group table. Pages 5, 6 and 9, each filled with its index as a byte.
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes) = golden(dir.path(), "v1.pages");
        let file = map_file(&path, "v1").unwrap();
        assert_eq!((file.version, file.page_count()), (1, 3));
        assert_eq!(file.page(6).unwrap(), Some(&page_of(6)));
        assert_eq!(file.page(9).unwrap(), Some(&page_of(9)));
        assert_eq!(file.page(7).unwrap(), None);
        assert_eq!(
            file.stored_hash(5).unwrap(),
            Some(checksum::leaf_hash(&page_of(5)))
        );
        // Its manifest checks everything after the data, leaf hashes included.
        assert_eq!(file.tail_bytes(), 3 * 32 + 2 * 16 + 32);
        file.verify_leaf_hashes().unwrap();
        hashes_as_written_today(dir.path(), file, &[(5, 5), (6, 6), (9, 9)]);
        // Version 0 was never written.
        let at = bytes.len() - 16;
        bytes[at] = 0;
        std::fs::write(&path, &bytes).unwrap();
        let err = map_file(&path, "v1").unwrap_err();
        assert!(err.to_string().contains("version 0"), "{err}");
    }

    #[test]
    fn out_of_order_pages_are_not_written() {
        let a = page_of(1);
        let err = write_page_file(&mut Vec::new(), [(5, &a, None), (4, &a, None)].into_iter())
            .unwrap_err();
        assert!(err.to_string().contains("out of order"));
    }
}
