//! Local snapshot directories, in the layout `dfx canister snapshot download` and icp-cli write
//! (`spec/transfer.md`):
//!
//! ```text
//! DIR/metadata.json                 serde_json of ReadCanisterSnapshotMetadataResult (+ below)
//! DIR/wasm_module.bin               exactly wasm_module_size bytes
//! DIR/wasm_memory.bin               exactly wasm_memory_size bytes
//! DIR/stable_memory.bin             exactly stable_memory_size bytes
//! DIR/wasm_chunk_store/<hex>.bin    one file per chunk, named by its SHA-256
//! DIR/checksum.json                 ours: the snapshot checksum recorded at download
//! ```
//!
//! Everything read from a directory is untrusted: sizes are checked against the metadata,
//! chunk files against their names, and the snapshot checksum against `checksum.json`. Every
//! file's size is checked before it is read (the `MAX_*` bounds below), and no symbolic link
//! inside the directory is followed, for reading or writing.
//!
//! `metadata.json` is exactly what serde_json writes for `ReadCanisterSnapshotMetadataResult`
//! (what dfx writes), except that a snapshot with a NaN or infinite float global also carries
//! `exact_float_globals`, the exact bits of those globals, which JSON numbers cannot hold
//! (`spec/transfer.md`, "Non-finite globals").

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ic_management_canister_types::{ReadCanisterSnapshotMetadataResult, SnapshotMetadataGlobal};
use serde::{Deserialize, Serialize};

use super::TransferError;
use crate::management::types::{
    MAX_CERTIFIED_DATA_BYTES, MAX_GLOBALS, MAX_WASM_CHUNK_BYTES, MAX_WASM_CHUNKS,
    MAX_WASM_MODULE_BYTES,
};
use crate::memory::checksum::{self, Hash, MemoryRootBuilder, hex};
use crate::memory::{MAX_STABLE_MEMORY_BYTES, MAX_WASM_MEMORY_BYTES, PAGE_SIZE, WASM_PAGE_SIZE};
use crate::snapshots::{SnapshotDigest, SnapshotRegion, snapshot_checksum};
use crate::state::Global;

/// Bytes read per step when streaming a file.
const READ_BUFFER: usize = 1 << 20;

/// Blocks a streaming read keeps in flight: one being used, the others being read.
const READ_AHEAD_BLOCKS: usize = 3;

/// Largest `metadata.json` read. The largest a valid snapshot produces (100 chunk hashes and
/// 1000 globals, pretty-printed, with every float global non-finite) is under 256 KiB.
pub const MAX_METADATA_JSON_BYTES: u64 = 1 << 20;

/// Largest `checksum.json` read (a valid one, with 100 chunk hashes in `files`, is under
/// 16 KiB).
pub const MAX_CHECKSUM_JSON_BYTES: u64 = 64 << 10;

/// Largest `.download_progress.json` / `.upload_progress.json` read (a valid one, with 100
/// chunk hashes done and 100 in `directory_files`, is under 16 KiB).
pub const MAX_PROGRESS_JSON_BYTES: u64 = 64 << 10;

/// Largest chunk file read: the IC's chunk size limit.
pub const MAX_CHUNK_FILE_BYTES: u64 = MAX_WASM_CHUNK_BYTES as u64;

/// Largest `wasm_module.bin` (read whole, to hash it): the IC's module limit. The memories are
/// streamed, never read whole; their sizes must equal what `metadata.json` declares.
pub const MAX_WASM_MODULE_FILE_BYTES: u64 = MAX_WASM_MODULE_BYTES;

/// The `metadata.json` field with the exact bits of non-finite float globals.
pub const EXACT_FLOAT_GLOBALS: &str = "exact_float_globals";

/// One entry of `exact_float_globals`: `globals[index]` is `{"f32": null}` or `{"f64": null}`
/// in the dfx part of the file, and holds these bits (lower-case hex, 8 or 16 digits).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct ExactFloatGlobal {
    index: usize,
    #[serde(rename = "type")]
    ty: FloatType,
    bits: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FloatType {
    F32,
    F64,
}

/// What `write_metadata` writes: the crate type's fields in its order (flattened), then the
/// extension field only when there is something to put in it.
#[derive(Serialize)]
struct MetadataFile<'a> {
    #[serde(flatten)]
    metadata: &'a ReadCanisterSnapshotMetadataResult,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exact_float_globals: Vec<ExactFloatGlobal>,
}

/// What `checksum.json` records: the snapshot's checksum and where it came from, and since
/// per-file hashes were added, the hash of each file (`files`), so that an upload can say which
/// files changed since the download. Records written before have no `files` and still parse.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChecksumRecord {
    /// Hex of the 32-byte snapshot checksum (`spec/checksum.md`).
    pub checksum: String,
    pub canister_id: String,
    /// Hex of the snapshot id bytes.
    pub snapshot_id: String,
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileHashes>,
}

/// The hash of each file of a snapshot directory, in lower-case hex: what the snapshot
/// checksum is computed from (`spec/checksum.md`), plus `metadata.json` itself (which also
/// holds the timer and hook status the checksum leaves out).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    /// SHA-256 of `metadata.json`, byte for byte.
    pub metadata: String,
    /// SHA-256 of `wasm_module.bin`.
    pub wasm_module: String,
    /// Memory root of `wasm_memory.bin`.
    pub wasm_memory: String,
    /// Memory root of `stable_memory.bin`.
    pub stable_memory: String,
    /// The chunks `metadata.json` lists (each file's SHA-256 is its name), sorted.
    pub chunks: Vec<String>,
}

impl FileHashes {
    /// The files (paths relative to the directory) that differ between `self` (before) and
    /// `now`; a chunk added or removed is named by its file.
    pub fn changed_files(&self, now: &FileHashes) -> Vec<String> {
        let mut changed: Vec<String> = [
            ("metadata.json", &self.metadata, &now.metadata),
            ("wasm_module.bin", &self.wasm_module, &now.wasm_module),
            ("wasm_memory.bin", &self.wasm_memory, &now.wasm_memory),
            ("stable_memory.bin", &self.stable_memory, &now.stable_memory),
        ]
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .map(|(name, _, _)| name.to_string())
        .collect();
        let (before, after): (BTreeSet<&String>, BTreeSet<&String>) =
            (self.chunks.iter().collect(), now.chunks.iter().collect());
        changed.extend(
            before
                .symmetric_difference(&after)
                .map(|hash| format!("wasm_chunk_store/{hash}.bin")),
        );
        changed
    }
}

/// Memory roots already computed from the bytes of a directory's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnownRoots {
    pub wasm_memory: Option<Hash>,
    pub stable_memory: Option<Hash>,
}

/// A validated directory: its metadata, the snapshot checksum of its files and the hash of
/// each file, from one pass over them.
#[derive(Debug, Clone)]
pub struct DirectoryDigest {
    pub metadata: ReadCanisterSnapshotMetadataResult,
    pub checksum: Hash,
    pub files: FileHashes,
}

impl DirectoryDigest {
    /// What changed since the download that wrote `record` (`checksum.json`), if any.
    pub fn edits_since(&self, record: Option<&ChecksumRecord>) -> Edits {
        let Some(record) = record else {
            return Edits::NoRecord;
        };
        let same_checksum = record.checksum == hex(&self.checksum);
        match &record.files {
            Some(files) => match files.changed_files(&self.files) {
                changed if !changed.is_empty() => Edits::Files(changed),
                // Every file as recorded, yet another checksum: the record is inconsistent.
                _ if !same_checksum => Edits::FilesUnknown,
                _ => Edits::Unchanged,
            },
            None if same_checksum => Edits::Unchanged,
            None => Edits::FilesUnknown,
        }
    }
}

/// What changed in a directory since its download, by its `checksum.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edits {
    /// No `checksum.json`: not a download of this tool, nothing to compare with.
    NoRecord,
    /// Every file is as downloaded.
    Unchanged,
    /// These files (relative paths) changed since the download.
    Files(Vec<String>),
    /// The checksum differs from the recorded one, but the record predates per-file hashes.
    FilesUnknown,
}

impl Edits {
    pub fn is_edited(&self) -> bool {
        matches!(self, Edits::Files(_) | Edits::FilesUnknown)
    }
}

impl std::fmt::Display for Edits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Edits::NoRecord => write!(f, "no checksum.json to compare with"),
            Edits::Unchanged => write!(f, "unchanged since the download"),
            Edits::Files(files) => write!(f, "changed since the download: {}", files.join(", ")),
            Edits::FilesUnknown => write!(
                f,
                "changed since the download, files unknown (checksum.json predates per-file \
                 hashes)"
            ),
        }
    }
}

/// A snapshot directory on disk.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    root: PathBuf,
}

impl SnapshotDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SnapshotDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metadata_path(&self) -> PathBuf {
        self.root.join("metadata.json")
    }

    pub fn checksum_path(&self) -> PathBuf {
        self.root.join("checksum.json")
    }

    pub fn region_path(&self, region: SnapshotRegion) -> PathBuf {
        self.root.join(format!("{}.bin", region.name()))
    }

    pub fn chunk_store_dir(&self) -> PathBuf {
        self.root.join("wasm_chunk_store")
    }

    pub fn chunk_path(&self, hash: &[u8]) -> PathBuf {
        self.chunk_store_dir().join(format!("{}.bin", hex(hash)))
    }

    /// Parses `metadata.json` and checks that the sizes it declares are possible.
    pub fn read_metadata(&self) -> Result<ReadCanisterSnapshotMetadataResult, TransferError> {
        self.read_metadata_and_hash().map(|(metadata, _)| metadata)
    }

    /// [`Self::read_metadata`], and the SHA-256 of the file's bytes.
    fn read_metadata_and_hash(
        &self,
    ) -> Result<(ReadCanisterSnapshotMetadataResult, Hash), TransferError> {
        let path = self.metadata_path();
        let text = read_small_file(&path, MAX_METADATA_JSON_BYTES, "metadata.json")?
            .ok_or_else(|| TransferError::MissingFile { path: path.clone() })?;
        let invalid = |reason: String| TransferError::Metadata {
            path: path.clone(),
            reason,
        };
        let metadata = parse_metadata(&text).map_err(invalid)?;
        check_declared_sizes(&metadata).map_err(invalid)?;
        if metadata.globals.iter().any(Option::is_none) {
            return Err(invalid(
                "a global has a type this tool does not know (null in globals)".into(),
            ));
        }
        Ok((metadata, checksum::sha256(&text)))
    }

    pub fn write_metadata(
        &self,
        metadata: &ReadCanisterSnapshotMetadataResult,
    ) -> Result<(), TransferError> {
        let file = MetadataFile {
            metadata,
            exact_float_globals: exact_float_globals(metadata),
        };
        // A struct of strings, numbers and finite floats (non-finite ones are written as bits):
        // serde_json serialises every such value.
        #[allow(clippy::expect_used)]
        let json = serde_json::to_vec_pretty(&file).expect("metadata serialises");
        write_atomically(&self.metadata_path(), &json)
    }

    pub fn read_checksum_record(&self) -> Result<Option<ChecksumRecord>, TransferError> {
        let path = self.checksum_path();
        match read_small_file(&path, MAX_CHECKSUM_JSON_BYTES, "checksum.json")? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| TransferError::Metadata {
                        path,
                        reason: format!("it does not parse as a checksum record: {e}"),
                    })
            }
            None => Ok(None),
        }
    }

    pub fn write_checksum_record(&self, record: &ChecksumRecord) -> Result<(), TransferError> {
        // Strings only: serde_json serialises every such record.
        #[allow(clippy::expect_used)]
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        write_atomically(&self.checksum_path(), &json)
    }

    /// The declared size of a region.
    pub fn region_size(
        metadata: &ReadCanisterSnapshotMetadataResult,
        region: SnapshotRegion,
    ) -> u64 {
        match region {
            SnapshotRegion::WasmModule => metadata.wasm_module_size,
            SnapshotRegion::WasmMemory => metadata.wasm_memory_size,
            SnapshotRegion::StableMemory => metadata.stable_memory_size,
        }
    }

    /// Checks that every file is present with the size the metadata declares and every chunk
    /// file hashes to its name. Returns the metadata.
    pub fn validate(&self) -> Result<ReadCanisterSnapshotMetadataResult, TransferError> {
        self.validate_and_hash_metadata()
            .map(|(metadata, _)| metadata)
    }

    /// [`Self::validate`], and the SHA-256 of `metadata.json`.
    fn validate_and_hash_metadata(
        &self,
    ) -> Result<(ReadCanisterSnapshotMetadataResult, Hash), TransferError> {
        let (metadata, metadata_hash) = self.read_metadata_and_hash()?;
        for region in REGIONS {
            let path = self.region_path(region);
            let expected = Self::region_size(&metadata, region);
            let actual = match plain_file_len(&path)? {
                Some(len) => len,
                None => return Err(TransferError::MissingFile { path }),
            };
            if actual != expected {
                return Err(TransferError::FileSize {
                    path,
                    expected,
                    actual,
                });
            }
        }
        refuse_symlink(&self.chunk_store_dir())?;
        for hash in chunk_hashes(&metadata) {
            let path = self.chunk_path(&hash);
            let bytes = read_small_file(&path, MAX_CHUNK_FILE_BYTES, "Wasm chunk")?
                .ok_or_else(|| TransferError::MissingFile { path: path.clone() })?;
            let actual = checksum::sha256(&bytes);
            if actual.as_slice() != hash.as_slice() {
                return Err(TransferError::ChunkHash {
                    path,
                    actual: hex(&actual),
                });
            }
        }
        Ok((metadata, metadata_hash))
    }

    /// Recomputes the snapshot checksum from the files alone (`spec/checksum.md`), streaming
    /// each file. Validates the directory first.
    pub fn compute_checksum(&self) -> Result<Hash, TransferError> {
        self.validate_and_checksum().map(|(_, checksum)| checksum)
    }

    /// [`Self::validate`] and [`Self::compute_checksum`] in one pass over the files.
    pub fn validate_and_checksum(
        &self,
    ) -> Result<(ReadCanisterSnapshotMetadataResult, Hash), TransferError> {
        self.digest()
            .map(|digest| (digest.metadata, digest.checksum))
    }

    /// Validates the directory and hashes each file once: the metadata, the snapshot checksum
    /// and the per-file hashes `checksum.json` records.
    pub fn digest(&self) -> Result<DirectoryDigest, TransferError> {
        self.digest_with(&KnownRoots::default())
    }

    /// [`Self::digest`], taking the memory roots given in `known` instead of reading those
    /// files again (a download hashes what it writes as it writes it). The files are still
    /// validated (present, declared sizes).
    pub fn digest_with(&self, known: &KnownRoots) -> Result<DirectoryDigest, TransferError> {
        let (metadata, metadata_hash) = self.validate_and_hash_metadata()?;
        let wasm_module_hash = checksum::sha256(&self.read_module()?);
        // One memory after the other, each hashed on every core.
        let root = |known: Option<Hash>, region| match known {
            Some(root) => Ok(root),
            None => self.memory_root(region),
        };
        let wasm_memory_root = root(known.wasm_memory, SnapshotRegion::WasmMemory)?;
        let stable_memory_root = root(known.stable_memory, SnapshotRegion::StableMemory)?;
        let globals = metadata_globals(&metadata)?;
        // `validate` checked that every hash is the SHA-256 of its file: all are 32 bytes.
        let chunk_hashes: Vec<Hash> = chunk_hashes(&metadata)
            .iter()
            .filter_map(|h| h.as_slice().try_into().ok())
            .collect();
        let files = FileHashes {
            metadata: hex(&metadata_hash),
            wasm_module: hex(&wasm_module_hash),
            wasm_memory: hex(&wasm_memory_root),
            stable_memory: hex(&stable_memory_root),
            chunks: chunk_hashes.iter().map(|h| hex(h)).collect(),
        };
        let checksum = snapshot_checksum(&SnapshotDigest {
            wasm_module_hash,
            wasm_memory_root,
            stable_memory_root,
            exported_globals: &globals,
            certified_data: &metadata.certified_data,
            chunk_hashes,
        });
        Ok(DirectoryDigest {
            metadata,
            checksum,
            files,
        })
    }

    /// `wasm_module.bin`, whole (at most [`MAX_WASM_MODULE_FILE_BYTES`]).
    pub fn read_module(&self) -> Result<Vec<u8>, TransferError> {
        let path = self.region_path(SnapshotRegion::WasmModule);
        read_small_file(&path, MAX_WASM_MODULE_FILE_BYTES, "Wasm module")?
            .ok_or(TransferError::MissingFile { path })
    }

    /// The memory root of a region's file, read ahead on one thread and hashed on all cores.
    pub fn memory_root(&self, region: SnapshotRegion) -> Result<Hash, TransferError> {
        memory_root_of_file(&self.region_path(region))
    }
}

/// The three regions, in the order files are transferred.
pub const REGIONS: [SnapshotRegion; 3] = [
    SnapshotRegion::WasmModule,
    SnapshotRegion::WasmMemory,
    SnapshotRegion::StableMemory,
];

/// The metadata's globals in this crate's form.
pub fn metadata_globals(
    metadata: &ReadCanisterSnapshotMetadataResult,
) -> Result<Vec<Global>, TransferError> {
    metadata
        .globals
        .iter()
        .flatten()
        .map(|g| {
            Global::try_from(g).map_err(|reason| TransferError::Metadata {
                path: PathBuf::from("metadata.json"),
                reason,
            })
        })
        .collect()
}

/// Takes an exclusive lock (`flock`) on a directory's own descriptor, creating nothing in it:
/// `Ok(None)` if another process holds it. Held until the returned file is dropped; the kernel
/// releases it when its holder dies, so a killed process never leaves a lock behind, and a
/// directory whose lock can be taken belongs to no running process.
pub fn lock_directory(dir: &Path) -> Result<Option<File>, std::io::Error> {
    use fs4::{FileExt, TryLockError};
    let file = File::open(dir)?;
    match FileExt::try_lock(&file) {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The chunk hashes `metadata.json` lists, sorted, each once: the replica's chunk store is a
/// set, and a listing that names a chunk twice (dfx writes what it is given) means one chunk.
pub fn chunk_hashes(metadata: &ReadCanisterSnapshotMetadataResult) -> Vec<Vec<u8>> {
    let mut hashes: Vec<Vec<u8>> = metadata
        .wasm_chunk_store
        .iter()
        .map(|c| c.hash.clone())
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// Checks every size a snapshot's metadata declares against the IC's limits, the ones the
/// replica's `upload_canister_snapshot_metadata` enforces: a module of `1..=100 MiB`, memories
/// in whole Wasm pages of at most 4 GiB (heap) and 500 GiB (stable), at most 100 chunks,
/// 1,000 globals and 32 bytes of certified data. A directory (`metadata.json`) and an archive
/// manifest are checked with it before anything is allocated or read for them, so a hostile
/// size (a 1 TiB stable memory) is refused naming the field instead of read for hours.
pub fn check_declared_sizes(metadata: &ReadCanisterSnapshotMetadataResult) -> Result<(), String> {
    if metadata.wasm_module_size == 0 {
        return Err("wasm_module_size is 0: a snapshot has a module".into());
    }
    if metadata.wasm_module_size > MAX_WASM_MODULE_FILE_BYTES {
        return Err(format!(
            "wasm_module_size {} is more than {MAX_WASM_MODULE_FILE_BYTES} (the IC's module \
             limit)",
            metadata.wasm_module_size
        ));
    }
    for (name, size, limit, what) in [
        (
            "wasm_memory_size",
            metadata.wasm_memory_size,
            MAX_WASM_MEMORY_BYTES,
            "the IC's Wasm memory limit",
        ),
        (
            "stable_memory_size",
            metadata.stable_memory_size,
            MAX_STABLE_MEMORY_BYTES,
            "the IC's stable memory limit",
        ),
    ] {
        if !size.is_multiple_of(WASM_PAGE_SIZE) {
            return Err(format!(
                "{name} {size} is not a multiple of 65536 (the Wasm page size)"
            ));
        }
        if size > limit {
            return Err(format!("{name} {size} is more than {limit} ({what})"));
        }
    }
    let chunks = chunk_hashes(metadata).len();
    if chunks > MAX_WASM_CHUNKS {
        return Err(format!(
            "wasm_chunk_store lists {chunks} chunks, more than {MAX_WASM_CHUNKS} (the IC's \
             chunk store limit)"
        ));
    }
    if metadata.globals.len() > MAX_GLOBALS {
        return Err(format!(
            "{} globals, more than {MAX_GLOBALS} (the IC's limit)",
            metadata.globals.len()
        ));
    }
    if metadata.certified_data.len() > MAX_CERTIFIED_DATA_BYTES {
        return Err(format!(
            "certified_data has {} bytes, more than {MAX_CERTIFIED_DATA_BYTES} (the IC's limit)",
            metadata.certified_data.len()
        ));
    }
    Ok(())
}

/// Parses `metadata.json`: the crate type, with the globals listed in `exact_float_globals`
/// set to their exact bits. The reason names what is wrong.
fn parse_metadata(text: &[u8]) -> Result<ReadCanisterSnapshotMetadataResult, String> {
    let parse_error = |e: serde_json::Error| format!("it does not parse as snapshot metadata: {e}");
    let mut value: serde_json::Value = serde_json::from_slice(text).map_err(parse_error)?;
    let exact: Vec<ExactFloatGlobal> = match value
        .as_object_mut()
        .and_then(|fields| fields.remove(EXACT_FLOAT_GLOBALS))
    {
        None => Vec::new(),
        Some(list) => serde_json::from_value(list)
            .map_err(|e| format!("{EXACT_FLOAT_GLOBALS} does not parse: {e}"))?,
    };
    let mut bits = Vec::with_capacity(exact.len());
    for entry in &exact {
        let (null, placeholder) = match entry.ty {
            FloatType::F32 => (
                serde_json::json!({"f32": null}),
                serde_json::json!({"f32": 0.0}),
            ),
            FloatType::F64 => (
                serde_json::json!({"f64": null}),
                serde_json::json!({"f64": 0.0}),
            ),
        };
        let slot = value
            .get_mut("globals")
            .and_then(|globals| globals.get_mut(entry.index))
            .filter(|slot| **slot == null)
            .ok_or_else(|| {
                format!(
                    "{EXACT_FLOAT_GLOBALS} names global {}, but globals[{0}] is not {null}: \
                     the exact bits stand only for a non-finite value, once",
                    entry.index
                )
            })?;
        *slot = placeholder;
        let global = parse_exact_bits(entry).ok_or_else(|| {
            format!(
                "{EXACT_FLOAT_GLOBALS}: global {} has bits {:?}, not the hex of a NaN or an \
                 infinity of its type",
                entry.index, entry.bits
            )
        })?;
        bits.push((entry.index, global));
    }
    let mut metadata: ReadCanisterSnapshotMetadataResult =
        serde_json::from_value(value).map_err(parse_error)?;
    for (index, global) in bits {
        // `index` was found in the same `globals` array above, so the slot exists.
        if let Some(slot) = metadata.globals.get_mut(index) {
            *slot = Some(global);
        }
    }
    Ok(metadata)
}

/// The global an `exact_float_globals` entry stands for, if its bits are hex of the right
/// width and encode a non-finite value (finite values are written as JSON numbers).
fn parse_exact_bits(entry: &ExactFloatGlobal) -> Option<SnapshotMetadataGlobal> {
    let digits =
        |n: usize| entry.bits.len() == n && entry.bits.bytes().all(|b| b.is_ascii_hexdigit());
    match entry.ty {
        FloatType::F32 if digits(8) => {
            let value = f32::from_bits(u32::from_str_radix(&entry.bits, 16).ok()?);
            (!value.is_finite()).then_some(SnapshotMetadataGlobal::F32(value))
        }
        FloatType::F64 if digits(16) => {
            let value = f64::from_bits(u64::from_str_radix(&entry.bits, 16).ok()?);
            (!value.is_finite()).then_some(SnapshotMetadataGlobal::F64(value))
        }
        _ => None,
    }
}

/// The `exact_float_globals` entries for `metadata`'s non-finite float globals.
fn exact_float_globals(metadata: &ReadCanisterSnapshotMetadataResult) -> Vec<ExactFloatGlobal> {
    metadata
        .globals
        .iter()
        .enumerate()
        .filter_map(|(index, global)| match global {
            Some(SnapshotMetadataGlobal::F32(v)) if !v.is_finite() => Some(ExactFloatGlobal {
                index,
                ty: FloatType::F32,
                bits: format!("{:08x}", v.to_bits()),
            }),
            Some(SnapshotMetadataGlobal::F64(v)) if !v.is_finite() => Some(ExactFloatGlobal {
                index,
                ty: FloatType::F64,
                bits: format!("{:016x}", v.to_bits()),
            }),
            _ => None,
        })
        .collect()
}

/// Refuses a symbolic link at `path`; an absent path passes (absence is the caller's concern).
pub fn refuse_symlink(path: &Path) -> Result<(), TransferError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(TransferError::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TransferError::io(path, e)),
    }
}

/// The length of the plain file at `path`, `None` if absent; refuses a symbolic link.
pub fn plain_file_len(path: &Path) -> Result<Option<u64>, TransferError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(TransferError::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TransferError::io(path, e)),
    }
}

/// Opens a plain file for reading; refuses a symbolic link.
pub fn open_plain_file(path: &Path) -> Result<File, TransferError> {
    refuse_symlink(path)?;
    File::open(path).map_err(|e| TransferError::io(path, e))
}

/// Reads a whole file of at most `limit` bytes (`what` names it in the error), `None` if it is
/// absent. Its size is checked before reading, and the read stops past `limit` in case the file
/// grows meanwhile; a symbolic link is refused.
pub fn read_small_file(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<Option<Vec<u8>>, TransferError> {
    let too_large = |size| TransferError::TooLarge {
        path: path.to_path_buf(),
        what,
        size,
        limit,
    };
    match plain_file_len(path)? {
        None => return Ok(None),
        Some(size) if size > limit => return Err(too_large(size)),
        Some(_) => {}
    }
    let file = File::open(path).map_err(|e| TransferError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| TransferError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// Streams a file in blocks of 1 MiB (the last may be shorter), with their offsets. A reader
/// thread reads the next blocks while `f` works on this one (at most [`READ_AHEAD_BLOCKS`]
/// blocks in flight, so memory stays bounded whatever the file's size).
pub fn for_each_block(path: &Path, mut f: impl FnMut(u64, &[u8])) -> Result<(), TransferError> {
    let file = open_plain_file(path)?;
    // One block being used, one queued, one being read.
    let (full_tx, full_rx) =
        std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(READ_AHEAD_BLOCKS - 2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..READ_AHEAD_BLOCKS {
        let _ = empty_tx.send(vec![0u8; READ_BUFFER]);
    }
    // `move`: the consumer's ends of both channels drop when it returns (or unwinds), which
    // stops a reader still waiting for a buffer, so the scope's join cannot hang.
    std::thread::scope(move |scope| {
        scope.spawn(move || {
            let mut reader = file;
            // Ends when the file ends, on an error, or when the consumer stops taking blocks.
            while let Ok(mut buf) = empty_rx.recv() {
                buf.resize(READ_BUFFER, 0);
                let read = read_full(&mut reader, &mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let last = !matches!(&read, Ok(buf) if !buf.is_empty());
                if full_tx.send(read).is_err() || last {
                    return;
                }
            }
        });
        let mut offset = 0u64;
        for read in full_rx {
            let buf = read.map_err(|e| TransferError::io(path, e))?;
            if buf.is_empty() {
                break;
            }
            f(offset, &buf);
            offset = offset.saturating_add(buf.len() as u64);
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })
}

/// The memory root (`spec/checksum.md`) of a file's bytes: read ahead on one thread, hashed on
/// all cores.
pub fn memory_root_of_file(path: &Path) -> Result<Hash, TransferError> {
    let mut builder = MemoryRootBuilder::new();
    for_each_block(path, |_, block| builder.push_bytes_parallel(block))?;
    Ok(builder.finish())
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest)? {
            0 => break,
            n => filled = filled.saturating_add(n),
        }
    }
    Ok(filled)
}

/// Writes `bytes` to `path` through a temporary name, then renames: readers see the old file
/// or the whole new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TransferError> {
    let tmp = part_path(path);
    refuse_symlink(&tmp)?;
    let mut file = File::create(&tmp).map_err(|e| TransferError::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| TransferError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| TransferError::io(path, e))?;
    // The rename itself survives a power loss only once the directory is synced.
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| TransferError::io(parent, e))
}

/// `name.part`: where a file is written before it is complete.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Runs of changed 4 KiB pages between two equally long blocks, as (first page, page count),
/// relative to the block.
pub fn changed_page_runs(old: &[u8], new: &[u8]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, (a, b)) in old.chunks(PAGE_SIZE).zip(new.chunks(PAGE_SIZE)).enumerate() {
        if a != b {
            match runs.last_mut() {
                Some((start, count)) if start.saturating_add(*count) == i as u64 => {
                    *count = count.saturating_add(1)
                }
                _ => runs.push((i as u64, 1)),
            }
        }
    }
    runs
}
