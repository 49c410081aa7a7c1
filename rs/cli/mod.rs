//! The command line: `demo`, and (with the transfer layer) `snapshot …` tools that work on
//! local snapshot directories. Parsing with `clap`, progress with `indicatif` (hidden when
//! stderr is not a terminal).
//!
//! The top layer: may use everything below; nothing below uses it.

pub mod demo;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

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

/// A byte-counting progress bar on stderr.
pub fn progress_bar(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "   {msg:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// `1.50 GiB`, `256.00 MiB`, `12 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}
