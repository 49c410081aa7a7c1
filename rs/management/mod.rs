//! The management canister (`aaaaa-aa`): decodes each subnet message, checks who may do it and
//! what it costs, and applies it to the [`ReplicatedState`]. Semantics in `spec/management.md`.
//!
//! Depends on [`crate::snapshots`], [`crate::state`], [`crate::execution`] (module validation)
//! and [`crate::replicated_state`]. Every payload is hostile until decoded: decoding is bounded
//! by a Candid quota, every refusal is a [`UserError`] with the IC's `ErrorCode` and a message
//! saying what to fix, and a refused message leaves the state exactly as it was (each handler
//! validates everything before its first write).

#![forbid(unsafe_code)]

mod canisters;
mod snapshots;
mod storage;
mod transfer;
pub mod types;

use candid::utils::ArgumentEncoder;
use candid::{CandidType, DecoderConfig, Nat, Principal};
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, ChangeOrigin, DeleteCanisterSnapshotArgs, FromUserRecord, InstallCodeArgs,
    LoadCanisterSnapshotArgs, SnapshotVisibility, UninstallCodeArgs,
};
use serde::Deserialize;

use crate::config::Config;
use crate::execution::WasmEngine;
use crate::replicated_state::{MemoryFootprint, ReplicatedState};
use crate::state::CanisterState;

/// The management canister executing subnet messages with a given configuration and engine.
pub struct ManagementCanister<'a> {
    pub config: &'a Config,
    pub engine: &'a dyn WasmEngine,
}

/// Methods this management canister implements, in the order of `spec/management.md`.
pub const METHODS: &[&str] = &[
    "provisional_create_canister_with_cycles",
    "create_canister",
    "install_code",
    "uninstall_code",
    "start_canister",
    "stop_canister",
    "canister_status",
    "canister_info",
    "update_settings",
    "delete_canister",
    "take_canister_snapshot",
    "load_canister_snapshot",
    "list_canister_snapshots",
    "delete_canister_snapshot",
    "read_canister_snapshot_metadata",
    "read_canister_snapshot_data",
    "upload_canister_snapshot_metadata",
    "upload_canister_snapshot_data",
    // Last, so that the fuzz corpora's method selectors keep their meaning.
    "provisional_top_up_canister",
];

impl ManagementCanister<'_> {
    /// Executes `method` with Candid `payload` on behalf of `sender`. On `Err`, `state` is
    /// unchanged.
    pub fn execute(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        method: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, UserError> {
        // Each method that can change memory is accounted around its canister: the footprint
        // before and after moves the subnet's running totals (O(1) in the subnet's size).
        match method {
            "provisional_create_canister_with_cycles" => {
                let args = self.decode(payload)?;
                let reply = self.provisional_create_canister_with_cycles(state, sender, args)?;
                account_created(state, &reply);
                Ok(reply)
            }
            "provisional_top_up_canister" => {
                self.provisional_top_up_canister(state, self.decode(payload)?)
            }
            "create_canister" => {
                let args = self.decode(payload)?;
                let reply = self.create_canister(state, sender, args)?;
                account_created(state, &reply);
                Ok(reply)
            }
            "install_code" => {
                let args: InstallCodeArgs = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.install_code(s, sender, args)
                })
            }
            "uninstall_code" => {
                let args: UninstallCodeArgs = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.uninstall_code(s, sender, args)
                })
            }
            "start_canister" => self.start_canister(state, sender, self.decode(payload)?),
            "stop_canister" => self.stop_canister(state, sender, self.decode(payload)?),
            "canister_status" => self.canister_status(state, sender, self.decode(payload)?),
            "canister_info" => self.canister_info(state, self.decode(payload)?),
            "update_settings" => self.update_settings(state, sender, self.decode(payload)?),
            "delete_canister" => {
                let args: CanisterIdRecord = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.delete_canister(s, sender, args)
                })
            }
            "take_canister_snapshot" => {
                let args: types::TakeCanisterSnapshotArgs = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.take_canister_snapshot(s, sender, args)
                })
            }
            "load_canister_snapshot" => {
                let args: LoadCanisterSnapshotArgs = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.load_canister_snapshot(s, sender, args)
                })
            }
            "list_canister_snapshots" => {
                self.list_canister_snapshots(state, sender, self.decode(payload)?)
            }
            "delete_canister_snapshot" => {
                let args: DeleteCanisterSnapshotArgs = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.delete_canister_snapshot(s, sender, args)
                })
            }
            "read_canister_snapshot_metadata" => {
                self.read_canister_snapshot_metadata(state, sender, self.decode(payload)?)
            }
            "read_canister_snapshot_data" => {
                self.read_canister_snapshot_data(state, sender, self.decode(payload)?)
            }
            "upload_canister_snapshot_metadata" => {
                let args: types::UploadCanisterSnapshotMetadataArgs = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.upload_canister_snapshot_metadata(s, sender, args)
                })
            }
            "upload_canister_snapshot_data" => {
                let args: types::UploadCanisterSnapshotDataArgsRef<'_> = self.decode(payload)?;
                accounted(state, args.canister_id, |s| {
                    self.upload_canister_snapshot_data(s, sender, args)
                })
            }
            _ => Err(UserError::new(
                ErrorCode::UnknownManagementMessage,
                format!(
                    "Management canister has no method '{method}'. Known methods: {}.",
                    METHODS.join(", ")
                ),
            )),
        }
    }

    /// Decodes a payload into `T` within the configured Candid decoding quota.
    fn decode<'a, T: CandidType + Deserialize<'a>>(
        &self,
        payload: &'a [u8],
    ) -> Result<T, UserError> {
        let mut config = DecoderConfig::new();
        config.set_decoding_quota(self.config.management_payload_decoding_quota);
        config.set_skipping_quota(self.config.management_payload_decoding_quota);
        candid::decode_args_with_config::<(T,)>(payload, &config)
            .map(|(value,)| value)
            .map_err(|err| {
                UserError::new(
                    ErrorCode::InvalidManagementPayload,
                    format!(
                        "Error decoding candid: {err}. The payload must be one Candid value of \
                         type {}.",
                        std::any::type_name::<T>()
                            .rsplit("::")
                            .next()
                            .unwrap_or("the method's argument")
                    ),
                )
            })
    }
}

/// Runs `handler`, a message that may change the memory of `canister_id` or of its snapshots,
/// and moves the subnet's running totals by the difference (nothing on a refusal, which
/// changes nothing).
fn accounted(
    state: &mut ReplicatedState,
    canister_id: Principal,
    handler: impl FnOnce(&mut ReplicatedState) -> Result<Vec<u8>, UserError>,
) -> Result<Vec<u8>, UserError> {
    let before = state.footprint(canister_id);
    let reply = handler(state)?;
    let after = state.footprint(canister_id);
    state.account(before, after);
    Ok(reply)
}

/// Adds a canister just created (its id is in the reply) to the running totals.
fn account_created(state: &mut ReplicatedState, reply: &[u8]) {
    if let Ok((CanisterIdRecord { canister_id },)) = candid::decode_args(reply) {
        let after = state.footprint(canister_id);
        state.account(MemoryFootprint::default(), after);
    }
}

/// Candid-encodes a reply.
fn reply<T: ArgumentEncoder>(value: T) -> Result<Vec<u8>, UserError> {
    candid::encode_args(value).map_err(|err| {
        UserError::new(
            ErrorCode::CanisterContractViolation,
            format!("The management canister could not encode its reply: {err}"),
        )
    })
}

fn canister_not_found(canister_id: Principal) -> UserError {
    UserError::new(
        ErrorCode::CanisterNotFound,
        format!("Canister {canister_id} not found."),
    )
}

fn canister(state: &ReplicatedState, canister_id: Principal) -> Result<&CanisterState, UserError> {
    state
        .canisters
        .get(&canister_id)
        .ok_or_else(|| canister_not_found(canister_id))
}

fn canister_mut(
    state: &mut ReplicatedState,
    canister_id: Principal,
) -> Result<&mut CanisterState, UserError> {
    state
        .canisters
        .get_mut(&canister_id)
        .ok_or_else(|| canister_not_found(canister_id))
}

/// The canister, if it exists and `sender` controls it.
fn controlled(
    state: &ReplicatedState,
    canister_id: Principal,
    sender: Principal,
) -> Result<&CanisterState, UserError> {
    let canister = canister(state, canister_id)?;
    check_controller(canister, sender)?;
    Ok(canister)
}

fn check_controller(canister: &CanisterState, sender: Principal) -> Result<(), UserError> {
    if canister.is_controller(&sender) {
        return Ok(());
    }
    let controllers: Vec<String> = canister.controllers.iter().map(|c| c.to_string()).collect();
    Err(UserError::new(
        ErrorCode::CanisterInvalidController,
        format!(
            "Only the controllers of the canister {} can control it.\nCanister's controllers: \
             {}\nSender's ID: {sender}",
            canister.canister_id,
            controllers.join(" ")
        ),
    ))
}

/// Whether `sender` may list and read the canister's snapshots (`snapshot_visibility`).
fn check_snapshot_viewer(canister: &CanisterState, sender: Principal) -> Result<(), UserError> {
    let allowed = canister.is_controller(&sender)
        || match &canister.settings.snapshot_visibility {
            SnapshotVisibility::Controllers => false,
            SnapshotVisibility::Public => true,
            SnapshotVisibility::AllowedViewers(viewers) => viewers.contains(&sender),
        };
    if allowed {
        Ok(())
    } else {
        // The replica's `CanisterSnapshotAccessDenied`: a reject, like its refusal of a caller
        // that `log_visibility` does not admit.
        Err(UserError::new(
            ErrorCode::CanisterRejectedMessage,
            format!(
                "Caller {sender} is not allowed to read the snapshots of canister {}: its \
                 snapshot_visibility admits only its controllers{}.",
                canister.canister_id,
                match canister.settings.snapshot_visibility {
                    SnapshotVisibility::AllowedViewers(_) => " and its allowed viewers",
                    _ => "",
                }
            ),
        ))
    }
}

fn from_user(sender: Principal) -> ChangeOrigin {
    ChangeOrigin::FromUser(FromUserRecord { user_id: sender })
}

fn invalid_payload(message: String) -> UserError {
    UserError::new(ErrorCode::InvalidManagementPayload, message)
}

/// A Candid `nat` that must fit in `u64` (or `u128`), else `InvalidManagementPayload`.
fn nat_u64(field: &str, value: &Nat, max: u64) -> Result<u64, UserError> {
    u64::try_from(value.0.clone())
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| invalid_payload(format!("{field} must be at most {max}, got {value}")))
}

fn nat_u128(field: &str, value: &Nat) -> Result<u128, UserError> {
    u128::try_from(value.0.clone())
        .map_err(|_| invalid_payload(format!("{field} must fit in 128 bits, got {value}")))
}
