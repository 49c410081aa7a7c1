;; The canister the end-to-end script installs with `icp canister install --wasm`: a counter
;; on the System API only (`inc`, an update, and `read`, a query; both reply the count as a
;; Candid `nat`), with its Candid interface as public metadata so that `icp canister call`
;; can encode arguments and decode replies. `counter.wasm` is this file compiled; the test
;; `the_e2e_counter_wasm_is_its_wat_compiled` in tests/serve_input.rs keeps them equal.
(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  ;; The reply's Candid header: magic, no types, one value of type nat (0x7d).
  (data (i32.const 0) "DIDL\00\01\7d")
  ;; The count is the i64 at address 64; the reply is built at 0.., its LEB128 from 7.
  (func $reply_count (local $value i64) (local $end i32)
    (local.set $value (i64.load (i32.const 64)))
    (local.set $end (i32.const 7))
    (block $done
      (loop $next
        (if (i64.lt_u (local.get $value) (i64.const 128))
          (then
            (i32.store8 (local.get $end) (i32.wrap_i64 (local.get $value)))
            (local.set $end (i32.add (local.get $end) (i32.const 1)))
            (br $done)))
        (i32.store8 (local.get $end)
          (i32.or (i32.wrap_i64 (i64.and (local.get $value) (i64.const 127))) (i32.const 128)))
        (local.set $value (i64.shr_u (local.get $value) (i64.const 7)))
        (local.set $end (i32.add (local.get $end) (i32.const 1)))
        (br $next)))
    (call $append (i32.const 0) (local.get $end))
    (call $reply))
  (func (export "canister_update inc")
    (i64.store (i32.const 64) (i64.add (i64.load (i32.const 64)) (i64.const 1)))
    (call $reply_count))
  (func (export "canister_query read")
    (call $reply_count))
  (@custom "icp:public candid:service" "service : {\n  inc : () -> (nat);\n  read : () -> (nat) query;\n}\n")
  (@custom "icp:private e2e:secret" "only controllers read this")
)
