//! The manifest (one snapshot of an archive, JSON) and the pack index (which pages a pack
//! holds, binary): format v2 of `spec/archive.md`.

use std::collections::BTreeSet;

use candid::Principal;
use ic_management_canister_types::ReadCanisterSnapshotMetadataResult;
use serde::{Deserialize, Serialize};

use super::ArchiveError;
use crate::memory::checksum::{Hash, hex, sha256};
use crate::transfer::{MAX_CHUNK_FILE_BYTES, check_declared_sizes, chunk_hashes, unhex};

/// The `format` field of a version-2 manifest. A reader refuses any other.
pub const MANIFEST_FORMAT: &str = "canister-snapshots-archive/v2";

/// The unit of deduplication: a 4 KiB page, the leaf of the memory Merkle tree
/// (`spec/checksum.md`), so a page's name is the leaf hash the checksum already computes.
pub const PAGE_BYTES: u64 = 4096;

/// Pages per pack a push writes by default: 4 MiB objects, 256 per GiB.
pub const DEFAULT_PACK_PAGES: u32 = 1024;

/// Most pages a pack may hold (16 MiB): bounds what a pull or push reads for one index.
pub const MAX_PACK_PAGES: u32 = 4096;

/// Largest manifest read. A fresh snapshot has one run per pack (256 per GiB); each changed
/// stretch of pages adds two, about 16 bytes each: 1% of the pages of a 4 GiB heap and a
/// 64 GiB stable memory changed one page apart makes 360,000 runs, 6 MB.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// First bytes of a pack index object.
pub const PACK_INDEX_MAGIC: &[u8; 8] = b"CSARPK02";

/// One snapshot in an archive.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`PAGE_BYTES`].
    pub page_bytes: u64,
    /// Textual principal.
    pub canister_id: String,
    /// Hex of the snapshot id, empty when the directory did not record it.
    pub snapshot_id: String,
    pub label: Option<String>,
    pub taken_at_timestamp: u64,
    /// Hex of the snapshot checksum (`spec/checksum.md`) of everything below.
    pub checksum: String,
    /// Hex of the Candid encoding of `ReadCanisterSnapshotMetadataResult`: every field of
    /// `metadata.json`, floats bit for bit (JSON numbers cannot hold NaN or infinities).
    pub metadata_candid: String,
    /// The packs the runs below name, by position.
    pub packs: Vec<String>,
    pub wasm_module: PageRuns,
    pub wasm_memory: PageRuns,
    pub stable_memory: PageRuns,
    /// Each Wasm chunk (ascending by hash, as the metadata lists them) and its pages.
    pub chunks: Vec<ChunkPages>,
}

/// A byte string (a region, a chunk) as runs of pages: `size` bytes, the last page zero-padded
/// in its pack and cut back to `size` on pull.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRuns {
    pub size: u64,
    pub runs: Vec<Run>,
}

/// A Wasm chunk: its SHA-256 (its name in the chunk store) and its pages.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChunkPages {
    pub hash: String,
    #[serde(flatten)]
    pub pages: PageRuns,
}

/// `[pack, first, count]`: `count` consecutive pages of the byte string are pages
/// `first..first + count` of pack `packs[pack]`; `[null, 0, count]`: `count` zero pages,
/// not stored.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run(pub Option<u32>, pub u32, pub u32);

impl Run {
    pub fn pages(&self) -> u32 {
        self.2
    }
}

impl Manifest {
    /// `<taken_at_timestamp, 20 digits>-<first 16 hex digits of the checksum>`: sorts by time,
    /// and the same snapshot pushed twice gets the same name.
    pub fn id(&self) -> String {
        format!(
            "{:020}-{}",
            self.taken_at_timestamp,
            self.checksum.get(..16).unwrap_or(&self.checksum)
        )
    }

    /// `<canister>/<id>`: what `list` prints and `pull` takes.
    pub fn name(&self) -> String {
        format!("{}/{}", self.canister_id, self.id())
    }

    /// The metadata, decoded.
    pub fn metadata(&self) -> Result<ReadCanisterSnapshotMetadataResult, String> {
        let bytes = unhex(&self.metadata_candid).ok_or("metadata_candid is not hex")?;
        candid::decode_one(&bytes).map_err(|e| format!("metadata_candid does not decode: {e}"))
    }

    /// Bytes of the snapshot's regions (not of the archive: pages are shared).
    pub fn snapshot_bytes(&self) -> u64 {
        self.wasm_module
            .size
            .saturating_add(self.wasm_memory.size)
            .saturating_add(self.stable_memory.size)
    }

    /// Every pack a run names, each once.
    pub fn referenced_packs(&self) -> BTreeSet<String> {
        let used: BTreeSet<u32> = self
            .byte_strings()
            .flat_map(|(_, pages)| pages.runs.iter().filter_map(|run| run.0))
            .collect();
        used.into_iter()
            .filter_map(|i| self.packs.get(i as usize).cloned())
            .collect()
    }

    /// The regions and chunks, each with what an error message calls it.
    pub fn byte_strings(&self) -> impl Iterator<Item = (String, &PageRuns)> {
        [
            ("wasm_module".to_string(), &self.wasm_module),
            ("wasm_memory".to_string(), &self.wasm_memory),
            ("stable_memory".to_string(), &self.stable_memory),
        ]
        .into_iter()
        .chain(
            self.chunks
                .iter()
                .map(|c| (format!("Wasm chunk {}", c.hash), &c.pages)),
        )
    }

    /// Parses and checks a manifest: its format, page size, the runs against the sizes and the
    /// pack table, the hashes, and the metadata against the regions and chunks. `name` is the
    /// one it was read under. What passes can be pulled without any index arithmetic failing.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Manifest, ArchiveError> {
        let invalid = |reason: String| ArchiveError::Manifest {
            name: name.to_string(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("it does not parse: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format {:?} is not {MANIFEST_FORMAT:?}: written by another version of this tool",
                manifest.format
            )));
        }
        if manifest.page_bytes != PAGE_BYTES {
            return Err(invalid(format!(
                "page_bytes {} is not {PAGE_BYTES}",
                manifest.page_bytes
            )));
        }
        Principal::from_text(&manifest.canister_id)
            .map_err(|e| invalid(format!("canister_id: {e}")))?;
        if !is_hash(&manifest.checksum) {
            return Err(invalid("checksum is not 64 lower-case hex digits".into()));
        }
        if manifest.name() != name {
            return Err(invalid(format!(
                "it describes {}, not the snapshot its name says",
                manifest.name()
            )));
        }
        if let Some(bad) = manifest.packs.iter().find(|p| !is_hash(p)) {
            return Err(invalid(format!("pack name {bad:?} is not a hash")));
        }
        let metadata = manifest.metadata().map_err(invalid)?;
        // Before anything is allocated or read for it: the sizes the IC allows.
        check_declared_sizes(&metadata).map_err(|reason| invalid(format!("metadata: {reason}")))?;
        for (what, region, declared) in [
            (
                "wasm_module",
                &manifest.wasm_module,
                metadata.wasm_module_size,
            ),
            (
                "wasm_memory",
                &manifest.wasm_memory,
                metadata.wasm_memory_size,
            ),
            (
                "stable_memory",
                &manifest.stable_memory,
                metadata.stable_memory_size,
            ),
        ] {
            if region.size != declared {
                return Err(invalid(format!(
                    "{what}.size {} differs from the metadata's {declared}",
                    region.size
                )));
            }
        }
        let listed: Vec<String> = chunk_hashes(&metadata).iter().map(|h| hex(h)).collect();
        let chunks: Vec<String> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
        if listed != chunks {
            return Err(invalid(
                "chunks differ from the metadata's chunk store".into(),
            ));
        }
        if let Some(chunk) = manifest
            .chunks
            .iter()
            .find(|c| c.pages.size > MAX_CHUNK_FILE_BYTES)
        {
            return Err(invalid(format!(
                "chunk {} has {} bytes, more than a Wasm chunk may have",
                chunk.hash, chunk.pages.size
            )));
        }
        for (what, pages) in manifest.byte_strings() {
            pages
                .check(manifest.packs.len())
                .map_err(|reason| invalid(format!("{what}: {reason}")))?;
        }
        Ok(manifest)
    }
}

impl PageRuns {
    /// Pages of `size` bytes: the last one may be partial.
    pub fn page_count(&self) -> u64 {
        self.size.div_ceil(PAGE_BYTES)
    }

    /// The runs cover exactly [`Self::page_count`] pages, name packs of the table, and stay
    /// inside a pack's largest size.
    fn check(&self, packs: usize) -> Result<(), String> {
        let mut total: u64 = 0;
        for run in &self.runs {
            let Run(pack, first, count) = *run;
            if count == 0 {
                return Err("a run of 0 pages".into());
            }
            match pack {
                None if first != 0 => return Err("a zero run with a first page".into()),
                None => {}
                Some(pack) if pack as usize >= packs => {
                    return Err(format!("a run names pack {pack} of {packs}"));
                }
                Some(_)
                    if first
                        .checked_add(count)
                        .is_none_or(|end| end > MAX_PACK_PAGES) =>
                {
                    return Err(format!("a run ends past page {MAX_PACK_PAGES} of a pack"));
                }
                Some(_) => {}
            }
            total = total.saturating_add(u64::from(count));
        }
        if total != self.page_count() {
            return Err(format!(
                "runs cover {total} pages, {} bytes need {}",
                self.size,
                self.page_count()
            ));
        }
        Ok(())
    }
}

/// What a pack holds: the leaf hash of each page, in the order of its pages object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIndex {
    pub pages: Vec<Hash>,
}

impl PackIndex {
    /// The index object's bytes: magic, page count (u32 little-endian), the hashes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.pages.len().saturating_mul(32).saturating_add(12));
        bytes.extend_from_slice(PACK_INDEX_MAGIC);
        let count = u32::try_from(self.pages.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&count.to_le_bytes());
        for hash in &self.pages {
            bytes.extend_from_slice(hash);
        }
        bytes
    }

    /// A pack's name: the SHA-256 of its index object, so that an index is checked against
    /// its name and its pages against the index.
    pub fn name(&self) -> String {
        hex(&sha256(&self.encode()))
    }

    /// The largest index object: [`MAX_PACK_PAGES`] hashes.
    pub const MAX_BYTES: u64 = 12 + 32 * MAX_PACK_PAGES as u64;

    /// Decodes an index read under `name`, checked against it.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<PackIndex, String> {
        let actual = hex(&sha256(bytes));
        if actual != name {
            return Err(format!("its index hashes to {actual}"));
        }
        let (magic, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or("its index is shorter than its header")?;
        if magic != PACK_INDEX_MAGIC {
            return Err("its index does not start with the pack index magic".into());
        }
        let (count, hashes) = rest
            .split_first_chunk::<4>()
            .ok_or("its index is shorter than its header")?;
        let count = u32::from_le_bytes(*count);
        if count == 0
            || count > MAX_PACK_PAGES
            || hashes.len() as u64 != u64::from(count).saturating_mul(32)
        {
            return Err(format!(
                "its index declares {count} pages in {} bytes",
                hashes.len()
            ));
        }
        let pages = hashes
            .chunks_exact(32)
            .filter_map(|h| Hash::try_from(h).ok())
            .collect();
        Ok(PackIndex { pages })
    }
}

/// 64 lower-case hex digits: a pack name, a checksum.
pub fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a manifest name given by a user (`<canister>/<20 digits>-<16 hex>`) before it
/// becomes part of an object path.
pub fn check_name(name: &str) -> Result<(), ArchiveError> {
    let bad = |reason: &str| ArchiveError::Argument {
        what: "manifest",
        text: name.to_string(),
        reason: format!("{reason}; expected CANISTER/TIMESTAMP-CHECKSUM as `archive list` prints"),
    };
    let (canister, id) = name.split_once('/').ok_or_else(|| bad("no '/'"))?;
    Principal::from_text(canister).map_err(|_| bad("the canister is not a principal"))?;
    let (time, checksum) = id.split_once('-').ok_or_else(|| bad("no '-' in the id"))?;
    let ok = time.len() == 20
        && time.bytes().all(|b| b.is_ascii_digit())
        && checksum.len() == 16
        && checksum
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(bad("the id is not 20 digits, '-', 16 hex digits"))
    }
}
