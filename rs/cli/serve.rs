//! `canister-snapshots serve`: the replica on a state directory behind the IC's HTTP
//! interface (`crate::http`), until SIGINT or SIGTERM, when it checkpoints and exits.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;
use crate::http::Server;
use crate::replica::hex;

pub fn run(
    state_dir: &Path,
    bind: SocketAddr,
    max_snapshots_per_canister: usize,
) -> Result<(), String> {
    let config = Config {
        max_snapshots_per_canister,
        ..Config::default()
    };
    let server = Server::start(state_dir, config, bind)?;
    println!("listening on http://{}", server.addr);
    println!("root key: {}", hex(&server.root_key_der));
    // Clients and scripts read the two lines above before the first request.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot wait for signals: {e}"))?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| format!("cannot wait for SIGTERM: {e}"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        Ok::<(), String>(())
    })?;
    eprintln!("stopping: writing a checkpoint");
    server.stop()
}
