//! Storage charges: what holding memory (a canister's own and its snapshots') costs over batch
//! time, and what happens to a canister that cannot pay (`spec/management.md`, "Storage
//! charges").
//!
//! The replica charges each canister for its resource usage at the end of a round, at most
//! every `duration_between_allocation_charges` (10 s) of batch time, from the reserved balance
//! first and then the main balance, down to zero (no freezing threshold applies to the charge
//! itself); a canister that cannot pay is uninstalled, its history cleared (the count of changes
//! kept), its allocations reset, its remaining cycles burned and its snapshots deleted
//! (`rs/execution_environment/src/scheduler.rs`, `charge_canisters_for_resource_allocation_and_
//! usage`). Here the round loop calls [`ManagementCanister::charge_for_storage`] at the start
//! of every round, right after the batch time moves: the interval being paid for is the one
//! since the previous round, during which the canisters held exactly the memory they hold now,
//! before this round changes anything. It charges the whole periods whose boundaries the round
//! crosses ([`Config::storage_charge_seconds`]), so no per-canister time of last charge needs
//! keeping and the sum over rounds is exact.
//!
//! Depends only on the batch times and the state: never the wall clock, never the thread count
//! (this runs before the canister phase, on one thread, in canister id order).
//!
//! [`Config::storage_charge_seconds`]: crate::config::Config::storage_charge_seconds

#![forbid(unsafe_code)]

use candid::Principal;

use super::ManagementCanister;
use super::canisters::drop_code;
use crate::replicated_state::ReplicatedState;
use crate::state::{CanisterState, Cycles};

impl ManagementCanister<'_> {
    /// Charges every canister for the storage it held since the round at batch time
    /// `previous` ran (the state's time is already this round's), and uninstalls those that
    /// cannot pay. Returns the uninstalled canisters, in id order. O(canisters) in a round
    /// that crosses a charge period, O(1) otherwise.
    pub fn charge_for_storage(&self, state: &mut ReplicatedState, previous: u64) -> Vec<Principal> {
        let seconds = self.config.storage_charge_seconds(previous, state.time);
        if seconds == 0 {
            return Vec::new();
        }
        let mut out_of_cycles = Vec::new();
        for canister in state.canisters.values_mut() {
            let memory = canister
                .memory_usage()
                .saturating_add(state.snapshots.snapshots_size(canister.canister_id));
            let charge = self.config.storage_charge(memory, seconds);
            if !pay_for_storage(canister, charge) {
                out_of_cycles.push(canister.canister_id);
            }
        }
        for &canister_id in &out_of_cycles {
            uninstall_out_of_cycles(state, canister_id);
        }
        out_of_cycles
    }
}

/// Takes `charge` from the reserved balance first, then from the main balance, as the replica
/// consumes resource charges; `false` (and nothing taken) if both together cannot pay it.
fn pay_for_storage(canister: &mut CanisterState, charge: Cycles) -> bool {
    let reserved = canister.reserved_cycles;
    if charge > reserved.saturating_add(canister.cycles) {
        return false;
    }
    let from_reserved = charge.min(reserved);
    canister.reserved_cycles = reserved.saturating_sub(from_reserved);
    canister.cycles = canister
        .cycles
        .saturating_sub(charge.saturating_sub(from_reserved));
    true
}

/// What the replica does to a canister that ran out of cycles: uninstalls it (code, memories,
/// certified data, chunk store, timer; version + 1) without a history entry, clears its history
/// (keeping the count of changes), resets its allocations, burns what is left of both balances
/// and deletes its snapshots. The canister itself, its controllers, status and other settings
/// stay. Moves the subnet's running memory totals.
fn uninstall_out_of_cycles(state: &mut ReplicatedState, canister_id: Principal) {
    let before = state.footprint(canister_id);
    if let Some(canister) = state.canisters.get_mut(&canister_id) {
        drop_code(canister);
        canister.history.clear();
        canister.settings.compute_allocation = 0;
        canister.settings.memory_allocation = 0;
        canister.cycles = 0;
        canister.reserved_cycles = 0;
    }
    state.snapshots.delete_all(canister_id);
    let after = state.footprint(canister_id);
    state.account(before, after);
}
