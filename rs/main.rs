#![forbid(unsafe_code)]
use clap::Parser;

// The IC replica allocates with jemalloc. It keeps freed memory for reuse instead of returning
// each 2 MB transfer buffer to the kernel, which halves the cost of a download (page faults
// dominated it under glibc malloc: benches/README.md, transfer). The library leaves the choice
// of allocator to whoever embeds it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = canister_snapshots::cli::Cli::parse();
    if let Err(err) = canister_snapshots::cli::run(cli) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
