//! Snapshot directories as `download` writes them and users edit them: any `metadata.json`
//! (structured, byte-edited or raw) and any file contents. `inspect`, `verify`
//! (`SnapshotDir::validate_and_checksum`), `diff` and an upload through the harness must
//! return errors, never panic; a directory that verifies must diff as identical to itself and
//! upload to a snapshot with the directory's checksum, which then loads and runs.

use std::path::Path;

use arbitrary::{Arbitrary, Result, Unstructured};
use canister_snapshots::memory::checksum::sha256;
use canister_snapshots::snapshots::SnapshotRegion;
use canister_snapshots::transfer::{SnapshotDir, TransferError, diff, inspect};
use canister_snapshots::{StateMachine, TEST_CANISTER_WASM};
use ic_management_canister_types::{
    CanisterTimer, ChunkHash, ReadCanisterSnapshotMetadataResult, SnapshotSource,
};

use super::input::{self, Encode, Writer};
use super::replica;
use super::templates::{self, Args, Edit};

/// Region files are at most this long (a fuzz input writes them on every execution).
const MAX_FILE_BYTES: u64 = (1 << 20) + 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    /// Built from the files ([`metadata`]), then byte-edited.
    Structured(Args, Vec<Edit>),
    Raw(Vec<u8>),
}

/// A region file: `content`, then zeros up to `size` (the declared size when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub size: Option<u64>,
    pub content: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub metadata: Metadata,
    /// Module, Wasm memory, stable memory.
    pub regions: [File; 3],
    pub chunks: Vec<Vec<u8>>,
    pub checksum_json: Option<Vec<u8>>,
}

fn file(u: &mut Unstructured<'_>) -> Result<File> {
    Ok(File {
        size: if input::flag(u)? {
            Some(input::number(u)?)
        } else {
            None
        },
        content: input::blob(u)?,
    })
}

impl<'a> Arbitrary<'a> for Dir {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Dir {
            metadata: if input::flag(u)? {
                Metadata::Raw(input::blob(u)?)
            } else {
                Metadata::Structured(Args::arbitrary(u)?, input::list(u, 8, Edit::arbitrary)?)
            },
            regions: [file(u)?, file(u)?, file(u)?],
            chunks: input::list(u, 3, input::blob)?,
            checksum_json: if input::flag(u)? {
                Some(input::blob(u)?)
            } else {
                None
            },
        })
    }
}

impl Encode for Dir {
    fn encode(&self, w: &mut Writer) {
        match &self.metadata {
            Metadata::Raw(bytes) => {
                w.flag(true);
                w.blob(bytes);
            }
            Metadata::Structured(args, edits) => {
                w.flag(false);
                args.encode(w);
                w.list(edits, |w, e| e.encode(w));
            }
        }
        for file in &self.regions {
            w.flag(file.size.is_some());
            if let Some(size) = file.size {
                w.number(size);
            }
            w.blob(&file.content);
        }
        w.list(&self.chunks, |w, c| w.blob(c));
        w.flag(self.checksum_json.is_some());
        if let Some(json) = &self.checksum_json {
            w.blob(json);
        }
    }
}

/// The module file's bytes before padding: the test canister's module when empty.
fn module_content(content: &[u8]) -> Vec<u8> {
    if content.is_empty() {
        TEST_CANISTER_WASM.to_vec()
    } else {
        content.to_vec()
    }
}

/// Metadata for the files of `dir`. `picks`: Wasm memory pages, stable memory pages, globals
/// ([`templates::globals`]; bit 7 adds an unknown global), flags: declared module size
/// `numbers[0]`, Wasm memory size `numbers[1]`, an active timer, corrupted chunk hashes, no
/// source.
pub fn metadata(dir: &Dir, args: &Args) -> ReadCanisterSnapshotMetadataResult {
    let [p0, p1, p2, p3] = args.picks;
    let [n0, n1] = args.numbers;
    let module_len = module_content(&dir.regions[0].content).len() as u64;
    let mut globals: Vec<_> = templates::globals(p2, n1 as i64)
        .into_iter()
        .map(Some)
        .collect();
    if p2 & 0x80 != 0 {
        globals.push(None);
    }
    ReadCanisterSnapshotMetadataResult {
        source: (p3 & 0x10 == 0).then(|| SnapshotSource::TakenFromCanister(Default::default())),
        taken_at_timestamp: 1_620_328_630_000_000_000,
        wasm_module_size: if p3 & 1 != 0 { n0 } else { module_len },
        globals,
        wasm_memory_size: if p3 & 2 != 0 {
            n1
        } else {
            u64::from(p0 & 3) * 65_536
        },
        stable_memory_size: u64::from(p1 & 3) * 65_536,
        wasm_chunk_store: dir
            .chunks
            .iter()
            .map(|chunk| {
                let mut hash = sha256(chunk).to_vec();
                if p3 & 8 != 0 {
                    hash[0] ^= 1;
                }
                ChunkHash { hash }
            })
            .collect(),
        canister_version: 3,
        certified_data: args.blob.clone(),
        global_timer: Some(if p3 & 4 != 0 {
            CanisterTimer::Active(n0)
        } else {
            CanisterTimer::Inactive
        }),
        on_low_wasm_memory_hook_status: None,
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("the temporary directory is writable");
}

/// Writes `dir` under `root`.
fn materialise(dir: &Dir, root: &Path) {
    let snapshot_dir = SnapshotDir::new(root);
    let (metadata_json, declared) = match &dir.metadata {
        Metadata::Raw(bytes) => (bytes.clone(), None),
        Metadata::Structured(args, edits) => {
            let metadata = metadata(dir, args);
            let mut json = serde_json::to_vec_pretty(&metadata).expect("metadata serialises");
            templates::apply_edits(&mut json, edits);
            (json, Some(metadata))
        }
    };
    write(&snapshot_dir.metadata_path(), &metadata_json);
    let regions = [
        SnapshotRegion::WasmModule,
        SnapshotRegion::WasmMemory,
        SnapshotRegion::StableMemory,
    ];
    for (region, file) in regions.into_iter().zip(&dir.regions) {
        let content = match region {
            SnapshotRegion::WasmModule => module_content(&file.content),
            _ => file.content.clone(),
        };
        let declared_size = declared
            .as_ref()
            .map(|m| SnapshotDir::region_size(m, region))
            .unwrap_or(content.len() as u64);
        let size = file.size.unwrap_or(declared_size).min(MAX_FILE_BYTES) as usize;
        let mut bytes = content;
        bytes.resize(size, 0);
        write(&snapshot_dir.region_path(region), &bytes);
    }
    if !dir.chunks.is_empty() {
        std::fs::create_dir_all(snapshot_dir.chunk_store_dir()).expect("writable");
        for chunk in &dir.chunks {
            write(&snapshot_dir.chunk_path(&sha256(chunk)), chunk);
        }
    }
    if let Some(json) = &dir.checksum_json {
        write(&snapshot_dir.checksum_path(), json);
    }
}

/// `diff` of a directory that verifies: against a copy of itself (another path, so every byte
/// is compared) nothing differs; against a copy with one byte of one memory page changed,
/// exactly that page of that region does, and nothing else.
fn check_diff(root: &Path) {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let copy = temp.path();
    copy_dir(root, copy);
    let unchanged = |report: &canister_snapshots::transfer::DiffReport| {
        !report.globals_differ && !report.certified_data_differ && !report.chunk_store_differs
    };
    let report = diff(root, copy).expect("a copy of a directory that verifies diffs");
    assert!(
        report
            .regions
            .iter()
            .all(|r| r.changed.is_empty() && r.size_a == r.size_b)
            && unchanged(&report),
        "a directory differs from its copy: {}",
        report.render()
    );
    let dir = SnapshotDir::new(copy);
    let Some((region, len)) = [SnapshotRegion::WasmMemory, SnapshotRegion::StableMemory]
        .into_iter()
        .map(|region| {
            let len = std::fs::metadata(dir.region_path(region)).map_or(0, |m| m.len());
            (region, len)
        })
        .find(|(_, len)| *len > 0)
    else {
        return;
    };
    // The last byte of the middle page: a page boundary off by one shows.
    let page = (len - 1) / 4096 / 2;
    let offset = ((page + 1) * 4096).min(len) - 1;
    let path = dir.region_path(region);
    let mut bytes = std::fs::read(&path).expect("the copy reads back");
    bytes[offset as usize] ^= 0x5A;
    write(&path, &bytes);
    let report = diff(root, copy).expect("a one-byte edit of a memory keeps the directory valid");
    for r in &report.regions {
        let expected: &[(u64, u64)] = if r.region == region {
            &[(page, 1)]
        } else {
            &[]
        };
        assert_eq!(
            r.changed,
            expected,
            "{region:?}: byte {offset} changed; the diff reports {}",
            report.render()
        );
    }
    assert!(unchanged(&report), "{}", report.render());
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("the directory lists") {
        let entry = entry.expect("the directory lists");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            std::fs::create_dir_all(&target).expect("writable");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("writable");
        }
    }
}

pub fn check(dir: &Dir) {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let root = temp.path();
    materialise(dir, root);
    let _ = inspect(root);
    let Ok((_, checksum)) = SnapshotDir::new(root).validate_and_checksum() else {
        return;
    };
    check_diff(root);
    let mut sm = StateMachine::new();
    let controller = Some(replica::controller());
    let canister = sm.create_canister_with_settings(controller, None);
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], controller);
    match sm.upload_canister_snapshot_with(
        canister,
        controller,
        root,
        None,
        None,
        &Default::default(),
    ) {
        Ok(report) => {
            assert_eq!(report.checksum, checksum, "the upload's checksum");
            if sm
                .load_canister_snapshot(canister, controller, report.snapshot_id)
                .is_ok()
            {
                let c = replica::controller();
                for (method, payload) in [
                    ("get_global", candid::encode_one(0u32)),
                    ("set_global", candid::encode_args((1u32, 5i64))),
                    ("read_heap", candid::encode_args((0u64, 8u64))),
                    (
                        "write_stable",
                        candid::encode_args((0u64, serde_bytes::ByteBuf::from(vec![1]))),
                    ),
                ] {
                    let _ = sm.update_call(canister, c, method, payload.expect("encodes"));
                }
            }
        }
        Err(err @ TransferError::ChecksumMismatch { .. }) if dir.checksum_json.is_none() => {
            panic!("a directory that verifies uploaded to a snapshot with another checksum: {err}")
        }
        Err(_) => {}
    }
}

pub fn run(data: &[u8]) {
    if let Ok(dir) = input::decode::<Dir>(data) {
        check(&dir);
    }
}

pub fn dirs() -> Vec<(&'static str, Dir)> {
    let file = |content: &[u8]| File {
        size: None,
        content: content.to_vec(),
    };
    let valid = |picks, blob: &[u8]| Dir {
        metadata: Metadata::Structured(Args::new(picks, [0, 9], blob), vec![]),
        regions: [file(b""), file(b"heap"), file(b"\x00\x00stable")],
        chunks: vec![b"chunk one".to_vec()],
        checksum_json: None,
    };
    let mut truncated = valid([1, 1, 0, 0], b"");
    truncated.regions[1].size = Some(65_535);
    let mut corrupted_chunk = valid([0, 0, 0, 8], b"");
    corrupted_chunk.chunks.push(vec![]);
    // Found by libFuzzer: the same chunk listed twice in metadata.json.
    let mut duplicate_chunk = valid([0, 0, 0, 0], b"");
    duplicate_chunk.chunks = vec![b"twice".to_vec(), b"twice".to_vec()];
    let mut with_checksum = valid([1, 0, 0, 0], b"");
    with_checksum.checksum_json = Some(
        br#"{"checksum":"00","canister_id":"aaaaa-aa","snapshot_id":"00","label":null}"#.to_vec(),
    );
    vec![
        ("valid-one-page-each", valid([1, 1, 0, 0], b"certified")),
        ("valid-empty-memories-two-globals", valid([0, 0, 0, 0], b"")),
        (
            "valid-no-globals-upload-load-set-global",
            valid([1, 0, 1, 0], b""),
        ),
        ("valid-mixed-globals-timer", valid([2, 1, 4, 4], b"")),
        ("unknown-global", valid([1, 1, 0x80, 0], b"")),
        ("truncated-memory", truncated),
        ("corrupted-chunk-hash", corrupted_chunk),
        ("module-size-zero", valid([0, 0, 0, 1], b"")),
        ("memory-not-page-multiple", valid([0, 0, 0, 2], b"")),
        ("no-source", valid([0, 0, 0, 0x10], b"")),
        ("with-checksum-json", with_checksum),
        (
            "duplicate-chunk-hash-uploads-with-the-same-checksum",
            duplicate_chunk,
        ),
        (
            "raw-metadata",
            Dir {
                metadata: Metadata::Raw(br#"{"wasm_module_size":8,"globals":[]}"#.to_vec()),
                regions: [file(b""), file(b""), file(b"")],
                chunks: vec![],
                checksum_json: None,
            },
        ),
    ]
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    dirs()
        .into_iter()
        .map(|(name, dir)| (name.to_string(), dir.to_bytes()))
        .collect()
}
