//! `canister-snapshots demo`: a backup and a restore of real WebAssembly canisters on the
//! embedded replica, end to end.
//!
//! A WebAssembly canister (`demo_canister.wat`, run on wasmtime) writes hundreds of MiB of
//! records into its heap and stable memory, a snapshot is taken, a bad upgrade (one that keeps
//! nothing in `canister_pre_upgrade`) wipes the heap and the canister then scribbles over stable
//! memory, and loading the snapshot restores it; the restore is verified by checksum and by
//! reading records back. The snapshot is then downloaded, repaired offline and uploaded. Last,
//! the users' story on a real Motoko canister (`tests/fixtures/motoko/`): a key-value store,
//! an upgrade to a buggy version that drops every entry, and the snapshot that undoes it.

// The demo drives its own replica with its own data: nothing untrusted reaches it.
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::time::{Duration, Instant};

use candid::{Decode, Encode, Nat, Principal};
use ic_management_canister_types::{
    CanisterInstallMode, InstallCodeArgs, UpgradeFlags, WasmMemoryPersistence,
};

use super::{human_bytes, progress_bar};
use crate::Config;
use crate::harness::{RejectResponse, StateMachine};
use crate::memory::checksum::hex;

/// The records canister (`demo_canister.wat`, assembled; a unit test checks the two agree).
pub const DEMO_CANISTER_WASM: &[u8] = include_bytes!("demo_canister.wasm");
/// The Motoko key-value store and its buggy second version (`tests/fixtures/motoko/`).
const KV_STORE_WASM: &[u8] = include_bytes!("../../tests/fixtures/motoko/kv_store.wasm");
const KV_STORE_BUGGY_WASM: &[u8] =
    include_bytes!("../../tests/fixtures/motoko/kv_store_buggy.wasm");

/// Demo sizes; the defaults make "hundreds of MiB".
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub heap_mib: u64,
    pub stable_mib: u64,
    /// Where to keep the downloaded and repaired directories: the demo creates a new
    /// subdirectory of its own inside it and leaves everything else alone. `None`: a new
    /// temporary directory, removed at the end.
    pub download_dir: Option<std::path::PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            heap_mib: 256,
            stable_mib: 256,
            download_dir: None,
        }
    }
}

const MIB: u64 = 1 << 20;
/// Records one `fill_*` message writes (the canister generates them: an ingress message
/// carries 2 MiB at most).
const FILL_CHUNK: u64 = 64 * MIB;

/// The record word at `offset` for `seed`, as `demo_canister.wat`'s `$record` computes it.
fn record_word(seed: u64, offset: u64) -> u64 {
    let x = offset
        .wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 31)
}

/// The record bytes `[offset, offset + len)` for `seed`: what the canister wrote there.
fn record_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let first = offset & !7;
    let mut out = Vec::with_capacity(len + 16);
    let mut word = first;
    while out.len() < (offset - first) as usize + len {
        out.extend_from_slice(&record_word(seed, word).to_le_bytes());
        word += 8;
    }
    out[(offset - first) as usize..][..len].to_vec()
}

/// Little-endian u64s: the records canister's arguments.
fn args(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u64s(reply: &[u8]) -> Vec<u64> {
    reply
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .collect()
}

fn call(
    sm: &mut StateMachine,
    canister: Principal,
    user: Principal,
    method: &str,
    arg: Vec<u8>,
) -> Result<Vec<u8>, RejectResponse> {
    sm.update_call(canister, user, method, arg)
}

/// Fills `[0, mib)` of heap or stable memory with records, [`FILL_CHUNK`] per message.
/// Returns the messages sent.
fn fill_records(
    sm: &mut StateMachine,
    canister: Principal,
    user: Principal,
    stable: bool,
    mib: u64,
    seed: u64,
) -> Result<u64, RejectResponse> {
    let method = if stable { "fill_stable" } else { "fill_heap" };
    let what = if stable { "stable memory" } else { "heap" };
    let total = mib * MIB;
    let bar = progress_bar(total, &format!("writing {what}"));
    let (mut offset, mut messages) = (0, 0);
    while offset < total {
        let len = FILL_CHUNK.min(total - offset);
        call(sm, canister, user, method, args(&[offset, len, seed]))?;
        offset += len;
        messages += 1;
        bar.inc(len);
    }
    bar.finish_and_clear();
    Ok(messages)
}

/// Runs empty rounds until the canister's heap-delta debit is within the allowance, as a client
/// of the real IC retries a `CanisterHeapDeltaRateLimited` reject. Returns the rounds waited.
fn wait_for_heap_delta_allowance(sm: &mut StateMachine, canister: Principal) -> u32 {
    let limit = sm.config().heap_delta_rate_limit_bytes;
    let mut rounds = 0;
    while sm.state().canisters[&canister].heap_delta_debit >= limit {
        sm.tick();
        rounds += 1;
    }
    rounds
}

fn waited(rounds: u32) -> String {
    if rounds == 0 {
        String::new()
    } else {
        format!(" (after {rounds} rounds waiting for the heap-delta allowance)")
    }
}

/// `len` bytes at `offset` of the heap's records or of stable memory, by a query.
fn read(
    sm: &StateMachine,
    canister: Principal,
    user: Principal,
    stable: bool,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, RejectResponse> {
    let method = if stable { "read_stable" } else { "read_heap" };
    sm.query_call(canister, user, method, args(&[offset, len]))
}

/// The live canister's memory roots, as the snapshot checksum defines them.
fn live_checksum(sm: &StateMachine, canister: Principal) -> Result<[u8; 32], String> {
    sm.state()
        .canisters
        .get(&canister)
        .and_then(crate::snapshots::SnapshotContent::of_canister)
        .map(|content| content.checksum())
        .ok_or_else(|| format!("canister {canister} has no code"))
}

/// Turns a reject into the demo's error, naming the step that failed.
fn fail(step: &'static str) -> impl Fn(RejectResponse) -> String {
    move |err| format!("{step}: {err}")
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn upgrade(
    sm: &mut StateMachine,
    user: Principal,
    canister: Principal,
    wasm_module: &[u8],
    wasm_memory_persistence: Option<WasmMemoryPersistence>,
) -> Result<(), String> {
    let upgrade = InstallCodeArgs {
        mode: CanisterInstallMode::Upgrade(Some(UpgradeFlags {
            skip_pre_upgrade: None,
            wasm_memory_persistence,
        })),
        canister_id: canister,
        wasm_module: wasm_module.to_vec(),
        arg: Encode!().expect("encodes"),
        sender_canister_version: None,
    };
    sm.management::<()>(Some(user), "install_code", (upgrade,))
        .map_err(fail("upgrade"))
}

/// Runs the demo, printing what happens. Returns an error if any step misbehaves.
pub fn run(options: &DemoOptions) -> Result<(), String> {
    // Room for two snapshots: the repaired upload goes in beside the original, is verified,
    // and only then replaces it (verify before destroy, `spec/transfer.md`).
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 2,
        ..Config::default()
    });
    let user = Principal::from_slice(&[0xAB; 29]);
    println!("canister-snapshots demo: a backup and a restore on the embedded replica\n");

    let canister = sm.create_canister_with_settings(Some(user), None);
    sm.install_canister(canister, DEMO_CANISTER_WASM.to_vec(), vec![], Some(user));
    println!(
        "1. created canister {canister} (controller {user}) and installed a WebAssembly \
         canister ({} module, run on wasmtime)",
        human_bytes(DEMO_CANISTER_WASM.len() as u64)
    );

    let started = Instant::now();
    let messages = fill_records(&mut sm, canister, user, false, options.heap_mib, 1)
        .map_err(fail("fill heap"))?
        + fill_records(&mut sm, canister, user, true, options.stable_mib, 2)
            .map_err(fail("fill stable"))?;
    call(&mut sm, canister, user, "certify", vec![0xC0; 32]).map_err(fail("certify"))?;
    let fills = u64s(
        &sm.query_call(canister, user, "fills", vec![])
            .map_err(fail("fills"))?,
    )[0];
    let filled = started.elapsed();
    let before = live_checksum(&sm, canister)?;
    println!(
        "2. the canister wrote {} of records to its heap and {} to stable memory in {:.2} s \
         ({} messages; each copies the heap into a fresh instance and compares it out: \
         O(heap) per message until the memory tracker)",
        human_bytes(options.heap_mib * MIB),
        human_bytes(options.stable_mib * MIB),
        filled.as_secs_f64(),
        messages + 1,
    );
    println!("   state checksum {}", hex(&before));

    let rounds = wait_for_heap_delta_allowance(&mut sm, canister);
    let started = Instant::now();
    let snapshot = sm
        .take_canister_snapshot(canister, Some(user), None)
        .map_err(fail("take_canister_snapshot"))?;
    let take_time = started.elapsed();
    let id = crate::snapshots::SnapshotId::from_bytes(&snapshot.id).map_err(|e| e.to_string())?;
    println!(
        "3. took snapshot {id}: total size {}, in {} (one round, Candid included){}",
        human_bytes(snapshot.total_size),
        ms(take_time),
        waited(rounds)
    );
    let listed = sm
        .list_canister_snapshots_with_info(canister, Some(user))
        .map_err(fail("list"))?;
    let listed_checksum = listed
        .first()
        .map(|s| s.checksum.clone())
        .unwrap_or_default();
    println!("   snapshot checksum {}", hex(&listed_checksum));
    if listed_checksum != before {
        return Err("the snapshot's checksum differs from the live state's".into());
    }

    // The bad upgrade: the module saves nothing in `canister_pre_upgrade` and the upgrade
    // replaces the heap, so the heap's records and the global are gone.
    upgrade(&mut sm, user, canister, DEMO_CANISTER_WASM, None)?;
    let scribbles = options.stable_mib.max(1);
    for i in 0..scribbles {
        let offset = i * MIB + 4096 * (i % 7);
        call(
            &mut sm,
            canister,
            user,
            "scribble_stable",
            args(&[offset, 64 * 1024, 0xEE]),
        )
        .map_err(fail("scribble"))?;
    }
    let unique = sm
        .state()
        .snapshots
        .unique_bytes(&sm.state().canisters[&canister]);
    let sizes = u64s(
        &sm.query_call(canister, user, "memory_sizes", vec![])
            .map_err(fail("memory_sizes"))?,
    );
    println!(
        "4. bad upgrade (nothing saved in canister_pre_upgrade): heap wiped (now {}), then {} \
         scribbled over {} places in stable memory",
        human_bytes(sizes[0]),
        human_bytes(scribbles * 64 * 1024),
        scribbles
    );
    println!(
        "   the snapshot now holds {} of pages the live canister no longer shares (RAM it \
         costs); its logical size is {}",
        human_bytes(unique),
        human_bytes(snapshot.total_size)
    );
    if live_checksum(&sm, canister)? == before {
        return Err("the bad upgrade did not change the state".into());
    }

    let rounds = wait_for_heap_delta_allowance(&mut sm, canister);
    let started = Instant::now();
    sm.load_canister_snapshot(canister, Some(user), snapshot.id.clone())
        .map_err(fail("load_canister_snapshot"))?;
    let load_time = started.elapsed();
    let after = live_checksum(&sm, canister)?;
    println!(
        "5. loaded the snapshot in {}{}",
        ms(load_time),
        waited(rounds)
    );
    println!("   state checksum {}", hex(&after));
    if after != before {
        return Err("the restored state's checksum differs from the original".into());
    }
    for (stable, mib, seed) in [(false, options.heap_mib, 1), (true, options.stable_mib, 2)] {
        for i in [0, mib / 2, mib.saturating_sub(1)] {
            let offset = i * MIB + 12_345;
            let got = read(&sm, canister, user, stable, offset, 4096).map_err(fail("read"))?;
            if got != record_bytes(seed, offset, 4096) {
                return Err(format!("record at {offset} differs after the restore"));
            }
        }
    }
    let restored_fills = u64s(
        &sm.query_call(canister, user, "fills", vec![])
            .map_err(fail("fills"))?,
    )[0];
    if restored_fills != fills {
        return Err(format!(
            "the canister's global is {restored_fills} after the restore, expected {fills}"
        ));
    }
    let info = sm
        .canister_info(canister, Some(1))
        .map_err(fail("canister_info"))?;
    println!(
        "6. verified: checksums equal, records read back intact, the module's hidden global = \
         {restored_fills}; history: {} changes, last {:?}",
        info.total_num_changes,
        info.recent_changes
            .last()
            .and_then(|c| c.details.as_ref())
            .map(|d| match d {
                ic_management_canister_types::ChangeDetails::LoadSnapshot(_) => "load_snapshot",
                _ => "other",
            })
    );
    transfer(&mut sm, canister, user, &snapshot.id, options)?;
    motoko_story(&mut sm, user)?;
    println!("   replicated state hash {}", hex(&sm.state_hash()));
    Ok(())
}

/// Step 9: the users' story on a real Motoko canister.
fn motoko_story(sm: &mut StateMachine, user: Principal) -> Result<(), String> {
    const ENTRIES: u64 = 100;
    let store = sm.create_canister_with_settings(Some(user), None);
    sm.install_canister(
        store,
        KV_STORE_WASM.to_vec(),
        Encode!().expect("encodes"),
        Some(user),
    );
    for i in 0..ENTRIES {
        let arg = Encode!(&format!("user-{i}"), &format!("{} ICP", i * 7)).expect("encodes");
        call(sm, store, user, "put", arg).map_err(fail("put"))?;
    }
    let size = |sm: &StateMachine| -> Result<Nat, String> {
        let reply = sm
            .query_call(store, user, "size", Encode!().expect("encodes"))
            .map_err(fail("size"))?;
        Decode!(&reply, Nat).map_err(|e| e.to_string())
    };
    let get = |sm: &StateMachine, key: &str| -> Result<Option<String>, String> {
        let reply = sm
            .query_call(store, user, "get", Encode!(&key).expect("encodes"))
            .map_err(fail("get"))?;
        Decode!(&reply, Option<String>).map_err(|e| e.to_string())
    };
    let snapshot = sm
        .take_canister_snapshot(store, Some(user), None)
        .map_err(fail("take_canister_snapshot"))?;
    // Enhanced orthogonal persistence: the heap is the stable state, kept by the upgrade.
    upgrade(
        sm,
        user,
        store,
        KV_STORE_BUGGY_WASM,
        Some(WasmMemoryPersistence::Keep),
    )?;
    let lost = size(sm)?;
    sm.load_canister_snapshot(store, Some(user), snapshot.id)
        .map_err(fail("load_canister_snapshot"))?;
    let restored = size(sm)?;
    let alice = get(sm, "user-42")?;
    println!(
        "9. a Motoko key-value store ({} module, moc 4.10, enhanced orthogonal persistence): \
         {ENTRIES} entries put, snapshot taken, upgraded to a version whose migration drops \
         every entry ({lost} left), snapshot loaded: {restored} entries, user-42 = {}",
        human_bytes(KV_STORE_WASM.len() as u64),
        alice.as_deref().unwrap_or("(missing)")
    );
    if lost != 0u32 || restored != ENTRIES || alice.as_deref() != Some("294 ICP") {
        return Err("the Motoko store did not come back as it was".into());
    }
    Ok(())
}

fn throughput(bytes: u64, elapsed: Duration) -> String {
    format!("{:.2} GB/s", bytes as f64 / elapsed.as_secs_f64() / 1e9)
}

/// Step 7: take the snapshot home and bring a repaired copy back, sending only what changed.
fn transfer(
    sm: &mut StateMachine,
    canister: Principal,
    user: Principal,
    snapshot_id: &[u8],
    options: &DemoOptions,
) -> Result<(), String> {
    let keep = options.download_dir.is_some();
    let parent = options
        .download_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let root = create_unique_dir(&parent)
        .map_err(|e| format!("creating a directory in {}: {e}", parent.display()))?;
    let result = transfer_into(sm, canister, user, snapshot_id, &root);
    if keep {
        if result.is_ok() {
            println!(
                "   directories kept: try `canister-snapshots snapshot diff {} {}`",
                root.join("snapshot").display(),
                root.join("repaired").display()
            );
        }
    } else {
        // Only the directory this run created.
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// Creates a new directory `canister-snapshots-demo-PID[-N]` in `parent` (created if needed)
/// and returns it. `create_dir` fails on an existing name, so the directory is this run's own:
/// nothing that was there before is ever written into or removed.
fn create_unique_dir(parent: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(parent)?;
    let stem = format!("canister-snapshots-demo-{}", std::process::id());
    for n in 0u32.. {
        let name = if n == 0 {
            stem.clone()
        } else {
            format!("{stem}-{n}")
        };
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free directory name"))
}

/// Step 7 and 8 inside `root`, a directory this run created.
fn transfer_into(
    sm: &mut StateMachine,
    canister: Principal,
    user: Principal,
    snapshot_id: &[u8],
    root: &std::path::Path,
) -> Result<(), String> {
    let (base, repaired) = (root.join("snapshot"), root.join("repaired"));
    let started = Instant::now();
    sm.download_canister_snapshot(canister, Some(user), snapshot_id.to_vec(), &base)
        .map_err(|e| format!("download: {e}"))?;
    let elapsed = started.elapsed();
    let size = crate::transfer::SnapshotDir::new(&base)
        .validate()
        .map(|m| m.wasm_module_size + m.wasm_memory_size + m.stable_memory_size)
        .map_err(|e| e.to_string())?;
    println!(
        "7. downloaded the snapshot to {} in {:.2} s ({} in-process: {} slices per round, \
         files written and hashed as they arrive on every core, checksum verified)",
        base.display(),
        elapsed.as_secs_f64(),
        throughput(size, elapsed),
        crate::transfer::PARALLEL_SLICES
    );
    // Repair one record offline: copy the directory, edit stable memory. Nothing is deleted:
    // the upload compares the files with checksum.json and reports the edit.
    copy_dir(&base, &repaired).map_err(|e| format!("copying the download: {e}"))?;
    let stable_path = repaired.join("stable_memory.bin");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&stable_path)
        .map_err(|e| format!("{}: {e}", stable_path.display()))?;
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(4096))
        .and_then(|_| file.write_all(b"repaired record"))
        .map_err(|e| format!("{}: {e}", stable_path.display()))?;
    drop(file);
    let started = Instant::now();
    let report = sm
        .upload_canister_snapshot_incremental(
            canister,
            Some(user),
            &repaired,
            crate::transfer::UploadBase {
                snapshot_id: snapshot_id.to_vec(),
                dir: &base,
            },
            // The repaired snapshot supersedes the original: the upload goes into a new
            // snapshot and deletes the original only after verifying it.
            Some(snapshot_id.to_vec()),
        )
        .map_err(|e| format!("upload: {e}"))?;
    let upload_time = started.elapsed();
    sm.load_canister_snapshot(canister, Some(user), report.snapshot_id.clone())
        .map_err(fail("load the repaired snapshot"))?;
    let got = read(sm, canister, user, true, 4096, 15).map_err(fail("read"))?;
    if got != b"repaired record" {
        return Err("the repaired record did not come back".into());
    }
    println!(
        "8. edited stable_memory.bin offline, uploaded only the changed pages ({} in {} \
         message, {:.1} ms, checksum verified by the replica) and loaded it: the repaired \
         record reads back",
        human_bytes(report.bytes_sent),
        report.messages,
        upload_time.as_secs_f64() * 1e3
    );
    println!(
        "   the upload compared the files with checksum.json: {}",
        report.edits
    );
    match &report.replaced {
        crate::transfer::Replaced::DeletedAfterVerification(old) => println!(
            "   verify before destroy: the upload went into a new snapshot {} beside the original \
             {}, which was deleted only once the replica's checksum matched the directory's",
            snapshot_name(&report.snapshot_id),
            snapshot_name(old)
        ),
        crate::transfer::Replaced::ReplacedAtStart(old) => println!(
            "   the quota was full: the upload replaced {} when it started, before verification",
            snapshot_name(old)
        ),
        crate::transfer::Replaced::Nothing => {}
    }
    Ok(())
}

/// A snapshot id as the IC displays it (`{canister}-{counter}`), or in hex if it is not one.
fn snapshot_name(id: &[u8]) -> String {
    crate::snapshots::SnapshotId::from_bytes(id)
        .map(|id| id.to_string())
        .unwrap_or_else(|_| hex(id))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed module is its source, assembled.
    #[test]
    fn the_demo_canister_is_its_source() {
        let wasm = wat::parse_str(include_str!("demo_canister.wat")).unwrap();
        assert!(
            wasm == DEMO_CANISTER_WASM,
            "rs/cli/demo_canister.wasm is stale: assemble demo_canister.wat again (e.g. \
             `wasm-tools parse demo_canister.wat -o demo_canister.wasm`)"
        );
    }

    /// `record_bytes` at an unaligned offset is a slice of the aligned words.
    #[test]
    fn record_bytes_are_the_canisters_words() {
        let words = record_bytes(3, 0, 64);
        assert_eq!(words[..8], record_word(3, 0).to_le_bytes());
        assert_eq!(record_bytes(3, 13, 20), words[13..33]);
    }

    #[test]
    fn the_demo_runs_on_small_memories() {
        run(&DemoOptions {
            heap_mib: 2,
            stable_mib: 2,
            download_dir: None,
        })
        .unwrap();
    }
}
