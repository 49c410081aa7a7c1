//! `PageMap`: a sparse, persistent array of 4 KiB pages.
//!
//! # The mechanism
//!
//! A `PageMap` is a 16-ary radix tree keyed by page index. Interior nodes and pages are
//! reference-counted (`Arc`) and never mutated while shared: a write walks from the root to the
//! page and, at every step, takes the node by `Arc::make_mut`, which copies it only when another
//! `PageMap` (a snapshot, a rollback copy) still holds it. This is path copying: after a clone,
//! the first write to a page copies that page plus the `height` small nodes above it, and
//! everything else stays shared.
//!
//! | operation | cost |
//! |---|---|
//! | `clone` | O(1): one `Arc` increment |
//! | read or write one page | O(height) pointer steps, height = ⌈log16(pages)⌉ ≤ 8 |
//! | first write to a page shared with a clone | one 4 KiB copy + `height` node copies (16 pointers and 16 cached hashes each) |
//! | `root_hash` after k pages changed | O(k · height) SHA-256 compressions of 4 KiB leaves and 528-byte nodes; on every core when k is large (below) |
//! | memory for never-written pages | none: an absent subtree reads as zero |
//! | `heap_pages` (pages written since the base: a take's or load's heap delta) | O(1): a count kept by every write |
//!
//! Each node caches the Merkle hashes of its 16 children (see [`crate::memory::checksum`]): leaf
//! hashes of its pages at level 1, hashes of its child nodes above. A cached child hash is valid
//! for as long as that child is not mutated, and mutation happens only through `make_mut` on a
//! uniquely owned path, which forgets the cached hash of the child on the path at every level on
//! the way down. So after k pages change, rehashing touches only the k paths from those pages to
//! the root, and never reads an unchanged sibling (a 4 KiB page, or a node, elsewhere in memory).
//!
//! Subtrees hash independently, so a large rehash (a new upload's pages, a fresh memory) runs
//! on every core: a node whose uncached children hold at least
//! `PARALLEL_MIN_UNCACHED_GRANDCHILDREN` uncached children of their own hashes those children
//! as tasks of `rayon`'s pool, each filling its own slot of the node's cache; below that, and
//! always for a few scattered writes, the rehash stays on the calling thread. The result is the
//! same either way: the hash is a function of the bytes, and every node hash is still computed
//! from its 16 children in slot order. Measured: `benches/README.md`, "Transfer at the speed of
//! the machine" (the directory upload, whose replica side is this rehash).
//!
//! # The page-source seam
//!
//! Every read of page bytes goes through [`Page::bytes`]. A page in the tree owns its bytes; a
//! map may also stand on a *base*, a stack of checkpointed page files mapped read-only
//! ([`PageLayers`], `page_file.rs`). A page absent from the tree is the base's page (a `&Page`
//! view of the mapped bytes, no copy), else zero. The first write to a base page copies it into
//! the tree, exactly like the first write to a page shared with a clone, so a memory's heap
//! holds only the pages written since its last checkpoint. The Merkle hash of a subtree the tree
//! does not hold is the base's hash of that subtree (computed from the mapping once, cached in
//! the base). Nothing outside `rs/memory` knows where page bytes come from.
//!
//! # Invariants
//!
//! - A node at level 1 holds pages; a node at level `l > 1` holds nodes of level `l - 1`.
//! - The root's level is `height`; it covers page indices `[0, 16^height)`.
//! - A node's cached hash of child `i`, when known, equals the hash of that child's current
//!   contents (a zero-subtree hash when the child is absent).
//! - Nothing here reads the clock, iterates a hashed collection or depends on an address.

// One `unsafe` block, in `page_from`: a new page is written once, straight into its allocation.
#![deny(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use rayon::prelude::*;

use super::checksum::{self, Hash};
use super::page_file::{PageFileError, PageLayers, as_page};

/// Bytes in one page: the unit of copy-on-write and of hashing.
pub const PAGE_SIZE: usize = 4096;

/// Children per interior node.
pub(crate) const FANOUT: usize = 16;
const FANOUT_BITS: u32 = 4;

/// The deepest tree allowed: 16^8 pages = 16 TiB, beyond any canister memory limit.
pub const MAX_HEIGHT: u32 = 8;

/// The number of pages a `PageMap` can address.
pub const MAX_PAGES: u64 = 1 << (FANOUT_BITS * MAX_HEIGHT);

/// A node's uncached children are hashed on every core when they have at least this many
/// uncached children of their own between them (see `Node::worth_hashing_in_parallel`): each
/// costs at least one 4 KiB leaf hash (about 3 µs on one core), so the work parallelised is at
/// least ~50 µs, well above what a fork into rayon's pool costs (a few µs; the first one from
/// a thread outside the pool wakes a worker). A few scattered writes stay sequential.
const PARALLEL_MIN_UNCACHED_GRANDCHILDREN: u32 = 16;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Page visits, counted in test builds so that a test can check that an operation promised
/// O(1) (a take, a load) reads no page and walks no tree: every page read, every step of a
/// walk over the tree (`heap_iter`, `present_indices`, the diff of two maps, a rehash) adds one.
/// Per thread: the management canister runs on the round's thread, where the test reads it.
#[cfg(test)]
pub(crate) mod visits {
    use std::cell::Cell;

    thread_local! {
        static VISITS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn add(n: u64) {
        VISITS.with(|v| v.set(v.get().saturating_add(n)));
    }

    /// Visits on this thread so far.
    pub(crate) fn so_far() -> u64 {
        VISITS.with(Cell::get)
    }
}

/// Counts one visit of a page or node in test builds ([`visits`]); nothing otherwise.
#[inline(always)]
fn visit() {
    #[cfg(test)]
    visits::add(1);
}

/// One 4 KiB page. Its leaf hash is cached by the level-1 node that holds it (in the node's
/// `ChildHashes`), not here, so that rehashing a node never touches the page's siblings.
///
/// `#[repr(transparent)]`: a mapped page is viewed as a `&Page` in place (`page_file::as_page`).
#[derive(Clone)]
#[repr(transparent)]
pub struct Page {
    data: [u8; PAGE_SIZE],
}

/// A new page holding a copy of `src`, written once, straight into its heap allocation: no
/// zeroing and no page built on the stack and moved (each a second pass over 4 KiB, measurable
/// on the write path: `benches/rounds.rs`).
#[allow(unsafe_code)]
fn page_from(src: &[u8; PAGE_SIZE]) -> Arc<Page> {
    let mut page = Arc::<Page>::new_uninit();
    if let Some(uninit) = Arc::get_mut(&mut page) {
        // SAFETY: `uninit` is the fresh allocation's `MaybeUninit<Page>`, exclusively borrowed,
        // and `Page` is `repr(transparent)` over `[u8; PAGE_SIZE]`, so its pointer cast to `u8`
        // is valid for `PAGE_SIZE` bytes of writes; `src` is a distinct live borrow of exactly
        // `PAGE_SIZE` bytes, so the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), uninit.as_mut_ptr().cast::<u8>(), PAGE_SIZE)
        };
        // SAFETY: the copy above initialised all `PAGE_SIZE` bytes of the `Page`, and every
        // byte pattern is a valid `[u8; PAGE_SIZE]`.
        return unsafe { page.assume_init() };
    }
    // Never taken: a fresh `Arc` has no other reference. Kept so that no path assumes the
    // contents initialised without the copy above.
    Arc::new(Page { data: *src })
}

impl Page {
    fn zeroed() -> Self {
        Page {
            data: [0; PAGE_SIZE],
        }
    }

    /// The page's bytes. The single place page contents are read from (the page-source seam).
    #[inline]
    pub fn bytes(&self) -> &[u8; PAGE_SIZE] {
        &self.data
    }

    /// The leaf hash of this page, computed on each call. (Inside a [`PageMap`], leaf hashes are
    /// cached in the page's parent node.)
    pub fn hash(&self) -> Hash {
        checksum::leaf_hash(&self.data)
    }
}

/// The cached hashes of a node's 16 children: slot `i` holds the hash of child `i` (a zero-subtree
/// hash for an absent child) when bit `i` of `known` is set.
///
/// Filled lazily through `&self` while hashing, so it is made of atomics: a slot's words are
/// stored before its bit is set (`Release`) and read only after the bit is seen (`Acquire`).
/// The parallel rehash fills different slots of one node from different pool threads; two
/// threads hashing the same shared node at once may both fill one slot, and they store the
/// same value, because a node's children never change while it is shared or borrowed. Bits
/// are cleared only through `&mut self`, on the write path, before the child changes.
///
/// Keeping the hashes here rather than in each child means that rehashing a node after one of
/// its children changed reads this node alone plus the changed child: no cache miss on the 15
/// unchanged siblings (pages 4 KiB apart, or nodes scattered between them).
struct ChildHashes {
    words: [[AtomicU64; 4]; FANOUT],
    known: AtomicU16,
}

impl ChildHashes {
    fn new() -> Self {
        ChildHashes {
            words: Default::default(),
            known: AtomicU16::new(0),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<Hash> {
        if self.known.load(Ordering::Acquire) & (1 << i) == 0 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (out, word) in hash.chunks_exact_mut(8).zip(self.words.get(i)?) {
            out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        Some(hash)
    }

    #[inline]
    fn set(&self, i: usize, hash: &Hash) {
        let Some(words) = self.words.get(i) else {
            return;
        };
        for (word, bytes) in words.iter().zip(hash.as_chunks::<8>().0) {
            word.store(u64::from_ne_bytes(*bytes), Ordering::Relaxed);
        }
        self.known.fetch_or(1 << i, Ordering::Release);
    }

    /// Forgets child `i`'s hash: the caller is about to change that child.
    #[inline]
    fn forget(&mut self, i: usize) {
        *self.known.get_mut() &= !(1 << i);
    }
}

impl Clone for ChildHashes {
    /// Copies the slots known at the time of the call (a slot being filled concurrently may be
    /// left out, which only costs a recomputation later).
    fn clone(&self) -> Self {
        let known = self.known.load(Ordering::Acquire);
        let copy = ChildHashes::new();
        for (i, (to, from)) in copy.words.iter().zip(&self.words).enumerate() {
            if known & (1 << i) != 0 {
                for (to, from) in to.iter().zip(from) {
                    to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
        copy.known.store(known, Ordering::Relaxed);
        copy
    }
}

#[derive(Clone)]
enum Children {
    /// Level 1: the pages themselves.
    Pages([Option<Arc<Page>>; FANOUT]),
    /// Level > 1: nodes one level down.
    Nodes([Option<Arc<Node>>; FANOUT]),
}

#[derive(Clone)]
struct Node {
    children: Children,
    child_hashes: ChildHashes,
}

impl Node {
    fn empty(level: u32) -> Self {
        debug_assert!((1..=MAX_HEIGHT).contains(&level));
        let children = if level == 1 {
            Children::Pages(Default::default())
        } else {
            Children::Nodes(Default::default())
        };
        Node {
            children,
            child_hashes: ChildHashes::new(),
        }
    }

    /// The Merkle hash of this node at `level`; absent children count as all-zero subtrees.
    /// Children whose hash is cached are not visited: the cost is one node hash plus the
    /// rehashing of the children changed since the last call. When that rehashing is large
    /// ([`Self::worth_hashing_in_parallel`]), the uncached children are hashed on every core.
    /// `first_page` is the first page this node covers; `base` supplies absent children.
    fn hash(&self, level: u32, first_page: u64, base: Option<&PageLayers>) -> Hash {
        visit();
        let mut hashes = [[0u8; 32]; FANOUT];
        let mut uncached = 0u16;
        for (i, hash) in hashes.iter_mut().enumerate() {
            match self.child_hashes.get(i) {
                Some(cached) => *hash = cached,
                None => uncached |= 1 << i,
            }
        }
        let compute = |(i, hash): (usize, &mut Hash)| {
            if uncached & (1 << i) != 0 {
                *hash = self.child_hash(i, level, first_page, base);
                self.child_hashes.set(i, hash);
            }
        };
        if self.worth_hashing_in_parallel(uncached) {
            // One task per child: the children are subtrees of equal span but not of equal
            // work (their changed pages), so the pool balances them by stealing.
            hashes
                .par_iter_mut()
                .with_max_len(1)
                .enumerate()
                .for_each(compute);
        } else {
            hashes.iter_mut().enumerate().for_each(compute);
        }
        checksum::node_hash(&hashes)
    }

    /// Whether the children of this node whose bits are set in `uncached` are worth hashing in
    /// parallel: they hold at least [`PARALLEL_MIN_UNCACHED_GRANDCHILDREN`] uncached children
    /// of their own (pages, or level-1 nodes with at least one changed page each), so the work
    /// is at least that many leaf hashes, tens of microseconds, against a fork of a few. Reads
    /// the cache bits of the uncached children only, no page. Checkpointed pages under absent
    /// children are not counted: their hashes come from the base's cache and its stored leaf
    /// hashes, not from SHA-256 of the pages.
    fn worth_hashing_in_parallel(&self, uncached: u16) -> bool {
        let Children::Nodes(nodes) = &self.children else {
            return false;
        };
        if uncached.count_ones() < 2 {
            return false;
        }
        let mut work = 0u32;
        for (i, node) in nodes.iter().enumerate() {
            if let Some(node) = node
                && uncached & (1 << i) != 0
            {
                work = work.saturating_add(node.uncached_present_children());
                if work >= PARALLEL_MIN_UNCACHED_GRANDCHILDREN {
                    return true;
                }
            }
        }
        false
    }

    /// Children present in the tree whose hash is not cached here.
    fn uncached_present_children(&self) -> u32 {
        let known = self.child_hashes.known.load(Ordering::Acquire);
        let present = match &self.children {
            Children::Pages(pages) => present_mask(pages),
            Children::Nodes(nodes) => present_mask(nodes),
        };
        (present & !known).count_ones()
    }

    /// Reads every child's reference count, so that the cache misses on them (one per child:
    /// 4 KiB pages apart) overlap. Copying a shared node increments the 16 counts one after
    /// another, and each atomic increment would otherwise wait for its own miss.
    #[inline]
    fn touch_children(&self) {
        let mut sum = 0usize;
        match &self.children {
            Children::Pages(pages) => {
                for page in pages.iter().flatten() {
                    sum = sum.wrapping_add(Arc::strong_count(page));
                }
            }
            Children::Nodes(nodes) => {
                for node in nodes.iter().flatten() {
                    sum = sum.wrapping_add(Arc::strong_count(node));
                }
            }
        }
        std::hint::black_box(sum);
    }

    /// The hash of child `i` of this level-`level` node, computed (not read from the cache).
    // `i < FANOUT` (a child slot) and `level >= 1` (a node's level, at most `MAX_HEIGHT`), so
    // `level - 1` does not underflow and the child's first page stays below `MAX_PAGES`.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    fn child_hash(&self, i: usize, level: u32, first_page: u64, base: Option<&PageLayers>) -> Hash {
        let child_first = first_page + i as u64 * span(level - 1);
        match &self.children {
            Children::Pages(pages) => match &pages[i] {
                Some(page) => checksum::leaf_hash(page.bytes()),
                None => base_hash(base, 0, child_first),
            },
            Children::Nodes(nodes) => match &nodes[i] {
                Some(node) => node.hash(level - 1, child_first, base),
                None => base_hash(base, level - 1, child_first),
            },
        }
    }
}

/// Bit `i` set when slot `i` holds a child.
fn present_mask<T>(slots: &[Option<T>; FANOUT]) -> u16 {
    slots
        .iter()
        .enumerate()
        .filter(|(_, slot)| slot.is_some())
        .fold(0, |mask, (i, _)| mask | 1 << i)
}

/// The hash of the base's subtree at `level` from `first_page`; zero without a base.
fn base_hash(base: Option<&PageLayers>, level: u32, first_page: u64) -> Hash {
    match base {
        Some(base) => base.subtree_hash(level, first_page),
        None => *checksum::zero_subtree_hash(level),
    }
}

/// See [`PageMap::identity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageMapIdentity {
    root: usize,
    base: usize,
}

/// Where a page's bytes are ([`PageMap::page_source`]).
#[derive(Clone, Copy, Debug)]
pub enum PageSource<'a> {
    /// Written since the base: in the tree.
    Heap(&'a [u8; PAGE_SIZE]),
    /// In a base page file, checked against its stored hash.
    File(&'a [u8; PAGE_SIZE]),
    /// In the base file at this position of `PageLayers::files`, which fails its check.
    Damaged { layer: usize },
    /// Never written: zeros.
    Zero,
}

/// A sparse, persistent array of [`PAGE_SIZE`]-byte pages. See the module documentation.
#[derive(Clone, Default)]
pub struct PageMap {
    root: Option<Arc<Node>>,
    /// Level of `root`; 0 when the map has never been written.
    height: u32,
    /// Checkpointed pages under the tree: what an absent tree page reads as.
    base: Option<Arc<PageLayers>>,
    /// Pages the tree holds (written since the base): kept by every change to a page slot, so
    /// that a take or a load reads its heap delta in O(1) instead of walking the tree.
    heap_pages: u64,
}

/// Index of the child of a level-`level` node on the path to `page_index`.
// Arithmetic: node levels are in `1..=MAX_HEIGHT` (the root's height never exceeds it, and a
// walk stops at level 1), so `level - 1` does not underflow and the shift is below 64. The
// mask makes the result `< FANOUT`, a valid child index. On every page access: no checks.
#[allow(clippy::arithmetic_side_effects)]
#[inline]
fn slot(page_index: u64, level: u32) -> usize {
    ((page_index >> (FANOUT_BITS * (level - 1))) & (FANOUT as u64 - 1)) as usize
}

/// Pages covered by a node at `level`.
// Arithmetic: `level <= MAX_HEIGHT`, so the shift is at most 32 (< 64).
#[allow(clippy::arithmetic_side_effects)]
#[inline]
pub(super) fn span(level: u32) -> u64 {
    1u64 << (FANOUT_BITS * level)
}

impl PageMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map whose pages are those of `base` (mapped, not read) until written.
    pub fn with_base(base: Arc<PageLayers>) -> Self {
        PageMap {
            root: None,
            height: 0,
            base: Some(base),
            heap_pages: 0,
        }
    }

    /// The checkpointed pages under the in-memory tree, if any.
    pub fn base(&self) -> Option<&Arc<PageLayers>> {
        self.base.as_ref()
    }

    /// The page at `page_index`, if it was ever written: from the tree, else from the base.
    /// O(height), plus O(files · log ranges) for a page the tree does not hold. A base page
    /// whose bytes do not match their stored hash is an error, never data.
    pub fn page(&self, page_index: u64) -> Result<Option<&Page>, PageFileError> {
        visit();
        match (self.tree_page(page_index), self.base.as_deref()) {
            (Some(page), _) => Ok(Some(page)),
            (None, Some(base)) => Ok(base.page(page_index)?.map(as_page)),
            (None, None) => Ok(None),
        }
    }

    /// The page at `page_index` in the in-memory tree.
    // `slot` is `< FANOUT`, and the walk goes down from the root's height (at most
    // `MAX_HEIGHT`) and stops at a level-1 node, so `level` stays `>= 1`. Every page read.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    fn tree_page(&self, page_index: u64) -> Option<&Page> {
        if self.height == 0 || page_index >= span(self.height) {
            return None;
        }
        let mut node = self.root.as_deref()?;
        let mut level = self.height;
        loop {
            match &node.children {
                Children::Nodes(nodes) => {
                    node = nodes[slot(page_index, level)].as_deref()?;
                    level -= 1;
                }
                Children::Pages(pages) => return pages[slot(page_index, 1)].as_deref(),
            }
        }
    }

    /// The bytes of page `page_index`: zeros for a page never written.
    #[inline]
    pub fn page_bytes(&self, page_index: u64) -> Result<&[u8; PAGE_SIZE], PageFileError> {
        Ok(self.page(page_index)?.map_or(&ZERO_PAGE, Page::bytes))
    }

    /// Where page `page_index`'s bytes are, for the memory tracker's fault handler
    /// (`rs/embedders/host_memory.rs`): found and checked without allocating or locking (a walk
    /// of the tree, then a binary search in each base file's index, the page checked against
    /// its stored hash as [`Self::page`] does). Call [`Self::allocate_check_bits`] first so
    /// that the checks are remembered.
    pub fn page_source(&self, page_index: u64) -> PageSource<'_> {
        if let Some(page) = self.tree_page(page_index) {
            return PageSource::Heap(page.bytes());
        }
        let Some((layer, file)) = self.base.as_deref().and_then(|b| b.layer_of(page_index)) else {
            return PageSource::Zero;
        };
        match file.page_in_signal_handler(page_index) {
            Some(Some(bytes)) => PageSource::File(bytes),
            Some(None) => PageSource::Damaged { layer },
            None => PageSource::Zero,
        }
    }

    /// Makes the check bits of every base file exist (see [`Self::page_source`]). O(files ·
    /// blocks); allocates only the first time for each file.
    pub fn allocate_check_bits(&self) {
        for file in self.base.iter().flat_map(|base| base.files()) {
            file.allocate_check_bits();
        }
    }

    /// The identity of this map's contents: equal for clones with no write since (same root,
    /// same base), as [`Self::shares_root_with`]. A lookup key for code that must treat shared
    /// memories once (a checkpoint); valid while the map is alive, and never ordered or hashed
    /// into replicated state.
    pub fn identity(&self) -> PageMapIdentity {
        PageMapIdentity {
            root: self.root.as_ref().map_or(0, |r| Arc::as_ptr(r) as usize),
            base: self.base.as_ref().map_or(0, |b| Arc::as_ptr(b) as usize),
        }
    }

    /// Whether `self` and `other` share the same root, i.e. are clones with no write since.
    pub fn shares_root_with(&self, other: &PageMap) -> bool {
        let same_base = match (&self.base, &other.base) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_base
            && match (&self.root, &other.root) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }

    /// Copies `buf.len()` bytes starting at byte `offset` into `buf`. Never-written bytes read as
    /// zero. The caller bounds `offset + buf.len()` by the memory size (see [`super::Memory`]).
    // The caller bounds `offset + buf.len()` by the memory size, at most `MAX_PAGES` pages
    // (`Memory::check`), so `at` cannot overflow; `in_page < PAGE_SIZE` and `n` is at most what is
    // left of both the page and `buf`, so every range is in bounds. Hot loop (one copy per page):
    // no further checks.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PageFileError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let page_index = at / PAGE_SIZE as u64;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - in_page).min(buf.len() - done);
            buf[done..done + n]
                .copy_from_slice(&self.page_bytes(page_index)?[in_page..in_page + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at byte `offset`, copying on write every page still shared with a clone.
    /// A page overwritten whole is replaced without copying its old contents.
    ///
    /// Panics if the write reaches beyond [`MAX_PAGES`]; callers bound writes by the memory size.
    // As `read`: the caller bounds `offset + data.len()`, `in_page < PAGE_SIZE` and `n` fits both
    // the page and what is left of `data`. Hot loop (one copy per page).
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), PageFileError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let page_index = at / PAGE_SIZE as u64;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - in_page).min(data.len() - done);
            let src = &data[done..done + n];
            if let Ok(bytes) = <&[u8; PAGE_SIZE]>::try_from(src) {
                let slot = self.page_slot(page_index);
                let added = slot.is_none();
                match slot.as_mut().and_then(Arc::get_mut) {
                    // Not shared with any clone: overwritten in place, nothing allocated.
                    Some(page) => page.data.copy_from_slice(bytes),
                    None => *slot = Some(page_from(bytes)),
                }
                self.heap_pages += u64::from(added);
            } else {
                self.page_mut(page_index)?[in_page..in_page + n].copy_from_slice(src);
            }
            done += n;
        }
        Ok(())
    }

    /// Sets `len` bytes from `offset` to `byte`, with the same copy-on-write rules as `write`.
    // As `write`: the caller bounds `offset + len`, `n` fits the page and what is left to fill.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    pub fn fill(&mut self, offset: u64, len: u64, byte: u8) -> Result<(), PageFileError> {
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let page_index = at / PAGE_SIZE as u64;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let n = ((PAGE_SIZE - in_page) as u64).min(len - done) as usize;
            if n == PAGE_SIZE {
                let page = Page {
                    data: [byte; PAGE_SIZE],
                };
                self.put_page(page_index, Some(Arc::new(page)));
            } else {
                self.page_mut(page_index)?[in_page..in_page + n].fill(byte);
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Mutable bytes of one page, copying it if shared; a page absent from the tree starts as
    /// a copy of the base's page, or zeroed.
    pub fn page_mut(&mut self, page_index: u64) -> Result<&mut [u8; PAGE_SIZE], PageFileError> {
        // Checked before anything changes: a damaged base page fails the write, not later.
        let in_tree = self.tree_page(page_index).is_some();
        let from_base = match (in_tree, self.base.clone()) {
            (false, Some(base)) => base.page(page_index)?.map(|bytes| {
                let mut page = Page::zeroed();
                page.data.copy_from_slice(bytes);
                page
            }),
            _ => None,
        };
        if !in_tree {
            self.heap_pages = self.heap_pages.saturating_add(1);
        }
        let slot = self.page_slot(page_index);
        let page = Arc::make_mut(
            slot.get_or_insert_with(|| Arc::new(from_base.unwrap_or_else(Page::zeroed))),
        );
        Ok(&mut page.data)
    }

    /// Puts `page` (or nothing) in the slot of `page_index`, keeping [`Self::heap_pages`]
    /// current. O(height).
    fn put_page(&mut self, page_index: u64, page: Option<Arc<Page>>) {
        let slot = self.page_slot(page_index);
        let (was, is) = (slot.is_some(), page.is_some());
        *slot = page;
        match (was, is) {
            (false, true) => self.heap_pages = self.heap_pages.saturating_add(1),
            (true, false) => self.heap_pages = self.heap_pages.saturating_sub(1),
            _ => {}
        }
    }

    /// The slot holding page `page_index`, with every node on the path made unique and its cached
    /// hash of the next node down (or of the page) forgotten: the caller is about to change what
    /// the slot holds.
    // `page_index < MAX_PAGES` is asserted on entry (callers bound writes by the memory size), so
    // the tree is grown to cover it and the walk goes from the root's height down to level 1 with
    // `slot < FANOUT`: `level - 1` does not underflow. Every page write.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    fn page_slot(&mut self, page_index: u64) -> &mut Option<Arc<Page>> {
        assert!(
            page_index < MAX_PAGES,
            "page index {page_index} beyond MAX_PAGES"
        );
        self.grow_height_to_cover(page_index);
        let mut level = self.height;
        let mut node = Arc::make_mut(
            self.root
                .get_or_insert_with(|| Arc::new(Node::empty(level))),
        );
        loop {
            node.child_hashes.forget(slot(page_index, level));
            match &mut node.children {
                Children::Nodes(nodes) => {
                    let child = nodes[slot(page_index, level)]
                        .get_or_insert_with(|| Arc::new(Node::empty(level - 1)));
                    if Arc::strong_count(child) > 1 {
                        // About to be copied: see `touch_children`.
                        child.touch_children();
                    }
                    node = Arc::make_mut(child);
                    level -= 1;
                }
                Children::Pages(pages) => return &mut pages[slot(page_index, 1)],
            }
        }
    }

    /// Adds levels above the root until it covers `page_index`. The old root becomes child 0,
    /// so existing page indices keep their paths.
    // `page_index < MAX_PAGES` (see `page_slot`), so the loop stops by `MAX_HEIGHT`: the height
    // never overflows.
    #[allow(clippy::arithmetic_side_effects)]
    fn grow_height_to_cover(&mut self, page_index: u64) {
        if self.height == 0 {
            self.height = 1;
        }
        while page_index >= span(self.height) {
            let old = self.root.take();
            self.height += 1;
            if let Some(old) = old {
                let mut parent = Node::empty(self.height);
                if let Children::Nodes(nodes) = &mut parent.children {
                    nodes[0] = Some(old);
                }
                self.root = Some(Arc::new(parent));
            }
        }
    }

    /// Drops every page at index `>= first_dropped`, e.g. to discard bytes beyond a memory size.
    /// A base page beyond the bound is shadowed by a zero page in the tree (one shared
    /// allocation), since the base itself never changes. O(dropped pages).
    pub fn truncate(&mut self, first_dropped: u64) {
        if first_dropped == 0 {
            *self = PageMap::new();
            return;
        }
        let indices: Vec<u64> = self
            .heap_iter()
            .map(|(index, _)| index)
            .filter(|&index| index >= first_dropped)
            .collect();
        for index in indices {
            self.put_page(index, None);
        }
        let Some(base) = self.base.clone() else {
            return;
        };
        let zero = Arc::new(Page::zeroed());
        for index in base
            .indices()
            .inspect(|_| visit())
            .filter(|&index| index >= first_dropped)
        {
            self.put_page(index, Some(zero.clone()));
        }
    }

    /// Indices of the present pages in increasing order: the tree's, and the base's where the
    /// tree has none. Reads no page bytes.
    pub fn present_indices(&self) -> impl Iterator<Item = u64> + '_ {
        let mut heap = self.heap_iter().map(|(i, _)| i).peekable();
        let mut base = self
            .base
            .as_deref()
            .map(|b| b.indices())
            .into_iter()
            .flatten()
            .inspect(|_| visit())
            .peekable();
        std::iter::from_fn(move || match (heap.peek().copied(), base.peek().copied()) {
            (None, None) => None,
            (Some(_), None) => heap.next(),
            (None, Some(_)) => base.next(),
            (Some(h), Some(b)) => {
                if b < h {
                    base.next()
                } else {
                    if b == h {
                        base.next();
                    }
                    heap.next()
                }
            }
        })
    }

    /// The pages held in memory (written since the base), in increasing index order: what a
    /// checkpoint writes.
    pub fn heap_iter(&self) -> PageIter<'_> {
        let mut stack = Vec::new();
        if let Some(root) = &self.root {
            stack.push((root.as_ref(), self.height, 0u64, 0usize));
        }
        PageIter { stack }
    }

    /// Number of pages present (ever written, in the tree or the base). O(present pages).
    pub fn present_pages(&self) -> u64 {
        self.present_indices().count() as u64
    }

    /// Number of pages held in memory (not in the base): written since the last checkpoint.
    /// O(1), counted as pages enter and leave the tree (`put_page`, `write`, `page_mut`).
    pub fn heap_pages(&self) -> u64 {
        self.heap_pages
    }

    /// The Merkle root over pages `[0, 16^level)` at `level ≥ height`; reuses every cached hash.
    // `self.height <= level <= MAX_HEIGHT`: levels above the root are `>= 1`, child first pages
    // `i * span(l - 1)` with `i < FANOUT` stay below `MAX_PAGES`.
    #[allow(clippy::arithmetic_side_effects)]
    pub(crate) fn tree_hash(&self, level: u32) -> Hash {
        let base = self.base.as_deref();
        let Some(root) = &self.root else {
            return base_hash(base, level, 0);
        };
        let mut hash = root.hash(self.height, 0, base);
        // The root is child 0 of each missing level above it; its siblings are the base's
        // subtrees (zero without a base).
        for l in self.height + 1..=level {
            let mut children = [[0u8; 32]; FANOUT];
            for (i, child) in children.iter_mut().enumerate().skip(1) {
                *child = base_hash(base, l - 1, i as u64 * span(l - 1));
            }
            children[0] = hash;
            hash = checksum::node_hash(&children);
        }
        hash
    }

    /// Visits the pages of `self` that are not physically shared with `other` (different `Arc`
    /// or absent there), skipping every subtree the two share. O(changed pages · height).
    /// `seen` (node and page identities already visited, e.g. from another snapshot) makes a
    /// subtree visited once across several calls; identities are compared for equality only,
    /// never ordered or hashed into replicated state. Pages of the base are never visited:
    /// they live in checkpoint files, not in the heap.
    pub(crate) fn for_each_page_not_shared_with(
        &self,
        other: &PageMap,
        seen: &mut std::collections::HashSet<usize>,
        f: &mut dyn FnMut(u64, &Page),
    ) {
        let Some(root) = &self.root else { return };
        let other_node = other.node_covering(self.height, 0);
        let mut diff = Diff { other, seen, f };
        diff.nodes(root, other_node, self.height, 0);
    }

    /// The node of `self` at `level` covering pages `[first_page, first_page + 16^level)`, if
    /// there is one. O(height).
    // `level >= 1` and `h > level` in the loop, so `h - 1` does not underflow; `slot < FANOUT`.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    fn node_covering(&self, level: u32, first_page: u64) -> Option<&Node> {
        if level == 0 || self.height < level || first_page >= span(self.height) {
            return None;
        }
        let mut node = self.root.as_deref()?;
        let mut h = self.height;
        while h > level {
            match &node.children {
                Children::Nodes(nodes) => node = nodes[slot(first_page, h)].as_deref()?,
                Children::Pages(_) => return None,
            }
            h -= 1;
        }
        Some(node)
    }
}

/// A walk over the pages of one map that another map does not share.
struct Diff<'a, 'f> {
    other: &'a PageMap,
    seen: &'a mut std::collections::HashSet<usize>,
    f: &'a mut (dyn FnMut(u64, &Page) + 'f),
}

impl Diff<'_, '_> {
    /// `other` is the other map's node covering the same range at the same level, if any.
    // Both arrays have `FANOUT` slots and `i < FANOUT`; an interior node has `level >= 2`, and a
    // child's first page stays below `MAX_PAGES` (the tree's span).
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    fn nodes(&mut self, node: &Node, other: Option<&Node>, level: u32, first_page: u64) {
        visit();
        if other.is_some_and(|other| std::ptr::eq(node, other)) {
            return;
        }
        if !self.seen.insert(node as *const Node as usize) {
            return;
        }
        match &node.children {
            Children::Pages(pages) => {
                let other_pages = match other.map(|o| &o.children) {
                    Some(Children::Pages(p)) => Some(p),
                    _ => None,
                };
                for (i, page) in pages.iter().enumerate() {
                    let Some(page) = page else { continue };
                    let shared = other_pages
                        .and_then(|p| p[i].as_ref())
                        .is_some_and(|o| Arc::ptr_eq(o, page));
                    if !shared && self.seen.insert(Arc::as_ptr(page) as usize) {
                        (self.f)(first_page + i as u64, page);
                    }
                }
            }
            Children::Nodes(nodes) => {
                for (i, child) in nodes.iter().enumerate() {
                    let Some(child) = child else { continue };
                    let child_first = first_page + i as u64 * span(level - 1);
                    let other_child = match other.map(|o| &o.children) {
                        Some(Children::Nodes(n)) => n[i].as_deref(),
                        // The other tree is shorter: its root may sit lower on this path.
                        _ => self.other.node_covering(level - 1, child_first),
                    };
                    self.nodes(child, other_child, level - 1, child_first);
                }
            }
        }
    }
}

/// Iterator over the pages of the in-memory tree in index order; see [`PageMap::heap_iter`].
pub struct PageIter<'a> {
    /// (node, level, first page index, next child slot)
    stack: Vec<(&'a Node, u32, u64, usize)>,
}

impl PageIter<'_> {
    /// The leaf hash of the page just returned by `next`, if its node has it cached: lets a
    /// checkpoint store the hash without recomputing it.
    pub fn cached_hash_of_last(&self) -> Option<Hash> {
        let &(node, level, _, next) = self.stack.last()?;
        let last = next.checked_sub(1).filter(|_| level == 1)?;
        node.child_hashes.get(last)
    }
}

impl<'a> Iterator for PageIter<'a> {
    type Item = (u64, &'a Page);

    // `next < FANOUT` once the `next == FANOUT` case returned; an interior node's level is
    // `>= 2`, and a child's first page stays below `MAX_PAGES`.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
    fn next(&mut self) -> Option<Self::Item> {
        while let Some(top) = self.stack.last_mut() {
            visit();
            let (node, level, first, next) = *top;
            if next == FANOUT {
                self.stack.pop();
                continue;
            }
            top.3 += 1;
            match &node.children {
                Children::Pages(pages) => {
                    if let Some(page) = &pages[next] {
                        return Some((first + next as u64, page));
                    }
                }
                Children::Nodes(nodes) => {
                    if let Some(child) = &nodes[next] {
                        let child_first = first + next as u64 * span(level - 1);
                        self.stack.push((child, level - 1, child_first, 0));
                    }
                }
            }
        }
        None
    }
}

impl std::fmt::Debug for PageMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageMap")
            .field("height", &self.height)
            .field("present_pages", &self.present_pages())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_pages_read_as_zero_and_take_no_memory() {
        let map = PageMap::new();
        let mut buf = [1u8; 10_000];
        map.read(123_456_789, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(map.present_pages(), 0);
    }

    #[test]
    fn write_and_read_across_page_boundaries() {
        let mut map = PageMap::new();
        let data: Vec<u8> = (0..3 * PAGE_SIZE + 17).map(|i| (i % 251) as u8).collect();
        map.write(PAGE_SIZE as u64 - 5, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        map.read(PAGE_SIZE as u64 - 5, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(map.present_pages(), 5);
    }

    #[test]
    fn clone_shares_until_written_and_copies_only_the_written_page() {
        let mut live = PageMap::new();
        live.fill(0, 64 * PAGE_SIZE as u64, 7).unwrap();
        let snapshot = live.clone();
        assert!(live.shares_root_with(&snapshot));
        live.write(10 * PAGE_SIZE as u64 + 1, &[9]).unwrap();
        assert!(!live.shares_root_with(&snapshot));
        assert_eq!(snapshot.page_bytes(10).unwrap()[1], 7);
        assert_eq!(live.page_bytes(10).unwrap()[1], 9);
        let mut unshared = Vec::new();
        live.for_each_page_not_shared_with(&snapshot, &mut Default::default(), &mut |i, _| {
            unshared.push(i)
        });
        assert_eq!(unshared, vec![10]);
    }

    #[test]
    fn diff_finds_shared_pages_across_different_heights() {
        let mut small = PageMap::new();
        small.fill(0, 4 * PAGE_SIZE as u64, 1).unwrap();
        let mut tall = small.clone();
        tall.write(70_000 * PAGE_SIZE as u64, &[2]).unwrap();
        let collect = |a: &PageMap, b: &PageMap| {
            let mut out = Vec::new();
            a.for_each_page_not_shared_with(b, &mut Default::default(), &mut |i, _| out.push(i));
            out
        };
        assert_eq!(collect(&tall, &small), vec![70_000]);
        assert_eq!(collect(&small, &tall), Vec::<u64>::new());
    }

    #[test]
    fn height_grows_and_keeps_existing_pages() {
        let mut map = PageMap::new();
        map.write(0, b"first").unwrap();
        map.write(5_000_000 * PAGE_SIZE as u64, b"far").unwrap();
        let mut buf = [0u8; 5];
        map.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"first");
        let pages: Vec<u64> = map.present_indices().collect();
        assert_eq!(pages, vec![0, 5_000_000]);
    }

    #[test]
    fn iteration_is_in_index_order() {
        let mut map = PageMap::new();
        for index in [900u64, 3, 70_000, 17, 16, 15] {
            map.write(index * PAGE_SIZE as u64, &[1]).unwrap();
        }
        let pages: Vec<u64> = map.present_indices().collect();
        assert_eq!(pages, vec![3, 15, 16, 17, 900, 70_000]);
    }

    /// The root over the cached child hashes equals the root computed from the flat bytes.
    fn assert_root_matches_flat(map: &PageMap, pages: u64) {
        let mut flat = vec![0u8; pages as usize * PAGE_SIZE];
        map.read(0, &mut flat).unwrap();
        let cached = checksum::memory_root(flat.len() as u64, &map.tree_hash(MAX_HEIGHT));
        assert_eq!(cached, checksum::memory_root_from_bytes(&flat));
    }

    #[test]
    fn cached_child_hashes_follow_writes_through_clones() {
        let mut live = PageMap::new();
        for i in 0..300u64 {
            live.write(i * PAGE_SIZE as u64 + i, &[(i % 250) as u8 + 1])
                .unwrap();
        }
        assert_root_matches_flat(&live, 300);
        // The snapshot shares every node, and so every cached hash, with `live`.
        let snapshot = live.clone();
        live.write(17 * PAGE_SIZE as u64, &[0xEE]).unwrap();
        live.fill(200 * PAGE_SIZE as u64, PAGE_SIZE as u64, 3)
            .unwrap();
        live.write(299 * PAGE_SIZE as u64 - 2, &[4; 4]).unwrap();
        assert_root_matches_flat(&live, 300);
        assert_root_matches_flat(&snapshot, 300);
        // A clone of a map changed since its last hash, then changed again on both sides.
        live.write(40 * PAGE_SIZE as u64, &[1]).unwrap();
        let mut copy = live.clone();
        copy.write(41 * PAGE_SIZE as u64, &[2]).unwrap();
        live.write(5_000 * PAGE_SIZE as u64, &[3]).unwrap();
        assert_root_matches_flat(&copy, 300);
        assert_root_matches_flat(&live, 5_001);
        live.truncate(100);
        assert_root_matches_flat(&live, 5_001);
        assert_root_matches_flat(&snapshot, 300);
    }

    #[test]
    fn shared_nodes_hashed_from_several_threads_agree() {
        const SIZE: u64 = 2_000 * PAGE_SIZE as u64;
        let mut base = PageMap::new();
        for i in 0..2_000u64 {
            base.write(i * PAGE_SIZE as u64, &(i as u32 + 1).to_le_bytes())
                .unwrap();
        }
        let mut changed = base.clone();
        changed.write(1_000 * PAGE_SIZE as u64, &[0xFF]).unwrap();
        let expected = |map: &PageMap| {
            let mut flat = vec![0u8; SIZE as usize];
            map.read(0, &mut flat).unwrap();
            checksum::memory_root_from_bytes(&flat)
        };
        let root = |map: &PageMap| checksum::memory_root(SIZE, &map.tree_hash(MAX_HEIGHT));
        let (want_base, want_changed) = (expected(&base), expected(&changed));
        // Nothing is hashed yet: the threads fill the same shared caches at the same time.
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (base, changed, root) = (&base, &changed, &root);
                scope.spawn(move || {
                    for _ in 0..3 {
                        if t % 2 == 0 {
                            assert_eq!(root(base), want_base);
                            assert_eq!(root(changed), want_changed);
                        } else {
                            assert_eq!(root(changed), want_changed);
                            assert_eq!(root(base), want_base);
                        }
                    }
                });
            }
        });
        // A clone made after concurrent hashing carries the filled caches and stays correct.
        let mut after = changed.clone();
        after.write(3, &[7]).unwrap();
        assert_root_matches_flat(&after, 2_000);
    }

    /// Whether a hash of `map` now would hash the root's uncached children in parallel, and
    /// whether any node on the path to `page_index` would.
    fn parallel_at_root_and_on_path(map: &PageMap, page_index: u64) -> (bool, bool) {
        let uncached = |node: &Node| !node.child_hashes.known.load(Ordering::Acquire);
        let root = map.root.as_deref().unwrap();
        let at_root = root.worth_hashing_in_parallel(uncached(root));
        let (mut node, mut level, mut on_path) = (root, map.height, false);
        while let Children::Nodes(nodes) = &node.children {
            on_path |= node.worth_hashing_in_parallel(uncached(node));
            node = nodes[slot(page_index, level)].as_deref().unwrap();
            level -= 1;
        }
        (at_root, on_path)
    }

    /// The parallel path computes the definition: a large map, dense then sparse, hashed from
    /// scratch (every upper node's children on every core) equals the flat computation; a
    /// single write after that rehashes one path, sequentially; a large rewrite of a clone goes
    /// parallel again while the clone it shares nodes with keeps its root.
    #[test]
    fn large_sparse_and_dense_maps_hashed_in_parallel_equal_the_flat_root() {
        const PAGES: u64 = 12_288;
        let mut map = PageMap::new();
        let dense: Vec<u8> = (0..4_096 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        map.write(0, &dense).unwrap();
        for page in (4_096..PAGES).step_by(7) {
            map.write(page * PAGE_SIZE as u64 + page % 4_000, &page.to_le_bytes())
                .unwrap();
        }
        assert_eq!(parallel_at_root_and_on_path(&map, 0), (true, true));
        assert_root_matches_flat(&map, PAGES);

        let snapshot = map.clone();
        map.write(9_000 * PAGE_SIZE as u64 + 5, &[0xAB]).unwrap();
        assert_eq!(
            parallel_at_root_and_on_path(&map, 9_000),
            (false, false),
            "one changed page is rehashed on the calling thread"
        );
        assert_root_matches_flat(&map, PAGES);

        map.fill(2_000 * PAGE_SIZE as u64, 3_000 * PAGE_SIZE as u64, 0x5C)
            .unwrap();
        // Two uncached children at the root, but ~130 uncached level-1 nodes below: the level-3
        // node on this path forks.
        assert_eq!(parallel_at_root_and_on_path(&map, 2_500), (false, true));
        assert_root_matches_flat(&map, PAGES);
        assert_root_matches_flat(&snapshot, PAGES);
    }

    /// A map standing on a base of two page files in `dir`: `0..40` filled with 1, then
    /// pages `5` and `5_000` with 2.
    fn map_on_files(dir: &std::path::Path) -> PageMap {
        use super::super::page_file::{PageFile, write_page_file};
        let mut layers = Vec::new();
        for (name, pages) in [
            (
                "base",
                (0..40u64)
                    .map(|i| (i, [1u8; PAGE_SIZE]))
                    .collect::<Vec<_>>(),
            ),
            (
                "overlay",
                vec![(5, [2u8; PAGE_SIZE]), (5_000, [2u8; PAGE_SIZE])],
            ),
        ] {
            let path = dir.join(name);
            let mut file = std::fs::File::create(&path).unwrap();
            write_page_file(&mut file, pages.iter().map(|(i, p)| (*i, p, None))).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            layers.push(Arc::new(PageFile::map(&file, name).unwrap()));
        }
        PageMap::with_base(Arc::new(PageLayers::new(layers)))
    }

    #[test]
    fn a_map_on_mapped_files_reads_hashes_and_copies_on_write_like_one_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut on_files = map_on_files(dir.path());
        let mut in_memory = PageMap::new();
        in_memory.fill(0, 40 * PAGE_SIZE as u64, 1).unwrap();
        in_memory
            .fill(5 * PAGE_SIZE as u64, PAGE_SIZE as u64, 2)
            .unwrap();
        in_memory
            .fill(5_000 * PAGE_SIZE as u64, PAGE_SIZE as u64, 2)
            .unwrap();
        let root = |map: &PageMap| map.tree_hash(MAX_HEIGHT);
        assert_eq!(root(&on_files), root(&in_memory));
        assert_root_matches_flat(&on_files, 5_001);
        assert_eq!(on_files.heap_pages(), 0);
        assert_eq!(on_files.present_pages(), 41);
        // A partial write copies the mapped page into the tree, and only that page.
        let snapshot = on_files.clone();
        for map in [&mut on_files, &mut in_memory] {
            map.write(5 * PAGE_SIZE as u64 + 7, &[9]).unwrap();
            map.write(70_000 * PAGE_SIZE as u64, &[3]).unwrap();
        }
        assert_eq!(on_files.page_bytes(5).unwrap()[6..9], [2, 9, 2]);
        assert_eq!(on_files.heap_pages(), 2);
        assert_eq!(snapshot.page_bytes(5).unwrap()[7], 2);
        assert_eq!(root(&on_files), root(&in_memory));
        let pages: Vec<u64> = on_files.present_indices().collect();
        let expected: Vec<u64> = in_memory.present_indices().collect();
        assert_eq!(pages, expected);
        // Truncation shadows the base's pages beyond the bound.
        on_files.truncate(20);
        in_memory.truncate(20);
        assert_eq!(on_files.page_bytes(30).unwrap()[0], 0);
        assert_eq!(on_files.page_bytes(5_000).unwrap()[0], 0);
        assert_eq!(root(&on_files), root(&in_memory));
        assert_eq!(root(&snapshot), snapshot.tree_hash(MAX_HEIGHT));
        assert!(!on_files.shares_root_with(&snapshot));
    }

    /// `page_from` (the one `unsafe` block here): a whole-page write to a page shared with a
    /// clone builds a new page from exactly the written bytes and leaves the clone's page alone;
    /// a second one, now unshared, overwrites it in place. Hashes follow both.
    #[test]
    fn whole_page_writes_copy_shared_pages_once_and_overwrite_unique_ones() {
        let mut map = PageMap::new();
        map.write(0, &[7u8; 3 * PAGE_SIZE]).unwrap();
        let clone = map.clone();
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        map.write(PAGE_SIZE as u64, &page).unwrap();
        let mut read = vec![0u8; PAGE_SIZE];
        map.read(PAGE_SIZE as u64, &mut read).unwrap();
        assert_eq!(read, page);
        clone.read(PAGE_SIZE as u64, &mut read).unwrap();
        assert_eq!(
            read,
            vec![7u8; PAGE_SIZE],
            "the clone's page must not change"
        );
        let before = map.tree_page(1).map(|p| p as *const Page);
        let again: Vec<u8> = page.iter().map(|b| b ^ 0xff).collect();
        map.write(PAGE_SIZE as u64, &again).unwrap();
        assert_eq!(
            map.tree_page(1).map(|p| p as *const Page),
            before,
            "unique: in place"
        );
        map.read(PAGE_SIZE as u64, &mut read).unwrap();
        assert_eq!(read, again);
        assert_root_matches_flat(&map, 3);
        assert_root_matches_flat(&clone, 3);
    }

    #[test]
    fn truncate_drops_pages_beyond_the_bound() {
        let mut map = PageMap::new();
        map.fill(0, 40 * PAGE_SIZE as u64, 1).unwrap();
        map.truncate(20);
        assert_eq!(map.present_pages(), 20);
        assert_eq!(map.page_bytes(25).unwrap()[0], 0);
        map.truncate(0);
        assert_eq!(map.present_pages(), 0);
    }

    /// The counted `heap_pages` equals a walk of the tree after every kind of change: whole
    /// and partial writes (fresh, in place, shared with a clone), fills, copies of base pages,
    /// truncation below and above the base, and clones changed on both sides.
    #[test]
    fn heap_page_count_follows_every_change() {
        let walked = |map: &PageMap| map.heap_iter().count() as u64;
        let dir = tempfile::tempdir().unwrap();
        let mut map = map_on_files(dir.path());
        assert_eq!((map.heap_pages(), walked(&map)), (0, 0));
        let page = PAGE_SIZE as u64;
        let steps: [&dyn Fn(&mut PageMap); 8] = [
            &|m| m.write(0, &[7u8; PAGE_SIZE]).unwrap(),
            &|m| m.write(0, &[8u8; PAGE_SIZE]).unwrap(),
            &|m| m.write(3 * page + 5, &[1, 2, 3]).unwrap(),
            &|m| m.write(100 * page - 2, &[9; 4 * PAGE_SIZE]).unwrap(),
            &|m| m.fill(30 * page, 12 * page + 7, 4).unwrap(),
            &|m| m.write(5 * page + 1, &[6]).unwrap(),
            &|m| m.truncate(35),
            &|m| m.write(70_000 * page, &[1]).unwrap(),
        ];
        let mut clones = Vec::new();
        for step in steps {
            step(&mut map);
            assert_eq!(map.heap_pages(), walked(&map));
            let mut clone = map.clone();
            step(&mut clone);
            clone.write(9 * page, &[3; 10]).unwrap();
            assert_eq!(clone.heap_pages(), walked(&clone));
            clones.push(clone);
        }
        for clone in &clones {
            assert_eq!(clone.heap_pages(), walked(clone));
        }
        map.truncate(0);
        assert_eq!((map.heap_pages(), walked(&map)), (0, 0));
    }
}
