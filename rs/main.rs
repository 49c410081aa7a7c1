use clap::Parser;

fn main() {
    let cli = canister_snapshots::cli::Cli::parse();
    if let Err(err) = canister_snapshots::cli::run(cli) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
