//! Hostile payloads to the test canister: a selector byte (method), then any bytes. A trap or
//! reject leaves the canister unchanged.

use canister_snapshots::execution::test_canister::METHODS;

use super::replica::{self, Replica};
use super::templates::{self, Args};

pub fn run(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let method = METHODS
        .get(usize::from(selector) % (METHODS.len() + 1))
        .copied()
        .unwrap_or("unknown");
    let mut replica = Replica::new();
    let canister = replica::pristine().canister;
    let _ = replica.deliver(replica::controller(), canister, method, payload.to_vec());
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let state = &replica::pristine().state;
    let mut seeds = Vec::new();
    for (index, method) in METHODS.iter().enumerate() {
        for (variant, (picks, numbers, blob)) in [
            ([0, 0, 0, 0], [0, 8], &b"seed"[..]),
            ([0, 1, 0, 0], [69_990, 20], &b""[..]),
            ([0, 2, 0, 0], [65_536 * 3, 1], &b"\xff"[..]),
        ]
        .into_iter()
        .enumerate()
        {
            let args = Args::new(picks, numbers, blob);
            let payload = templates::payload(state, method, &args);
            seeds.push((
                format!("{method}-{variant}"),
                [vec![index as u8], payload].concat(),
            ));
        }
    }
    seeds
}
