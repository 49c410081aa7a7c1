//! Known-answer vectors: the hex values `spec/checksum.md` and `spec/execution.md` publish,
//! compared with the code, and (for the page and memory roots and the snapshot checksum)
//! with a second computation written here by hand from the spec with `sha2` alone, so that the
//! vectors are not merely the code agreeing with itself. A change to any of these values is a
//! change of format: it needs a new domain version and a spec change, not a new literal.

mod common;

use canister_snapshots::StateMachine;
use canister_snapshots::memory::checksum::{
    hex, leaf_hash, memory_root_from_bytes, node_hash, sha256,
};
use canister_snapshots::memory::{Hash, Memory, PAGE_SIZE};
use canister_snapshots::snapshots::{SnapshotDigest, snapshot_checksum};
use canister_snapshots::state::Global;
use common::{install_new, user};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// The vectors, as published in the specs.
// ---------------------------------------------------------------------------------------------

/// `leaf(4096 × 0x00)` = `zero(0)`.
const ZERO_PAGE_LEAF: &str = "b587fa297299ce9c602e58292b51379402bf7b1074f6b18679c2fb871c917ca8";
/// `leaf(4096 × 0x01)`.
const ONES_PAGE_LEAF: &str = "1f85fd40eec4ea48b718bde693b39bcae4783e9ca8cab88967d6c65c5f28d603";
/// `zero(1)` = `node(zero(0) × 16)`.
const ZERO_NODE_1: &str = "bf751e8878a91a7a4175f1bd723488fd87bd2ffa3af95155b62b82aed813637d";
/// `zero(8)`: the tree of an all-zero memory.
const ZERO_NODE_8: &str = "03485e7c185935b213963d54e19267b36c813808857c2c4d32af61a7b8cbcb6c";
/// `memory_root` of the empty memory (size 0).
const MEMORY_ROOT_EMPTY: &str = "f3754e4336bfd35725fff64474b2a27838644725c60685171f7c4b4ecb742973";
/// `memory_root` of one Wasm page (65,536 bytes) whose first 4 KiB page is `0x01` bytes, the
/// rest zero.
const MEMORY_ROOT_ONE_PAGE: &str =
    "de78eb7fc90999e23036d2774d2c8e30f3b5517f23c0bbc03cce6110432a6295";
/// `memory_root` of two Wasm pages (131,072 bytes = 32 pages of 4 KiB), page `k` filled with
/// byte `k` (page 0 is zero).
const MEMORY_ROOT_MULTI_PAGE: &str =
    "3b58ecbab1f952889d4aecca776ca5bff02aeb8b358a156ce32c18b94ddf6437";
/// `snapshot_checksum` of the fixed content of [`fixed_content`].
const SNAPSHOT_CHECKSUM: &str = "b764b342f0f76fc13700b86796c98fcfdeebae7461cb31e7d993b0688c194e9f";
/// `state_hash` of the state built by [`fixed_state`].
/// Changed when the scheduled takes moved beside the history (their count is hashed after it,
/// `spec/execution.md`), and when `last_install_timestamp` joined the state (hashed after the
/// execution state).
const STATE_HASH: &str = "166ffe485c774ce515a3e588b4dd28d4b9f9f48584ff7e9ee77fe4b0e96924d9";

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

fn one_page() -> Vec<u8> {
    let mut bytes = vec![0; 65_536];
    bytes[..PAGE_SIZE].fill(1);
    bytes
}

fn multi_page() -> Vec<u8> {
    (0..32u8)
        .flat_map(|k| std::iter::repeat_n(k, PAGE_SIZE))
        .collect()
}

/// The content of the snapshot-checksum vector.
struct FixedContent {
    module: Vec<u8>,
    heap: Vec<u8>,
    stable: Vec<u8>,
    globals: Vec<Global>,
    certified: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

/// Module `\0asm\x01\0\0\0`, heap = the one-page vector, stable memory = the multi-page
/// vector, globals `[i32 -1, i64 42, f32 1.0, f64 -0.0, v128 1]`, certified data
/// `"certified"`, one chunk `"chunk"`.
fn fixed_content() -> FixedContent {
    FixedContent {
        module: b"\0asm\x01\0\0\0".to_vec(),
        heap: one_page(),
        stable: multi_page(),
        globals: vec![
            Global::I32(-1),
            Global::I64(42),
            Global::F32(1.0f32.to_bits()),
            Global::F64((-0.0f64).to_bits()),
            Global::V128(1),
        ],
        certified: b"certified".to_vec(),
        chunks: vec![b"chunk".to_vec()],
    }
}

/// A small state built through the harness in a fixed way: a canister controlled by
/// `user(1)` with the test canister installed, a heap write, a global, certified data, one
/// labelled snapshot, then a write after it.
fn fixed_state() -> StateMachine {
    let mut sm = StateMachine::new();
    let canister = install_new(&mut sm, user(1));
    canister.write(&mut sm, false, 70_000, b"known answer");
    canister.set_global(&mut sm, 1, -7);
    canister.set_certified_data(&mut sm, b"certified");
    let args = canister_snapshots::management::types::TakeCanisterSnapshotArgs {
        canister_id: canister.id,
        replace_snapshot: None,
        uninstall_code: None,
        sender_canister_version: None,
        label: Some("v1".to_string()),
    };
    sm.management::<(ic_management_canister_types::Snapshot,)>(
        Some(user(1)),
        "take_canister_snapshot",
        (args,),
    )
    .unwrap();
    canister.write(&mut sm, true, 0, b"after");
    sm
}

// ---------------------------------------------------------------------------------------------
// The spec by hand: sha2 only, no code from the crate.
// ---------------------------------------------------------------------------------------------

fn h(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn by_hand_leaf(page: &[u8]) -> Hash {
    assert_eq!(page.len(), 4096);
    h(&[&[0x00], page])
}

fn by_hand_node(children: &[Hash]) -> Hash {
    assert_eq!(children.len(), 16);
    let mut parts: Vec<&[u8]> = vec![&[0x01]];
    parts.extend(children.iter().map(|c| c.as_slice()));
    h(&parts)
}

fn by_hand_zero(level: u32) -> Hash {
    let mut hash = by_hand_leaf(&[0; 4096]);
    for _ in 0..level {
        hash = by_hand_node(&[hash; 16]);
    }
    hash
}

/// The level-`level` node covering pages `[16^level · k, 16^level · (k+1))`, recursively as
/// the spec defines it (only the subtrees that hold data are recursed into).
fn by_hand_tree(pages: &[Vec<u8>], level: u32, k: u64) -> Hash {
    let span = 16u64.pow(level);
    if k * span >= pages.len() as u64 {
        return by_hand_zero(level);
    }
    if level == 0 {
        return by_hand_leaf(&pages[k as usize]);
    }
    let children: Vec<Hash> = (0..16)
        .map(|j| by_hand_tree(pages, level - 1, 16 * k + j))
        .collect();
    by_hand_node(&children)
}

fn by_hand_memory_root(bytes: &[u8]) -> Hash {
    let pages: Vec<Vec<u8>> = bytes
        .chunks(4096)
        .map(|page| {
            let mut page = page.to_vec();
            page.resize(4096, 0);
            page
        })
        .collect();
    let tree = by_hand_tree(&pages, 8, 0);
    h(&[
        &[0x02],
        b"ic-canister-snapshots/memory/v1",
        &(bytes.len() as u64).to_be_bytes(),
        &tree,
    ])
}

/// The memory root through a `Memory` (the cached `PageMap` path the replica uses).
fn cached_memory_root(bytes: &[u8]) -> Hash {
    let mut memory = Memory::new();
    memory.resize(bytes.len() as u64, u64::MAX).unwrap();
    memory.write(0, bytes).unwrap();
    memory.root_hash()
}

#[track_caller]
fn assert_vector(name: &str, expected: &str, computed: &[Hash]) {
    for (i, hash) in computed.iter().enumerate() {
        assert_eq!(hex(hash), expected, "{name}: computation {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn page_and_node_roots() {
    let zero_page = [0u8; PAGE_SIZE];
    let ones_page = [1u8; PAGE_SIZE];
    assert_vector(
        "leaf(zero page)",
        ZERO_PAGE_LEAF,
        &[leaf_hash(&zero_page), by_hand_leaf(&zero_page)],
    );
    assert_vector(
        "leaf(0x01 page)",
        ONES_PAGE_LEAF,
        &[leaf_hash(&ones_page), by_hand_leaf(&ones_page)],
    );
    let zero_leaf = leaf_hash(&zero_page);
    assert_vector(
        "zero(1)",
        ZERO_NODE_1,
        &[node_hash(&[zero_leaf; 16]), by_hand_zero(1)],
    );
    let mut zero8 = zero_leaf;
    for _ in 0..8 {
        zero8 = node_hash(&[zero8; 16]);
    }
    assert_vector("zero(8)", ZERO_NODE_8, &[zero8, by_hand_zero(8)]);
}

#[test]
fn memory_roots() {
    for (name, expected, bytes) in [
        ("empty memory", MEMORY_ROOT_EMPTY, vec![]),
        ("one page", MEMORY_ROOT_ONE_PAGE, one_page()),
        ("multi-page", MEMORY_ROOT_MULTI_PAGE, multi_page()),
    ] {
        assert_vector(
            name,
            expected,
            &[
                memory_root_from_bytes(&bytes),
                cached_memory_root(&bytes),
                by_hand_memory_root(&bytes),
            ],
        );
    }
}

#[test]
fn snapshot_checksum_of_fixed_content() {
    let FixedContent {
        module,
        heap,
        stable,
        globals,
        certified,
        chunks,
    } = fixed_content();
    let code = snapshot_checksum(&SnapshotDigest {
        wasm_module_hash: sha256(&module),
        wasm_memory_root: memory_root_from_bytes(&heap),
        stable_memory_root: memory_root_from_bytes(&stable),
        exported_globals: &globals,
        certified_data: &certified,
        chunk_hashes: chunks.iter().map(|c| sha256(c)).collect(),
    });
    // By hand: every global is a tag and its big-endian value.
    let mut encoded_globals = (globals.len() as u32).to_be_bytes().to_vec();
    encoded_globals.extend_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff]);
    encoded_globals.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0, 42]);
    encoded_globals.extend_from_slice(&[0x02, 0x3f, 0x80, 0, 0]);
    encoded_globals.extend_from_slice(&[0x03, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    encoded_globals.push(0x04);
    encoded_globals.extend_from_slice(&1u128.to_be_bytes());
    let by_hand = h(&[
        &[0x03],
        b"ic-canister-snapshots/snapshot/v1",
        &h(&[&module]),
        &by_hand_memory_root(&heap),
        &by_hand_memory_root(&stable),
        &encoded_globals,
        &(certified.len() as u32).to_be_bytes(),
        &certified,
        &1u32.to_be_bytes(),
        &h(&[b"chunk"]),
    ]);
    assert_vector("snapshot checksum", SNAPSHOT_CHECKSUM, &[code, by_hand]);
}

#[test]
fn state_hash_of_a_fixed_state() {
    let sm = fixed_state();
    assert_vector("state hash", STATE_HASH, &[sm.state_hash()]);
    // Built again, hashed in another order of memoisation: the same answer.
    let again = fixed_state();
    for snapshot in again.state().snapshots.iter() {
        snapshot.checksum();
    }
    assert_vector("state hash, rebuilt", STATE_HASH, &[again.state_hash()]);
}
