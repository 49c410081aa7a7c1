//! One snapshot upload of canister `pristine().canister` by its controller: metadata, then
//! data slices in any order interleaved with loads, reads and canister calls. Besides the
//! refusal check of every message, a flat model of the uploaded regions is kept, and after
//! every accepted load the canister's module, memories and globals must equal it.

use arbitrary::{Arbitrary, Result, Unstructured};
use candid::Principal;
use canister_snapshots::TEST_CANISTER_WASM;
use canister_snapshots::management::types::UploadCanisterSnapshotDataArgs;
use canister_snapshots::snapshots::{SnapshotId, SnapshotRegion};
use canister_snapshots::state::Global;
use ic_management_canister_types::{
    LoadCanisterSnapshotArgs, ReadCanisterSnapshotDataArgs, SnapshotDataKind, SnapshotDataOffset,
    UploadCanisterSnapshotMetadataResult,
};

use super::input::{self, Encode, Writer};
use super::management_sequence::Message;
use super::replica::{self, Replica};
use super::templates::{self, Args};

/// Models are kept only for uploads up to this many bytes in all.
const MODEL_LIMIT: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `upload_canister_snapshot_data` into the uploaded snapshot. `region` 0-2 are the module
    /// and the memories, 3 the chunk store. `len` > the blob's length repeats the blob.
    Data {
        region: u8,
        offset: u64,
        len: u64,
        bytes: Vec<u8>,
    },
    Load,
    Read {
        region: u8,
        offset: u64,
        len: u64,
    },
    /// A test canister method on the canister, by the controller (template payload).
    Call {
        method: u8,
        args: Args,
    },
    /// Any message at all.
    Any(Message),
}

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match input::choice(u, 5)? {
            0 => Step::Data {
                region: input::byte(u)?,
                offset: input::number(u)?,
                len: input::number(u)?,
                bytes: input::blob(u)?,
            },
            1 => Step::Load,
            2 => Step::Read {
                region: input::byte(u)?,
                offset: input::number(u)?,
                len: input::number(u)?,
            },
            3 => Step::Call {
                method: input::byte(u)?,
                args: Args::arbitrary(u)?,
            },
            _ => Step::Any(Message::arbitrary(u)?),
        })
    }
}

impl Encode for Step {
    fn encode(&self, w: &mut Writer) {
        match self {
            Step::Data {
                region,
                offset,
                len,
                bytes,
            } => {
                w.choice(0);
                w.byte(*region);
                w.number(*offset);
                w.number(*len);
                w.blob(bytes);
            }
            Step::Load => w.choice(1),
            Step::Read {
                region,
                offset,
                len,
            } => {
                w.choice(2);
                w.byte(*region);
                w.number(*offset);
                w.number(*len);
            }
            Step::Call { method, args } => {
                w.choice(3);
                w.byte(*method);
                args.encode(w);
            }
            Step::Any(message) => {
                w.choice(4);
                message.encode(w);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Shapes the metadata ([`templates::upload_metadata`]); the canister is always the
    /// fixture's.
    pub metadata: Args,
    pub steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Upload {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Upload {
            metadata: Args::arbitrary(u)?,
            steps: input::list(u, 40, Step::arbitrary)?,
        })
    }
}

impl Encode for Upload {
    fn encode(&self, w: &mut Writer) {
        self.metadata.encode(w);
        w.list(&self.steps, |w, s| s.encode(w));
    }
}

/// The uploaded snapshot as the accepted messages defined it.
struct Model {
    module: Vec<u8>,
    wasm_memory: Vec<u8>,
    stable_memory: Vec<u8>,
    globals: Vec<Global>,
}

impl Model {
    fn region(&mut self, region: SnapshotRegion) -> &mut Vec<u8> {
        match region {
            SnapshotRegion::WasmModule => &mut self.module,
            SnapshotRegion::WasmMemory => &mut self.wasm_memory,
            SnapshotRegion::StableMemory => &mut self.stable_memory,
        }
    }
}

const REGIONS: [SnapshotRegion; 3] = [
    SnapshotRegion::WasmModule,
    SnapshotRegion::WasmMemory,
    SnapshotRegion::StableMemory,
];

pub fn check(upload: &Upload) {
    let mut replica = Replica::new();
    let canister = replica::pristine().canister;
    let controller = replica::controller();
    let mgmt = Principal::management_canister();
    let mut metadata_args = upload.metadata.clone();
    metadata_args.picks[0] = 0;
    let metadata = templates::upload_metadata(&replica.state, &metadata_args);
    let declared = metadata
        .wasm_module_size
        .saturating_add(metadata.wasm_memory_size)
        .saturating_add(metadata.stable_memory_size);
    let reply = replica.deliver(
        controller,
        mgmt,
        "upload_canister_snapshot_metadata",
        candid::encode_one(&metadata).expect("encodes"),
    );
    let snapshot_id = match reply {
        Ok(reply) => {
            candid::decode_one::<UploadCanisterSnapshotMetadataResult>(&reply)
                .expect("an accepted upload replies with the new snapshot's id")
                .snapshot_id
        }
        // Refused metadata: the steps still run, against a snapshot id that does not exist.
        Err(_) => SnapshotId::new(canister, 99).to_bytes(),
    };
    // The model starts from what the replica created (zeros, or the base snapshot's content),
    // which the upload tests check; from there on it follows the accepted messages alone.
    let mut model = (declared <= MODEL_LIMIT)
        .then(|| {
            let id = SnapshotId::from_bytes(&snapshot_id).ok()?;
            let snapshot = replica.state.snapshots.get(canister, &id).ok()?;
            let read = |region| {
                snapshot
                    .read_region(region, 0, snapshot.region_size(region))
                    .expect("a whole region reads")
            };
            Some(Model {
                module: read(SnapshotRegion::WasmModule),
                wasm_memory: read(SnapshotRegion::WasmMemory),
                stable_memory: read(SnapshotRegion::StableMemory),
                globals: snapshot.content().exported_globals.clone(),
            })
        })
        .flatten();
    let canister_methods = canister_snapshots::execution::test_canister::METHODS;
    for step in &upload.steps {
        match step {
            Step::Data {
                region,
                offset,
                len,
                bytes,
            } => {
                let kind = match region % 4 {
                    0 => SnapshotDataOffset::WasmModule { offset: *offset },
                    1 => SnapshotDataOffset::WasmMemory { offset: *offset },
                    2 => SnapshotDataOffset::StableMemory { offset: *offset },
                    _ => SnapshotDataOffset::WasmChunk,
                };
                let chunk = slice(region % 4, *offset, *len, bytes);
                let args = UploadCanisterSnapshotDataArgs {
                    canister_id: canister,
                    snapshot_id: snapshot_id.clone(),
                    kind,
                    chunk: chunk.clone(),
                };
                let accepted = replica
                    .deliver(
                        controller,
                        mgmt,
                        "upload_canister_snapshot_data",
                        candid::encode_one(&args).expect("encodes"),
                    )
                    .is_ok();
                if let (true, Some(model), Some(&region)) = (
                    accepted,
                    model.as_mut(),
                    REGIONS.get(usize::from(region % 4)),
                ) {
                    let target = model.region(region);
                    let start = usize::try_from(*offset).expect("accepted: inside the region");
                    target[start..start + chunk.len()].copy_from_slice(&chunk);
                }
            }
            Step::Load => {
                let args = LoadCanisterSnapshotArgs {
                    canister_id: canister,
                    snapshot_id: snapshot_id.clone(),
                    sender_canister_version: None,
                };
                let loaded = replica
                    .deliver(
                        controller,
                        mgmt,
                        "load_canister_snapshot",
                        candid::encode_one(&args).expect("encodes"),
                    )
                    .is_ok();
                if let (true, Some(model)) = (loaded, model.as_mut()) {
                    check_loaded(&replica, canister, model);
                }
            }
            Step::Read {
                region,
                offset,
                len,
            } => {
                let (offset, size) = (*offset, *len);
                let kind = match region % 4 {
                    0 => SnapshotDataKind::WasmModule { offset, size },
                    1 => SnapshotDataKind::WasmMemory { offset, size },
                    2 => SnapshotDataKind::StableMemory { offset, size },
                    _ => SnapshotDataKind::WasmChunk {
                        hash: canister_snapshots::memory::checksum::sha256(&[]).to_vec(),
                    },
                };
                let args = ReadCanisterSnapshotDataArgs {
                    canister_id: canister,
                    snapshot_id: snapshot_id.clone(),
                    kind,
                };
                let _ = replica.deliver(
                    controller,
                    mgmt,
                    "read_canister_snapshot_data",
                    candid::encode_one(&args).expect("encodes"),
                );
            }
            Step::Call { method, args } => {
                let method = canister_methods[usize::from(*method) % canister_methods.len()];
                let payload = templates::payload(&replica.state, method, args);
                let _ = replica.deliver(controller, canister, method, payload);
            }
            Step::Any(message) => {
                // Anything else may change the canister behind the model's back.
                if message.deliver(&mut replica) {
                    model = None;
                }
            }
        }
    }
}

/// The bytes a data step sends: `len` bytes of the blob repeated (the test canister's module
/// from `offset` when the blob is empty and the region is the module), at most 2 MB + 1.
fn slice(region: u8, offset: u64, len: u64, bytes: &[u8]) -> Vec<u8> {
    if bytes.is_empty() {
        return match region {
            0 => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX);
                TEST_CANISTER_WASM.get(from..).unwrap_or_default().to_vec()
            }
            _ => vec![0; usize::try_from(len.min(2_000_001)).unwrap_or(0)],
        };
    }
    let len = usize::try_from(len.min(2_000_001))
        .unwrap_or(0)
        .max(bytes.len());
    bytes.iter().copied().cycle().take(len).collect()
}

fn check_loaded(replica: &Replica, canister: Principal, model: &Model) {
    let state = &replica.state.canisters[&canister];
    let execution = state
        .execution_state
        .as_ref()
        .expect("a loaded snapshot has a module");
    assert_eq!(
        execution.wasm_module.bytes(),
        &model.module[..],
        "the loaded module differs from the uploaded one"
    );
    for (name, memory, expected) in [
        ("wasm memory", &execution.wasm_memory, &model.wasm_memory),
        (
            "stable memory",
            &execution.stable_memory,
            &model.stable_memory,
        ),
    ] {
        let actual = memory
            .read_vec(0, memory.size_bytes())
            .expect("a whole memory reads");
        assert!(
            actual == *expected,
            "the loaded {name} differs from the uploaded one ({} bytes, model {})",
            actual.len(),
            expected.len()
        );
    }
    assert_eq!(execution.exported_globals, model.globals, "globals");
}

pub fn run(data: &[u8]) {
    if let Ok(upload) = input::decode::<Upload>(data) {
        check(&upload);
    }
}

pub fn uploads() -> Vec<(&'static str, Upload)> {
    let data = |region, offset, len, bytes: &[u8]| Step::Data {
        region,
        offset,
        len,
        bytes: bytes.to_vec(),
    };
    let call = |method: &str, args: Args| Step::Call {
        method: canister_snapshots::execution::test_canister::METHODS
            .iter()
            .position(|m| *m == method)
            .expect("a test canister method") as u8,
        args,
    };
    vec![
        (
            "module-memories-load-read",
            Upload {
                // Two i64 globals, one page of heap, one of stable memory.
                metadata: Args::new([0, 0, 0, 0b0010_1010], [0, 5], b""),
                steps: vec![
                    data(0, 0, 0, b""),
                    data(1, 65_530, 6, b"heap!"),
                    data(2, 0, 4096, b"stable"),
                    data(3, 0, 10, b"a chunk"),
                    Step::Load,
                    call("read_heap", Args::new([0; 4], [65_530, 6], b"")),
                    call("get_global", Args::new([0, 1, 0, 0], [0, 0], b"")),
                    Step::Read {
                        region: 1,
                        offset: 0,
                        len: 65_536,
                    },
                ],
            },
        ),
        (
            "data-before-and-after-a-load",
            Upload {
                metadata: Args::new([0, 0, 0, 0b0000_1100], [0, 1], b""),
                steps: vec![
                    Step::Load,
                    data(1, 0, 100, b"x"),
                    data(0, 4, 0, b""),
                    Step::Load,
                    data(0, 0, 0, b""),
                    data(0, 0, 0, b""),
                    Step::Load,
                    call("write_heap", Args::new([0; 4], [0, 0], b"after load")),
                ],
            },
        ),
        (
            "incremental-on-the-fixture-snapshot",
            Upload {
                // base_snapshot = the fixture's snapshot, two pages of heap.
                metadata: Args::new([0, 0x20, 0, 0b0001_0010], [0, 0], b""),
                steps: vec![
                    data(1, 4096, 4096, b"\x01\x02"),
                    data(0, 0, 0, b""),
                    Step::Load,
                    call("read_heap", Args::new([0; 4], [69_990, 20], b"")),
                ],
            },
        ),
        (
            "mismatched-globals-then-calls",
            Upload {
                metadata: Args::new([0, 0, 0, 4], [0, 0], b""),
                steps: vec![
                    data(0, 0, 0, b""),
                    Step::Load,
                    call("get_global", Args::new([0, 1, 0, 0], [0, 0], b"")),
                    call("memory_sizes", Args::default()),
                ],
            },
        ),
        (
            "out-of-range-slices",
            Upload {
                metadata: Args::new([0, 0, 0, 0b0000_1000], [0, 0], b""),
                steps: vec![
                    data(0, 8, 1, b"z"),
                    data(1, 65_536, 1, b"z"),
                    data(1, u64::MAX, 2, b"zz"),
                    data(2, 0, 1, b"z"),
                    data(1, 0, 2_000_001, b"big"),
                    Step::Read {
                        region: 0,
                        offset: 4,
                        len: 8,
                    },
                ],
            },
        ),
    ]
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    uploads()
        .into_iter()
        .map(|(name, upload)| (name.to_string(), upload.to_bytes()))
        .collect()
}
