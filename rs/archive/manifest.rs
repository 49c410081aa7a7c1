//! The manifest: one snapshot of an archive, as JSON (`spec/archive.md`, format v1).

use candid::Principal;
use ic_management_canister_types::ReadCanisterSnapshotMetadataResult;
use serde::{Deserialize, Serialize};

use super::ArchiveError;
use crate::memory::checksum::hex;
use crate::transfer::{chunk_hashes, unhex};

/// The `format` field of a version-1 manifest. A reader refuses any other.
pub const MANIFEST_FORMAT: &str = "canister-snapshots-archive/v1";

/// Bytes per block of a region (the last block of a region may be shorter).
pub const BLOCK_BYTES: u64 = 1 << 20;

/// Largest manifest read: a 4 GiB heap and a 500 GiB stable memory list about 516,000 blocks
/// of 67 bytes each, 35 MB.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// One snapshot in an archive.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`BLOCK_BYTES`] for v1.
    pub block_bytes: u64,
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
    pub wasm_module: RegionBlocks,
    pub wasm_memory: RegionBlocks,
    pub stable_memory: RegionBlocks,
    /// Hex SHA-256 of each Wasm chunk, ascending; each chunk is the block of that name.
    pub chunks: Vec<String>,
}

/// A region: its size and the hash of each of its blocks, `null` for an all-zero block.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionBlocks {
    pub size: u64,
    pub blocks: Vec<Option<String>>,
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

    /// Bytes of the snapshot's regions and chunks (not of the archive: blocks are shared).
    pub fn snapshot_bytes(&self) -> u64 {
        self.wasm_module
            .size
            .saturating_add(self.wasm_memory.size)
            .saturating_add(self.stable_memory.size)
    }

    /// Every block the manifest references, each once.
    pub fn referenced_blocks(&self) -> std::collections::BTreeSet<String> {
        [&self.wasm_module, &self.wasm_memory, &self.stable_memory]
            .into_iter()
            .flat_map(|region| region.blocks.iter().flatten().cloned())
            .chain(self.chunks.iter().cloned())
            .collect()
    }

    /// Parses and checks a manifest: its format, block size, the block lists against the sizes,
    /// the hashes, and the metadata against the regions. `name` is the one it was read under.
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
        if manifest.block_bytes != BLOCK_BYTES {
            return Err(invalid(format!(
                "block_bytes {} is not {BLOCK_BYTES}",
                manifest.block_bytes
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
        let metadata = manifest.metadata().map_err(invalid)?;
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
            if region.blocks.len() as u64 != region.size.div_ceil(BLOCK_BYTES) {
                return Err(invalid(format!(
                    "{what} lists {} blocks for {} bytes",
                    region.blocks.len(),
                    region.size
                )));
            }
            if !region.blocks.iter().flatten().all(|h| is_hash(h)) {
                return Err(invalid(format!(
                    "{what} lists a block name that is not a hash"
                )));
            }
        }
        let listed: Vec<String> = chunk_hashes(&metadata).iter().map(|h| hex(h)).collect();
        if listed != manifest.chunks {
            return Err(invalid(
                "chunks differ from the metadata's chunk store".into(),
            ));
        }
        Ok(manifest)
    }
}

/// 64 lower-case hex digits: a block name, a checksum.
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
