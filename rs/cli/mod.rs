//! The command line: `demo`, and (with the transfer layer) `snapshot …` tools that work on
//! local snapshot directories. Parsing with `clap`, progress with `indicatif` (hidden when
//! stderr is not a terminal).
//!
//! The top layer: may use everything below; nothing below uses it.

pub mod demo;

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
    },
}

/// Runs the parsed command; the error is printed by `main`, which exits non-zero.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Demo {
            heap_mib,
            stable_mib,
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
            })
        }
    }
}
