//! The memory checksum: a SHA-256 Merkle root over 4 KiB pages, as defined in
//! `spec/checksum.md`.
//!
//! Two implementations of the same definition live here on purpose:
//! - the cached one, [`crate::memory::PageMap`] nodes memoise their hashes, so the root after k
//!   changed pages costs O(k · height) hashing;
//! - [`memory_root_from_bytes`], a from-scratch computation over a flat byte slice, written only
//!   from the spec, used by `snapshot verify` on downloaded files and by the property tests as
//!   the reference the cached root must equal.
//!
//! Definition (see the spec for the normative text):
//! ```text
//! leaf(page)        = SHA-256(0x00 ‖ page)                 page: 4096 bytes, zero-padded
//! node(c0..c15)     = SHA-256(0x01 ‖ c0 ‖ … ‖ c15)
//! zero(0)           = leaf(4096 zero bytes);  zero(l) = node(zero(l-1) × 16)
//! tree              = the level-8 node over pages 0 .. 16^8 - 1 (absent pages are zero pages)
//! memory_root       = SHA-256(0x02 ‖ "ic-canister-snapshots/memory/v1" ‖ u64_be(size) ‖ tree)
//! ```

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::page_map::{FANOUT, MAX_HEIGHT, PAGE_SIZE};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

const LEAF_TAG: u8 = 0x00;
const NODE_TAG: u8 = 0x01;
const MEMORY_ROOT_TAG: u8 = 0x02;
const MEMORY_DOMAIN: &[u8] = b"ic-canister-snapshots/memory/v1";

/// `leaf(page)` of `spec/checksum.md`: the hash of one 4 KiB page (the page root).
pub fn leaf_hash(page: &[u8; PAGE_SIZE]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_TAG]);
    hasher.update(page);
    hasher.finalize().into()
}

/// `node(c0..c15)` of `spec/checksum.md`: the hash of an inner node from its 16 children.
pub fn node_hash(children: &[Hash; FANOUT]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_TAG]);
    for child in children {
        hasher.update(child);
    }
    hasher.finalize().into()
}

/// Hash of an all-zero subtree at `level` (level 0 is a single zero page). Computed once.
// Indexing: every caller passes a level of a tree of height at most `MAX_HEIGHT` (a node's
// level, or one below it), so `level <= MAX_HEIGHT` and the index is inside the table.
#[allow(clippy::indexing_slicing)]
pub(crate) fn zero_subtree_hash(level: u32) -> &'static Hash {
    static ZERO: OnceLock<[Hash; MAX_HEIGHT as usize + 1]> = OnceLock::new();
    &ZERO.get_or_init(|| {
        let mut table = [[0u8; 32]; MAX_HEIGHT as usize + 1];
        let mut hash = leaf_hash(&[0u8; PAGE_SIZE]);
        for slot in &mut table {
            *slot = hash;
            hash = node_hash(&[hash; FANOUT]);
        }
        table
    })[level as usize]
}

/// Binds the tree hash to the memory's size in bytes.
pub(crate) fn memory_root(size_bytes: u64, tree: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([MEMORY_ROOT_TAG]);
    hasher.update(MEMORY_DOMAIN);
    hasher.update(size_bytes.to_be_bytes());
    hasher.update(tree);
    hasher.finalize().into()
}

/// The memory root of a flat byte image, computed from the definition alone (no caches, no
/// `PageMap`): a [`MemoryRootBuilder`] fed every page in order.
pub fn memory_root_from_bytes(bytes: &[u8]) -> Hash {
    let mut builder = MemoryRootBuilder::new();
    builder.push_bytes(bytes);
    builder.finish()
}

/// Computes a memory root from the memory's bytes streamed in order, in O(depth) memory, so a
/// downloaded `stable_memory.bin` of any size is verified without loading it whole. All-zero
/// pages cost no hashing (their hash is `zero(0)`).
pub struct MemoryRootBuilder {
    /// `levels[l]` holds the finished level-`l` hashes of the current, incomplete level-`l+1`
    /// node (at most 15).
    levels: Vec<Vec<Hash>>,
    /// A partial page waiting for more bytes.
    pending: Vec<u8>,
    size: u64,
}

impl Default for MemoryRootBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRootBuilder {
    pub fn new() -> Self {
        MemoryRootBuilder {
            levels: vec![Vec::with_capacity(FANOUT); MAX_HEIGHT as usize],
            pending: Vec::with_capacity(PAGE_SIZE),
            size: 0,
        }
    }

    /// Appends `bytes` to the memory image.
    pub fn push_bytes(&mut self, mut bytes: &[u8]) {
        // A memory image is at most a few GiB: the byte count cannot reach `u64::MAX`.
        self.size = self.size.saturating_add(bytes.len() as u64);
        if !self.pending.is_empty() {
            let take = PAGE_SIZE
                .saturating_sub(self.pending.len())
                .min(bytes.len());
            let (head, rest) = bytes.split_at_checked(take).unwrap_or((bytes, &[]));
            self.pending.extend_from_slice(head);
            bytes = rest;
            let mut pending = std::mem::take(&mut self.pending);
            if let Ok(page) = <&[u8; PAGE_SIZE]>::try_from(pending.as_slice()) {
                self.push_page(page);
                pending.clear();
            }
            self.pending = pending;
        }
        let (pages, remainder) = bytes.as_chunks::<PAGE_SIZE>();
        for page in pages {
            self.push_page(page);
        }
        self.pending.extend_from_slice(remainder);
    }

    /// [`Self::push_bytes`], with the pages hashed on every core (rayon's pool): the leaves are
    /// independent, so they are hashed in parallel and then pushed in order; only the inner
    /// nodes (1/16 of the hashing) stay on the calling thread. Same result as `push_bytes`.
    pub fn push_bytes_parallel(&mut self, mut bytes: &[u8]) {
        if !self.pending.is_empty() {
            let take = PAGE_SIZE
                .saturating_sub(self.pending.len())
                .min(bytes.len());
            let (head, rest) = bytes.split_at_checked(take).unwrap_or((bytes, &[]));
            self.push_bytes(head);
            bytes = rest;
        }
        let (pages, tail) = bytes.as_chunks::<PAGE_SIZE>();
        let leaves: Vec<Hash> = pages
            .par_iter()
            // Enough pages per task that scheduling costs little next to hashing them.
            .with_min_len(16)
            .map(page_hash)
            .collect();
        self.size = self
            .size
            .saturating_add((pages.len() as u64).saturating_mul(PAGE_SIZE as u64));
        for leaf in leaves {
            self.push_hash(0, leaf);
        }
        self.push_bytes(tail);
    }

    fn push_page(&mut self, page: &[u8; PAGE_SIZE]) {
        self.push_hash(0, page_hash(page));
    }

    /// `level` is below `MAX_HEIGHT`: 0 from `push_page`, and each recursion checks the next
    /// level exists first.
    fn push_hash(&mut self, level: usize, hash: Hash) {
        let next = level.saturating_add(1);
        let has_parent = next < self.levels.len();
        let Some(siblings) = self.levels.get_mut(level) else {
            return;
        };
        siblings.push(hash);
        if siblings.len() == FANOUT
            && has_parent
            && let Ok(children) = <[Hash; FANOUT]>::try_from(std::mem::take(siblings))
        {
            self.push_hash(next, node_hash(&children));
        }
    }

    /// The memory root of everything pushed; a partial last page is zero-padded.
    pub fn finish(mut self) -> Hash {
        if !self.pending.is_empty() {
            let mut page = [0u8; PAGE_SIZE];
            for (byte, pending) in page.iter_mut().zip(&self.pending) {
                *byte = *pending;
            }
            self.pending.clear();
            self.push_page(&page);
        }
        // Close every incomplete node bottom-up, padding with zero subtrees.
        let mut carry: Option<Hash> = None;
        for (level, slot) in self.levels.iter_mut().enumerate() {
            let mut children = std::mem::take(slot);
            if let Some(hash) = carry.take() {
                children.push(hash);
            }
            if children.is_empty() {
                continue;
            }
            // At most 15 waiting children plus the carry: padded (never truncated) to 16.
            children.resize(FANOUT, *zero_subtree_hash(level as u32));
            carry = <[Hash; FANOUT]>::try_from(children)
                .ok()
                .map(|children| node_hash(&children));
        }
        let tree = carry.unwrap_or(*zero_subtree_hash(MAX_HEIGHT));
        memory_root(self.size, &tree)
    }
}

/// `leaf(page)`, except that an all-zero page costs no hashing (its hash is `zero(0)`).
fn page_hash(page: &[u8; PAGE_SIZE]) -> Hash {
    if page.iter().all(|&b| b == 0) {
        *zero_subtree_hash(0)
    } else {
        leaf_hash(page)
    }
}

/// SHA-256 of a byte string (module hashes, chunk hashes).
pub fn sha256(bytes: &[u8]) -> Hash {
    #[cfg(test)]
    SHA256_BYTES.with(|n| n.set(n.get() + bytes.len() as u64));
    Sha256::digest(bytes).into()
}

#[cfg(test)]
thread_local! {
    /// Bytes this thread has passed to [`sha256`], for the tests that check what an operation
    /// hashes (a snapshot's load must not hash its module again).
    pub(crate) static SHA256_BYTES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Lower-case hex, for display and file names.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        // A nibble is below 16, so `from_digit` always has a digit for it.
        for nibble in [b >> 4, b & 15] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::PageMap;

    #[test]
    fn zero_tables_follow_the_definition() {
        assert_eq!(*zero_subtree_hash(0), leaf_hash(&[0; PAGE_SIZE]));
        assert_eq!(
            *zero_subtree_hash(2),
            node_hash(&[node_hash(&[leaf_hash(&[0; PAGE_SIZE]); 16]); 16])
        );
    }

    #[test]
    fn cached_root_equals_root_from_bytes() {
        let size = 300 * PAGE_SIZE;
        let mut flat = vec![0u8; size];
        let mut map = PageMap::new();
        for (offset, byte) in [(5usize, 1u8), (70_000, 2), (size - 3, 3), (4096 * 17, 4)] {
            flat[offset] = byte;
            map.write(offset as u64, &[byte]).unwrap();
        }
        let cached = memory_root(size as u64, &map.tree_hash(MAX_HEIGHT));
        assert_eq!(cached, memory_root_from_bytes(&flat));
        // A page written with zeros hashes like a page never written.
        map.write(200 * PAGE_SIZE as u64, &[0; 10]).unwrap();
        assert_eq!(memory_root(size as u64, &map.tree_hash(MAX_HEIGHT)), cached);
    }

    #[test]
    fn bytes_pushed_in_uneven_pieces_give_the_root_of_the_whole() {
        // Pieces that straddle page boundaries exercise the partial-page path of `push_bytes`.
        let flat: Vec<u8> = (0..20 * PAGE_SIZE + 5).map(|i| (i % 251) as u8).collect();
        let mut builder = MemoryRootBuilder::new();
        let mut rest = flat.as_slice();
        for piece in [1, PAGE_SIZE - 1, PAGE_SIZE + 1, 3, 3 * PAGE_SIZE - 2, 7] {
            let (head, tail) = rest.split_at(piece);
            builder.push_bytes(head);
            rest = tail;
        }
        builder.push_bytes(rest);
        assert_eq!(builder.finish(), memory_root_from_bytes(&flat));
    }

    #[test]
    fn size_enters_the_root() {
        assert_ne!(
            memory_root_from_bytes(&[0; PAGE_SIZE]),
            memory_root_from_bytes(&[0; 2 * PAGE_SIZE])
        );
    }

    #[test]
    fn cache_is_invalidated_by_writes_to_shared_and_unique_pages() {
        let mut map = PageMap::new();
        map.fill(0, 40 * PAGE_SIZE as u64, 9).unwrap();
        let before = map.tree_hash(MAX_HEIGHT);
        let snapshot = map.clone();
        map.write(3, &[1]).unwrap();
        let after = map.tree_hash(MAX_HEIGHT);
        assert_ne!(before, after);
        assert_eq!(snapshot.tree_hash(MAX_HEIGHT), before);
        map.write(3, &[9]).unwrap();
        assert_eq!(map.tree_hash(MAX_HEIGHT), before);
    }

    /// Hashing on all cores is the same function: fed in pieces that split pages, whole pages,
    /// runs of zero pages and a partial last page, both builders give one root.
    #[test]
    fn parallel_pushes_give_the_sequential_root() {
        let size = 1200 * PAGE_SIZE + 123;
        let flat: Vec<u8> = (0..size)
            .map(|i| {
                if (i / PAGE_SIZE) % 7 == 3 {
                    0
                } else {
                    (i % 251) as u8
                }
            })
            .collect();
        let reference = memory_root_from_bytes(&flat);
        for pieces in [
            vec![size],
            vec![1, 4095, 4097, 1 << 20],
            vec![3 * PAGE_SIZE - 1, 77],
        ] {
            let mut builder = MemoryRootBuilder::new();
            let mut rest = flat.as_slice();
            for len in pieces.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*len).min(rest.len()));
                builder.push_bytes_parallel(piece);
                rest = tail;
            }
            assert_eq!(builder.finish(), reference, "pieces {pieces:?}");
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
