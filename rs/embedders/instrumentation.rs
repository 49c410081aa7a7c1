//! Instrumentation: the module the engine compiles, derived from the installed one as the
//! replica derives it, so that a fresh instance per message sees the canister's state and
//! nothing else:
//!
//! 1. The start function is no longer a start function but the export `canister_start`, run
//!    once, at install (a start function would run again at every instantiation).
//! 2. Active data segments become passive and empty: the engine applies their bytes once, at
//!    install, into the heap's page memory. Each keeps its index, so `memory.init` and
//!    `data.drop` still name the same segments (and, as after instantiation, find them empty).
//! 3. Mutable globals that are not exported are exported as `__persistent_mutable_global_N`
//!    (N: the global's index), so they persist between messages. The canister's globals, in a
//!    snapshot too, are the instrumented module's exported globals in export order.
//! 4. Memory 0 is also exported as `__canister_heap`, whatever the module calls it (Motoko:
//!    `mem`), so the engine finds the heap.
//!
//! Every other section is copied byte for byte: function indices do not move, so code is
//! untouched.

use ic_error_types::{ErrorCode, UserError};
use wasm_encoder::{DataSection, ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

use super::validation::{GLOBAL_EXPORT_PREFIX, HEAP_EXPORT, ModuleInfo, START_EXPORT};

/// The instrumented module's bytes and the names of the globals it exports, in export order:
/// the canister's globals.
pub struct Instrumented {
    pub wasm: Vec<u8>,
    pub exported_globals: Vec<String>,
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

fn failed(err: impl std::fmt::Display) -> UserError {
    UserError::new(
        ErrorCode::CanisterInvalidWasm,
        format!("Wasm module is invalid: it could not be instrumented: {err}"),
    )
}

/// The exports of the instrumented module (see the module doc), and its exported globals.
fn exports(info: &ModuleInfo) -> (ExportSection, Vec<String>) {
    let mut section = ExportSection::new();
    let mut globals = Vec::new();
    let mut exported = Vec::new();
    for (name, kind, index) in &info.exports {
        section.export(name, export_kind(*kind), *index);
        if *kind == ExternalKind::Global {
            globals.push(name.clone());
            exported.push(*index);
        }
    }
    if let Some(start) = info.start {
        section.export(START_EXPORT, ExportKind::Func, start);
    }
    if info.memory64.is_some() {
        section.export(HEAP_EXPORT, ExportKind::Memory, 0);
    }
    for (index, global) in (0u32..).zip(&info.globals) {
        if global.mutable && !exported.contains(&index) {
            let name = format!("{GLOBAL_EXPORT_PREFIX}{index}");
            section.export(&name, ExportKind::Global, index);
            globals.push(name);
        }
    }
    (section, globals)
}

/// Instruments `wasm`, a module that [`super::validation::validate_module`] accepted with
/// `info`.
pub fn instrument(wasm: &[u8], info: &ModuleInfo) -> Result<Instrumented, UserError> {
    let (export_section, exported_globals) = exports(info);
    let mut module = Module::new();
    let mut exports_written = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(failed)?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // The export section comes before start (8), element (9), data count (12), code (10)
        // and data (11): insert it there if the module had none.
        if !exports_written && matches!(id, 8..=12) {
            module.section(&export_section);
            exports_written = true;
        }
        match payload {
            Payload::ExportSection(_) => {
                if !exports_written {
                    module.section(&export_section);
                    exports_written = true;
                }
            }
            Payload::StartSection { .. } => {}
            Payload::DataSection(reader) => {
                let mut data = DataSection::new();
                for segment in reader {
                    let segment = segment.map_err(failed)?;
                    match segment.kind {
                        wasmparser::DataKind::Passive => data.passive(segment.data.iter().copied()),
                        wasmparser::DataKind::Active { .. } => data.passive([]),
                    };
                }
                module.section(&data);
            }
            _ => {
                let data = wasm
                    .get(range)
                    .ok_or_else(|| failed("a section is out of bounds"))?;
                module.section(&RawSection { id, data });
            }
        }
    }
    if !exports_written {
        module.section(&export_section);
    }
    Ok(Instrumented {
        wasm: module.finish(),
        exported_globals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedders::validation::validate_module;

    /// The instrumented module is valid, keeps every original export, exports the start
    /// function, the heap and the hidden mutable globals (not the immutable one), and its data
    /// segments are all passive, the active ones empty, at the same indices.
    #[test]
    fn instrumented_module_exports_start_heap_and_hidden_globals() {
        let wasm = wat::parse_str(
            r#"(module
              (memory (export "mem") 1)
              (global $hidden (mut i64) (i64.const 7))
              (global $fixed i32 (i32.const 1))
              (global $shown (export "shown") (mut i32) (i32.const 2))
              (func $start)
              (start $start)
              (func (export "canister_update m") (global.set $hidden (i64.const 8)))
              (data (i32.const 16) "active")
              (data "passive"))"#,
        )
        .unwrap();
        let info = validate_module(&wasm).unwrap();
        assert_eq!(info.active_data.len(), 1);
        assert_eq!(info.active_data[0].0, 0);
        assert_eq!(&wasm[info.active_data[0].1.bytes.clone()], b"active");
        let instrumented = instrument(&wasm, &info).unwrap();
        wasmparser::Validator::new_with_features(crate::embedders::validation::wasm_features())
            .validate_all(&instrumented.wasm)
            .unwrap();
        assert_eq!(
            instrumented.exported_globals,
            ["shown", "__persistent_mutable_global_0"]
        );
        let mut exports = Vec::new();
        let mut data = Vec::new();
        for payload in Parser::new(0).parse_all(&instrumented.wasm) {
            match payload.unwrap() {
                Payload::StartSection { .. } => panic!("the start section must be gone"),
                Payload::ExportSection(reader) => {
                    exports = reader
                        .into_iter()
                        .map(|e| e.unwrap().name.to_string())
                        .collect();
                }
                Payload::DataSection(reader) => {
                    for segment in reader {
                        let segment = segment.unwrap();
                        assert!(matches!(segment.kind, wasmparser::DataKind::Passive));
                        data.push(segment.data.to_vec());
                    }
                }
                _ => {}
            }
        }
        assert_eq!(
            exports,
            [
                "mem",
                "shown",
                "canister_update m",
                START_EXPORT,
                HEAP_EXPORT,
                "__persistent_mutable_global_0"
            ]
        );
        assert_eq!(data, [b"".to_vec(), b"passive".to_vec()]);
    }

    /// A module without an export section gets one in the right place.
    #[test]
    fn a_module_without_exports_gets_an_export_section() {
        let wasm = wat::parse_str(
            r#"(module (memory 1) (global (mut i32) (i32.const 0)) (func $s) (start $s)
               (data (i32.const 0) "x"))"#,
        )
        .unwrap();
        let info = validate_module(&wasm).unwrap();
        let instrumented = instrument(&wasm, &info).unwrap();
        wasmparser::Validator::new()
            .validate_all(&instrumented.wasm)
            .unwrap();
        assert_eq!(
            instrumented.exported_globals,
            ["__persistent_mutable_global_0"]
        );
    }
}
