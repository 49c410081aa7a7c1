//! Validation of a canister module, as the replica validates it at install and again when a
//! snapshot holding it is loaded (`rs/embedders/src/wasm_utils/validation.rs` in dfinity/ic).
//!
//! A module is first decompressed if gzipped (`\x1f\x8b`, bounded by
//! [`MAX_WASM_MODULE_BYTES`]), then validated as WebAssembly with the features the engine
//! enables (Wasm 2.0 plus 64-bit memories), then checked against the IC's rules:
//! - imports are functions from `ic0`, each with its exact signature ([`SYSTEM_API`], pointers
//!   as wide as memory 0); no imported globals, memories, tables or tags;
//! - among exports that start with `canister_`, only the IC's: `canister_update <name>`,
//!   `canister_query <name>`, `canister_composite_query <name>` (each `<name>` once) and the
//!   system methods, all functions `() -> ()`; other names pass (Motoko exports `mem`);
//!   `canister_start` and this engine's own export names are reserved;
//! - active data segments have a constant offset;
//! - the replica's limits on globals, functions, exported methods, the total length of their
//!   names, and `icp:` custom sections.
//!
//! A refusal is `CanisterInvalidWasm` with a message that says what is wrong. What validation
//! learns ([`ModuleInfo`]) drives instrumentation and execution, so the module is parsed once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use ic_error_types::{ErrorCode, UserError};
use wasmparser::{Operator, Parser, Payload, TypeRef, ValType, Validator, WasmFeatures};

use super::system_api::SYSTEM_API;
use crate::execution::MethodKind;

/// The largest module, decompressed: the replica's `wasm_max_size`, 100 MiB.
pub const MAX_WASM_MODULE_BYTES: u64 = 100 << 20;
/// Globals a module may define (the replica's `max_globals`).
pub const MAX_GLOBALS: usize = 1_000;
/// Functions a module may define (the replica's `max_functions`).
pub const MAX_FUNCTIONS: usize = 50_000;
/// Exported `canister_update`/`canister_query`/`canister_composite_query` methods.
pub const MAX_EXPORTED_METHODS: usize = 1_000;
/// The sum of the lengths of those methods' names.
pub const MAX_SUM_EXPORTED_METHOD_NAME_BYTES: usize = 20_000;
/// `icp:` custom sections a module may carry, and their total size.
pub const MAX_CUSTOM_SECTIONS: usize = 16;
pub const MAX_CUSTOM_SECTIONS_BYTES: usize = 1 << 20;

/// The system methods a module may export, each `() -> ()`.
pub const SYSTEM_METHODS: &[&str] = &[
    "canister_init",
    "canister_pre_upgrade",
    "canister_post_upgrade",
    "canister_inspect_message",
    "canister_heartbeat",
    "canister_global_timer",
    "canister_on_low_wasm_memory",
];

/// Export names instrumentation adds, which a module may not use itself.
pub const START_EXPORT: &str = "canister_start";
pub const HEAP_EXPORT: &str = "__canister_heap";
pub const GLOBAL_EXPORT_PREFIX: &str = "__persistent_mutable_global_";

/// The custom section of a module built for enhanced orthogonal persistence.
const EOP_SECTION: &str = "enhanced-orthogonal-persistence";

/// The WebAssembly features a canister may use: Wasm 2.0 and 64-bit memories. No threads
/// (nondeterministic), no relaxed SIMD (nondeterministic), no multi-memory (memory 0 is the
/// heap).
pub fn wasm_features() -> WasmFeatures {
    WasmFeatures::WASM2 | WasmFeatures::MEMORY64
}

/// A global the module defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalInfo {
    pub ty: ValType,
    pub mutable: bool,
}

/// An active data segment of memory 0: where its bytes go, and where they are in the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveData {
    pub offset: u64,
    pub bytes: std::ops::Range<usize>,
}

/// What validation learned about a module.
#[derive(Clone, Debug, Default)]
pub struct ModuleInfo {
    /// Memory 0, if any: whether it is 64-bit.
    pub memory64: Option<bool>,
    /// The start function, which instrumentation exports as `canister_start`.
    pub start: Option<u32>,
    /// `canister_update`/`canister_query`/`canister_composite_query` methods by name.
    pub methods: BTreeMap<String, MethodKind>,
    /// The system methods the module exports.
    pub system_methods: BTreeSet<String>,
    /// Every global the module defines, by index (no global is imported).
    pub globals: Vec<GlobalInfo>,
    /// Exports in order: name, kind, index.
    pub exports: Vec<(String, wasmparser::ExternalKind, u32)>,
    /// Active data segments (all of memory 0), in order; their segment indices.
    pub active_data: Vec<(u32, ActiveData)>,
    /// Whether the module carries the `enhanced-orthogonal-persistence` custom section.
    pub enhanced_orthogonal_persistence: bool,
}

fn invalid(message: impl std::fmt::Display) -> UserError {
    UserError::new(
        ErrorCode::CanisterInvalidWasm,
        format!("Wasm module is invalid: {message}"),
    )
}

/// The module's bytes, decompressed if gzipped, refusing more than [`MAX_WASM_MODULE_BYTES`].
pub fn decode(wasm_module: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, UserError> {
    if !wasm_module.starts_with(&[0x1f, 0x8b]) {
        if wasm_module.len() as u64 > MAX_WASM_MODULE_BYTES {
            return Err(invalid(format!(
                "it is {} bytes, above the limit of {MAX_WASM_MODULE_BYTES}",
                wasm_module.len()
            )));
        }
        return Ok(std::borrow::Cow::Borrowed(wasm_module));
    }
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(wasm_module)
        .take(MAX_WASM_MODULE_BYTES.saturating_add(1))
        .read_to_end(&mut decoded)
        .map_err(|err| {
            invalid(format!(
                "it starts like gzip but does not decompress: {err}"
            ))
        })?;
    if decoded.len() as u64 > MAX_WASM_MODULE_BYTES {
        return Err(invalid(format!(
            "it decompresses to more than {MAX_WASM_MODULE_BYTES} bytes"
        )));
    }
    Ok(std::borrow::Cow::Owned(decoded))
}

/// The constant offset of an active data segment.
fn constant_offset(index: u32, expr: &wasmparser::ConstExpr<'_>) -> Result<u64, UserError> {
    let mut reader = expr.get_operators_reader();
    let first = reader
        .read()
        .map_err(|err| invalid(err.message().to_string()))?;
    let offset = match first {
        Operator::I32Const { value } => u64::from(value.cast_unsigned()),
        Operator::I64Const { value } => value.cast_unsigned(),
        other => {
            return Err(invalid(format!(
                "data segment {index} has the offset expression {other:?}; only a constant \
                 (i32.const or i64.const) is allowed"
            )));
        }
    };
    match reader.read() {
        Ok(Operator::End) => Ok(offset),
        _ => Err(invalid(format!(
            "data segment {index} has an offset expression of more than one instruction; only \
             a constant is allowed"
        ))),
    }
}

/// Validates a decoded module (see the module doc).
#[allow(clippy::too_many_lines)]
pub fn validate_module(wasm: &[u8]) -> Result<ModuleInfo, UserError> {
    let types = Validator::new_with_features(wasm_features())
        .validate_all(wasm)
        .map_err(invalid)?;
    let types = types.as_ref();
    let mut info = ModuleInfo::default();
    if types.memory_count() > 0 {
        info.memory64 = Some(types.memory_at(0).memory64);
    }
    let memory64 = info.memory64.unwrap_or(false);
    let mut custom_sections = 0usize;
    let mut custom_bytes = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(invalid)?;
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    let name = import.name;
                    let TypeRef::Func(type_index) = import.ty else {
                        return Err(invalid(format!(
                            "it imports {:?} `{}.{name}`: a canister may import only functions \
                             from `ic0` (no globals, memories, tables or tags)",
                            import.ty, import.module
                        )));
                    };
                    if import.module != "ic0" {
                        return Err(invalid(format!(
                            "it imports `{}.{name}`: imports must come from `ic0`",
                            import.module
                        )));
                    }
                    let Some((_, params, results)) =
                        SYSTEM_API.iter().find(|(api, _, _)| *api == name)
                    else {
                        return Err(invalid(format!(
                            "it imports `ic0.{name}`, which is not a System API function"
                        )));
                    };
                    let found = func_type(types, types.core_type_at_in_module(type_index))?;
                    let expected_params: Vec<ValType> = params
                        .iter()
                        .map(|t| t.pick(memory64, ValType::I32, ValType::I64))
                        .collect();
                    let expected_results: Vec<ValType> = results
                        .iter()
                        .map(|t| t.pick(memory64, ValType::I32, ValType::I64))
                        .collect();
                    if found.params() != expected_params || found.results() != expected_results {
                        return Err(invalid(format!(
                            "it imports `ic0.{name}` as {:?} -> {:?}; for a module with a \
                             {}-bit memory its signature is {expected_params:?} -> \
                             {expected_results:?}",
                            found.params(),
                            found.results(),
                            if memory64 { 64 } else { 32 }
                        )));
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                let defined_functions = reader.count() as usize;
                if defined_functions > MAX_FUNCTIONS {
                    return Err(invalid(format!(
                        "it defines {defined_functions} functions, above the limit of \
                         {MAX_FUNCTIONS}"
                    )));
                }
            }
            Payload::GlobalSection(reader) => {
                let count = reader.count() as usize;
                if count > MAX_GLOBALS {
                    return Err(invalid(format!(
                        "it defines {count} globals, above the limit of {MAX_GLOBALS}"
                    )));
                }
                for global in reader {
                    let global = global.map_err(invalid)?;
                    let ty = global.ty.content_type;
                    if !matches!(
                        ty,
                        ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64
                    ) {
                        return Err(invalid(format!(
                            "global {} has type {ty}; globals must be i32, i64, f32 or f64",
                            info.globals.len()
                        )));
                    }
                    info.globals.push(GlobalInfo {
                        ty,
                        mutable: global.ty.mutable,
                    });
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    info.exports
                        .push((export.name.to_string(), export.kind, export.index));
                }
            }
            Payload::StartSection { func, .. } => info.start = Some(func),
            Payload::DataSection(reader) => {
                for (index, data) in (0u32..).zip(reader) {
                    let data = data.map_err(invalid)?;
                    if let wasmparser::DataKind::Active {
                        memory_index,
                        offset_expr,
                    } = data.kind
                    {
                        debug_assert_eq!(memory_index, 0, "multi-memory is not enabled");
                        let offset = constant_offset(index, &offset_expr)?;
                        info.active_data.push((
                            index,
                            ActiveData {
                                offset,
                                bytes: data.range.end.saturating_sub(data.data.len())
                                    ..data.range.end,
                            },
                        ));
                    }
                }
            }
            Payload::CustomSection(reader) => {
                let name = reader.name();
                if let Some(scoped) = name.strip_prefix("icp:") {
                    let Some(section) = scoped
                        .strip_prefix("public ")
                        .or_else(|| scoped.strip_prefix("private "))
                    else {
                        return Err(invalid(format!(
                            "custom section `{name}` starts with `icp:` but is neither \
                             `icp:public <name>` nor `icp:private <name>`"
                        )));
                    };
                    custom_sections = custom_sections.saturating_add(1);
                    custom_bytes = custom_bytes
                        .saturating_add(reader.data().len())
                        .saturating_add(section.len());
                    if section == EOP_SECTION {
                        info.enhanced_orthogonal_persistence = true;
                    }
                }
            }
            _ => {}
        }
    }
    if custom_sections > MAX_CUSTOM_SECTIONS {
        return Err(invalid(format!(
            "it has {custom_sections} `icp:` custom sections, above the limit of \
             {MAX_CUSTOM_SECTIONS}"
        )));
    }
    if custom_bytes > MAX_CUSTOM_SECTIONS_BYTES {
        return Err(invalid(format!(
            "its `icp:` custom sections hold {custom_bytes} bytes, above the limit of \
             {MAX_CUSTOM_SECTIONS_BYTES}"
        )));
    }
    check_exports(types, &mut info)?;
    Ok(info)
}

/// The function type `id` of a module the validator accepted. Without the GC proposal every
/// type is a function type, so `unwrap_func` cannot fail.
fn func_type<'t>(
    types: wasmparser::types::TypesRef<'t>,
    id: wasmparser::types::CoreTypeId,
) -> Result<&'t wasmparser::FuncType, UserError> {
    types
        .get(id)
        .map(wasmparser::SubType::unwrap_func)
        .ok_or_else(|| invalid("a function refers to a type the module does not define"))
}

/// The IC's rules on exports (see the module doc); fills in the methods.
fn check_exports(
    types: wasmparser::types::TypesRef<'_>,
    info: &mut ModuleInfo,
) -> Result<(), UserError> {
    let mut name_bytes = 0usize;
    for (name, kind, index) in &info.exports {
        if name == START_EXPORT || name == HEAP_EXPORT || name.starts_with(GLOBAL_EXPORT_PREFIX) {
            return Err(invalid(format!(
                "it exports `{name}`, a name the replica reserves"
            )));
        }
        let method = [
            ("canister_update ", MethodKind::Update),
            ("canister_query ", MethodKind::Query),
            ("canister_composite_query ", MethodKind::CompositeQuery),
        ]
        .into_iter()
        .find_map(|(prefix, kind)| name.strip_prefix(prefix).map(|method| (method, kind)));
        let system = SYSTEM_METHODS.contains(&name.as_str());
        if method.is_none() && !system {
            if name.starts_with("canister_") {
                return Err(invalid(format!(
                    "it exports `{name}`: the prefix `canister_` is reserved for \
                     `canister_update <name>`, `canister_query <name>`, \
                     `canister_composite_query <name>` and {}",
                    SYSTEM_METHODS.join(", ")
                )));
            }
            continue;
        }
        if *kind != wasmparser::ExternalKind::Func {
            return Err(invalid(format!("export `{name}` must be a function")));
        }
        let ty = func_type(types, types.core_function_at(*index))?;
        if !ty.params().is_empty() || !ty.results().is_empty() {
            return Err(invalid(format!(
                "export `{name}` has type {:?} -> {:?}; canister methods take no parameters and \
                 return no results",
                ty.params(),
                ty.results()
            )));
        }
        match method {
            Some((method, kind)) => {
                if info.methods.insert(method.to_string(), kind).is_some() {
                    return Err(invalid(format!(
                        "method `{method}` is exported more than once (as an update, query or \
                         composite query)"
                    )));
                }
                name_bytes = name_bytes.saturating_add(method.len());
            }
            None => {
                info.system_methods.insert(name.clone());
            }
        }
    }
    if info.methods.len() > MAX_EXPORTED_METHODS {
        return Err(invalid(format!(
            "it exports {} methods, above the limit of {MAX_EXPORTED_METHODS}",
            info.methods.len()
        )));
    }
    if name_bytes > MAX_SUM_EXPORTED_METHOD_NAME_BYTES {
        return Err(invalid(format!(
            "its exported methods' names total {name_bytes} bytes, above the limit of \
             {MAX_SUM_EXPORTED_METHOD_NAME_BYTES}"
        )));
    }
    Ok(())
}
