//! The command line: `demo`, `simulate`, and (with the transfer layer) `snapshot …` tools that work on
//! local snapshot directories. Parsing with `clap`, progress with `indicatif` (hidden when
//! stderr is not a terminal).
//!
//! The top layer: may use everything below; nothing below uses it.

#![forbid(unsafe_code)]

pub mod archive;
pub mod canister;
pub mod demo;
pub mod serve;
pub mod simulate;
pub mod snapshot;

use std::path::PathBuf;

pub use crate::progress::{human_bytes, progress_bar};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "canister-snapshots",
    version,
    about = "Replica-side canister snapshots for the Internet Computer"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The local replica's state directory (`canister …` commands).
    #[arg(long, global = true, default_value = canister::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The principal that sends `canister …` commands (default: a fixed identity).
    #[arg(long, global = true)]
    pub sender: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Back up and restore a canister with hundreds of MiB of data on the embedded replica.
    Demo {
        /// Heap (Wasm memory) to fill, in MiB.
        #[arg(long, default_value_t = 256)]
        heap_mib: u64,
        /// Stable memory to fill, in MiB.
        #[arg(long, default_value_t = 256)]
        stable_mib: u64,
        /// Keep the downloaded and repaired snapshot directories in a new subdirectory of DIR
        /// (nothing already in DIR is touched). Default: a new temporary directory, removed at
        /// the end.
        #[arg(long)]
        download_dir: Option<PathBuf>,
    },
    /// Tools on local snapshot directories (the layout of `dfx canister snapshot download`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Snapshot archives in object storage (S3, local files): push, pull, list, verify, prune.
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
    /// `dfx canister …` over a local replica kept in --state-dir.
    #[command(subcommand)]
    Canister(canister::CanisterCommand),
    /// A durable local replica on --state-dir, reached through the IC's HTTP interface
    /// (ic-agent, icp, the JavaScript agent). Checkpoints on SIGINT and SIGTERM.
    Serve {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:4943")]
        bind: std::net::SocketAddr,
        /// Snapshots one canister may hold (the IC's 10).
        #[arg(long, default_value_t = 10)]
        max_snapshots_per_canister: usize,
    },
    /// Replica agreement: one seeded random stream of batches on replicas with different
    /// thread counts, every invariant checked after every round.
    Simulate {
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1000)]
        rounds: u64,
        /// Thread counts, one replica each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        threads: Vec<usize>,
        /// The subnet's limits: roomy, crowded (memory capacity), rate-limited (heap delta),
        /// canister-limited, dear-storage (canisters run out of cycles).
        #[arg(long, default_value = "roomy")]
        shape: crate::testing::simulation::SubnetShape,
        /// Run the workload on the test canister as real WebAssembly (wasmtime) instead of the
        /// native one.
        #[arg(long)]
        wasm: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Sizes, globals, certified data, checksum and non-zero page ranges of a directory.
    Inspect { dir: PathBuf },
    /// Check the files against metadata.json and recompute the checksum; fails if it differs
    /// from checksum.json.
    Verify { dir: PathBuf },
    /// Changed page ranges per memory between two directories.
    Diff { a: PathBuf, b: PathBuf },
    /// Upload a directory into a canister of the embedded replica, load it and verify it; with
    /// --base, send only the pages that differ from BASE.
    Upload {
        dir: PathBuf,
        #[arg(long)]
        base: Option<PathBuf>,
        /// The snapshot (hex id) this upload supersedes: deleted once the upload is verified,
        /// or, if the quota is full, replaced when the upload starts (before it is verified).
        #[arg(long, value_name = "ID")]
        replace: Option<String>,
        /// Refuse to upload if files changed since the download (by checksum.json), naming
        /// them, instead of uploading the edits and reporting them.
        #[arg(long)]
        strict: bool,
    },
}

/// Runs the parsed command; the error is printed by `main`, which exits non-zero.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Demo {
            heap_mib,
            stable_mib,
            download_dir,
        } => {
            if heap_mib > 3 * 1024 || stable_mib > 64 * 1024 {
                return Err(
                    "--heap-mib is at most 3072 (the default wasm_memory_limit) and \
                     --stable-mib at most 65536"
                        .into(),
                );
            }
            demo::run(&demo::DemoOptions {
                heap_mib,
                stable_mib,
                download_dir,
            })
        }
        Command::Serve {
            bind,
            max_snapshots_per_canister,
        } => serve::run(&cli.state_dir, bind, max_snapshots_per_canister),
        Command::Simulate {
            seed,
            rounds,
            threads,
            shape,
            wasm,
        } => simulate::run(seed, rounds, threads, shape, wasm),
        Command::Snapshot(SnapshotCommand::Inspect { dir }) => snapshot::run_inspect(&dir),
        Command::Snapshot(SnapshotCommand::Verify { dir }) => snapshot::run_verify(&dir),
        Command::Snapshot(SnapshotCommand::Diff { a, b }) => snapshot::run_diff(&a, &b),
        Command::Snapshot(SnapshotCommand::Upload {
            dir,
            base,
            replace,
            strict,
        }) => snapshot::run_upload(&dir, base.as_deref(), replace.as_deref(), strict),
        Command::Canister(command) => {
            let sender = match cli.sender.as_deref() {
                Some(text) => candid::Principal::from_text(text)
                    .map_err(|e| format!("--sender {text:?} is not a principal: {e}"))?,
                None => canister::default_sender(),
            };
            canister::run(&cli.state_dir, sender, command)
        }
        Command::Archive(command) => archive::run(command),
    }
}
