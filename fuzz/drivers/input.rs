//! The byte format of every structured fuzz input, read through `arbitrary::Unstructured` and
//! written back by [`Writer`] so that seeds are built from valid values, not guessed bytes.
//!
//! Only three primitives, each of which consumes a fixed, documented number of bytes, so that an
//! encoder can mirror them exactly (and `tests/fuzz_corpus.rs` checks that it does): a byte (one
//! byte; 0 once the input is exhausted), a number (a tag byte, then 1, 0, 2 or 8 bytes), and a
//! blob (a 2-byte little-endian length, then that many bytes or whatever is left).

use arbitrary::{Arbitrary, Result, Unstructured};

/// Values at the edges of every size and offset the replica checks.
pub const INTERESTING: [u64; 16] = [
    0,
    1,
    7,
    8,
    4095,
    4096,
    65_535,
    65_536,
    131_072,
    1_999_999,
    2_000_000,
    1 << 32,
    i64::MAX as u64,
    u64::MAX - 65_535,
    u64::MAX - 1,
    u64::MAX,
];

pub fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u8::arbitrary(u)
}

/// One of `n` choices (`n > 0`).
pub fn choice(u: &mut Unstructured<'_>, n: usize) -> Result<usize> {
    Ok(usize::from(byte(u)?) % n)
}

pub fn flag(u: &mut Unstructured<'_>) -> Result<bool> {
    Ok(byte(u)? & 1 == 1)
}

pub fn number(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match byte(u)? % 4 {
        0 => u64::from(byte(u)?),
        1 => INTERESTING[choice(u, INTERESTING.len())?],
        2 => u64::from(u16::from_le_bytes([byte(u)?, byte(u)?])),
        _ => {
            let mut bytes = [0u8; 8];
            for b in &mut bytes {
                *b = byte(u)?;
            }
            u64::from_le_bytes(bytes)
        }
    })
}

pub fn blob(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = usize::from(u16::from_le_bytes([byte(u)?, byte(u)?])).min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

/// Up to `max` items, stopping early when the input runs out.
pub fn list<'a, T>(
    u: &mut Unstructured<'a>,
    max: usize,
    mut item: impl FnMut(&mut Unstructured<'a>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = choice(u, max + 1)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        if u.is_empty() {
            break;
        }
        items.push(item(u)?);
    }
    Ok(items)
}

/// The inverse of the readers above.
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn byte(&mut self, b: u8) {
        self.bytes.push(b);
    }

    pub fn choice(&mut self, index: usize) {
        self.byte(u8::try_from(index).expect("choices fit a byte"));
    }

    pub fn flag(&mut self, value: bool) {
        self.byte(u8::from(value));
    }

    pub fn number(&mut self, n: u64) {
        if let Ok(small) = u8::try_from(n) {
            self.bytes.extend([0, small]);
        } else if let Some(i) = INTERESTING.iter().position(|&v| v == n) {
            self.bytes.extend([1, i as u8]);
        } else {
            self.byte(3);
            self.bytes.extend(n.to_le_bytes());
        }
    }

    pub fn blob(&mut self, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).expect("seed blobs are under 64 KiB");
        self.bytes.extend(len.to_le_bytes());
        self.bytes.extend(bytes);
    }

    pub fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        self.choice(items.len());
        for i in items {
            item(self, i);
        }
    }
}

/// A structured input with an exact encoder, so seeds are written as values.
pub trait Encode {
    fn encode(&self, w: &mut Writer);

    fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.bytes
    }
}

/// Decodes `data` the way `fuzz_target!(|input: T| ...)` does.
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Result<T> {
    T::arbitrary_take_rest(Unstructured::new(data))
}
