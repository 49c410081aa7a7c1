//! The system canisters `icp canister create` talks to, answered natively at their mainnet ids:
//! the cycles minting canister (CMC, `rkp4c-7iaaa-aaaaa-aaaca-cai`) and the cycles ledger
//! (`um5iw-rqaaa-aaaaq-qaaba-cai`).
//!
//! On a local network icp-cli creates a canister in three steps: it asks the CMC for the
//! subnets it may use (`get_default_subnets`, a query), reads that subnet's state
//! (`/api/v3/subnet/<id>/read_state`), and calls the cycles ledger's `create_canister` with the
//! cycles to attach, which on the IC debits the caller's cycles balance and has the CMC create
//! the canister on the chosen subnet. Here this replica is the only subnet, so:
//!
//! - `get_default_subnets` answers this subnet's id;
//! - the ledger's `create_canister` becomes the management canister's
//!   `provisional_create_canister_with_cycles` from the same sender with the same settings and
//!   `amount`, executed in the round like any message, and its outcome is answered in the
//!   ledger's own reply type (`variant { Ok; Err }`);
//! - the ledger keeps no accounts. Local-network semantics: every account can pay, so a fresh
//!   identity creates canisters without minting cycles first. The balance queries answer
//!   [`LOCAL_ACCOUNT_BALANCE`] (the 1 000 T cycles icp's own local network seeds an identity
//!   with) for every account, before and after a creation.
//!
//! Everything else sent to these ids is refused as the IC refuses a method a canister does not
//! export. Their ids are reserved (`Config::reserved_canister_ids`): the allocator skips them
//! (the CMC's id is the subnet's fifth) and `specified_id` may not name them.
//!
//! Routing a message here is a function of the message alone, so it is as deterministic as
//! the round it executes in.

#![forbid(unsafe_code)]

use candid::{CandidType, Decode, Encode, Nat, Principal};
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{CanisterIdRecord, CanisterSettings};
use serde::Deserialize;

/// The cycles minting canister's mainnet id.
pub const CYCLES_MINTING_CANISTER_ID: Principal =
    Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 4, 1, 1]);
/// The cycles ledger's mainnet id.
pub const CYCLES_LEDGER_ID: Principal = Principal::from_slice(&[0, 0, 0, 0, 2, 16, 0, 2, 1, 1]);

/// What every account of the emulated cycles ledger holds (see the module docs).
pub const LOCAL_ACCOUNT_BALANCE: u128 = 1_000_000_000_000_000;
/// The cycles ledger's transfer fee (its `icrc1_fee`).
pub const CYCLES_LEDGER_FEE: u128 = 100_000_000;
/// Candid decoding quota for the arguments sent to these canisters.
const DECODING_QUOTA: usize = 1_000_000;

/// The ids `serve` reserves for the canisters answered here.
pub fn ids() -> Vec<Principal> {
    vec![CYCLES_MINTING_CANISTER_ID, CYCLES_LEDGER_ID]
}

/// Whether `canister_id` is answered here.
pub fn is_system_canister(canister_id: Principal) -> bool {
    canister_id == CYCLES_MINTING_CANISTER_ID || canister_id == CYCLES_LEDGER_ID
}

/// A message to be executed in a round: where it goes, and how its outcome is answered.
pub struct Routed {
    pub receiver: Principal,
    pub method: String,
    pub payload: Vec<u8>,
    pub answer: Answer,
}

/// How the outcome of an executed message becomes its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// As it is.
    AsIs,
    /// In the cycles ledger's `create_canister` result type.
    LedgerCreateCanister,
}

/// Where an ingress message goes: executed in the round, or answered here at once.
pub enum Route {
    Execute(Routed),
    Answered(Result<Vec<u8>, UserError>),
}

/// Routes an update call (see the module docs).
pub fn route(subnet_id: Principal, receiver: Principal, method: String, payload: Vec<u8>) -> Route {
    if !is_system_canister(receiver) {
        return Route::Execute(Routed {
            receiver,
            method,
            payload,
            answer: Answer::AsIs,
        });
    }
    // The IC runs a query method called as an update like an update.
    if let Some(answer) = query_method(subnet_id, receiver, &method, &payload) {
        return Route::Answered(answer);
    }
    if receiver == CYCLES_LEDGER_ID && method == "create_canister" {
        return match ledger_create_canister(subnet_id, &payload) {
            Ok(payload) => Route::Execute(Routed {
                receiver: Principal::management_canister(),
                method: "provisional_create_canister_with_cycles".to_string(),
                payload,
                answer: Answer::LedgerCreateCanister,
            }),
            Err(answer) => Route::Answered(answer),
        };
    }
    Route::Answered(Err(method_not_found(receiver, &method)))
}

/// The reply of an executed message, in the type its caller expects.
pub fn answer(answer: Answer, outcome: Result<Vec<u8>, UserError>) -> Result<Vec<u8>, UserError> {
    match answer {
        Answer::AsIs => outcome,
        Answer::LedgerCreateCanister => {
            let response = match outcome.and_then(|reply| {
                Decode!(&reply, CanisterIdRecord).map_err(|e| {
                    UserError::new(
                        ErrorCode::CanisterContractViolation,
                        format!("the management canister's reply does not decode: {e}"),
                    )
                })
            }) {
                Ok(CanisterIdRecord { canister_id }) => CreateCanisterResult::Ok {
                    block_id: Nat::from(block_id(canister_id)),
                    canister_id,
                },
                Err(err) => CreateCanisterResult::Err(CreateCanisterError::FailedToCreate {
                    error: err.description().to_string(),
                    refund_block: None,
                    fee_block: None,
                }),
            };
            encode(&response)
        }
    }
}

/// Answers a query to a system canister; `None` if `canister_id` is not one.
pub fn query(
    subnet_id: Principal,
    canister_id: Principal,
    method: &str,
    arg: &[u8],
) -> Option<Result<Vec<u8>, UserError>> {
    if !is_system_canister(canister_id) {
        return None;
    }
    Some(
        query_method(subnet_id, canister_id, method, arg)
            .unwrap_or_else(|| Err(method_not_found(canister_id, method))),
    )
}

/// The answer of a query method of a system canister; `None` if it has no such query.
fn query_method(
    subnet_id: Principal,
    canister_id: Principal,
    method: &str,
    arg: &[u8],
) -> Option<Result<Vec<u8>, UserError>> {
    let answer = match (canister_id, method) {
        (CYCLES_MINTING_CANISTER_ID, "get_default_subnets") => {
            decode_unit(canister_id, method, arg).and_then(|()| encode(&vec![subnet_id]))
        }
        (CYCLES_LEDGER_ID, "icrc1_balance_of") => decode::<Account>(canister_id, method, arg)
            .and_then(|_| encode(&Nat::from(LOCAL_ACCOUNT_BALANCE))),
        (CYCLES_LEDGER_ID, "icrc1_decimals") => {
            decode_unit(canister_id, method, arg).and_then(|()| encode(&12u8))
        }
        (CYCLES_LEDGER_ID, "icrc1_symbol") => {
            decode_unit(canister_id, method, arg).and_then(|()| encode(&"TCYCLES"))
        }
        (CYCLES_LEDGER_ID, "icrc1_name") => {
            decode_unit(canister_id, method, arg).and_then(|()| encode(&"Trillion Cycles"))
        }
        (CYCLES_LEDGER_ID, "icrc1_fee") => decode_unit(canister_id, method, arg)
            .and_then(|()| encode(&Nat::from(CYCLES_LEDGER_FEE))),
        _ => return None,
    };
    Some(answer)
}

/// The ledger's `create_canister` argument as the management canister's
/// `provisional_create_canister_with_cycles` argument; or the ledger's answer when it refuses.
fn ledger_create_canister(
    subnet_id: Principal,
    payload: &[u8],
) -> Result<Vec<u8>, Result<Vec<u8>, UserError>> {
    let args: CreateCanisterArgs =
        decode(CYCLES_LEDGER_ID, "create_canister", payload).map_err(Err)?;
    let refuse = |message: String| {
        Err(encode(&CreateCanisterResult::Err(
            CreateCanisterError::GenericError {
                message,
                error_code: Nat::from(0u8),
            },
        )))
    };
    if u128::try_from(args.amount.0.clone()).is_err() {
        return refuse(format!(
            "amount {} does not fit in 128 bits; ask for fewer cycles",
            args.amount
        ));
    }
    let (selection, settings) = match args.creation_args {
        Some(creation) => (creation.subnet_selection, creation.settings),
        None => (None, None),
    };
    if let Some(SubnetSelection::Subnet { subnet }) = selection
        && subnet != subnet_id
    {
        return refuse(format!(
            "subnet {subnet} is not on this network: its only subnet is {subnet_id}"
        ));
    }
    #[derive(CandidType)]
    struct ProvisionalCreate {
        amount: Option<Nat>,
        settings: Option<CanisterSettings>,
        specified_id: Option<Principal>,
        sender_canister_version: Option<u64>,
    }
    Encode!(&ProvisionalCreate {
        amount: Some(args.amount),
        settings,
        specified_id: None,
        sender_canister_version: None,
    })
    .map_err(|e| {
        Err(UserError::new(
            ErrorCode::CanisterContractViolation,
            format!("the cycles ledger could not encode the creation: {e}"),
        ))
    })
}

/// The block of a creation: the created canister's place in the subnet's allocation order,
/// unique per creation and a function of the state.
fn block_id(canister_id: Principal) -> u64 {
    let bytes = canister_id.as_slice();
    bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

fn method_not_found(canister_id: Principal, method: &str) -> UserError {
    let name = if canister_id == CYCLES_LEDGER_ID {
        "the cycles ledger"
    } else {
        "the cycles minting canister"
    };
    UserError::new(
        ErrorCode::CanisterMethodNotFound,
        format!(
            "Canister {canister_id} has no method '{method}': this replica emulates {name} for \
             canister creation only (get_default_subnets; create_canister and the icrc1 balance \
             queries)"
        ),
    )
}

fn decode<T: for<'a> Deserialize<'a> + CandidType>(
    canister_id: Principal,
    method: &str,
    arg: &[u8],
) -> Result<T, UserError> {
    let mut config = candid::DecoderConfig::new();
    config.set_decoding_quota(DECODING_QUOTA);
    config.set_skipping_quota(DECODING_QUOTA);
    candid::utils::decode_args_with_config::<(T,)>(arg, &config)
        .map(|(value,)| value)
        .map_err(|e| {
            UserError::new(
                ErrorCode::CanisterCalledTrap,
                format!(
                    "Canister {canister_id} trapped: {method}: failed to decode the argument: {e}"
                ),
            )
        })
}

fn decode_unit(canister_id: Principal, method: &str, arg: &[u8]) -> Result<(), UserError> {
    let mut config = candid::DecoderConfig::new();
    config.set_decoding_quota(DECODING_QUOTA);
    candid::utils::decode_args_with_config::<()>(arg, &config).map_err(|e| {
        UserError::new(
            ErrorCode::CanisterCalledTrap,
            format!("Canister {canister_id} trapped: {method} takes no argument: {e}"),
        )
    })
}

fn encode<T: CandidType>(value: &T) -> Result<Vec<u8>, UserError> {
    Encode!(value).map_err(|e| {
        UserError::new(
            ErrorCode::CanisterContractViolation,
            format!("the reply could not be encoded: {e}"),
        )
    })
}

/// `icrc1_balance_of`'s argument.
#[derive(CandidType, Deserialize)]
struct Account {
    #[allow(dead_code)]
    owner: Principal,
    #[allow(dead_code)]
    subaccount: Option<serde_bytes::ByteBuf>,
}

/// The cycles ledger's `create_canister` argument (its `.did`: `CreateCanisterArgs`).
#[derive(CandidType, Deserialize)]
pub struct CreateCanisterArgs {
    pub from_subaccount: Option<serde_bytes::ByteBuf>,
    pub created_at_time: Option<u64>,
    pub amount: Nat,
    pub creation_args: Option<CreationArgs>,
}

#[derive(CandidType, Deserialize)]
pub struct CreationArgs {
    pub subnet_selection: Option<SubnetSelection>,
    pub settings: Option<CanisterSettings>,
}

#[derive(CandidType, Deserialize)]
pub enum SubnetSelection {
    Subnet { subnet: Principal },
    Filter { subnet_type: Option<String> },
}

/// The ledger's `create_canister` result.
#[derive(CandidType, Deserialize, Debug, PartialEq)]
pub enum CreateCanisterResult {
    Ok {
        block_id: Nat,
        canister_id: Principal,
    },
    Err(CreateCanisterError),
}

/// The variants of the ledger's `CreateCanisterError` this emulation answers.
#[derive(CandidType, Deserialize, Debug, PartialEq)]
pub enum CreateCanisterError {
    GenericError {
        message: String,
        error_code: Nat,
    },
    FailedToCreate {
        error: String,
        refund_block: Option<Nat>,
        fee_block: Option<Nat>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_are_the_mainnet_ids() {
        assert_eq!(
            CYCLES_MINTING_CANISTER_ID.to_text(),
            "rkp4c-7iaaa-aaaaa-aaaca-cai"
        );
        assert_eq!(CYCLES_LEDGER_ID.to_text(), "um5iw-rqaaa-aaaaq-qaaba-cai");
    }

    #[test]
    fn a_ledger_creation_becomes_a_provisional_creation_with_its_amount() {
        let subnet = Principal::from_slice(&[7; 29]);
        let args = CreateCanisterArgs {
            from_subaccount: None,
            created_at_time: None,
            amount: Nat::from(2_000_000_000_000u64),
            creation_args: Some(CreationArgs {
                subnet_selection: Some(SubnetSelection::Subnet { subnet }),
                settings: None,
            }),
        };
        let Route::Execute(routed) = route(
            subnet,
            CYCLES_LEDGER_ID,
            "create_canister".into(),
            Encode!(&args).unwrap(),
        ) else {
            panic!("executed in the round");
        };
        assert_eq!(routed.receiver, Principal::management_canister());
        assert_eq!(routed.method, "provisional_create_canister_with_cycles");
        let created = answer(
            routed.answer,
            Ok(Encode!(&CanisterIdRecord {
                canister_id: Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 5, 1, 1]),
            })
            .unwrap()),
        )
        .unwrap();
        assert!(matches!(
            Decode!(&created, CreateCanisterResult).unwrap(),
            CreateCanisterResult::Ok { block_id, .. } if block_id == 5u8
        ));

        // Another subnet: refused in the ledger's own terms, nothing executed.
        let other = CreateCanisterArgs {
            creation_args: Some(CreationArgs {
                subnet_selection: Some(SubnetSelection::Subnet {
                    subnet: Principal::anonymous(),
                }),
                settings: None,
            }),
            ..args
        };
        let Route::Answered(Ok(reply)) = route(
            subnet,
            CYCLES_LEDGER_ID,
            "create_canister".into(),
            Encode!(&other).unwrap(),
        ) else {
            panic!("answered at once");
        };
        assert!(matches!(
            Decode!(&reply, CreateCanisterResult).unwrap(),
            CreateCanisterResult::Err(CreateCanisterError::GenericError { .. })
        ));
    }

    #[test]
    fn unknown_methods_and_bad_arguments_are_refused() {
        let subnet = Principal::from_slice(&[7; 29]);
        let Route::Answered(Err(err)) = route(
            subnet,
            CYCLES_MINTING_CANISTER_ID,
            "notify_top_up".into(),
            Encode!().unwrap(),
        ) else {
            panic!("refused");
        };
        assert_eq!(err.code(), ErrorCode::CanisterMethodNotFound);
        let Some(Err(err)) = query(subnet, CYCLES_LEDGER_ID, "icrc1_balance_of", b"DIDL") else {
            panic!("refused");
        };
        assert_eq!(err.code(), ErrorCode::CanisterCalledTrap);
        assert!(query(subnet, Principal::management_canister(), "x", &[]).is_none());
    }
}
