//! Operation sequences on `Memory` (and the `PageMap` under it) against a flat `Vec<u8>`
//! reference model, the model of `tests/core_model.rs`: every read equals the model, every
//! refusal is the one the model predicts and changes nothing, and the checksum from the cached
//! tree equals a `MemoryRootBuilder` fed the model's bytes, including on clones taken earlier
//! and written since (copy-on-write isolation, hash caches shared between clones).

use arbitrary::{Arbitrary, Result, Unstructured};
use canister_snapshots::memory::checksum::MemoryRootBuilder;
use canister_snapshots::memory::{Memory, MemoryError, PAGE_SIZE, WASM_PAGE_SIZE};

use super::input::{self, Encode, Writer};

/// Memories never pass 4 MiB: enough for page trees of height 3 (more than 256 pages), small
/// enough to compare flat images on every check.
const CAP: u64 = 64 * WASM_PAGE_SIZE;

/// At most this many clones are kept.
const MAX_SAVED: usize = 4;

/// An offset: absolute, or counted back from the end of the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub from_end: bool,
    pub n: u64,
}

impl At {
    fn resolve(self, size: u64) -> u64 {
        if self.from_end {
            size.wrapping_sub(self.n)
        } else {
            self.n
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        at: At,
        data: Vec<u8>,
    },
    Fill {
        at: At,
        len: u64,
        byte: u8,
    },
    Read {
        at: At,
        len: u64,
    },
    Grow {
        delta: u8,
    },
    /// A size in bytes, often not a multiple of the Wasm page.
    Resize {
        size: u64,
    },
    /// Compares the root hash with the model's, the model pushed to the builder in two
    /// pieces split at `split`.
    Checksum {
        split: u64,
    },
    /// Keeps a clone of the memory (and of the model).
    Save,
    /// Swaps the memory with a kept clone.
    Switch {
        index: u8,
    },
}

fn at(u: &mut Unstructured<'_>) -> Result<At> {
    Ok(At {
        from_end: input::flag(u)?,
        n: input::number(u)?,
    })
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match input::choice(u, 8)? {
            0 => Op::Write {
                at: at(u)?,
                data: input::blob(u)?,
            },
            1 => Op::Fill {
                at: at(u)?,
                len: input::number(u)?,
                byte: input::byte(u)?,
            },
            2 => Op::Read {
                at: at(u)?,
                len: input::number(u)?,
            },
            3 => Op::Grow {
                delta: input::byte(u)?,
            },
            4 => Op::Resize {
                size: input::number(u)?,
            },
            5 => Op::Checksum {
                split: input::number(u)?,
            },
            6 => Op::Save,
            _ => Op::Switch {
                index: input::byte(u)?,
            },
        })
    }
}

fn encode_at(w: &mut Writer, at: At) {
    w.flag(at.from_end);
    w.number(at.n);
}

impl Encode for Op {
    fn encode(&self, w: &mut Writer) {
        match self {
            Op::Write { at, data } => {
                w.choice(0);
                encode_at(w, *at);
                w.blob(data);
            }
            Op::Fill { at, len, byte } => {
                w.choice(1);
                encode_at(w, *at);
                w.number(*len);
                w.byte(*byte);
            }
            Op::Read { at, len } => {
                w.choice(2);
                encode_at(w, *at);
                w.number(*len);
            }
            Op::Grow { delta } => {
                w.choice(3);
                w.byte(*delta);
            }
            Op::Resize { size } => {
                w.choice(4);
                w.number(*size);
            }
            Op::Checksum { split } => {
                w.choice(5);
                w.number(*split);
            }
            Op::Save => w.choice(6),
            Op::Switch { index } => {
                w.choice(7);
                w.byte(*index);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ops {
    /// Initial size in Wasm pages (mod 5).
    pub initial_pages: u8,
    /// The growth limit, capped at [`CAP`].
    pub limit: u64,
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Ops {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Ops {
            initial_pages: input::byte(u)?,
            limit: input::number(u)?,
            ops: input::list(u, 64, Op::arbitrary)?,
        })
    }
}

impl Encode for Ops {
    fn encode(&self, w: &mut Writer) {
        w.byte(self.initial_pages);
        w.number(self.limit);
        w.list(&self.ops, |w, op| op.encode(w));
    }
}

/// The range `[offset, offset + len)` if it is inside a memory of `size` bytes.
fn inside(offset: u64, len: u64, size: u64) -> Option<std::ops::Range<usize>> {
    let end = offset.checked_add(len)?;
    (end <= size).then_some(offset as usize..end as usize)
}

fn expect_out_of_bounds<T: std::fmt::Debug>(
    result: std::result::Result<T, MemoryError>,
    what: &str,
) {
    assert!(
        matches!(result, Err(MemoryError::OutOfBounds { .. })),
        "{what} outside the memory: expected OutOfBounds, got {result:?}"
    );
}

fn check_equal(memory: &Memory, model: &[u8], what: &str) {
    assert_eq!(memory.size_bytes(), model.len() as u64, "{what}: size");
    let bytes = memory
        .read_vec(0, memory.size_bytes())
        .expect("the whole memory reads");
    if let Some(i) = bytes.iter().zip(model).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} (page {}) is {:#04x}, the model has {:#04x}",
            i / PAGE_SIZE,
            bytes[i],
            model[i]
        );
    }
    let pages = memory.size_bytes().div_ceil(PAGE_SIZE as u64);
    assert!(
        memory.resident_bytes() <= pages * PAGE_SIZE as u64,
        "{what}: {} resident bytes in a memory of {} pages",
        memory.resident_bytes(),
        pages
    );
}

fn check_checksum(memory: &Memory, model: &[u8], split: u64, what: &str) {
    let split = (split as usize).min(model.len());
    let mut builder = MemoryRootBuilder::new();
    builder.push_bytes(&model[..split]);
    builder.push_bytes(&model[split..]);
    assert_eq!(memory.root_hash(), builder.finish(), "{what}: root hash");
}

pub fn check(input: &Ops) {
    let limit = input.limit.min(CAP);
    let initial = u64::from(input.initial_pages % 5) * WASM_PAGE_SIZE;
    let mut memory = match Memory::zeroed(initial, limit) {
        Ok(memory) => memory,
        Err(_) => {
            assert!(initial > limit, "zeroed({initial}, {limit}) refused");
            return;
        }
    };
    assert!(initial <= limit, "zeroed({initial}, {limit}) accepted");
    let mut model = vec![0u8; initial as usize];
    let mut saved: Vec<(Memory, Vec<u8>)> = Vec::new();
    for (step, op) in input.ops.iter().enumerate() {
        let size = model.len() as u64;
        let what = format!("step {step} ({op:?})");
        match op {
            Op::Write { at, data } => {
                let offset = at.resolve(size);
                let result = memory.write(offset, data);
                match inside(offset, data.len() as u64, size) {
                    Some(range) => {
                        result.unwrap_or_else(|e| panic!("{what}: {e}"));
                        model[range].copy_from_slice(data);
                    }
                    None => expect_out_of_bounds(result, &what),
                }
            }
            Op::Fill { at, len, byte } => {
                let offset = at.resolve(size);
                let result = memory.fill(offset, *len, *byte);
                match inside(offset, *len, size) {
                    Some(range) => {
                        result.unwrap_or_else(|e| panic!("{what}: {e}"));
                        model[range].fill(*byte);
                    }
                    None => expect_out_of_bounds(result, &what),
                }
            }
            Op::Read { at, len } => {
                let offset = at.resolve(size);
                let result = memory.read_vec(offset, *len);
                match inside(offset, *len, size) {
                    Some(range) => {
                        let bytes = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!(bytes == model[range], "{what}: the bytes read differ");
                    }
                    None => expect_out_of_bounds(result, &what),
                }
            }
            Op::Grow { delta } => {
                let requested = size + u64::from(*delta) * WASM_PAGE_SIZE;
                match memory.grow(u64::from(*delta), limit) {
                    Ok(old) => {
                        assert!(requested <= limit, "{what}: grew past the limit {limit}");
                        assert_eq!(old, size / WASM_PAGE_SIZE, "{what}: old size");
                        model.resize(requested as usize, 0);
                    }
                    Err(err) => assert!(
                        requested > limit,
                        "{what}: refused a growth within the limit: {err}"
                    ),
                }
            }
            Op::Resize { size: new_size } => {
                let new_size = *new_size;
                let expected = if !new_size.is_multiple_of(WASM_PAGE_SIZE) {
                    Err("not a multiple of the Wasm page")
                } else if new_size > size && new_size > limit {
                    Err("past the limit")
                } else {
                    Ok(())
                };
                match (memory.resize(new_size, limit), expected) {
                    (Ok(()), Ok(())) => model.resize(new_size as usize, 0),
                    (Err(_), Err(_)) => {}
                    (actual, expected) => {
                        panic!("{what}: got {actual:?}, the model expects {expected:?}")
                    }
                }
            }
            Op::Checksum { split } => check_checksum(&memory, &model, *split, &what),
            Op::Save => {
                if saved.len() < MAX_SAVED {
                    saved.push((memory.clone(), model.clone()));
                }
            }
            Op::Switch { index } => {
                if !saved.is_empty() {
                    let i = usize::from(*index) % saved.len();
                    std::mem::swap(&mut saved[i].0, &mut memory);
                    std::mem::swap(&mut saved[i].1, &mut model);
                }
            }
        }
        // A refused operation changed nothing, an accepted one exactly what the model did.
        assert_eq!(memory.size_bytes(), model.len() as u64, "{what}: size");
    }
    check_equal(&memory, &model, "the final memory");
    check_checksum(&memory, &model, 0, "the final memory");
    for (i, (clone, image)) in saved.iter().enumerate() {
        check_equal(clone, image, &format!("kept clone {i}"));
        check_checksum(
            clone,
            image,
            PAGE_SIZE as u64 + 1,
            &format!("kept clone {i}"),
        );
    }
}

pub fn run(data: &[u8]) {
    if let Ok(ops) = input::decode::<Ops>(data) {
        check(&ops);
    }
}

pub fn sequences() -> Vec<(&'static str, Ops)> {
    let write = |n: u64, data: &[u8]| Op::Write {
        at: At { from_end: false, n },
        data: data.to_vec(),
    };
    let checksum = Op::Checksum { split: 4097 };
    vec![
        (
            "write-save-write-checksum-both",
            Ops {
                initial_pages: 1,
                limit: CAP,
                ops: vec![
                    write(4090, b"across a page boundary"),
                    checksum.clone(),
                    Op::Save,
                    write(4095, b"changed"),
                    checksum.clone(),
                    Op::Switch { index: 0 },
                    checksum.clone(),
                    Op::Read {
                        at: At {
                            from_end: false,
                            n: 4090,
                        },
                        len: 22,
                    },
                ],
            },
        ),
        (
            "grow-to-a-taller-tree-and-shrink",
            Ops {
                initial_pages: 0,
                limit: CAP,
                ops: vec![
                    Op::Grow { delta: 40 },
                    Op::Write {
                        at: At {
                            from_end: true,
                            n: 3,
                        },
                        data: b"end".to_vec(),
                    },
                    Op::Fill {
                        at: At {
                            from_end: false,
                            n: 1_000_000,
                        },
                        len: 70_000,
                        byte: 0xAA,
                    },
                    checksum.clone(),
                    Op::Save,
                    Op::Resize { size: 65_536 },
                    checksum.clone(),
                    Op::Grow { delta: 1 },
                    Op::Read {
                        at: At {
                            from_end: true,
                            n: 65_536,
                        },
                        len: 16,
                    },
                    Op::Switch { index: 0 },
                    Op::Read {
                        at: At {
                            from_end: true,
                            n: 3,
                        },
                        len: 3,
                    },
                ],
            },
        ),
        (
            "refusals",
            Ops {
                initial_pages: 2,
                limit: 3 * WASM_PAGE_SIZE,
                ops: vec![
                    Op::Grow { delta: 2 },
                    Op::Resize { size: 65_537 },
                    Op::Resize {
                        size: 4 * WASM_PAGE_SIZE,
                    },
                    write(u64::MAX, b"x"),
                    Op::Write {
                        at: At {
                            from_end: true,
                            n: 1,
                        },
                        data: b"xy".to_vec(),
                    },
                    Op::Fill {
                        at: At {
                            from_end: false,
                            n: 1,
                        },
                        len: u64::MAX,
                        byte: 1,
                    },
                    Op::Read {
                        at: At {
                            from_end: true,
                            n: 0,
                        },
                        len: 1,
                    },
                    Op::Grow { delta: 1 },
                    checksum,
                ],
            },
        ),
        (
            "zeroed-past-the-limit",
            Ops {
                initial_pages: 4,
                limit: 65_536,
                ops: vec![],
            },
        ),
    ]
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    sequences()
        .into_iter()
        .map(|(name, ops)| (name.to_string(), ops.to_bytes()))
        .collect()
}
