//! The test canister, executed natively: the empty module [`TEST_CANISTER_WASM`] (or
//! [`test_canister_module`], the same under another hash) gets this Candid interface
//! (`spec/test-canister.did`) without any WebAssembly running, for fast tests and fuzzing:
//!
//! ```text
//! write_heap : (offset : nat64, data : blob) -> ()      // grows Wasm memory in 64 KiB pages to fit
//! read_heap : (offset : nat64, len : nat64) -> (blob)    // out of bounds: reject CanisterTrapped
//! fill_heap : (offset : nat64, len : nat64, byte : nat8) -> ()
//! write_stable, read_stable, fill_stable                 // the same on stable memory
//! memory_sizes : () -> (nat64, nat64)                     // Wasm memory bytes, stable memory bytes
//! set_certified_data : (blob) -> ()                       // more than 32 bytes: trap
//! set_global : (index : nat32, value : int64) -> ()       // two exported i64 globals, 0 and 1;
//!                                                         // missing or not i64: trap
//! get_global : (index : nat32) -> (int64)
//! trap : (message : text) -> ()                           // reject CanisterCalledTrap, state unchanged
//! ```

use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{DecoderConfig, decode_args_with_config, encode_args};
use ic_error_types::{ErrorCode, UserError};
use serde_bytes::ByteBuf;

use super::{ExecutionContext, MethodKind, Response, WasmEngine};
use crate::state::{Global, WasmModule};

/// The Wasm binary header: `\0asm` and version 1, an empty module. Installing exactly these
/// bytes (or [`test_canister_module`]) installs the native test canister; any other module
/// runs as WebAssembly.
pub const TEST_CANISTER_WASM: &[u8] = b"\0asm\x01\0\0\0";

/// The custom section that names a version of the test canister.
const TEST_CANISTER_SECTION: &str = "test-canister";

/// The test canister under another module hash: the empty module plus one custom section
/// `test-canister` holding `version`. A valid Wasm module, so any tool reads it.
pub fn test_canister_module(version: &[u8]) -> Vec<u8> {
    let mut module = wasm_encoder::Module::new();
    module.section(&wasm_encoder::CustomSection {
        name: TEST_CANISTER_SECTION.into(),
        data: version.into(),
    });
    module.finish()
}

/// Whether `wasm_module` is the native test canister: [`TEST_CANISTER_WASM`] exactly, or
/// [`test_canister_module`] of some version.
pub fn is_test_canister(wasm_module: &[u8]) -> bool {
    if wasm_module == TEST_CANISTER_WASM {
        return true;
    }
    if !wasm_module.starts_with(TEST_CANISTER_WASM) {
        return false;
    }
    let mut sections = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(wasm_module) {
        match payload {
            Ok(wasmparser::Payload::Version { .. } | wasmparser::Payload::End(_)) => {}
            Ok(wasmparser::Payload::CustomSection(section))
                if section.name() == TEST_CANISTER_SECTION =>
            {
                sections = sections.saturating_add(1);
            }
            _ => return false,
        }
    }
    sections == 1
}

/// Certified data is at most 32 bytes, as on the IC.
pub const MAX_CERTIFIED_DATA_BYTES: usize = 32;

const NUM_GLOBALS: usize = 2;

/// The test canister's update methods, in the order of its interface.
pub const METHODS: &[&str] = &[
    "write_heap",
    "read_heap",
    "fill_heap",
    "write_stable",
    "read_stable",
    "fill_stable",
    "memory_sizes",
    "set_certified_data",
    "set_global",
    "get_global",
    "trap",
];

/// Work a single argument may cost to decode (Candid decoding quota).
const DECODING_QUOTA: usize = 10_000_000;

/// The native engine for the test canister.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestCanisterEngine;

fn decode<'a, T: ArgumentDecoder<'a>>(method: &str, arg: &'a [u8]) -> Result<T, UserError> {
    let mut config = DecoderConfig::new();
    config.set_decoding_quota(DECODING_QUOTA);
    decode_args_with_config(arg, &config).map_err(|err| {
        UserError::new(
            ErrorCode::CanisterCalledTrap,
            format!("Canister called `ic0.trap`: failed to decode the argument of {method}: {err}"),
        )
    })
}

// Candid encodes every value of these fixed reply types (no floats to reject, no recursion).
#[allow(clippy::expect_used)]
fn encode<T: ArgumentEncoder>(value: T) -> Vec<u8> {
    encode_args(value).expect("encoding a reply of fixed Candid type cannot fail")
}

fn called_trap(message: impl std::fmt::Display) -> UserError {
    UserError::new(
        ErrorCode::CanisterCalledTrap,
        format!("Canister called `ic0.trap` with message: '{message}'"),
    )
}

/// The trap of a method that finds global `index` missing or of another type than `i64`.
fn not_an_i64(index: usize, found: Option<&Global>) -> UserError {
    called_trap(format_args!(
        "global {index} is not an i64 (it is {found:?}); was a snapshot of another module \
         loaded?"
    ))
}

impl TestCanisterEngine {
    fn global_index(index: u32) -> Result<usize, UserError> {
        let index = index as usize;
        if index < NUM_GLOBALS {
            Ok(index)
        } else {
            Err(called_trap(format_args!(
                "global {index} does not exist: the test canister exports globals 0 and 1"
            )))
        }
    }
}

impl WasmEngine for TestCanisterEngine {
    fn validate(&self, wasm_module: &WasmModule) -> Result<(), UserError> {
        if is_test_canister(wasm_module.bytes()) {
            Ok(())
        } else {
            Err(UserError::new(
                ErrorCode::CanisterInvalidWasm,
                "Wasm module is invalid: this engine runs only the native test canister \
                 (`\\0asm\\x01\\0\\0\\0`, optionally with one `test-canister` custom \
                 section). Run real modules with the Wasm engine.",
            ))
        }
    }

    fn method_kind(&self, _: &WasmModule, method: &str) -> Option<MethodKind> {
        METHODS.contains(&method).then_some(MethodKind::Update)
    }

    fn initial_globals(&self, _: &WasmModule) -> Vec<Global> {
        vec![Global::I64(0); NUM_GLOBALS]
    }

    fn execute(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: &str,
        arg: &[u8],
    ) -> Result<Response, UserError> {
        self.execute_update(ctx, method, arg).map(Response::Reply)
    }
}

impl TestCanisterEngine {
    fn execute_update(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, UserError> {
        let stable = method.ends_with("_stable");
        match method {
            "write_heap" | "write_stable" => {
                // Borrowed from the argument: the bytes are copied once, into the pages.
                let (offset, data): (u64, &serde_bytes::Bytes) = decode(method, arg)?;
                ctx.write(stable, offset, data)?;
                Ok(encode(()))
            }
            "read_heap" | "read_stable" => {
                let (offset, len): (u64, u64) = decode(method, arg)?;
                let bytes = ctx.read_for_reply(stable, offset, len)?;
                Ok(encode((ByteBuf::from(bytes),)))
            }
            "fill_heap" | "fill_stable" => {
                let (offset, len, byte): (u64, u64, u8) = decode(method, arg)?;
                ctx.fill(stable, offset, len, byte)?;
                Ok(encode(()))
            }
            "memory_sizes" => {
                let () = decode(method, arg)?;
                let heap = ctx.memory(false).size_bytes();
                let stable = ctx.memory(true).size_bytes();
                Ok(encode((heap, stable)))
            }
            "set_certified_data" => {
                let (data,): (ByteBuf,) = decode(method, arg)?;
                if data.len() > MAX_CERTIFIED_DATA_BYTES {
                    return Err(called_trap(format_args!(
                        "certified data is at most {MAX_CERTIFIED_DATA_BYTES} bytes, got {}",
                        data.len()
                    )));
                }
                *ctx.certified_data = data.into_vec();
                Ok(encode(()))
            }
            "set_global" => {
                let (index, value): (u32, i64) = decode(method, arg)?;
                let index = Self::global_index(index)?;
                // Checked, not indexed: the globals are whatever the last load put there.
                match ctx.execution_state.exported_globals.get_mut(index) {
                    Some(global @ Global::I64(_)) => {
                        *global = Global::I64(value);
                        Ok(encode(()))
                    }
                    other => Err(not_an_i64(index, other.as_deref())),
                }
            }
            "get_global" => {
                let (index,): (u32,) = decode(method, arg)?;
                let index = Self::global_index(index)?;
                match ctx.execution_state.exported_globals.get(index) {
                    Some(Global::I64(value)) => Ok(encode((*value,))),
                    other => Err(not_an_i64(index, other)),
                }
            }
            "trap" => {
                let (message,): (String,) = decode(method, arg)?;
                Err(called_trap(message))
            }
            _ => Err(UserError::new(
                ErrorCode::CanisterMethodNotFound,
                format!(
                    "Canister has no update method '{method}'. The test canister's methods are: \
                     {}.",
                    METHODS.join(", ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::CanisterEnvironment;
    use crate::memory::Memory;
    use crate::state::ExecutionState;
    use candid::Principal;
    use std::collections::BTreeSet;

    /// Runs `method` on an execution state holding `globals`, as a load of an uploaded
    /// snapshot could leave it if nothing checked the globals.
    fn run(globals: Vec<Global>, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, UserError> {
        let mut execution_state = ExecutionState {
            wasm_module: WasmModule::new(TEST_CANISTER_WASM.to_vec()),
            wasm_memory: Memory::new(),
            stable_memory: Memory::new(),
            exported_globals: globals,
        };
        let mut certified_data = vec![];
        let mut ctx = ExecutionContext {
            execution_state: &mut execution_state,
            certified_data: &mut certified_data,
            caller: Principal::anonymous(),
            time: 0,
            wasm_memory_limit: 1 << 20,
            wasm64_memory_limit: 1 << 20,
            stable_memory_limit: 1 << 20,
            heap_delta: 0,
            max_heap_delta: 1 << 20,
            max_reply_bytes: 1 << 20,
            canister: CanisterEnvironment {
                canister_id: Principal::anonymous(),
                controllers: &BTreeSet::new(),
                status: crate::state::CanisterStatus::Running,
                cycles: 0,
                canister_version: 0,
            },
            global_timer: None,
            instruction_limit: u64::MAX,
            instructions_executed: 0,
        };
        TestCanisterEngine.execute_update(&mut ctx, method, &arg)
    }

    /// Every global method traps, never panics, whatever globals the state holds: none, too
    /// few, or of another type.
    #[test]
    fn global_methods_trap_on_any_globals() {
        for globals in [
            vec![],
            vec![Global::I64(1)],
            vec![Global::F32(0), Global::F64(0)],
            vec![Global::V128(3), Global::I32(-1)],
        ] {
            for index in 0..2u32 {
                let set = run(globals.clone(), "set_global", encode((index, 5i64)));
                let get = run(globals.clone(), "get_global", encode((index,)));
                let fits = matches!(globals.get(index as usize), Some(Global::I64(_)));
                for result in [set, get] {
                    match result {
                        Ok(_) => assert!(fits, "{globals:?} {index}"),
                        Err(err) => {
                            assert!(!fits, "{globals:?} {index}: {err}");
                            assert_eq!(err.code(), ErrorCode::CanisterCalledTrap);
                            assert!(err.description().contains("is not an i64"), "{err}");
                        }
                    }
                }
            }
        }
    }

    /// The versioned test canister is a valid Wasm module and still the test canister; any
    /// other section makes it a real module.
    #[test]
    fn versioned_test_canister_is_the_test_canister() {
        let v2 = test_canister_module(b"v2");
        assert!(is_test_canister(&v2) && is_test_canister(TEST_CANISTER_WASM));
        wasmparser::Validator::new().validate_all(&v2).unwrap();
        assert_ne!(v2, test_canister_module(b"v3"));
        assert!(!is_test_canister(&[TEST_CANISTER_WASM, b"v2"].concat()));
        let with_type = [TEST_CANISTER_WASM, &[1, 1, 0][..]].concat();
        assert!(!is_test_canister(&with_type));
        assert!(!is_test_canister(&[v2.clone(), v2[8..].to_vec()].concat()));
    }
}
