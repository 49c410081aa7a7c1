//! The seam between a management-canister client and the replica it talks to.
//!
//! [`ManagementClient`] is one call to `aaaaa-aa`: a method name and a Candid payload in, the
//! reply bytes or the IC's reject out. The transfer client (`crate::transfer`) is written
//! against it, so it runs unchanged on the in-process [`crate::StateMachine`] (which
//! implements it), on a test double that corrupts what it sends, or on an agent talking to a
//! real replica.
//!
//! Owns no state and does no I/O of its own.

#![forbid(unsafe_code)]

use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{CandidType, Principal};
use ic_error_types::{ErrorCode, RejectCode, UserError};
use serde::Deserialize;

/// A reject, as PocketIC reports it: the IC's reject code, error code and message. A client
/// whose transport fails before the replica answers reports it as a reject too (reject code
/// `SysTransient`), so that every caller sees one error type that carries the IC's codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectResponse {
    pub reject_code: RejectCode,
    pub error_code: ErrorCode,
    pub reject_message: String,
}

impl From<UserError> for RejectResponse {
    fn from(err: UserError) -> Self {
        RejectResponse {
            reject_code: err.reject_code(),
            error_code: err.code(),
            reject_message: err.description().to_string(),
        }
    }
}

impl std::fmt::Display for RejectResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.error_code, self.reject_code, self.reject_message
        )
    }
}

impl std::error::Error for RejectResponse {}

/// Something that delivers update calls to the management canister `aaaaa-aa`.
///
/// The error is [`RejectResponse`] rather than an associated type: the transfer client reports
/// a reject by its IC codes (and decides on them, e.g. "the quota is full"), which a generic
/// error could not tell it.
pub trait ManagementClient {
    /// Sends `payload` (Candid) to `method` of `aaaaa-aa` as `sender`; returns the Candid reply.
    fn update_call(
        &mut self,
        sender: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse>;

    /// Sends several calls at once, as a client with several requests in flight does (dfx and
    /// icp-cli read and write 3 slices at a time); the answers are in the order of `calls`.
    /// The calls must not depend on each other: the replica may execute them in any order, or
    /// in one round (`StateMachine` does). By default they are sent one after another.
    fn update_calls(
        &mut self,
        sender: Principal,
        calls: Vec<(&str, Vec<u8>)>,
    ) -> Vec<Result<Vec<u8>, RejectResponse>> {
        calls
            .into_iter()
            .map(|(method, payload)| self.update_call(sender, method, payload))
            .collect()
    }

    /// Candid-encodes `args`, calls `method` and decodes the reply as the tuple `R`.
    fn management_call<R: for<'a> ArgumentDecoder<'a>>(
        &mut self,
        sender: Principal,
        method: &str,
        args: impl ArgumentEncoder,
    ) -> Result<R, RejectResponse> {
        // The argument types are the crate's own records: Candid encodes every value of them.
        #[allow(clippy::expect_used)]
        let payload = candid::encode_args(args).expect("encoding a crate type cannot fail");
        let reply = self.update_call(sender, method, payload)?;
        decode_reply(&reply)
    }
}

/// Decodes a Candid reply of one value, which may borrow from `reply` (a `blob` as `&[u8]`:
/// no copy). Errors as [`decode_reply`].
pub fn decode_reply_one<'a, R: CandidType + Deserialize<'a>>(
    reply: &'a [u8],
) -> Result<R, RejectResponse> {
    candid::decode_one::<R>(reply).map_err(undecodable)
}

fn undecodable(err: candid::Error) -> RejectResponse {
    RejectResponse {
        reject_code: RejectCode::SysFatal,
        error_code: ErrorCode::CanisterContractViolation,
        reject_message: format!("the reply does not decode as the expected type: {err}"),
    }
}

/// Decodes a Candid reply. A reply that does not decode is the caller asking for the wrong
/// type: reported as a reject, not a panic.
pub fn decode_reply<R: for<'a> ArgumentDecoder<'a>>(reply: &[u8]) -> Result<R, RejectResponse> {
    candid::decode_args::<R>(reply).map_err(undecodable)
}
