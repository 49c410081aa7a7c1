//! Hostile management payloads: a selector byte (method, and the controller or anonymous as
//! sender), then any bytes. Nothing panics, and a refused message leaves the state as it was.

use canister_snapshots::management::METHODS;

use super::replica::{self, Replica};
use super::templates::{self, Args};

pub fn run(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    // One index past the end asks for a method that does not exist.
    let method = METHODS
        .get(usize::from(selector) % (METHODS.len() + 1))
        .copied()
        .unwrap_or("no_such_method");
    let sender = if selector & 0x80 == 0 {
        replica::controller()
    } else {
        candid::Principal::anonymous()
    };
    let mut replica = Replica::new();
    let mgmt = candid::Principal::management_canister();
    let _ = replica.deliver(sender, mgmt, method, payload.to_vec());
}

/// Each method's template payload with a few shapes, from the controller.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let state = &replica::pristine().state;
    let mut seeds = Vec::new();
    for (index, method) in METHODS.iter().enumerate() {
        for (variant, picks) in [[0, 0, 0, 0], [0, 1, 0, 0x0b], [1, 2, 2, 1]]
            .iter()
            .enumerate()
        {
            let args = Args::new(*picks, [0, 8], b"");
            let payload = templates::payload(state, method, &args);
            seeds.push((
                format!("{method}-{variant}"),
                [vec![index as u8], payload].concat(),
            ));
        }
    }
    seeds
}
