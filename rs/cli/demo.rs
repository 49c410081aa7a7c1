//! `canister-snapshots demo`: a backup and a restore on the embedded replica, end to end.
//!
//! A canister is filled with hundreds of MiB of records (heap and stable memory), a snapshot is
//! taken, a bad upgrade wipes the heap and scribbles over stable memory, and loading the
//! snapshot restores it; the restore is verified by checksum and by reading records back.

// The demo drives its own replica with its own data: nothing untrusted reaches it.
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::time::{Duration, Instant};

use candid::{Decode, Encode, Principal};
use ic_management_canister_types::{CanisterInstallMode, InstallCodeArgs};

use super::{human_bytes, progress_bar};
use crate::harness::{RejectResponse, StateMachine};
use crate::memory::checksum::hex;
use crate::{Config, TEST_CANISTER_WASM};

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

const CHUNK: u64 = 1 << 20;

/// Deterministic record data: what "the application" wrote at `offset`.
fn record_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
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

/// Fills `[0, mib)` of heap or stable memory with records, 1 MiB per message.
fn fill_records(
    sm: &mut StateMachine,
    canister: Principal,
    user: Principal,
    stable: bool,
    mib: u64,
    seed: u64,
) -> Result<(), RejectResponse> {
    let method = if stable { "write_stable" } else { "write_heap" };
    let what = if stable { "stable memory" } else { "heap" };
    let bar = progress_bar(mib * CHUNK, &format!("writing {what}"));
    for i in 0..mib {
        let offset = i * CHUNK;
        let data = record_bytes(seed, offset, CHUNK as usize);
        let arg = Encode!(&offset, &serde_bytes::ByteBuf::from(data)).expect("encodes");
        call(sm, canister, user, method, arg)?;
        bar.inc(CHUNK);
    }
    bar.finish_and_clear();
    Ok(())
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

fn read(
    sm: &mut StateMachine,
    canister: Principal,
    user: Principal,
    stable: bool,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, RejectResponse> {
    let method = if stable { "read_stable" } else { "read_heap" };
    let reply = call(
        sm,
        canister,
        user,
        method,
        Encode!(&offset, &len).expect("encodes"),
    )?;
    Ok(Decode!(&reply, serde_bytes::ByteBuf)
        .map(|b| b.into_vec())
        .unwrap_or_default())
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
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user));
    println!("1. created canister {canister} (controller {user}) and installed the test canister");

    let started = Instant::now();
    fill_records(&mut sm, canister, user, false, options.heap_mib, 1).map_err(fail("fill heap"))?;
    fill_records(&mut sm, canister, user, true, options.stable_mib, 2)
        .map_err(fail("fill stable"))?;
    call(
        &mut sm,
        canister,
        user,
        "set_global",
        Encode!(&0u32, &42i64).expect("encodes"),
    )
    .map_err(fail("set_global"))?;
    call(
        &mut sm,
        canister,
        user,
        "set_certified_data",
        Encode!(&serde_bytes::ByteBuf::from(vec![0xC0; 32])).expect("encodes"),
    )
    .map_err(fail("set_certified_data"))?;
    let filled = started.elapsed();
    let before = live_checksum(&sm, canister)?;
    println!(
        "2. wrote {} of records to the heap and {} to stable memory in {:.2} s ({} messages)",
        human_bytes(options.heap_mib * CHUNK),
        human_bytes(options.stable_mib * CHUNK),
        filled.as_secs_f64(),
        options.heap_mib + options.stable_mib + 2,
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

    let upgrade = InstallCodeArgs {
        mode: CanisterInstallMode::Upgrade(None),
        canister_id: canister,
        wasm_module: TEST_CANISTER_WASM.to_vec(),
        arg: vec![],
        sender_canister_version: None,
    };
    sm.management::<()>(Some(user), "install_code", (upgrade,))
        .map_err(fail("bad upgrade"))?;
    let scribbles = options.stable_mib.max(1);
    for i in 0..scribbles {
        let offset = i * CHUNK + 4096 * (i % 7);
        call(
            &mut sm,
            canister,
            user,
            "fill_stable",
            Encode!(&offset, &(64u64 * 1024), &0xEEu8).expect("encodes"),
        )
        .map_err(fail("scribble"))?;
    }
    let unique = sm
        .state()
        .snapshots
        .unique_bytes(&sm.state().canisters[&canister]);
    let sizes: (u64, u64) = Decode!(
        &call(
            &mut sm,
            canister,
            user,
            "memory_sizes",
            Encode!().expect("encodes")
        )
        .map_err(fail("memory_sizes"))?,
        u64,
        u64
    )
    .map_err(|e| e.to_string())?;
    println!(
        "4. bad upgrade: heap wiped (now {}), {} scribbled over {} places in stable memory",
        human_bytes(sizes.0),
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
            let offset = i * CHUNK + 12_345;
            let got = read(&mut sm, canister, user, stable, offset, 4096).map_err(fail("read"))?;
            let want =
                record_bytes(seed, i * CHUNK, CHUNK as usize)[12_345..12_345 + 4096].to_vec();
            if got != want {
                return Err(format!("record at {offset} differs after the restore"));
            }
        }
    }
    let global: i64 = Decode!(
        &call(
            &mut sm,
            canister,
            user,
            "get_global",
            Encode!(&0u32).expect("encodes")
        )
        .map_err(fail("get_global"))?,
        i64
    )
    .map_err(|e| e.to_string())?;
    if global != 42 {
        return Err(format!(
            "global 0 is {global} after the restore, expected 42"
        ));
    }
    let info = sm
        .canister_info(canister, Some(1))
        .map_err(fail("canister_info"))?;
    println!(
        "6. verified: checksums equal, records read back intact, global 0 = {global}; history: \
         {} changes, last {:?}",
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
    println!("   replicated state hash {}", hex(&sm.state_hash()));
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
