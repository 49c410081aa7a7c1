//! proptest strategies for the things a restore property combines, built on the workload's
//! types ([`super::workload`]) so that a shrunk failure is a sequence of [`Operation`]s that
//! pastes back as Rust.
//!
//! Sizes and offsets use the same edges as the seeded generator ([`BOUNDARY_PAGES`],
//! [`BOUNDARY_LENGTHS`]): page boundaries, Wasm-page boundaries and the page counts where the
//! page tree gains a level. Every strategy shrinks toward the simplest case: canister 0,
//! caller 0 (the controller), offset 0, short data.

use candid::Principal;
use ic_management_canister_types::{CanisterSettings, LogVisibility, SnapshotVisibility};
use proptest::prelude::*;

use super::workload::{
    BOUNDARY_LENGTHS, BOUNDARY_PAGES, CallerIndex, CanisterIndex, FREEZING_THRESHOLDS, MemoryKind,
    Message, Operation, Pattern, SnapshotPick, StateView, TIME_STEPS, WorkloadShape, caller,
};
use crate::memory::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;

/// Principals: the workload's callers, the anonymous principal, the management canister, and
/// arbitrary ones (up to 29 bytes).
pub fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        4 => (0u8..8).prop_map(caller),
        1 => Just(Principal::anonymous()),
        1 => Just(Principal::management_canister()),
        2 => prop::collection::vec(any::<u8>(), 0..=29).prop_map(|b| Principal::from_slice(&b)),
    ]
}

/// Canister settings as `update_settings` takes them: each field absent or set, with values
/// inside the limits of `spec/management.md` (up to 10 controllers and viewers).
pub fn canister_settings() -> impl Strategy<Value = CanisterSettings> {
    let controllers = prop::option::of(prop::collection::vec(principal(), 0..=10));
    let visibility = prop::option::of(prop_oneof![
        Just(SnapshotVisibility::Controllers),
        Just(SnapshotVisibility::Public),
        prop::collection::vec(principal(), 0..=10).prop_map(SnapshotVisibility::AllowedViewers),
    ]);
    let log_visibility = prop::option::of(prop_oneof![
        Just(LogVisibility::Controllers),
        Just(LogVisibility::Public),
    ]);
    (
        controllers,
        prop::option::of(0u64..=100),
        prop::option::of(prop::sample::select(FREEZING_THRESHOLDS.to_vec())),
        prop::option::of(prop_oneof![Just(0u64), Just(1 << 30), Just(3 << 30)]),
        visibility,
        log_visibility,
    )
        .prop_map(
            |(
                controllers,
                compute_allocation,
                freezing_threshold,
                wasm_memory_limit,
                snapshot_visibility,
                log_visibility,
            )| CanisterSettings {
                controllers,
                compute_allocation: compute_allocation.map(Into::into),
                freezing_threshold: freezing_threshold.map(Into::into),
                wasm_memory_limit: wasm_memory_limit.map(Into::into),
                snapshot_visibility,
                log_visibility,
                ..Default::default()
            },
        )
}

/// Heap or stable memory.
pub fn memory_kind() -> impl Strategy<Value = MemoryKind> + Clone {
    prop_oneof![Just(MemoryKind::Heap), Just(MemoryKind::Stable)]
}

/// Offsets biased to page boundaries: a few bytes either side of a page of
/// [`BOUNDARY_PAGES`] most of the time, anywhere in the first 2 MiB otherwise.
pub fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        7 => (prop::sample::select(BOUNDARY_PAGES.to_vec()), -3i64..=3)
            .prop_map(|(page, delta)| (page * PAGE).saturating_add_signed(delta)),
        3 => 0u64..(2 << 20),
    ]
}

/// Lengths biased to page sizes: [`BOUNDARY_LENGTHS`] most of the time, up to 3 pages
/// otherwise.
pub fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        7 => prop::sample::select(BOUNDARY_LENGTHS.to_vec()),
        3 => 0u64..(3 * PAGE + 64),
    ]
}

fn pattern(len: impl Strategy<Value = u64>) -> impl Strategy<Value = Pattern> {
    (len, any::<u8>(), any::<u8>()).prop_map(|(len, base, step)| Pattern {
        len: len.min(u64::from(u32::MAX)) as u32,
        base,
        step,
    })
}

/// Which snapshot an operation names: mostly one the canister holds.
pub fn snapshot_pick() -> impl Strategy<Value = SnapshotPick> {
    prop_oneof![
        16 => any::<u8>().prop_map(SnapshotPick::Live),
        3 => any::<u8>().prop_map(SnapshotPick::Issued),
        1 => any::<u8>().prop_map(SnapshotPick::Unknown),
    ]
}

fn canister_index(shape: &WorkloadShape) -> BoxedStrategy<CanisterIndex> {
    (0..shape.canisters.max(1)).boxed()
}

/// The controller most of the time, any caller otherwise.
fn caller_index(shape: &WorkloadShape) -> BoxedStrategy<CallerIndex> {
    prop_oneof![4 => Just(0u8), 1 => 0..shape.callers.max(1)].boxed()
}

/// Memory operations (write, fill, grow of heap and stable memory) with sizes and offsets
/// biased to page boundaries.
pub fn memory_operation(shape: &WorkloadShape) -> impl Strategy<Value = Operation> + use<> {
    let who = (canister_index(shape), caller_index(shape), memory_kind());
    prop_oneof![
        5 => (who.clone(), offset(), pattern(length())).prop_map(
            |((canister, caller, memory), offset, data)| Operation::Write {
                canister, caller, memory, offset, data,
            }
        ),
        2 => (who.clone(), offset(), length(), any::<u8>()).prop_map(
            |((canister, caller, memory), offset, len, byte)| Operation::Fill {
                canister, caller, memory, offset, len, byte,
            }
        ),
        1 => (who, 0u8..3).prop_map(|((canister, caller, memory), wasm_pages)| Operation::Grow {
            canister, caller, memory, wasm_pages,
        }),
    ]
}

/// Canister messages that change globals or certified data, or trap.
pub fn canister_operation(shape: &WorkloadShape) -> impl Strategy<Value = Operation> + use<> {
    let who = (canister_index(shape), caller_index(shape));
    prop_oneof![
        2 => (who.clone(), prop_oneof![9 => 0u32..2, 1 => Just(2u32)], any::<i64>()).prop_map(
            |((canister, caller), index, value)| Operation::SetGlobal { canister, caller, index, value }
        ),
        1 => (who.clone(), pattern(0u64..40)).prop_map(|((canister, caller), data)| {
            Operation::SetCertifiedData { canister, caller, data }
        }),
        1 => who.prop_map(|(canister, caller)| Operation::Trap { canister, caller }),
    ]
}

/// Management calls with valid arguments: take (with or without a snapshot to replace), load
/// (from the same or another canister), delete, controllers, freezing threshold, upgrade.
pub fn management_operation(shape: &WorkloadShape) -> impl Strategy<Value = Operation> + use<> {
    let who = (canister_index(shape), caller_index(shape));
    let callers = shape.callers.clamp(1, 8);
    prop_oneof![
        3 => (who.clone(), prop::option::weighted(0.4, snapshot_pick())).prop_map(
            |((canister, caller), replace)| Operation::Take { canister, caller, replace }
        ),
        3 => (who.clone(), canister_index(shape), any::<bool>(), snapshot_pick()).prop_map(
            |((canister, caller), other, cross, snapshot)| Operation::Load {
                canister, caller, from: if cross { other } else { canister }, snapshot,
            }
        ),
        2 => (who.clone(), canister_index(shape), prop::bool::weighted(0.2), snapshot_pick()).prop_map(
            |((canister, caller), other, cross, snapshot)| Operation::Delete {
                canister, caller, from: if cross { other } else { canister }, snapshot,
            }
        ),
        1 => (who.clone(), 0u8..(1u8 << (callers - 1)).saturating_mul(2).max(1)).prop_map(
            |((canister, caller), controllers)| Operation::SetControllers { canister, caller, controllers }
        ),
        1 => (who.clone(), prop::sample::select(FREEZING_THRESHOLDS.to_vec())).prop_map(
            |((canister, caller), seconds)| Operation::SetFreezingThreshold { canister, caller, seconds }
        ),
        1 => who.prop_map(|(canister, caller)| Operation::Upgrade { canister, caller }),
    ]
}

/// Any operation, weighted as `shape` says.
pub fn operation(shape: &WorkloadShape) -> impl Strategy<Value = Operation> + use<> {
    prop_oneof![
        shape.memory_weight => memory_operation(shape),
        shape.canister_weight => canister_operation(shape),
        shape.snapshot_weight => management_operation(shape),
        shape.settings_weight => prop_oneof![
            2 => Just(Operation::Tick),
            1 => prop::sample::select(TIME_STEPS.to_vec())
                .prop_map(|seconds| Operation::AdvanceTime { seconds }),
        ],
    ]
}

/// Sequences of `len` operations over `shape`'s canisters and callers.
pub fn operations(
    shape: &WorkloadShape,
    len: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<Operation>> + use<> {
    prop::collection::vec(operation(shape), len)
}

/// How [`MutatedCall`] damages a valid management payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Cut after `keep % len` bytes.
    Truncate { keep: u16 },
    /// Flip bit `bit % 8` of byte `at % len`.
    FlipBit { at: u16, bit: u8 },
    /// Append bytes.
    Append { bytes: Vec<u8> },
    /// Send it to another management method.
    WrongMethod { method: u8 },
}

/// A valid management call with its payload mutated: what hostile or buggy clients send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutatedCall {
    pub operation: Operation,
    pub mutation: Mutation,
}

impl MutatedCall {
    /// The mutated message (`None` if the operation sends none).
    pub fn to_message(&self, view: &(impl StateView + ?Sized)) -> Option<Message> {
        let mut message = self.operation.to_message(view)?;
        let len = message.payload.len().max(1);
        match &self.mutation {
            Mutation::Truncate { keep } => message.payload.truncate(usize::from(*keep) % len),
            Mutation::FlipBit { at, bit } => {
                if let Some(byte) = message.payload.get_mut(usize::from(*at) % len) {
                    *byte ^= 1 << (bit % 8);
                }
            }
            Mutation::Append { bytes } => message.payload.extend_from_slice(bytes),
            Mutation::WrongMethod { method } => {
                let methods = crate::management::METHODS;
                message.method = methods[usize::from(*method) % methods.len()].to_string();
            }
        }
        Some(message)
    }
}

/// Management calls with mutated arguments.
pub fn mutated_management_call(
    shape: &WorkloadShape,
) -> impl Strategy<Value = MutatedCall> + use<> {
    let mutation = prop_oneof![
        any::<u16>().prop_map(|keep| Mutation::Truncate { keep }),
        (any::<u16>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(|bytes| Mutation::Append { bytes }),
        any::<u8>().prop_map(|method| Mutation::WrongMethod { method }),
    ];
    (management_operation(shape), mutation).prop_map(|(operation, mutation)| MutatedCall {
        operation,
        mutation,
    })
}
