//! The memory tracker: a canister's heap given to a Wasm instance page by page, as the message
//! touches it, and only the pages it wrote handed back (issue 22; the replica's
//! `rs/embedders/src/wasmtime_embedder/host_memory.rs` and `rs/memory_tracker`).
//!
//! **How a page gets into an instance.** The engine owns memory 0 of every instance
//! ([`TrackedMemoryCreator`], wasmtime's `MemoryCreator`): its whole range, the heap's largest
//! size plus the guard region wasmtime's bounds-check elision relies on, is one anonymous
//! reservation with no access (`PROT_NONE`, `MAP_NORESERVE`: address space, no memory). Nothing
//! is copied when the message starts: the instance only learns the canister's heap (an O(1)
//! clone of its [`Memory`]) and its size.
//!
//! **What a fault does.** The first access to a page faults. Wasmtime's process-wide `SIGSEGV`
//! handler calls the store's own handler first (`wasmtime::unix::StoreExt::set_signal_handler`,
//! what the replica does), and that is [`TrackedHeap::handle_fault`]: for an address inside the
//! heap's current size it gives the page its bytes ([`PageMap::page_source`]: a page written
//! since the checkpoint is copied from the page memory, a checkpointed one from its page file's
//! mapping after its stored hash matched, a page never written stays zero) and makes it
//! readable. A write to a readable page faults again: the page becomes writable and is recorded
//! dirty. Faults from the System API's host code touching the heap (`msg_arg_data_copy`, ...)
//! take the same path, since they run inside the Wasm call. Any other fault (past the heap's
//! size: the guard region; a page already writable; another signal) is not ours: the handler
//! says so and wasmtime turns it into the Wasm trap it is, or hands it to the previous handler.
//!
//! The replica maps a checkpointed page into the instance `MAP_PRIVATE` from its file and copies
//! in the pages written since; here both are copied on first touch, from the page memory. For a
//! checkpointed page the copy costs no more than its check, which reads its 4 KiB anyway (the
//! replica does not check its pages on read), and it needs no file descriptor per page file and
//! no mapping per run of pages: setting up an instance is O(1) whatever the heap's size.
//! The only writes outside a Wasm call, the data segments at install, go through
//! [`TrackedHeap::write`], which takes the same two steps without a fault.
//!
//! **When a page goes back.** After a successful update the dirty pages, and only they, are
//! written into the page memory ([`TrackedHeap::write_back`]); the heap delta counts them,
//! whole 4 KiB pages, as the replica does (a page written with the bytes it held still counts).
//! After a trap, or for a query, nothing is: the reservation is unmapped with the store.
//! `memory.grow` only moves the size ([`LinearMemory::grow_to`]): the new pages are the
//! reservation's zeros, given to the instance on first touch like the rest.
//!
//! **Integrity.** A checkpointed page is checked against its stored hash before Wasm code (or
//! host code) can read it, in the handler, by the same checks as every other read of a page file
//! (`PageFile::page_in_signal_handler`). A page that fails them is never served: it reads as
//! zeros, the handler records it, and the message ends in an error naming the file and the page
//! ([`TrackedHeap::damaged`]) whatever the Wasm code did, so nothing it computed is kept.
//!
//! **Determinism.** There is no prefetching: which pages are dirty, and so the heap delta, is a
//! function of the addresses the message writes, never of timing or of another instance. Each
//! store has its own handler and its own [`TrackedHeap`]; nothing here is shared between
//! threads but the immutable page memory.
//!
//! **Safety.** This is the one module with `unsafe` in `rs/embedders`. The handler is
//! async-signal-safe: it allocates nothing, takes no lock and makes two system calls,
//! `mprotect`; its state is atomics preallocated with the heap (two bitmaps in a zeroed
//! anonymous mapping) and the immutable page memory. Each block states its invariant beside it
//! (`SAFETY:`) and is exercised by the tests below and in `tests/memory_tracker.rs`.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use wasmtime::{LinearMemory, MemoryCreator, MemoryType, Store};

use crate::memory::{Memory, MemoryError, PAGE_SIZE, PageSource};

/// The address space every instance's memory reserves at least, and what wasmtime is told
/// (`Config::memory_reservation`): 4 GiB, so a 32-bit heap never moves and its bounds checks
/// are elided.
pub const MEMORY_RESERVATION: u64 = 4 << 30;

/// The inaccessible range after every reservation (`Config::memory_guard_size`): an access
/// past a 32-bit heap's end lands here and traps.
pub const MEMORY_GUARD: u64 = 2 << 30;

/// The largest heap the tracker reserves for (a 64-bit heap's `wasm_memory_limit` above it is
/// refused when the instance is created).
pub const MAX_TRACKED_BYTES: u64 = 1 << 40;

/// Bits per word of the page bitmaps.
const BITS: usize = 64;
const WORD_BYTES: usize = 8;

/// An anonymous private mapping, unmapped when dropped.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a `Mapping` is an owned range of address space, like a `Box<[u8]>`; what is read and
// written through it is governed by its owner (`TrackedHeap`: atomics, or pages whose
// protection says who may touch them).
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access goes through atomics or through the Wasm instance, which only
// the thread running its store touches.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes of fresh zero pages with protection `prot`, backed by memory only where
    /// touched.
    fn new(len: usize, prot: libc::c_int) -> std::io::Result<Mapping> {
        // SAFETY: a new anonymous mapping at an address the kernel chooses overlaps nothing the
        // program uses; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapping as zero-initialised words (the mapping must be readable and writable).
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` readable, writable bytes, page-aligned (so aligned for
        // `AtomicU64`), zero-filled by the kernel (a valid `AtomicU64` is any 8 bytes) and owned
        // by `self` for the lifetime of the slice; every access goes through the atomics.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU64>(), self.len / WORD_BYTES) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr + len` is the mapping `new` made, and nothing refers to it any more:
        // the instance's store (which held the `TrackedHeap` owning it) is gone, and slices of
        // it never outlive `&self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// One instance's heap: the reservation, the page bitmaps, and where the bytes come from.
pub struct TrackedHeap {
    /// Memory 0: `capacity` bytes of heap, then the guard region.
    reservation: Mapping,
    capacity: usize,
    /// The heap's current size in bytes (wasmtime's `memory.grow` moves it).
    size: AtomicUsize,
    /// Two bitmaps of `words` words each: pages given to the instance (readable), then pages
    /// it wrote (writable, dirty).
    bits: Mapping,
    words: usize,
    dirty_pages: AtomicU64,
    /// The canister's heap as the message started: where page bytes come from.
    heap: Memory,
    /// Pages below this come from `heap`; above, `memory.grow` added them: zeros.
    initial_pages: u64,
    /// The first page that failed its check, plus one (0: none), and its file's layer.
    damaged_page: AtomicU64,
    damaged_layer: AtomicUsize,
    /// The `errno` of a failed `mprotect` (0: none): the message cannot go on.
    protect_errno: AtomicUsize,
}

/// What a page's protection is changed to.
#[derive(Clone, Copy)]
enum Access {
    Read,
    ReadWrite,
}

impl TrackedHeap {
    fn new(heap: Memory, size: usize, capacity: usize, guard: usize) -> std::io::Result<Self> {
        let total = capacity
            .checked_add(guard)
            .ok_or_else(|| std::io::Error::other("the reservation overflows"))?;
        let reservation = Mapping::new(total, libc::PROT_NONE)?;
        let words = (capacity / PAGE_SIZE).div_ceil(BITS);
        let bits = Mapping::new(
            words.saturating_mul(2).max(1).saturating_mul(WORD_BYTES),
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        // The check bits are allocated here, outside the handler, so that its checks are
        // remembered (`PageMap::page_source`).
        heap.page_map().allocate_check_bits();
        let initial_pages = heap.size_bytes().checked_div(PAGE_SIZE as u64).unwrap_or(0);
        Ok(TrackedHeap {
            reservation,
            capacity,
            size: AtomicUsize::new(size),
            bits,
            words,
            dirty_pages: AtomicU64::new(0),
            heap,
            initial_pages,
            damaged_page: AtomicU64::new(0),
            damaged_layer: AtomicUsize::new(0),
            protect_errno: AtomicUsize::new(0),
        })
    }

    fn base(&self) -> usize {
        self.reservation.ptr as usize
    }

    /// Bit `page` of bitmap `map` (0: given, 1: dirty) as its word and mask.
    #[allow(clippy::arithmetic_side_effects)] // `page < capacity / PAGE_SIZE`: no overflow.
    fn bit(&self, map: usize, page: usize) -> Option<(&AtomicU64, u64)> {
        let word = self.bits.words().get(map * self.words + page / BITS)?;
        Some((word, 1u64 << (page % BITS)))
    }

    fn is_set(&self, map: usize, page: usize) -> bool {
        self.bit(map, page)
            .is_some_and(|(word, mask)| word.load(Ordering::Relaxed) & mask != 0)
    }

    fn set(&self, map: usize, page: usize) {
        if let Some((word, mask)) = self.bit(map, page) {
            word.fetch_or(mask, Ordering::Relaxed);
        }
    }

    /// The store's signal handler (see the module doc). Async-signal-safe: no allocation, no
    /// lock. `true`: the fault was ours and the access can be retried.
    pub(crate) fn handle_fault(&self, signum: libc::c_int, info: *const libc::siginfo_t) -> bool {
        if signum != libc::SIGSEGV || info.is_null() {
            return false;
        }
        // SAFETY: the kernel passes a valid `siginfo_t` for `SIGSEGV` (checked non-null), and
        // `si_addr` is the faulting address for this signal.
        let addr = unsafe { (*info).si_addr() } as usize;
        let Some(offset) = addr.checked_sub(self.base()) else {
            return false;
        };
        if offset >= self.size.load(Ordering::Acquire) {
            // Past the heap's end (the rest of the reservation, the guard): a trap.
            return false;
        }
        self.touch(offset / PAGE_SIZE)
    }

    /// One step up for page `page`: not given → readable (with its bytes), readable → writable
    /// and dirty. `false` if it was already writable or `mprotect` failed.
    fn touch(&self, page: usize) -> bool {
        if !self.is_set(0, page) {
            if !self.fill(page) {
                return false;
            }
            self.set(0, page);
            return true;
        }
        if self.is_set(1, page) || !self.protect(page, Access::ReadWrite) {
            return false;
        }
        self.set(1, page);
        self.dirty_pages.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Gives page `page` its bytes and makes it readable.
    fn fill(&self, page: usize) -> bool {
        let source = if page as u64 >= self.initial_pages {
            PageSource::Zero
        } else {
            self.heap.page_map().page_source(page as u64)
        };
        let bytes = match source {
            PageSource::Heap(bytes) | PageSource::File(bytes) => Some(bytes),
            PageSource::Damaged { layer } => {
                let first = self.damaged_page.compare_exchange(
                    0,
                    (page as u64).saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                if first.is_ok() {
                    self.damaged_layer.store(layer, Ordering::Relaxed);
                }
                None
            }
            PageSource::Zero => None,
        };
        if let Some(bytes) = bytes {
            if !self.protect(page, Access::ReadWrite) {
                return false;
            }
            // SAFETY: page `page` is below `capacity` (the handler checked it against the size,
            // `write` against the instance's size), so its 4 KiB lie inside the reservation, and
            // were just made writable; `bytes` is an immutable page of the page memory (a tree
            // page kept alive by `self.heap`, or a read-only page file mapping), which cannot
            // overlap the reservation. Wasm sees the page only once the handler returns.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.page_ptr(page), PAGE_SIZE);
            }
        }
        self.protect(page, Access::Read)
    }

    #[allow(clippy::arithmetic_side_effects)] // `page < capacity / PAGE_SIZE`.
    fn page_ptr(&self, page: usize) -> *mut u8 {
        self.reservation.ptr.wrapping_add(page * PAGE_SIZE)
    }

    fn protect(&self, page: usize, access: Access) -> bool {
        let prot = match access {
            Access::Read => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        // SAFETY: the 4 KiB at `page_ptr(page)` are a page-aligned part of our own reservation
        // (`page < capacity / PAGE_SIZE`); changing their protection affects no other mapping.
        // `mprotect` is a plain system call: async-signal-safe.
        let done = unsafe { libc::mprotect(self.page_ptr(page).cast(), PAGE_SIZE, prot) } == 0;
        if !done {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
            self.protect_errno
                .store(errno.unsigned_abs() as usize, Ordering::Relaxed);
        }
        done
    }

    /// Writes `data` at `offset` outside a Wasm call (the data segments at install), where no
    /// fault handler runs: each page is given and made writable first, and counts as dirty.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let size = self.size.load(Ordering::Acquire);
        let end = offset.checked_add(data.len()).filter(|&end| end <= size);
        let Some(end) = end else {
            return Err(MemoryError::OutOfBounds {
                offset: offset as u64,
                len: data.len() as u64,
                size: size as u64,
            });
        };
        if data.is_empty() {
            return Ok(());
        }
        for page in offset / PAGE_SIZE..=(end.saturating_sub(1)) / PAGE_SIZE {
            while !self.is_set(1, page) {
                if !self.touch(page) {
                    return Err(self.tracker_error());
                }
            }
        }
        // SAFETY: `offset..end` is inside the heap's size (checked above), so inside the
        // reservation, and every page of it was just made writable; `data` is a host slice,
        // not part of the reservation. No Wasm runs on this store during the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.reservation.ptr.wrapping_add(offset),
                data.len(),
            );
        }
        Ok(())
    }

    /// The error a failed `mprotect` ends the message with.
    fn tracker_error(&self) -> MemoryError {
        MemoryError::TrackerFailed {
            errno: self.protect_errno.load(Ordering::Relaxed),
        }
    }

    /// Pages written by the message.
    pub fn dirty_pages(&self) -> u64 {
        self.dirty_pages.load(Ordering::Relaxed)
    }

    /// What ended the message in the tracker itself, whatever the Wasm code did: a page file
    /// page that failed its check (naming the file and the page), or a failed `mprotect`.
    pub fn damaged(&self) -> Option<MemoryError> {
        let page = self.damaged_page.load(Ordering::Relaxed);
        if let Some(page) = page.checked_sub(1) {
            let layer = self.damaged_layer.load(Ordering::Relaxed);
            let file = self
                .heap
                .page_map()
                .base()
                .and_then(|base| base.files().get(layer))
                .map_or("?", |file| file.name());
            return Some(MemoryError::DamagedPageFile {
                reason: format!(
                    "page file {file} is damaged: page {page} does not match its stored hash \
                     (the file was changed after it was written)"
                ),
            });
        }
        (self.protect_errno.load(Ordering::Relaxed) != 0).then(|| self.tracker_error())
    }

    /// The heap's size in bytes now.
    pub fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Acquire) as u64
    }

    /// Writes the dirty pages into `heap` (already grown to [`Self::size_bytes`]), ascending.
    /// Returns the bytes written: 4 KiB per dirty page.
    pub fn write_back(&self, heap: &mut Memory) -> Result<u64, MemoryError> {
        let dirty = self.bits.words().get(self.words..).unwrap_or_default();
        for (w, word) in dirty.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let page = w
                    .saturating_mul(BITS)
                    .saturating_add(bits.trailing_zeros() as usize);
                bits &= bits.wrapping_sub(1);
                // SAFETY: a dirty page is below the size (faults past it are refused) and
                // readable and writable; the Wasm call is over, so nothing writes it while the
                // slice lives.
                let bytes = unsafe { std::slice::from_raw_parts(self.page_ptr(page), PAGE_SIZE) };
                heap.write((page as u64).saturating_mul(PAGE_SIZE as u64), bytes)?;
            }
        }
        Ok(self.dirty_pages().saturating_mul(PAGE_SIZE as u64))
    }
}

/// Memory 0 as wasmtime sees it: a view of a [`TrackedHeap`] that the engine also holds.
struct TrackedMemory(Arc<TrackedHeap>);

// SAFETY: the memory never moves (`as_ptr` is the reservation's start for its whole life),
// `byte_capacity` bytes from it plus the guard wasmtime asked for are reserved, and `grow_to`
// refuses to pass the capacity; every byte past the size is inaccessible, and below it a page
// is inaccessible, readable or writable as the handler decides, each fault below the size
// fixed by the handler before the access is retried.
unsafe impl LinearMemory for TrackedMemory {
    fn byte_size(&self) -> usize {
        self.0.size.load(Ordering::Acquire)
    }

    fn byte_capacity(&self) -> usize {
        self.0.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.0.capacity {
            return Err(wasmtime::Error::msg(format!(
                "the heap's reservation of {} bytes cannot hold {new_size} bytes",
                self.0.capacity
            )));
        }
        self.0.size.fetch_max(new_size, Ordering::AcqRel);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.0.reservation.ptr
    }
}

/// The heap the next memory created on this thread serves, and the memory once created.
struct NextHeap {
    heap: Memory,
    max_bytes: u64,
    created: Option<Arc<TrackedHeap>>,
}

thread_local! {
    /// Instantiation runs on the calling thread and the memory creator gets no store: the engine
    /// leaves the message's heap here just before it instantiates.
    static NEXT_HEAP: RefCell<Option<NextHeap>> = const { RefCell::new(None) };
}

/// The heap of the instance the engine is about to create on this thread: set by
/// [`serve_next`], cleared when dropped.
pub struct ServeNext(());

/// Serves `heap` (at most `max_bytes`) to the next memory this thread creates.
pub fn serve_next(heap: Memory, max_bytes: u64) -> ServeNext {
    NEXT_HEAP.with(|next| {
        *next.borrow_mut() = Some(NextHeap {
            heap,
            max_bytes,
            created: None,
        });
    });
    ServeNext(())
}

impl ServeNext {
    /// The tracked heap the instantiation created, if it created a memory.
    pub fn created(self) -> Option<Arc<TrackedHeap>> {
        NEXT_HEAP.with(|next| next.borrow_mut().as_mut().and_then(|n| n.created.take()))
    }
}

impl Drop for ServeNext {
    fn drop(&mut self) {
        NEXT_HEAP.with(|next| next.borrow_mut().take());
    }
}

/// Makes `heap`'s handler the store's: wasmtime calls it first for every signal while the
/// store runs Wasm (host functions included).
pub fn track<T>(store: &mut Store<T>, heap: Arc<TrackedHeap>) {
    use wasmtime::unix::StoreExt;
    // SAFETY: `handle_fault` is async-signal-safe (no allocation, no lock: atomics, the
    // immutable page memory, `mprotect`), and it only claims faults inside `heap`'s own
    // reservation below its size, which no other code maps.
    unsafe {
        store.set_signal_handler(move |signum, info, _context| heap.handle_fault(signum, info));
    }
}

/// Creates every instance's memory 0 as a [`TrackedHeap`] (see the module doc).
pub struct TrackedMemoryCreator;

// SAFETY: each memory is a fresh reservation of `max(reserved, the heap's limit)` bytes plus
// `guard_size_in_bytes`, zero-filled (a page not yet given reads as zero once given: the
// reservation's own zeros, or the heap's bytes), and never moves.
unsafe impl MemoryCreator for TrackedMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let next = NEXT_HEAP.with(|next| {
            next.borrow_mut()
                .as_mut()
                .map(|n| (n.heap.clone(), n.max_bytes))
        });
        let (heap, max_bytes) =
            next.unwrap_or_else(|| (Memory::new(), maximum.unwrap_or(minimum) as u64));
        let limit = maximum.map_or(max_bytes, |m| max_bytes.min(m as u64));
        if limit > MAX_TRACKED_BYTES {
            return Err(format!(
                "a heap of up to {limit} bytes is more than the memory tracker reserves \
                 ({MAX_TRACKED_BYTES} bytes): lower the canister's wasm_memory_limit"
            ));
        }
        let limit = limit.max(minimum as u64).max(MEMORY_RESERVATION);
        let capacity = (limit.div_ceil(PAGE_SIZE as u64) as usize)
            .saturating_mul(PAGE_SIZE)
            .max(reserved_size_in_bytes.unwrap_or(0));
        let guard = guard_size_in_bytes.max(MEMORY_GUARD as usize);
        let tracked = TrackedHeap::new(heap, minimum, capacity, guard)
            .map(Arc::new)
            .map_err(|err| format!("the heap's address space cannot be reserved: {err}"))?;
        NEXT_HEAP.with(|next| {
            if let Some(next) = next.borrow_mut().as_mut() {
                next.created = Some(Arc::clone(&tracked));
            }
        });
        Ok(Box::new(TrackedMemory(tracked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MAX_WASM_MEMORY_BYTES, WASM_PAGE_SIZE};

    /// A heap of two Wasm pages with page 1 written, tracked with room for four.
    fn tracked() -> TrackedHeap {
        let mut heap = Memory::zeroed(2 * WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES).unwrap();
        heap.write(PAGE_SIZE as u64, &[7; PAGE_SIZE]).unwrap();
        let size = 2 * WASM_PAGE_SIZE as usize;
        TrackedHeap::new(heap, size, 4 * WASM_PAGE_SIZE as usize, PAGE_SIZE).unwrap()
    }

    /// `Mapping::new` and `words`: the bitmaps start zero (nothing given, nothing dirty) and
    /// are writable; `Drop` unmaps both mappings (two hundred reservations of 1 TiB exceed the
    /// 128 TiB of a process's address space otherwise).
    #[test]
    fn mappings_start_zero_and_are_unmapped_on_drop() {
        for _ in 0..200 {
            let heap = TrackedHeap::new(Memory::new(), 0, 1 << 40, 2 << 30).unwrap();
            let words = heap.bits.words();
            assert_eq!(words.len(), 2 * (1 << 40) / PAGE_SIZE / BITS);
            assert!(
                words
                    .iter()
                    .take(4096)
                    .all(|w| w.load(Ordering::Relaxed) == 0)
            );
            heap.set(1, 12345);
            assert!(heap.is_set(1, 12345) && !heap.is_set(0, 12345));
        }
    }

    /// `fill`'s copy, `protect`, `write`'s copy and `write_back`'s view: a host write gives the
    /// page its bytes first (page 1 keeps its other bytes), counts each page once, and only the
    /// written pages go back.
    #[test]
    fn host_writes_give_pages_their_bytes_and_count_them_once() {
        let heap = tracked();
        heap.write(PAGE_SIZE + 10, &[1, 2, 3]).unwrap();
        heap.write(PAGE_SIZE + 20, &[4]).unwrap();
        heap.write(3 * PAGE_SIZE - 1, &[5, 6]).unwrap();
        assert_eq!(heap.dirty_pages(), 3);
        assert!(
            heap.write(2 * WASM_PAGE_SIZE as usize - 1, &[1, 2])
                .is_err()
        );
        let mut out = Memory::zeroed(2 * WASM_PAGE_SIZE, MAX_WASM_MEMORY_BYTES).unwrap();
        assert_eq!(heap.write_back(&mut out).unwrap(), 3 * PAGE_SIZE as u64);
        assert_eq!(out.page_map().heap_pages(), 3);
        let page1 = out.read_vec(PAGE_SIZE as u64, PAGE_SIZE as u64).unwrap();
        assert_eq!(&page1[9..14], &[7, 1, 2, 3, 7]);
        assert_eq!(page1[20], 4);
        assert_eq!(out.read_vec(3 * PAGE_SIZE as u64 - 1, 2).unwrap(), [5, 6]);
        assert!(heap.damaged().is_none());
    }

    /// `handle_fault` claims only `SIGSEGV` inside the heap's size: another signal, no
    /// `siginfo`, an address before the reservation or past the size are left to wasmtime.
    #[test]
    fn the_handler_leaves_other_faults_alone() {
        let heap = tracked();
        assert!(!heap.handle_fault(libc::SIGBUS, std::ptr::null()));
        assert!(!heap.handle_fault(libc::SIGSEGV, std::ptr::null()));
        // Within the heap, a fault is fixed step by step: given, then writable, then no more.
        assert!(heap.touch(3));
        assert!(heap.touch(3));
        assert!(!heap.touch(3));
        assert_eq!(heap.dirty_pages(), 1);
    }

    /// `grow_to` and `as_ptr`: the memory grows within its reservation, never past it, and
    /// never moves.
    #[test]
    fn the_memory_grows_in_place_within_its_reservation() {
        let heap = Arc::new(tracked());
        let mut memory = TrackedMemory(Arc::clone(&heap));
        let base = memory.as_ptr();
        memory.grow_to(3 * WASM_PAGE_SIZE as usize).unwrap();
        assert_eq!(memory.byte_size(), 3 * WASM_PAGE_SIZE as usize);
        assert!(memory.grow_to(5 * WASM_PAGE_SIZE as usize).is_err());
        assert_eq!(memory.as_ptr(), base);
        // A page added by the growth reads as zero and can be written.
        heap.write(2 * WASM_PAGE_SIZE as usize, &[9]).unwrap();
        assert_eq!(heap.size_bytes(), 3 * WASM_PAGE_SIZE);
    }
}
