//! `canister-snapshots snapshot …`: tools on local snapshot directories.
//!
//! `inspect`, `verify` and `diff` read directories only. `upload` has no remote replica to talk
//! to: it uploads into the embedded replica, which is what this project is, and reports what a
//! real upload would send (`spec/transfer.md`).

use std::path::Path;

use candid::Principal;

use crate::StateMachine;
use crate::memory::checksum::hex;
use crate::progress::human_bytes;
use crate::transfer::{Replaced, SnapshotDir, TransferOptions, UploadBase, diff, inspect};
use crate::{Config, TEST_CANISTER_WASM};

/// `snapshot inspect DIR`.
pub fn run_inspect(dir: &Path) -> Result<(), String> {
    print!("{}", inspect(dir).map_err(|e| e.to_string())?);
    Ok(())
}

/// `snapshot verify DIR`: validates the files and recomputes the checksum; fails if it differs
/// from `checksum.json`.
pub fn run_verify(dir: &Path) -> Result<(), String> {
    let snapshot_dir = SnapshotDir::new(dir);
    let computed = hex(&snapshot_dir.compute_checksum().map_err(|e| e.to_string())?);
    match snapshot_dir
        .read_checksum_record()
        .map_err(|e| e.to_string())?
    {
        Some(record) if record.checksum == computed => {
            println!("ok: {} matches checksum.json ({computed})", dir.display());
            Ok(())
        }
        Some(record) => Err(format!(
            "{} is corrupted or edited: checksum.json records {}, the files hash to {computed}",
            dir.display(),
            record.checksum
        )),
        None => {
            println!(
                "files are consistent; checksum {computed} (no checksum.json to compare with: \
                 a directory written by another tool)"
            );
            Ok(())
        }
    }
}

/// `snapshot diff A B`.
pub fn run_diff(a: &Path, b: &Path) -> Result<(), String> {
    print!("{}", diff(a, b).map_err(|e| e.to_string())?.render());
    Ok(())
}

/// `snapshot upload DIR [--base BASE]`: uploads into a canister of the embedded replica —
/// the base first if given, then `DIR` sending only the pages that differ from it — loads the
/// result and checks the live canister against the directory's checksum.
///
/// `replace` (hex) names the snapshot the upload supersedes: the upload goes into a new
/// snapshot and deletes it once verified; only a full quota makes it replace it up front.
/// `strict` refuses a directory edited since its download instead of uploading the edits.
pub fn run_upload(
    dir: &Path,
    base: Option<&Path>,
    replace: Option<&str>,
    strict: bool,
) -> Result<(), String> {
    let options = TransferOptions {
        strict,
        ..TransferOptions::default()
    };
    let replace = replace
        .map(|text| {
            crate::transfer::unhex(text)
                .ok_or_else(|| format!("--replace {text:?} is not a hex snapshot id"))
        })
        .transpose()?;
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 2,
        ..Config::default()
    });
    let user = Principal::from_slice(&[0xCA; 29]);
    let canister = sm.create_canister_with_settings(Some(user), None);
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user));
    let total: u64 = {
        let metadata = SnapshotDir::new(dir)
            .validate()
            .map_err(|e| e.to_string())?;
        metadata
            .wasm_module_size
            .saturating_add(metadata.wasm_memory_size)
            .saturating_add(metadata.stable_memory_size)
    };
    println!("embedded replica: canister {canister}");
    let report = match base {
        None => sm
            .upload_canister_snapshot_with(canister, Some(user), dir, replace, None, &options)
            .map_err(|e| e.to_string())?,
        Some(base_dir) => {
            let base_id = sm
                .upload_canister_snapshot(canister, Some(user), base_dir, None)
                .map_err(|e| format!("uploading the base: {e}"))?;
            println!(
                "uploaded base {} as snapshot {}",
                base_dir.display(),
                hex(&base_id)
            );
            sm.upload_canister_snapshot_with(
                canister,
                Some(user),
                dir,
                replace,
                Some(UploadBase {
                    snapshot_id: base_id,
                    dir: base_dir,
                }),
                &options,
            )
            .map_err(|e| e.to_string())?
        }
    };
    println!(
        "uploaded {} as snapshot {}: sent {} in {} messages (the snapshot holds {})",
        dir.display(),
        hex(&report.snapshot_id),
        human_bytes(report.bytes_sent),
        report.messages,
        human_bytes(total)
    );
    println!("{}: {}", dir.display(), report.edits);
    match &report.replaced {
        Replaced::Nothing => {}
        Replaced::DeletedAfterVerification(old) => println!(
            "deleted snapshot {}, which it supersedes, after the upload was verified",
            hex(old)
        ),
        Replaced::ReplacedAtStart(old) => println!(
            "the quota was full: snapshot {} was replaced when the upload started",
            hex(old)
        ),
    }
    sm.load_canister_snapshot(canister, Some(user), report.snapshot_id.clone())
        .map_err(|e| format!("loading the uploaded snapshot: {e}"))?;
    println!(
        "loaded it into the canister; replica checksum {} equals the directory's",
        hex(&report.checksum)
    );
    Ok(())
}
