//! `canister-snapshots canister …`: a `dfx canister …`-shaped command line over a local replica
//! kept in a state directory.
//!
//! Each invocation opens the state directory (`--state-dir`, locked while it runs), executes
//! its messages, writes a checkpoint and exits, so every command's effect is durable when it
//! returns (`spec/durability.md`). `status` and `snapshot list` only read: they write no
//! checkpoint, so they answer on a full disk. A checkpoint that had no room for its merges
//! commits without them and the command warns on stderr. Arguments and replies of `call` are Candid text, parsed and
//! printed with `candid_parser` as dfx does; snapshot ids are hex, as dfx prints them. A reject
//! prints the IC error code and message and exits non-zero.
//!
//! `snapshot download` and `snapshot upload` resume across processes, as icp-cli's do: the
//! directory is locked while a transfer works in it (`flock` on the directory itself: nothing
//! is created in the directory an upload reads), its progress file
//! records only what is durable (a download's bytes synced to disk; an upload's slices, and
//! the id of the snapshot it creates, in a replica checkpoint written first), and a process
//! killed between slices is continued by the same command with `--resume`
//! (`tests/cli_lifecycle.rs` kills one). An upload killed after it finished but before it
//! printed the id is reported by a rerun, with or without `--resume`.

use std::path::{Path, PathBuf};

use candid::{IDLArgs, Principal};
use clap::{Subcommand, ValueEnum};
use ic_management_canister_types::{
    CanisterInstallMode, CanisterSettings, CanisterStatusResult, CanisterStatusType,
    ProvisionalCreateCanisterWithCyclesArgs, UpgradeFlags, WasmMemoryPersistence,
};

use crate::harness::HARNESS_CANISTER_CYCLES;
use crate::memory::checksum::hex;
use crate::state::CanisterStatus;
use crate::state_manager::StateManager;
use crate::{Config, RejectResponse, StateMachine, TEST_CANISTER_WASM};

/// The default state directory, like dfx's `.dfx`.
pub const DEFAULT_STATE_DIR: &str = ".canister-snapshots";

/// The identity used without `--sender`: a fixed self-authenticating principal.
pub fn default_sender() -> Principal {
    Principal::self_authenticating(b"canister-snapshots default identity")
}

#[derive(Subcommand, Debug)]
pub enum CanisterCommand {
    /// Create a canister; prints its id.
    Create {
        /// A controller of the new canister (repeatable; default: the sender).
        #[arg(long = "controller")]
        controllers: Vec<String>,
    },
    /// Install code (the native test canister unless --wasm is given: a `.wasm` or `.wasm.gz`
    /// file, run on wasmtime); `canister_init` or `canister_post_upgrade` gets --argument.
    Install {
        canister: String,
        #[arg(long, value_enum, default_value_t = InstallMode::Install)]
        mode: InstallMode,
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// The install argument in Candid text (default: none).
        #[arg(long)]
        argument: Option<String>,
        /// With --mode upgrade: keep the Wasm heap (what a module with enhanced orthogonal
        /// persistence, Motoko's default, requires) or replace it (the default), as dfx's flag.
        #[arg(long, value_enum)]
        wasm_memory_persistence: Option<MemoryPersistence>,
    },
    /// Call METHOD with ARGS in Candid text (default `()`); prints the reply in Candid text.
    /// With --query, a query call: executed on a copy, nothing changes.
    Call {
        canister: String,
        method: String,
        args: Option<String>,
        #[arg(long)]
        query: bool,
    },
    Stop {
        canister: String,
    },
    Start {
        canister: String,
    },
    Status {
        canister: String,
    },
    Delete {
        canister: String,
    },
    #[command(subcommand)]
    Snapshot(CanisterSnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub enum CanisterSnapshotCommand {
    /// Take a snapshot; prints its id in hex. Refuses a running canister unless --force.
    Create {
        canister: String,
        #[arg(long)]
        replace: Option<String>,
        #[arg(long)]
        force: bool,
    },
    List {
        canister: String,
    },
    /// Load snapshot ID into the canister. Refuses a running canister unless --force.
    Load {
        canister: String,
        id: String,
        #[arg(long)]
        force: bool,
    },
    Delete {
        canister: String,
        id: String,
    },
    /// Download snapshot ID into DIR (the dfx layout).
    Download {
        canister: String,
        id: String,
        #[arg(long)]
        dir: PathBuf,
        /// Continue an interrupted download into DIR (its progress files say where).
        #[arg(long)]
        resume: bool,
    },
    /// Download snapshot ID and push it into the archive at URL in one step (`archive push`
    /// of the download, `spec/archive.md`); prints the manifest's name.
    Archive {
        canister: String,
        id: String,
        /// s3://BUCKET[/PREFIX], file:///PATH or a plain path.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Upload DIR as a new snapshot; prints its id in hex.
    Upload {
        canister: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        replace: Option<String>,
        /// Continue an interrupted upload of DIR.
        #[arg(long)]
        resume: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum InstallMode {
    Install,
    Reinstall,
    Upgrade,
}

/// `wasm_memory_persistence` of an upgrade.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum MemoryPersistence {
    Keep,
    Replace,
}

fn principal(text: &str) -> Result<Principal, String> {
    Principal::from_text(text).map_err(|e| format!("{text:?} is not a principal: {e}"))
}

fn snapshot_id(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim_start_matches("0x");
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return Err(format!(
            "{text:?} is not a snapshot id: expected an even number of hex digits"
        ));
    }
    crate::transfer::unhex(text)
        .ok_or_else(|| format!("{text:?} is not a snapshot id: expected hex digits"))
}

/// A reject as the command line prints it: the IC code first.
fn reject(err: RejectResponse) -> String {
    format!("{}: {}", err.error_code, err.reject_message)
}

/// Refuses a running canister, as dfx does for `snapshot create` and `load` (the protocol
/// allows it; a running canister may be in the middle of something).
fn require_stopped(
    sm: &StateMachine,
    canister: Principal,
    what: &str,
    force: bool,
) -> Result<(), String> {
    let running = sm
        .state()
        .canisters
        .get(&canister)
        .is_some_and(|c| c.status == CanisterStatus::Running);
    if running && !force {
        return Err(format!(
            "canister {canister} is running: stop it first (`canister stop {canister}`) or pass \
             --force to {what} a snapshot of a running canister"
        ));
    }
    Ok(())
}

/// Test hook: the state directory's writes fail like a full disk once this many bytes have
/// been written by the invocation (`StateManager::set_write_budget`).
pub const WRITE_BUDGET_VAR: &str = "CANISTER_SNAPSHOTS_TEST_WRITE_BUDGET";

impl CanisterCommand {
    /// Whether the command only reads: its messages change nothing but the round and the time,
    /// so it writes no checkpoint (on a full disk it still answers, and it never leaves the
    /// disk fuller). Its round is not made durable: the next command starts from the same
    /// checkpoint as if it had not run, as a query would leave it.
    fn only_reads(&self) -> bool {
        matches!(
            self,
            CanisterCommand::Status { .. }
                | CanisterCommand::Snapshot(CanisterSnapshotCommand::List { .. })
        )
    }
}

/// Runs `command` on the replica in `state_dir` as `sender`, then checkpoints (unless it only
/// reads).
pub fn run(state_dir: &Path, sender: Principal, command: CanisterCommand) -> Result<(), String> {
    if let Ok(text) = std::env::var(WRITE_BUDGET_VAR) {
        let bytes = text
            .parse()
            .map_err(|e| format!("{WRITE_BUDGET_VAR}={text:?} is not a byte count: {e}"))?;
        // Before the open: the merges it starts in the background meet the budget too, so
        // whether one fits never depends on how far it got before the budget was set.
        StateManager::set_initial_write_budget(Some(bytes));
    }
    let mut sm = StateMachine::open(state_dir, Config::default()).map_err(|e| e.to_string())?;
    let only_reads = command.only_reads();
    let result = execute(&mut sm, sender, command);
    if !only_reads {
        // The messages executed, accepted or not, advanced the round: make that durable.
        sm.checkpoint().map_err(|e| e.to_string())?;
        if let Some(manager) = sm.state_manager() {
            warn_of_merges_left_out(manager);
        }
    }
    let output = result?;
    if !output.is_empty() {
        println!("{output}");
    }
    Ok(())
}

/// Says on stderr which merges the checkpoint left out for want of room: the command's effect
/// is durable, the state directory keeps more page files until a later checkpoint has room.
fn warn_of_merges_left_out(manager: &crate::state_manager::StateManager) {
    let left_out = manager.merges_left_out();
    if left_out.is_empty() {
        return;
    }
    let bytes = left_out.iter().map(|m| m.page_bytes).sum::<u64>();
    eprintln!(
        "warning: the disk under {} has no room to merge page files ({} merge(s) of up to {} \
         left out); the command's effect is durable, and a later command merges them once \
         there is room: free some space (`canister snapshot delete`, `canister delete`)",
        manager.root().display(),
        left_out.len(),
        crate::progress::human_bytes(bytes),
    );
}

fn execute(
    sm: &mut StateMachine,
    sender: Principal,
    command: CanisterCommand,
) -> Result<String, String> {
    let caller = Some(sender);
    match command {
        CanisterCommand::Create { controllers } => {
            let controllers = if controllers.is_empty() {
                vec![sender]
            } else {
                controllers
                    .iter()
                    .map(|c| principal(c))
                    .collect::<Result<_, _>>()?
            };
            let args = ProvisionalCreateCanisterWithCyclesArgs {
                amount: Some(HARNESS_CANISTER_CYCLES.into()),
                settings: Some(CanisterSettings {
                    controllers: Some(controllers),
                    ..CanisterSettings::default()
                }),
                specified_id: None,
                sender_canister_version: None,
            };
            let (record,): (ic_management_canister_types::CanisterIdRecord,) = sm
                .management(caller, "provisional_create_canister_with_cycles", (args,))
                .map_err(reject)?;
            Ok(record.canister_id.to_text())
        }
        CanisterCommand::Install {
            canister,
            mode,
            wasm,
            argument,
            wasm_memory_persistence,
        } => {
            let canister_id = principal(&canister)?;
            let wasm_module = match wasm {
                Some(path) => std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                None => TEST_CANISTER_WASM.to_vec(),
            };
            let persistence = wasm_memory_persistence.map(|p| match p {
                MemoryPersistence::Keep => WasmMemoryPersistence::Keep,
                MemoryPersistence::Replace => WasmMemoryPersistence::Replace,
            });
            let mode = match mode {
                InstallMode::Install | InstallMode::Reinstall if persistence.is_some() => {
                    return Err(
                        "--wasm-memory-persistence applies to --mode upgrade only".to_string()
                    );
                }
                InstallMode::Install => CanisterInstallMode::Install,
                InstallMode::Reinstall => CanisterInstallMode::Reinstall,
                InstallMode::Upgrade => CanisterInstallMode::Upgrade(Some(UpgradeFlags {
                    skip_pre_upgrade: None,
                    wasm_memory_persistence: persistence,
                })),
            };
            let args = ic_management_canister_types::InstallCodeArgs {
                mode,
                canister_id,
                wasm_module,
                arg: argument
                    .as_deref()
                    .map(candid_args)
                    .transpose()?
                    .unwrap_or_default(),
                sender_canister_version: None,
            };
            sm.management::<()>(caller, "install_code", (args,))
                .map_err(reject)?;
            Ok(String::new())
        }
        CanisterCommand::Call {
            canister,
            method,
            args,
            query,
        } => {
            let canister_id = principal(&canister)?;
            let payload = candid_args(args.as_deref().unwrap_or("()"))?;
            let reply = if query {
                sm.query_call(canister_id, sender, &method, payload)
            } else {
                sm.update_call(canister_id, sender, &method, payload)
            }
            .map_err(reject)?;
            let reply =
                IDLArgs::from_bytes(&reply).map_err(|e| format!("the reply is not Candid: {e}"))?;
            Ok(reply.to_string())
        }
        CanisterCommand::Stop { canister } => {
            sm.stop_canister(principal(&canister)?, caller)
                .map_err(reject)?;
            Ok(String::new())
        }
        CanisterCommand::Start { canister } => {
            sm.start_canister(principal(&canister)?, caller)
                .map_err(reject)?;
            Ok(String::new())
        }
        CanisterCommand::Status { canister } => {
            let status = sm
                .canister_status(principal(&canister)?, caller)
                .map_err(reject)?;
            Ok(render_status(&status))
        }
        CanisterCommand::Delete { canister } => {
            let args = ic_management_canister_types::CanisterIdRecord {
                canister_id: principal(&canister)?,
            };
            sm.management::<()>(caller, "delete_canister", (args,))
                .map_err(reject)?;
            Ok(String::new())
        }
        CanisterCommand::Snapshot(command) => execute_snapshot(sm, sender, command),
    }
}

fn execute_snapshot(
    sm: &mut StateMachine,
    sender: Principal,
    command: CanisterSnapshotCommand,
) -> Result<String, String> {
    let caller = Some(sender);
    match command {
        CanisterSnapshotCommand::Create {
            canister,
            replace,
            force,
        } => {
            let canister = principal(&canister)?;
            require_stopped(sm, canister, "take", force)?;
            let replace = replace.as_deref().map(snapshot_id).transpose()?;
            let snapshot = sm
                .take_canister_snapshot(canister, caller, replace)
                .map_err(reject)?;
            Ok(hex(&snapshot.id))
        }
        CanisterSnapshotCommand::List { canister } => {
            let snapshots = sm
                .list_canister_snapshots(principal(&canister)?, caller)
                .map_err(reject)?;
            if snapshots.is_empty() {
                return Ok("No snapshots found for this canister.".into());
            }
            Ok(snapshots
                .iter()
                .map(|s| {
                    format!(
                        "{}: taken at {} ns, {} bytes",
                        hex(&s.id),
                        s.taken_at_timestamp,
                        s.total_size
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        CanisterSnapshotCommand::Load {
            canister,
            id,
            force,
        } => {
            let canister = principal(&canister)?;
            require_stopped(sm, canister, "load", force)?;
            sm.load_canister_snapshot(canister, caller, snapshot_id(&id)?)
                .map_err(reject)?;
            Ok(String::new())
        }
        CanisterSnapshotCommand::Delete { canister, id } => {
            sm.delete_canister_snapshot(principal(&canister)?, caller, snapshot_id(&id)?)
                .map_err(reject)?;
            Ok(String::new())
        }
        CanisterSnapshotCommand::Download {
            canister,
            id,
            dir,
            resume,
        } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let _lock = TransferLock::take(&dir, DOWNLOAD_PROGRESS, resume)?;
            sm.download_canister_snapshot_with(
                principal(&canister)?,
                caller,
                snapshot_id(&id)?,
                &dir,
                &transfer_options()?,
            )
            .map_err(|e| e.to_string())?;
            Ok(format!("downloaded into {}", dir.display()))
        }
        CanisterSnapshotCommand::Archive { canister, id, to } => {
            let archive = super::archive::open(&to)?;
            let report = crate::archive::archive_snapshot(
                sm,
                principal(&canister)?,
                sender,
                snapshot_id(&id)?,
                &archive,
                &crate::archive::PushOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            eprintln!("{}", super::archive::push_summary(&report));
            Ok(report.manifest)
        }
        CanisterSnapshotCommand::Upload {
            canister,
            dir,
            replace,
            resume,
        } => {
            let _lock = TransferLock::take(&dir, UPLOAD_PROGRESS, resume)?;
            let replace = replace.as_deref().map(snapshot_id).transpose()?;
            let report = sm
                .upload_canister_snapshot_with(
                    principal(&canister)?,
                    caller,
                    &dir,
                    replace,
                    None,
                    &transfer_options()?,
                )
                .map_err(|e| e.to_string())?;
            if report.already_uploaded {
                eprintln!("an earlier run of this upload had finished it: nothing sent");
            }
            Ok(hex(&report.snapshot_id))
        }
    }
}

use crate::transfer::{DOWNLOAD_PROGRESS, TransferOptions, UPLOAD_PROGRESS, lock_directory};

/// Test hook: a download or upload aborts the process (as `kill -9` would) after this many
/// slices (`TransferOptions::abort_after_slices`).
pub const ABORT_AFTER_SLICES_VAR: &str = "CANISTER_SNAPSHOTS_TEST_ABORT_AFTER_SLICES";

/// Test hook: a transfer makes its progress durable every this many slices instead of every
/// [`crate::transfer::SYNC_EVERY_SLICES`] (`TransferOptions::sync_every_slices`).
pub const SYNC_EVERY_SLICES_VAR: &str = "CANISTER_SNAPSHOTS_TEST_SYNC_EVERY_SLICES";

/// The options of a command-line transfer: the defaults, and the test hooks' variables.
fn transfer_options() -> Result<TransferOptions, String> {
    let number = |var: &str| -> Result<Option<u64>, String> {
        match std::env::var(var) {
            Ok(text) => text
                .parse()
                .map(Some)
                .map_err(|e| format!("{var}={text:?} is not a count: {e}")),
            Err(_) => Ok(None),
        }
    };
    let mut options = TransferOptions {
        abort_after_slices: number(ABORT_AFTER_SLICES_VAR)?,
        ..TransferOptions::default()
    };
    if let Some(every) = number(SYNC_EVERY_SLICES_VAR)? {
        options.sync_every_slices = every;
    }
    Ok(options)
}

/// A snapshot directory locked for one transfer: a second process transferring into or out of
/// the same directory gets an error. The lock is an `flock` on the directory's own descriptor,
/// so nothing is created in it (an upload only reads the snapshot, and writes nothing there but
/// its progress file), no lock file can be left behind or unlinked under a holder, and the
/// kernel releases it when the holder dies.
struct TransferLock {
    _directory: std::fs::File,
}

impl TransferLock {
    /// Locks `dir`; refuses to continue an interrupted transfer (its `progress` file is there)
    /// unless `resume`.
    fn take(dir: &Path, progress: &str, resume: bool) -> Result<TransferLock, String> {
        let directory = match lock_directory(dir) {
            Ok(Some(directory)) => directory,
            Ok(None) => {
                return Err(format!(
                    "{} is in use by another transfer (it holds the directory's lock); wait for \
                     it to end",
                    dir.display()
                ));
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", dir.display())),
        };
        let lock = TransferLock {
            _directory: directory,
        };
        if !resume && dir.join(progress).exists() {
            return Err(format!(
                "{} holds an interrupted transfer ({progress}): pass --resume to continue it, \
                 or remove the directory to start again",
                dir.display()
            ));
        }
        Ok(lock)
    }
}

fn render_status(status: &CanisterStatusResult) -> String {
    let state = match status.status {
        CanisterStatusType::Running => "Running",
        CanisterStatusType::Stopping => "Stopping",
        CanisterStatusType::Stopped => "Stopped",
    };
    let controllers: Vec<String> = status
        .settings
        .controllers
        .iter()
        .map(Principal::to_text)
        .collect();
    format!(
        "Canister status call result for this canister.\nStatus: {state}\nControllers: {}\n\
         Memory size: {}\nBalance: {} Cycles\nModule hash: {}",
        controllers.join(" "),
        status.memory_size,
        status.cycles,
        status
            .module_hash
            .as_deref()
            .map_or("None".to_string(), |h| format!("0x{}", hex(h))),
    )
}

/// Candid text (`(1 : nat, "a")`) encoded as a message argument.
fn candid_args(text: &str) -> Result<Vec<u8>, String> {
    candid_parser::parse_idl_args(text)
        .and_then(|args| args.to_bytes().map_err(Into::into))
        .map_err(|e| format!("{text:?} is not Candid text: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_parse_from_hex_and_refuse_anything_else() {
        assert_eq!(snapshot_id("0a0B").unwrap(), vec![10, 11]);
        assert_eq!(snapshot_id("0x01").unwrap(), vec![1]);
        for bad in ["", "abc", "zz", "0x"] {
            assert!(snapshot_id(bad).is_err(), "{bad}");
        }
    }
}
