//! The `ic0` System API: what a canister may import, with which signature, and what each call
//! does (the interface specification's semantics and error codes).
//!
//! [`SYSTEM_API`] is the one list of imports: validation checks a module's imports against it
//! and the engine links exactly it, so the two cannot disagree. Pointer and size arguments are
//! [`Ty::Ptr`]: `i32` for a module with a 32-bit memory, `i64` for a 64-bit one, as the
//! specification's `I` (the `stable_*` and `stable64_*` calls keep their fixed widths).
//!
//! A call sees only [`SystemApi`], the message's own copy of what it may read and change (its
//! argument, caller, stable memory, certified data, timer, reply), and the heap's bytes as
//! the instance holds them; the engine copies the changes back into the execution state only
//! when the message succeeds. Inter-canister calls (`call_*`) link, so that Motoko modules,
//! which import them all, install, and trap when called.

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};

use crate::execution::MethodKind;
use crate::execution::test_canister::MAX_CERTIFIED_DATA_BYTES;
use crate::memory::{Memory, WASM_PAGE_SIZE};
use crate::state::{CanisterStatus, Cycles};

/// A parameter or result type of a System API function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    I32,
    I64,
    /// An address or size in the heap: `i32` or `i64` with the width of memory 0.
    Ptr,
}

impl Ty {
    /// This type in a module whose memory 0 is 64-bit (`memory64`) or not: `i32` or `i64`, each
    /// given in the caller's Wasm library's own type. The one rule validation, linking and the
    /// fuzzer's module builder share.
    pub fn pick<V>(self, memory64: bool, i32: V, i64: V) -> V {
        match (self, memory64) {
            (Ty::I64, _) | (Ty::Ptr, true) => i64,
            (Ty::I32, _) | (Ty::Ptr, false) => i32,
        }
    }
}

use Ty::{I32, I64, Ptr};

/// Name, parameters and results of every function a canister may import from `ic0`.
pub const SYSTEM_API: &[(&str, &[Ty], &[Ty])] = &[
    ("msg_arg_data_size", &[], &[Ptr]),
    ("msg_arg_data_copy", &[Ptr, Ptr, Ptr], &[]),
    ("msg_caller_size", &[], &[Ptr]),
    ("msg_caller_copy", &[Ptr, Ptr, Ptr], &[]),
    ("msg_reject_code", &[], &[I32]),
    ("msg_reject_msg_size", &[], &[Ptr]),
    ("msg_reject_msg_copy", &[Ptr, Ptr, Ptr], &[]),
    ("msg_deadline", &[], &[I64]),
    ("msg_reply_data_append", &[Ptr, Ptr], &[]),
    ("msg_reply", &[], &[]),
    ("msg_reject", &[Ptr, Ptr], &[]),
    ("msg_method_name_size", &[], &[Ptr]),
    ("msg_method_name_copy", &[Ptr, Ptr, Ptr], &[]),
    ("accept_message", &[], &[]),
    ("msg_cycles_available128", &[Ptr], &[]),
    ("msg_cycles_refunded128", &[Ptr], &[]),
    ("msg_cycles_accept128", &[I64, I64, Ptr], &[]),
    ("canister_self_size", &[], &[Ptr]),
    ("canister_self_copy", &[Ptr, Ptr, Ptr], &[]),
    ("canister_cycle_balance128", &[Ptr], &[]),
    ("canister_liquid_cycle_balance128", &[Ptr], &[]),
    ("canister_status", &[], &[I32]),
    ("canister_version", &[], &[I64]),
    ("is_controller", &[Ptr, Ptr], &[I32]),
    ("in_replicated_execution", &[], &[I32]),
    ("call_new", &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr], &[]),
    ("call_on_cleanup", &[Ptr, Ptr], &[]),
    ("call_data_append", &[Ptr, Ptr], &[]),
    ("call_with_best_effort_response", &[I32], &[]),
    ("call_cycles_add128", &[I64, I64], &[]),
    ("call_perform", &[], &[I32]),
    ("stable_size", &[], &[I32]),
    ("stable_grow", &[I32], &[I32]),
    ("stable_write", &[I32, I32, I32], &[]),
    ("stable_read", &[I32, I32, I32], &[]),
    ("stable64_size", &[], &[I64]),
    ("stable64_grow", &[I64], &[I64]),
    ("stable64_write", &[I64, I64, I64], &[]),
    ("stable64_read", &[I64, I64, I64], &[]),
    ("certified_data_set", &[Ptr, Ptr], &[]),
    ("data_certificate_present", &[], &[I32]),
    ("data_certificate_size", &[], &[Ptr]),
    ("data_certificate_copy", &[Ptr, Ptr, Ptr], &[]),
    ("time", &[], &[I64]),
    ("global_timer_set", &[I64], &[I64]),
    ("performance_counter", &[I32], &[I64]),
    ("debug_print", &[Ptr, Ptr], &[]),
    ("trap", &[Ptr, Ptr], &[]),
];

/// The signature of `ic0.name` for a module whose memory 0 is 64-bit or not.
pub fn signature(name: &str) -> Option<(&'static [Ty], &'static [Ty])> {
    SYSTEM_API
        .iter()
        .find(|(api, _, _)| *api == name)
        .map(|(_, params, results)| (*params, *results))
}

/// Stable memory reachable through the 32-bit `stable_*` calls: 4 GiB.
const MAX_32_BIT_STABLE_PAGES: u64 = 1 << 16;

/// The entry point a call runs in: decides which System API calls are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiContext {
    /// `canister_start`: no argument, no caller, nothing to reply to.
    Start,
    /// `canister_init` and `canister_post_upgrade`: an argument and a caller, no reply.
    Init,
    /// `canister_pre_upgrade`: a caller, no argument, no reply.
    PreUpgrade,
    /// An update call, or a query run as one (replicated).
    Update,
    /// A query call (not replicated).
    Query,
    /// `canister_heartbeat` or `canister_global_timer`: called by the management canister,
    /// no argument, nothing to reply to.
    SystemTask,
}

impl ApiContext {
    pub fn of_method(kind: MethodKind, replicated: bool) -> Self {
        match (kind, replicated) {
            (MethodKind::Update, _) | (_, true) => ApiContext::Update,
            _ => ApiContext::Query,
        }
    }
}

/// What one message's System API reads and changes: a copy of the canister's, handed back to
/// the execution state only if the message succeeds.
pub struct SystemApi {
    pub context: ApiContext,
    pub arg: Vec<u8>,
    pub caller: Principal,
    pub canister_id: Principal,
    pub controllers: Vec<Principal>,
    pub status: CanisterStatus,
    pub cycles: Cycles,
    pub canister_version: u64,
    pub time: u64,
    pub stable_memory: Memory,
    pub stable_memory_limit: u64,
    /// Bytes of stable pages the message wrote (each 4 KiB page counted once per write).
    pub stable_delta: u64,
    pub certified_data: Vec<u8>,
    pub global_timer: Option<u64>,
    pub max_reply_bytes: u64,
    pub reply: Vec<u8>,
    /// Set by `msg_reply` or `msg_reject`: a method responds at most once.
    pub response: Option<Response>,
    /// The limit the message started with, for `performance_counter`.
    pub instruction_limit: u64,
    /// The error a call ended the message with (the trap it raised is only a carrier).
    pub error: Option<UserError>,
}

/// How a method responded through the System API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Replied,
    Rejected(String),
}

/// A trap raised by a System API call. The [`UserError`] it carries is also kept in
/// [`SystemApi::error`], from where the engine reports it.
#[derive(Debug)]
pub struct HostTrap;

impl std::fmt::Display for HostTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("System API call trapped")
    }
}

impl std::error::Error for HostTrap {}

fn contract_violation(message: impl Into<String>) -> UserError {
    UserError::new(ErrorCode::CanisterContractViolation, message.into())
}

fn trapped(message: impl Into<String>) -> UserError {
    UserError::new(
        ErrorCode::CanisterTrapped,
        format!("Canister trapped: {}", message.into()),
    )
}

/// `dst..dst + len` in `heap`, or a trap naming the call.
fn heap_range(
    heap: &[u8],
    name: &str,
    dst: u64,
    len: u64,
) -> Result<std::ops::Range<usize>, UserError> {
    let end = dst.checked_add(len);
    match end {
        Some(end) if end <= heap.len() as u64 => Ok(dst as usize..end as usize),
        _ => Err(trapped(format!(
            "ic0.{name}: heap range [{dst}, {dst} + {len}) is out of bounds of the {}-byte heap",
            heap.len()
        ))),
    }
}

/// Copies `source[offset..offset + size]` into `heap[dst..]` (the `*_copy` calls).
fn copy_out(
    heap: &mut [u8],
    name: &str,
    source: &[u8],
    dst: u64,
    offset: u64,
    size: u64,
) -> Result<(), UserError> {
    let from = offset
        .checked_add(size)
        .filter(|end| *end <= source.len() as u64)
        .map(|end| offset as usize..end as usize)
        .ok_or_else(|| {
            contract_violation(format!(
                "ic0.{name}: range [{offset}, {offset} + {size}) is out of bounds of the \
                 {}-byte source",
                source.len()
            ))
        })?;
    let to = heap_range(heap, name, dst, size)?;
    match (heap.get_mut(to), source.get(from)) {
        (Some(to), Some(from)) => {
            to.copy_from_slice(from);
            Ok(())
        }
        _ => Err(trapped(format!("ic0.{name}: out of bounds"))),
    }
}

fn read_heap<'h>(heap: &'h [u8], name: &str, src: u64, size: u64) -> Result<&'h [u8], UserError> {
    let range = heap_range(heap, name, src, size)?;
    heap.get(range)
        .ok_or_else(|| trapped(format!("ic0.{name}: out of bounds")))
}

fn write_u128(heap: &mut [u8], name: &str, dst: u64, value: u128) -> Result<(), UserError> {
    let range = heap_range(heap, name, dst, 16)?;
    if let Some(to) = heap.get_mut(range) {
        to.copy_from_slice(&value.to_le_bytes());
    }
    Ok(())
}

/// The trap of `ic0.trap`, worded as the native test canister words it.
pub fn called_trap(message: &str) -> UserError {
    UserError::new(
        ErrorCode::CanisterCalledTrap,
        format!("Canister called `ic0.trap` with message: '{message}'"),
    )
}

impl SystemApi {
    fn require(&self, name: &str, allowed: &[ApiContext]) -> Result<(), UserError> {
        if allowed.contains(&self.context) {
            Ok(())
        } else {
            Err(contract_violation(format!(
                "\"ic0.{name}\" cannot be executed in {:?} mode",
                self.context
            )))
        }
    }

    fn stable_range(&self, name: &str, offset: u64, size: u64) -> Result<(), UserError> {
        match offset.checked_add(size) {
            Some(end) if end <= self.stable_memory.size_bytes() => Ok(()),
            _ => Err(trapped(format!(
                "ic0.{name}: stable memory range [{offset}, {offset} + {size}) is out of bounds \
                 of the {}-byte stable memory",
                self.stable_memory.size_bytes()
            ))),
        }
    }

    /// `stable*_grow`: the old size in pages, or `u64::MAX` (-1) if the limit forbids it.
    fn stable_grow(&mut self, pages: u64, max_pages: u64) -> u64 {
        let old = self.stable_memory.wasm_pages();
        let limit_pages = (self.stable_memory_limit / WASM_PAGE_SIZE).min(max_pages);
        if old.saturating_add(pages) > limit_pages {
            return u64::MAX;
        }
        match self.stable_memory.grow(pages, self.stable_memory_limit) {
            Ok(_) => old,
            Err(_) => u64::MAX,
        }
    }

    fn stable_write(
        &mut self,
        heap: &[u8],
        name: &str,
        offset: u64,
        src: u64,
        size: u64,
    ) -> Result<(), UserError> {
        self.stable_range(name, offset, size)?;
        let data = read_heap(heap, name, src, size)?;
        self.stable_delta = self
            .stable_delta
            .saturating_add(crate::execution::touched_bytes(offset, size));
        self.stable_memory
            .write(offset, data)
            .map_err(crate::execution::trap_on_memory_error)
    }

    fn stable_read(
        &self,
        heap: &mut [u8],
        name: &str,
        dst: u64,
        offset: u64,
        size: u64,
    ) -> Result<(), UserError> {
        self.stable_range(name, offset, size)?;
        let to = heap_range(heap, name, dst, size)?;
        let to = heap
            .get_mut(to)
            .ok_or_else(|| trapped(format!("ic0.{name}: out of bounds")))?;
        self.stable_memory
            .read(offset, to)
            .map_err(crate::execution::trap_on_memory_error)
    }

    /// Executes `ic0.name(args)` against `heap`; `instructions` is what the message has
    /// executed so far. Arguments arrive zero-extended to 64 bits; the result is truncated to
    /// the declared width by the caller.
    #[allow(clippy::too_many_lines)]
    pub fn call(
        &mut self,
        name: &str,
        args: &[u64],
        heap: &mut [u8],
        instructions: u64,
    ) -> Result<Option<u64>, UserError> {
        use ApiContext::{Init, PreUpgrade, Query, SystemTask, Update};
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        let (a0, a1, a2) = (arg(0), arg(1), arg(2));
        let with_caller = [Init, PreUpgrade, Update, Query, SystemTask];
        let with_arg = [Init, Update, Query];
        let replying = [Update, Query];
        match name {
            "msg_arg_data_size" => {
                self.require(name, &with_arg)?;
                Ok(Some(self.arg.len() as u64))
            }
            "msg_arg_data_copy" => {
                self.require(name, &with_arg)?;
                copy_out(heap, name, &self.arg, a0, a1, a2).map(|()| None)
            }
            "msg_caller_size" => {
                self.require(name, &with_caller)?;
                Ok(Some(self.caller.as_slice().len() as u64))
            }
            "msg_caller_copy" => {
                self.require(name, &with_caller)?;
                copy_out(heap, name, self.caller.as_slice(), a0, a1, a2).map(|()| None)
            }
            "msg_reject_code" | "msg_reject_msg_size" | "msg_reject_msg_copy" => {
                Err(contract_violation(format!(
                    "\"ic0.{name}\" can only be called in a reject callback, and this replica \
                     makes no inter-canister calls"
                )))
            }
            "msg_deadline" => Ok(Some(0)),
            "msg_reply_data_append" => {
                self.require(name, &replying)?;
                if self.response.is_some() {
                    return Err(contract_violation(
                        "ic0.msg_reply_data_append: the message has already been replied to",
                    ));
                }
                let data = read_heap(heap, name, a0, a1)?;
                let total = (self.reply.len() as u64).saturating_add(data.len() as u64);
                if total > self.max_reply_bytes {
                    return Err(contract_violation(format!(
                        "ic0.msg_reply_data_append: the reply would be {total} bytes, above the \
                         limit of {} bytes",
                        self.max_reply_bytes
                    )));
                }
                self.reply.extend_from_slice(data);
                Ok(None)
            }
            "msg_reply" | "msg_reject" => {
                self.require(name, &replying)?;
                if self.response.is_some() {
                    return Err(contract_violation(format!(
                        "ic0.{name}: the message has already been replied to or rejected"
                    )));
                }
                self.response = Some(if name == "msg_reply" {
                    Response::Replied
                } else {
                    let message = read_heap(heap, name, a0, a1)?;
                    Response::Rejected(String::from_utf8_lossy(message).into_owned())
                });
                Ok(None)
            }
            "msg_method_name_size" | "msg_method_name_copy" => Err(contract_violation(format!(
                "\"ic0.{name}\" can only be called in canister_inspect_message"
            ))),
            "accept_message" => Err(contract_violation(
                "\"ic0.accept_message\" can only be called in canister_inspect_message",
            )),
            // Ingress messages carry no cycles, so there are none to see or accept.
            "msg_cycles_available128" | "msg_cycles_refunded128" => {
                write_u128(heap, name, a0, 0).map(|()| None)
            }
            "msg_cycles_accept128" => write_u128(heap, name, a2, 0).map(|()| None),
            "canister_self_size" => Ok(Some(self.canister_id.as_slice().len() as u64)),
            "canister_self_copy" => {
                copy_out(heap, name, self.canister_id.as_slice(), a0, a1, a2).map(|()| None)
            }
            "canister_cycle_balance128" | "canister_liquid_cycle_balance128" => {
                write_u128(heap, name, a0, self.cycles).map(|()| None)
            }
            "canister_status" => Ok(Some(match self.status {
                CanisterStatus::Running => 1,
                CanisterStatus::Stopping => 2,
                CanisterStatus::Stopped => 3,
            })),
            "canister_version" => Ok(Some(self.canister_version)),
            "is_controller" => {
                let bytes = read_heap(heap, name, a0, a1)?;
                let principal = Principal::try_from_slice(bytes).map_err(|err| {
                    contract_violation(format!("ic0.is_controller: invalid principal: {err}"))
                })?;
                Ok(Some(u64::from(self.controllers.contains(&principal))))
            }
            "in_replicated_execution" => Ok(Some(u64::from(self.context != Query))),
            "call_new"
            | "call_on_cleanup"
            | "call_data_append"
            | "call_with_best_effort_response"
            | "call_cycles_add128"
            | "call_perform" => Err(contract_violation(format!(
                "ic0.{name}: inter-canister calls are not supported yet"
            ))),
            "stable_size" => {
                let pages = self.stable_memory.wasm_pages();
                if pages > MAX_32_BIT_STABLE_PAGES {
                    return Err(trapped(
                        "ic0.stable_size: stable memory is above 4 GiB; use ic0.stable64_size",
                    ));
                }
                Ok(Some(pages))
            }
            "stable64_size" => Ok(Some(self.stable_memory.wasm_pages())),
            "stable_grow" => {
                if self.stable_memory.wasm_pages() > MAX_32_BIT_STABLE_PAGES {
                    return Err(trapped(
                        "ic0.stable_grow: stable memory is above 4 GiB; use ic0.stable64_grow",
                    ));
                }
                Ok(Some(self.stable_grow(a0, MAX_32_BIT_STABLE_PAGES)))
            }
            "stable64_grow" => Ok(Some(self.stable_grow(a0, u64::MAX))),
            "stable_write" | "stable64_write" => {
                self.stable_write(heap, name, a0, a1, a2).map(|()| None)
            }
            "stable_read" | "stable64_read" => {
                self.stable_read(heap, name, a0, a1, a2).map(|()| None)
            }
            "certified_data_set" => {
                self.require(name, &[Init, PreUpgrade, Update, SystemTask])?;
                if a1 > MAX_CERTIFIED_DATA_BYTES as u64 {
                    return Err(contract_violation(format!(
                        "ic0.certified_data_set: certified data is at most \
                         {MAX_CERTIFIED_DATA_BYTES} bytes, got {a1}"
                    )));
                }
                self.certified_data = read_heap(heap, name, a0, a1)?.to_vec();
                Ok(None)
            }
            // This replica certifies no query responses: there is no certificate to read.
            "data_certificate_present" => Ok(Some(0)),
            "data_certificate_size" | "data_certificate_copy" => Err(contract_violation(format!(
                "ic0.{name}: no data certificate is available (check data_certificate_present)"
            ))),
            "time" => Ok(Some(self.time)),
            "global_timer_set" => {
                self.require(name, &[Init, PreUpgrade, Update, SystemTask])?;
                let old = self.global_timer.unwrap_or(0);
                self.global_timer = (a0 != 0).then_some(a0);
                Ok(Some(old))
            }
            // 0: instructions of this message; 1: of its call context (the same here, with no
            // calls).
            "performance_counter" => match a0 {
                0 | 1 => Ok(Some(instructions)),
                other => Err(contract_violation(format!(
                    "ic0.performance_counter: unknown counter type {other}"
                ))),
            },
            "debug_print" => Ok(None),
            "trap" => {
                let message = read_heap(heap, name, a0, a1)?;
                Err(called_trap(&String::from_utf8_lossy(message)))
            }
            _ => Err(contract_violation(format!(
                "ic0.{name} is not a System API call"
            ))),
        }
    }
}
