//! Subnet configuration: every limit and price the execution layer applies, in one place.
//! Identical on every replica of a subnet; not part of the state hash.

#![forbid(unsafe_code)]

use crate::state::Cycles;

const SECONDS_PER_DAY: u64 = 86_400;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Limits and prices. `Default` follows the IC's application subnets where the IC has a
/// number, except `max_snapshots_per_canister`, which follows this project's design (one).
#[derive(Debug, Clone)]
pub struct Config {
    /// Snapshots one canister may hold (the IC has 10 today; this project's design: 1).
    pub max_snapshots_per_canister: usize,
    /// Upper bound on a canister's stable memory.
    pub stable_memory_limit_bytes: u64,
    /// Upper bound on the heap of a canister whose memory 0 is 64-bit (the replica's
    /// `max_wasm64_memory_size`, a subnet setting); a 32-bit heap stops at 4 GiB.
    pub max_wasm64_memory_bytes: u64,
    /// Memory the subnet can give to canisters and their snapshots together.
    pub subnet_memory_capacity_bytes: u64,
    /// Subnet memory usage above which growth reserves cycles (storage reservation: the IC's
    /// `subnet_memory_threshold`). At or above `subnet_memory_capacity_bytes`, nothing is
    /// ever reserved.
    pub subnet_memory_threshold_bytes: u64,
    /// The longest period a reservation pays storage for, reached at full capacity (the IC's
    /// `max_storage_reservation_period`).
    pub max_storage_reservation_seconds: u64,
    /// Heap-delta allowance a canister earns per round; a canister whose debit exceeds it may
    /// not take or load a snapshot until rounds have drained it.
    pub heap_delta_rate_limit_bytes: u64,
    /// Cycles a canister created by `create_canister_with_settings` or `create_canister` gets.
    pub default_canister_cycles: Cycles,
    /// Fixed instruction cost of take, load and upload-metadata (the IC's 2 billion).
    pub snapshot_base_instructions: u64,
    /// Fixed instruction cost of one `read_canister_snapshot_data` (the IC's 5 million).
    pub read_data_base_instructions: u64,
    /// Cycles per 10 instructions (the IC's 13-node application subnet: 4).
    pub cycles_per_ten_instructions: Cycles,
    /// Storage price in cycles per GiB per second (13-node application subnet: 127,000).
    pub storage_cycles_per_gib_second: Cycles,
    /// Storage is charged whenever batch time crosses a multiple of this many seconds (the
    /// IC's `duration_between_allocation_charges`: 10 s), for the whole periods crossed
    /// (`spec/management.md`, "Storage charges").
    pub allocation_charge_period_seconds: u64,
    /// The largest ingress message (method name + argument bytes) the round loop executes (the
    /// IC's `max_ingress_bytes_per_message` on application subnets: 2 MiB). A larger one is
    /// refused before execution (`spec/execution.md`, "Rounds").
    pub max_ingress_bytes_per_message: u64,
    /// Canisters the subnet may host at once (the IC sets this per subnet in its registry;
    /// creating one more is `MaxNumberOfCanistersReached`; `spec/management.md`, "Limits").
    pub max_number_of_canisters: u64,
    /// The largest reply a canister method may return.
    pub max_reply_bytes: u64,
    /// The most one canister message may write (bytes of pages touched), as the IC bounds a
    /// message by instructions and dirty pages; a larger write is refused before any work.
    pub max_heap_delta_per_message_bytes: u64,
    /// Decoding budget for one management payload (Candid decoding quota, in the units of
    /// `candid::DecoderConfig`): bounds the work a hostile payload can cause.
    pub management_payload_decoding_quota: usize,
    /// A durable replica ([`crate::scheduler::ExecutionLoop::execute_round_durably`]) writes a
    /// checkpoint after every round whose number is a multiple of this (the IC: 500).
    pub checkpoint_interval_rounds: u64,
    /// Worker threads that execute the canister messages of a round (`spec/execution.md`,
    /// "Threads"). Not part of the state: every value gives the same `state_hash`. At least 1.
    pub scheduler_threads: usize,
    /// The most instructions an update call (or a replicated query) may execute: the IC's
    /// `max_instructions_per_message`, 40 billion. Beyond it: `CanisterInstructionLimitExceeded`,
    /// nothing kept.
    pub max_instructions_per_message: u64,
    /// The most instructions a query call may execute: the IC's 5 billion.
    pub max_instructions_per_query_message: u64,
    /// The most instructions `install_code` may execute across `canister_pre_upgrade`,
    /// `canister_start` and `canister_init`/`canister_post_upgrade`: the IC's 300 billion.
    pub max_instructions_per_install_code: u64,
    /// Wasm canisters run with the memory tracker (`rs/embedders/host_memory.rs`): each heap
    /// page given to the instance on first access, only written pages handed back, instead
    /// of the heap copied in and compared after every message. A node setting, like the
    /// thread count: outcomes and the state hash are the same either way, except the heap
    /// delta, which counts pages written rather than pages changed.
    pub memory_tracker: bool,
    /// Canister ids the allocator never gives out and `specified_id` may not name: the
    /// system canisters a replica answers for itself (`serve`: the cycles minting canister and
    /// the cycles ledger, at their mainnet ids). Empty by default.
    pub reserved_canister_ids: Vec<candid::Principal>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_snapshots_per_canister: 1,
            stable_memory_limit_bytes: crate::memory::MAX_STABLE_MEMORY_BYTES,
            max_wasm64_memory_bytes: crate::memory::MAX_WASM64_MEMORY_BYTES,
            subnet_memory_capacity_bytes: 2 << 40,
            subnet_memory_threshold_bytes: 450 << 30,
            max_storage_reservation_seconds: 300_000_000,
            heap_delta_rate_limit_bytes: 75 << 20,
            default_canister_cycles: 100_000_000_000_000,
            snapshot_base_instructions: 2_000_000_000,
            read_data_base_instructions: 5_000_000,
            cycles_per_ten_instructions: 4,
            storage_cycles_per_gib_second: 127_000,
            allocation_charge_period_seconds: 10,
            max_ingress_bytes_per_message: 2 << 20,
            max_number_of_canisters: 100_000,
            max_reply_bytes: 2 << 20,
            max_heap_delta_per_message_bytes: 1 << 30,
            management_payload_decoding_quota: 20_000_000,
            checkpoint_interval_rounds: 500,
            scheduler_threads: std::thread::available_parallelism().map_or(1, usize::from),
            max_instructions_per_message: 40_000_000_000,
            max_instructions_per_query_message: 5_000_000_000,
            max_instructions_per_install_code: 300_000_000_000,
            memory_tracker: false,
            reserved_canister_ids: Vec::new(),
        }
    }
}

impl Config {
    /// Cycles for executing `instructions`.
    pub fn instructions_cost(&self, instructions: u64) -> Cycles {
        (instructions as Cycles).saturating_mul(self.cycles_per_ten_instructions) / 10
    }

    /// Cycles a canister must move to its reserved balance to grow by `bytes` while the
    /// subnet holds `subnet_usage` bytes (the IC's storage reservation): the storage cost of
    /// the new bytes for a period that rises linearly from zero at
    /// `subnet_memory_threshold_bytes` to `max_storage_reservation_seconds` at capacity,
    /// integrated over the growth (the area under that line, as the replica computes it). Zero
    /// while the subnet stays below the threshold.
    pub fn storage_reservation_cycles(&self, bytes: u64, subnet_usage: u64) -> Cycles {
        self.total_reservation(subnet_usage.saturating_add(bytes))
            .saturating_sub(self.total_reservation(subnet_usage))
    }

    /// The area of the triangle above the threshold at `usage`: base `usage − threshold`,
    /// height the period at `usage`.
    fn total_reservation(&self, usage: u64) -> Cycles {
        let capacity = self.subnet_memory_capacity_bytes;
        let threshold = self.subnet_memory_threshold_bytes.min(capacity);
        let above = usage.min(capacity).saturating_sub(threshold);
        let span = capacity.saturating_sub(threshold);
        if span == 0 {
            return 0;
        }
        // `above <= span`, so the period is at most the maximum and fits in 64 bits.
        // A u64 times a u64 fits in a u128, and `span > 0` (checked above).
        #[allow(clippy::arithmetic_side_effects)]
        let period = u64::try_from(
            u128::from(self.max_storage_reservation_seconds) * u128::from(above) / u128::from(span),
        )
        .unwrap_or(self.max_storage_reservation_seconds);
        self.storage_cost(above, period / 2)
    }

    /// Cycles a canister of `memory_bytes` burns per `seconds` of storage.
    pub fn storage_cost(&self, memory_bytes: u64, seconds: u64) -> Cycles {
        (memory_bytes as Cycles)
            .saturating_mul(self.storage_cycles_per_gib_second)
            .saturating_mul(seconds as Cycles)
            / (1 << 30)
    }

    /// What a canister holding `memory_bytes` (its own memory and its snapshots') burns per
    /// day while idle: `canister_status`'s `idle_cycles_burned_per_day`, and the rate storage
    /// charges apply (the replica's `idle_cycles_burned_rate`, memory part).
    pub fn idle_cycles_burned_per_day(&self, memory_bytes: u64) -> Cycles {
        self.storage_cost(memory_bytes, SECONDS_PER_DAY)
    }

    /// The storage charge for holding `memory_bytes` for `seconds`: the daily rate prorated,
    /// rounded down at each step as the replica's `charge_canister_for_single_resource` does
    /// (rate per day first, then `rate × seconds / day`).
    pub fn storage_charge(&self, memory_bytes: u64, seconds: u64) -> Cycles {
        self.idle_cycles_burned_per_day(memory_bytes)
            .saturating_mul(Cycles::from(seconds))
            / 86_400
    }

    /// Seconds of storage a round at batch time `time` charges for when the previous round ran
    /// at `previous` (ns since the Unix epoch): the whole charge periods between the last
    /// period boundary at or before `previous` and the last one at or before `time`. Zero
    /// unless the round crosses a boundary; summed over rounds it telescopes to the periods
    /// elapsed, so nothing is lost to rounding whatever the round lengths.
    pub fn storage_charge_seconds(&self, previous: u64, time: u64) -> u64 {
        let period = self
            .allocation_charge_period_seconds
            .saturating_mul(NANOS_PER_SECOND)
            .max(1);
        // `period > 0`, and `t - t % period <= t`.
        #[allow(clippy::arithmetic_side_effects)]
        let boundary = |t: u64| t - t % period;
        boundary(time).saturating_sub(boundary(previous)) / NANOS_PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    /// The replica's own example (rs/cycles_account_manager/tests, `test_storage_reservation_
    /// cycles`): 40 GB allocated at usage 90 GB, threshold 100 GB, capacity 200 GB reserve the
    /// area of the triangle above the threshold: base 30 GB, height the period at 130 GB.
    #[test]
    fn storage_reservation_matches_the_replicas_triangle() {
        let config = Config {
            subnet_memory_threshold_bytes: 100 * GB,
            subnet_memory_capacity_bytes: 200 * GB,
            ..Config::default()
        };
        let period = config.max_storage_reservation_seconds * 30 / 100;
        assert_eq!(
            config.storage_reservation_cycles(40 * GB, 90 * GB),
            config.storage_cost(30 * GB, period / 2)
        );
        assert_eq!(config.storage_reservation_cycles(10 * GB, 80 * GB), 0);
        let off = Config {
            subnet_memory_threshold_bytes: 200 * GB,
            ..config
        };
        assert_eq!(off.storage_reservation_cycles(40 * GB, 190 * GB), 0);
    }
}
