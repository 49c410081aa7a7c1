//! Page memory: the bottom layer. Owns [`PageMap`] (copy-on-write 4 KiB pages), the memory
//! checksum, and [`Memory`], a page map with a size in 64 KiB Wasm pages and bounds checks.
//!
//! This layer knows nothing of canisters or snapshots. It never reads the clock, and every
//! operation on input-controlled offsets is bounds-checked and returns a typed [`MemoryError`]
//! instead of panicking. Its only I/O is `page_file.rs`: encoding page files into a writer the
//! caller gives, and mapping files the caller opened (the state manager owns the directory).

pub mod checksum;
mod page_file;
mod page_map;

use ic_error_types::ErrorCode;

pub use checksum::Hash;
pub use page_file::{
    LayeredPages, PAGE_FILE_VERSION, PageFile, PageFileError, PageFileSummary, PageLayers,
    write_page_file, write_page_file_tail,
};
#[cfg(test)]
pub(crate) use page_map::visits;
pub use page_map::{MAX_PAGES, PAGE_SIZE, Page, PageIter, PageMap, PageMapIdentity, PageSource};

/// [`PAGE_SIZE`] as a `u64`, for byte offsets.
const PAGE_SIZE_U64: u64 = PAGE_SIZE as u64;

/// Bytes in one WebAssembly page, the unit in which memories grow.
pub const WASM_PAGE_SIZE: u64 = 64 * 1024;

/// Wasm32 heap limit: 65,536 Wasm pages = 4 GiB.
pub const MAX_WASM_MEMORY_BYTES: u64 = 4 << 30;

/// The replica's default limit of a 64-bit heap (`MAX_WASM64_MEMORY_IN_BYTES`, its
/// `max_wasm64_memory_size`): 6 GiB, the default of `Config::max_wasm64_memory_bytes`.
pub const MAX_WASM64_MEMORY_BYTES: u64 = 6 << 30;

/// The IC's stable memory limit: 500 GiB (the replica's `MAX_STABLE_MEMORY_IN_BYTES`), the
/// default of `Config::stable_memory_limit_bytes` and the bound a client checks a snapshot's
/// declared stable memory against before it allocates or reads anything.
pub const MAX_STABLE_MEMORY_BYTES: u64 = 500 << 30;

/// A linear memory (the Wasm heap or stable memory): pages plus a size.
///
/// Clone is O(1) and shares every page (see [`PageMap`]). Bytes at or beyond the size are never
/// stored: writes there are refused.
#[derive(Clone, Default, Debug)]
pub struct Memory {
    pages: PageMap,
    size_bytes: u64,
}

/// A memory access or growth the memory refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryError {
    OutOfBounds {
        offset: u64,
        len: u64,
        size: u64,
    },
    GrowthBeyondLimit {
        requested: u64,
        limit: u64,
    },
    SizeNotMultipleOfWasmPage {
        size: u64,
    },
    /// A checkpointed page whose bytes no longer match their stored hash: the message names
    /// the file and the page.
    DamagedPageFile {
        reason: String,
    },
    /// The memory tracker could not change a page's protection (`mprotect` failed with this
    /// `errno`, typically `ENOMEM`: the process ran out of memory mappings, `vm.max_map_count`).
    TrackerFailed {
        errno: usize,
    },
}

impl From<PageFileError> for MemoryError {
    fn from(err: PageFileError) -> Self {
        MemoryError::DamagedPageFile {
            reason: err.to_string(),
        }
    }
}

impl MemoryError {
    /// The IC code when a canister's own access fails: a trap for bounds, out of memory for
    /// growth. Management methods that take offsets from a payload map these themselves.
    pub fn code(&self) -> ErrorCode {
        match self {
            MemoryError::OutOfBounds { .. } => ErrorCode::CanisterTrapped,
            MemoryError::GrowthBeyondLimit { .. } => ErrorCode::CanisterOutOfMemory,
            MemoryError::SizeNotMultipleOfWasmPage { .. } => ErrorCode::InvalidManagementPayload,
            // The replica's state cannot be read: not the canister's fault, and not data.
            MemoryError::DamagedPageFile { .. } => ErrorCode::CertifiedStateUnavailable,
            // The replica's resources, not the canister's: as for a damaged file.
            MemoryError::TrackerFailed { .. } => ErrorCode::CertifiedStateUnavailable,
        }
    }
}

impl std::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryError::OutOfBounds { offset, len, size } => write!(
                f,
                "access of {len} bytes at offset {offset} is outside the memory of {size} bytes"
            ),
            MemoryError::GrowthBeyondLimit { requested, limit } => write!(
                f,
                "growing the memory to {requested} bytes exceeds its limit of {limit} bytes"
            ),
            MemoryError::SizeNotMultipleOfWasmPage { size } => write!(
                f,
                "memory size {size} is not a multiple of the 64 KiB Wasm page size"
            ),
            MemoryError::DamagedPageFile { reason } => write!(
                f,
                "{reason}; the state directory is damaged: restore it from a backup"
            ),
            MemoryError::TrackerFailed { errno } => write!(
                f,
                "the memory tracker could not change a page's protection (errno {errno}): \
                 raise vm.max_map_count or touch fewer pages per message"
            ),
        }
    }
}

impl std::error::Error for MemoryError {}

impl Memory {
    pub fn new() -> Self {
        Self::default()
    }

    /// An all-zero memory of `size_bytes`, which must be a multiple of [`WASM_PAGE_SIZE`] and at
    /// most `limit`. Takes no page memory until written.
    pub fn zeroed(size_bytes: u64, limit: u64) -> Result<Self, MemoryError> {
        let mut memory = Memory::new();
        if !size_bytes.is_multiple_of(WASM_PAGE_SIZE) {
            return Err(MemoryError::SizeNotMultipleOfWasmPage { size: size_bytes });
        }
        memory.grow(size_bytes / WASM_PAGE_SIZE, limit)?;
        Ok(memory)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn wasm_pages(&self) -> u64 {
        self.size_bytes / WASM_PAGE_SIZE
    }

    pub fn page_map(&self) -> &PageMap {
        &self.pages
    }

    /// A memory of `size_bytes` over `pages`: how the state manager rebuilds a checkpointed
    /// memory. Pages at or beyond the size are the caller's to avoid.
    pub fn from_page_map(pages: PageMap, size_bytes: u64) -> Self {
        Memory { pages, size_bytes }
    }

    /// Grows by `delta` Wasm pages, refusing to pass `limit` bytes. Returns the old size in Wasm
    /// pages (the value of `memory.grow`).
    pub fn grow(&mut self, delta: u64, limit: u64) -> Result<u64, MemoryError> {
        let old = self.wasm_pages();
        let requested = delta
            .checked_mul(WASM_PAGE_SIZE)
            .and_then(|d| d.checked_add(self.size_bytes))
            .unwrap_or(u64::MAX);
        if requested > limit || requested > MAX_PAGES.saturating_mul(PAGE_SIZE as u64) {
            return Err(MemoryError::GrowthBeyondLimit { requested, limit });
        }
        self.size_bytes = requested;
        Ok(old)
    }

    /// Grows, if needed, so that `[0, end)` is inside the memory.
    pub fn grow_to_fit(&mut self, end: u64, limit: u64) -> Result<(), MemoryError> {
        if let Some(missing) = end.checked_sub(self.size_bytes).filter(|&m| m > 0) {
            self.grow(missing.div_ceil(WASM_PAGE_SIZE), limit)?;
        }
        Ok(())
    }

    /// Sets the size to `size_bytes` (a multiple of [`WASM_PAGE_SIZE`], at most `limit`):
    /// growing adds zeros, shrinking drops the pages beyond the new size.
    pub fn resize(&mut self, size_bytes: u64, limit: u64) -> Result<(), MemoryError> {
        if !size_bytes.is_multiple_of(WASM_PAGE_SIZE) {
            return Err(MemoryError::SizeNotMultipleOfWasmPage { size: size_bytes });
        }
        if let Some(added) = size_bytes.checked_sub(self.size_bytes) {
            self.grow(added / WASM_PAGE_SIZE, limit)?;
        } else {
            self.pages.truncate(size_bytes / PAGE_SIZE_U64);
            self.size_bytes = size_bytes;
        }
        Ok(())
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), MemoryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(MemoryError::OutOfBounds {
                offset,
                len,
                size: self.size_bytes,
            }),
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(offset, buf.len() as u64)?;
        Ok(self.pages.read(offset, buf)?)
    }

    /// Reads `len` bytes into a new vector; the bounds are checked before anything is allocated.
    pub fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
        self.check(offset, len)?;
        let mut buf = vec![0u8; len as usize];
        self.pages.read(offset, &mut buf)?;
        Ok(buf)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check(offset, data.len() as u64)?;
        Ok(self.pages.write(offset, data)?)
    }

    pub fn fill(&mut self, offset: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        self.check(offset, len)?;
        Ok(self.pages.fill(offset, len, byte)?)
    }

    /// The checksum of this memory (`spec/checksum.md`): O(pages changed since the last call on
    /// any memory sharing those pages).
    pub fn root_hash(&self) -> Hash {
        let tree = self.pages.tree_hash(page_map::MAX_HEIGHT);
        checksum::memory_root(self.size_bytes, &tree)
    }

    /// Bytes of page memory really allocated on the heap (pages written since the last
    /// checkpoint × 4 KiB; checkpointed pages are mapped from files). O(1): a count the writes
    /// keep ([`PageMap::heap_pages`]).
    pub fn resident_bytes(&self) -> u64 {
        self.pages.heap_pages().saturating_mul(PAGE_SIZE_U64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_beyond_the_size_are_refused_without_panicking() {
        let mut memory = Memory::zeroed(WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES).unwrap();
        assert!(memory.write(WASM_PAGE_SIZE - 1, &[1, 2]).is_err());
        assert!(memory.read_vec(u64::MAX, 2).is_err());
        assert!(memory.fill(1, u64::MAX, 0).is_err());
        assert_eq!(
            memory.read_vec(WASM_PAGE_SIZE, 1).unwrap_err().code(),
            ErrorCode::CanisterTrapped
        );
        memory.write(WASM_PAGE_SIZE - 2, &[1, 2]).unwrap();
        assert_eq!(memory.read_vec(WASM_PAGE_SIZE - 2, 2).unwrap(), vec![1, 2]);
    }

    #[test]
    fn growth_is_bounded_by_the_limit() {
        let mut memory = Memory::new();
        assert_eq!(memory.grow(2, MAX_WASM_MEMORY_BYTES), Ok(0));
        assert_eq!(memory.size_bytes(), 2 * WASM_PAGE_SIZE);
        let err = memory.grow(65_535, MAX_WASM_MEMORY_BYTES).unwrap_err();
        assert_eq!(err.code(), ErrorCode::CanisterOutOfMemory);
        assert_eq!(memory.size_bytes(), 2 * WASM_PAGE_SIZE);
        assert!(memory.grow(u64::MAX, u64::MAX).is_err());
        assert!(Memory::zeroed(100, MAX_WASM_MEMORY_BYTES).is_err());
    }

    #[test]
    fn resize_shrinks_and_grows_with_zeros() {
        let mut memory = Memory::zeroed(4 * WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES).unwrap();
        memory.fill(0, 4 * WASM_PAGE_SIZE, 1).unwrap();
        memory
            .resize(WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES)
            .unwrap();
        memory
            .resize(2 * WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES)
            .unwrap();
        assert_eq!(memory.read_vec(WASM_PAGE_SIZE - 1, 2).unwrap(), vec![1, 0]);
        assert!(memory.resize(3, MAX_WASM_MEMORY_BYTES).is_err());
    }

    #[test]
    fn root_hash_matches_the_flat_definition() {
        let mut memory = Memory::zeroed(3 * WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES).unwrap();
        memory.write(12_345, b"hello").unwrap();
        let flat = memory.read_vec(0, memory.size_bytes()).unwrap();
        assert_eq!(memory.root_hash(), checksum::memory_root_from_bytes(&flat));
    }
}
