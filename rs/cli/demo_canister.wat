;; The demo's canister: records in the heap and in stable memory, written by the canister itself
;; (a message carries 2 MiB at most, so the data is generated where it lives). Compiled into
;; demo_canister.wasm beside this file; a unit test of demo.rs checks that the two agree.
;;
;; Arguments and replies are little-endian u64s (the demo is its only client). Memory: the
;; first Wasm page is the canister's scratch (arguments at 0, a staging buffer at 32 KiB); the
;; heap's records start at 64 KiB. Record word at offset `a` with seed `s`:
;;   x = (a + s * 0x9E3779B97F4A7C15) * 0xBF58476D1CE4E5B9;  x ^ (x >> 31)
;; (`record_word` in demo.rs computes the same.)
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_size" (func $stable_size (result i64)))
  (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
  (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
  (memory 1)
  (data (i32.const 4000) "out of memory")
  ;; Messages that wrote records (a mutable global the module does not export: the
  ;; instrumentation exports it, so a snapshot captures it).
  (global $fills (mut i64) (i64.const 0))

  (func $arg (param $i i32) (result i64) (i64.load (i32.shl (local.get $i) (i32.const 3))))
  (func $load_args (call $arg_copy (i32.const 0) (i32.const 0) (call $arg_size)))
  (func $record (param $a i64) (param $seed i64) (result i64)
    (local $x i64)
    (local.set $x (i64.mul
      (i64.add (local.get $a) (i64.mul (local.get $seed) (i64.const 0x9E3779B97F4A7C15)))
      (i64.const 0xBF58476D1CE4E5B9)))
    (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 31))))
  (func $reply_u64 (param $v i64)
    (i64.store (i32.const 0) (local.get $v))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
  ;; Stable memory of at least `end` bytes.
  (func $stable_reserve (param $end i64)
    (local $pages i64)
    (local.set $pages (i64.shr_u (i64.add (local.get $end) (i64.const 65535)) (i64.const 16)))
    (if (i64.gt_u (local.get $pages) (call $stable_size))
      (then
        (if (i64.eq (call $stable_grow (i64.sub (local.get $pages) (call $stable_size)))
                    (i64.const -1))
          (then (call $trap (i32.const 4000) (i32.const 13)))))))

  ;; (offset, len, seed): records into heap[64 KiB + offset, + len), the heap grown to hold them.
  (func (export "canister_update fill_heap")
    (local $a i64) (local $end i64) (local $pages i32) (local $seed i64)
    (call $load_args)
    (local.set $a (call $arg (i32.const 0)))
    (local.set $end (i64.add (local.get $a) (call $arg (i32.const 1))))
    (local.set $seed (call $arg (i32.const 2)))
    (local.set $pages (i32.wrap_i64 (i64.shr_u
      (i64.add (local.get $end) (i64.const 131071)) (i64.const 16))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (call $trap (i32.const 4000) (i32.const 13))))))
    (block $done
      (loop $words
        (br_if $done (i64.ge_u (local.get $a) (local.get $end)))
        (i64.store offset=65536 (i32.wrap_i64 (local.get $a))
          (call $record (local.get $a) (local.get $seed)))
        (local.set $a (i64.add (local.get $a) (i64.const 8)))
        (br $words)))
    (global.set $fills (i64.add (global.get $fills) (i64.const 1)))
    (call $reply_u64 (global.get $fills)))

  ;; (offset, len, seed): records into stable[offset, + len), 32 KiB at a time.
  (func (export "canister_update fill_stable")
    (local $a i64) (local $end i64) (local $seed i64) (local $chunk i64) (local $w i64)
    (call $load_args)
    (local.set $a (call $arg (i32.const 0)))
    (local.set $end (i64.add (local.get $a) (call $arg (i32.const 1))))
    (local.set $seed (call $arg (i32.const 2)))
    (call $stable_reserve (local.get $end))
    (block $done
      (loop $chunks
        (br_if $done (i64.ge_u (local.get $a) (local.get $end)))
        (local.set $chunk (i64.sub (local.get $end) (local.get $a)))
        (if (i64.gt_u (local.get $chunk) (i64.const 32768))
          (then (local.set $chunk (i64.const 32768))))
        (local.set $w (i64.const 0))
        (block $filled
          (loop $words
            (br_if $filled (i64.ge_u (local.get $w) (local.get $chunk)))
            (i64.store offset=32768 (i32.wrap_i64 (local.get $w))
              (call $record (i64.add (local.get $a) (local.get $w)) (local.get $seed)))
            (local.set $w (i64.add (local.get $w) (i64.const 8)))
            (br $words)))
        (call $stable_write (local.get $a) (i64.const 32768) (local.get $chunk))
        (local.set $a (i64.add (local.get $a) (local.get $chunk)))
        (br $chunks)))
    (global.set $fills (i64.add (global.get $fills) (i64.const 1)))
    (call $reply_u64 (global.get $fills)))

  ;; (offset, len, byte): `byte` over stable[offset, + len), 32 KiB at a time.
  (func (export "canister_update scribble_stable")
    (local $a i64) (local $end i64) (local $chunk i64)
    (call $load_args)
    (local.set $a (call $arg (i32.const 0)))
    (local.set $end (i64.add (local.get $a) (call $arg (i32.const 1))))
    (call $stable_reserve (local.get $end))
    (memory.fill (i32.const 32768) (i32.wrap_i64 (call $arg (i32.const 2))) (i32.const 32768))
    (block $done
      (loop $chunks
        (br_if $done (i64.ge_u (local.get $a) (local.get $end)))
        (local.set $chunk (i64.sub (local.get $end) (local.get $a)))
        (if (i64.gt_u (local.get $chunk) (i64.const 32768))
          (then (local.set $chunk (i64.const 32768))))
        (call $stable_write (local.get $a) (i64.const 32768) (local.get $chunk))
        (local.set $a (i64.add (local.get $a) (local.get $chunk)))
        (br $chunks)))
    (call $reply))

  ;; (offset, len): heap[64 KiB + offset, + len).
  (func (export "canister_query read_heap")
    (call $load_args)
    (call $append
      (i32.add (i32.const 65536) (i32.wrap_i64 (call $arg (i32.const 0))))
      (i32.wrap_i64 (call $arg (i32.const 1))))
    (call $reply))

  ;; (offset, len <= 32 KiB): stable[offset, + len).
  (func (export "canister_query read_stable")
    (call $load_args)
    (call $stable_read (i64.const 32768) (call $arg (i32.const 0)) (call $arg (i32.const 1)))
    (call $append (i32.const 32768) (i32.wrap_i64 (call $arg (i32.const 1))))
    (call $reply))

  ;; The argument becomes the certified data.
  (func (export "canister_update certify")
    (call $load_args)
    (call $certify (i32.const 0) (call $arg_size))
    (call $reply))

  (func (export "canister_query fills") (call $reply_u64 (global.get $fills)))

  ;; (heap bytes, stable bytes).
  (func (export "canister_query memory_sizes")
    (i64.store (i32.const 0) (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (i64.store (i32.const 8) (i64.shl (call $stable_size) (i64.const 16)))
    (call $append (i32.const 0) (i32.const 16))
    (call $reply))
)
