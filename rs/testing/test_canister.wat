;; The test canister (spec/test-canister.did) as a real WebAssembly module: the same methods,
;; replies and error codes as the native one (rs/execution/test_canister.rs), run by wasmtime.
;; `test_canister.wasm` beside it is this file compiled by the `wat` crate; the unit test
;; `testing::workload::tests::wasm_test_canister_is_its_source` checks that the two agree
;; (`UPDATE_TEST_CANISTER_WASM=1 cargo test --lib wasm_test_canister` rewrites the binary).
;;
;; Layout of memory 0 (32-bit, like the native canister's 4 GiB heap):
;;   [0, 64 KiB)       scratch, zero between messages: the argument's first 64 bytes at 0, the
;;                     reply's header at 64, short data (certified data, trap text) at 1024, a
;;                     32 KiB buffer for stable memory copies at 32768;
;;   [64 KiB, ...)     the heap of the interface: `write_heap(offset, ..)` writes at
;;                     64 KiB + offset, `memory_sizes` reports the memory's size less 64 KiB.
;; A WebAssembly canister cannot reply without memory to build the reply in, so the interface's
;; heap (empty after install, as the native canister's) starts one Wasm page in.
;;
;; Arguments are read in the encoding the `candid` crate writes for each method's types (the
;; only one the testing kit sends); anything else traps (CanisterCalledTrap, as the native
;; canister's decoding error). Blob bytes go from the argument straight to their place
;; (`msg_arg_data_copy`), and replies read the heap in place, so no message needs more scratch
;; than a header. The two exported mutable i64 globals are the canister's globals 0 and 1, as
;; the native canister's; the module has no other mutable global.
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $msg_reply))
  (import "ic0" "trap" (func $ic0_trap (param i32 i32)))
  (import "ic0" "stable64_size" (func $stable_size (result i64)))
  (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
  (import "ic0" "certified_data_set" (func $certified_data_set (param i32 i32)))

  (memory 1)
  (global $g0 (export "global_0") (mut i64) (i64.const 0))
  (global $g1 (export "global_1") (mut i64) (i64.const 0))

  (data $bad_arg "failed to decode the argument: the Wasm test canister reads the encoding the candid crate writes")
  (data $no_global "global does not exist: the test canister exports globals 0 and 1")
  (data $certified "certified data is at most 32 bytes")
  (data $no_memory "memory cannot grow that far")
  (data $too_long "the trap message is too long")

  ;; Traps (ic0.trap) with a message from a passive segment.
  (func $fail_bad_arg
    (memory.init $bad_arg (i32.const 1024) (i32.const 0) (i32.const 96))
    (call $ic0_trap (i32.const 1024) (i32.const 96)))
  (func $fail_no_global
    (memory.init $no_global (i32.const 1024) (i32.const 0) (i32.const 64))
    (call $ic0_trap (i32.const 1024) (i32.const 64)))
  (func $fail_certified
    (memory.init $certified (i32.const 1024) (i32.const 0) (i32.const 34))
    (call $ic0_trap (i32.const 1024) (i32.const 34)))
  (func $fail_no_memory
    (memory.init $no_memory (i32.const 1024) (i32.const 0) (i32.const 27))
    (call $ic0_trap (i32.const 1024) (i32.const 27)))
  (func $fail_too_long
    (memory.init $too_long (i32.const 1024) (i32.const 0) (i32.const 28))
    (call $ic0_trap (i32.const 1024) (i32.const 28)))

  ;; Clears the scratch page and copies the argument's first 64 bytes to 0; returns its size.
  (func $begin (result i32)
    (local $size i32)
    (memory.fill (i32.const 0) (i32.const 0) (i32.const 65536))
    (local.set $size (call $arg_size))
    (call $arg_copy (i32.const 0) (i32.const 0)
      (select (local.get $size) (i32.const 64) (i32.lt_u (local.get $size) (i32.const 64))))
    (local.get $size))

  ;; Clears the scratch page (so it is the same between messages) and replies with what was
  ;; appended.
  (func $finish
    (memory.fill (i32.const 0) (i32.const 0) (i32.const 65536))
    (call $msg_reply))

  ;; The low `n` bytes of an i64 set (`n` clamped to 0..=8).
  (func $mask (param $n i32) (result i64)
    (if (result i64) (i32.ge_s (local.get $n) (i32.const 8))
      (then (i64.const -1))
      (else
        (if (result i64) (i32.le_s (local.get $n) (i32.const 0))
          (then (i64.const 0))
          (else
            (i64.sub
              (i64.shl (i64.const 1) (i64.extend_i32_u (i32.shl (local.get $n) (i32.const 3))))
              (i64.const 1)))))))

  ;; Traps unless the argument (`size` bytes) has at least `min` bytes and starts with the `len`
  ;; (at most 16) bytes of `lo` then `hi`, little-endian: its Candid header.
  (func $expect (param $size i32) (param $min i32) (param $lo i64) (param $hi i64) (param $len i32)
    (if (i32.lt_u (local.get $size) (local.get $min)) (then (call $fail_bad_arg)))
    (if (i64.ne
          (i64.and (i64.xor (i64.load (i32.const 0)) (local.get $lo)) (call $mask (local.get $len)))
          (i64.const 0))
      (then (call $fail_bad_arg)))
    (if (i64.ne
          (i64.and (i64.xor (i64.load (i32.const 8)) (local.get $hi))
            (call $mask (i32.sub (local.get $len) (i32.const 8))))
          (i64.const 0))
      (then (call $fail_bad_arg))))

  ;; Traps unless the argument is exactly `size` bytes.
  (func $expect_size (param $size i32) (param $want i32)
    (if (i32.ne (local.get $size) (local.get $want)) (then (call $fail_bad_arg))))

  ;; The unsigned LEB128 number at `p` in the argument's first 64 bytes, and where it ends.
  (func $leb (param $p i32) (result i64 i32)
    (local $value i64) (local $shift i64) (local $byte i64)
    (loop $more
      (if (i32.ge_u (local.get $p) (i32.const 64)) (then (call $fail_bad_arg)))
      (if (i64.ge_u (local.get $shift) (i64.const 64)) (then (call $fail_bad_arg)))
      (local.set $byte (i64.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $value
        (i64.or (local.get $value)
          (i64.shl (i64.and (local.get $byte) (i64.const 0x7f)) (local.get $shift))))
      (local.set $shift (i64.add (local.get $shift) (i64.const 7)))
      (br_if $more (i64.ne (i64.and (local.get $byte) (i64.const 0x80)) (i64.const 0))))
    (local.get $value)
    (local.get $p))

  ;; Writes `value` as unsigned LEB128 at `p`; returns where it ends.
  (func $write_leb (param $p i32) (param $value i64) (result i32)
    (loop $more
      (if (i64.lt_u (local.get $value) (i64.const 0x80))
        (then
          (i64.store8 (local.get $p) (local.get $value))
          (return (i32.add (local.get $p) (i32.const 1)))))
      (i64.store8 (local.get $p) (i64.or (i64.and (local.get $value) (i64.const 0x7f)) (i64.const 0x80)))
      (local.set $value (i64.shr_u (local.get $value) (i64.const 7)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $more))
    (local.get $p))

  ;; A blob (`vec nat8`) whose length is at `p`: where its bytes start in the argument and how
  ;; many; it must end the argument (`size` bytes).
  (func $blob (param $size i32) (param $p i32) (result i32 i64)
    (local $len i64) (local $start i32)
    (call $leb (local.get $p))
    (local.set $start)
    (local.set $len)
    (if (i64.ne (i64.add (i64.extend_i32_u (local.get $start)) (local.get $len))
          (i64.extend_i32_u (local.get $size)))
      (then (call $fail_bad_arg)))
    (local.get $start)
    (local.get $len))

  ;; `offset + len`; traps (CanisterTrapped, as the native canister) if it overflows 64 bits.
  (func $end (param $offset i64) (param $len i64) (result i64)
    (local $end i64)
    (local.set $end (i64.add (local.get $offset) (local.get $len)))
    (if (i64.lt_u (local.get $end) (local.get $offset)) (then unreachable))
    (local.get $end))

  ;; The interface's heap size: the memory less the scratch page.
  (func $heap_size (result i64)
    (i64.sub (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)) (i64.const 65536)))

  (func $stable_bytes (result i64)
    (i64.shl (call $stable_size) (i64.const 16)))

  ;; Grows the heap in 64 KiB pages until it holds `end` bytes.
  (func $heap_fit (param $end i64)
    (local $have i64)
    (local.set $have (call $heap_size))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i64.gt_u (local.get $end) (i64.const 0xffff0000)) (then (call $fail_no_memory)))
        (if (i32.eq
              (memory.grow (i32.wrap_i64
                (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                  (i64.const 16))))
              (i32.const -1))
          (then (call $fail_no_memory))))))

  ;; Grows stable memory in 64 KiB pages until it holds `end` bytes.
  (func $stable_fit (param $end i64)
    (local $have i64)
    (local.set $have (call $stable_bytes))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i64.eq
              (call $stable_grow
                (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                  (i64.const 16)))
              (i64.const -1))
          (then (call $fail_no_memory))))))

  ;; The smaller of `left` and the 32 KiB buffer.
  (func $chunk (param $left i64) (result i64)
    (select (local.get $left) (i64.const 32768) (i64.lt_u (local.get $left) (i64.const 32768))))

  ;; Replies `()`: DIDL 00 00.
  (func $reply_unit
    (i64.store (i32.const 64) (i64.const 0x4c444944))
    (call $append (i32.const 64) (i32.const 6))
    (call $finish))

  ;; write_heap / write_stable : (offset : nat64, data : blob) -> ()
  ;; Header DIDL 01 6d 7b 02 78 00, the offset at 10, the blob's length at 18.
  (func $write (param $stable i32)
    (local $size i32) (local $offset i64) (local $start i32) (local $len i64) (local $end i64)
    (local $done i64) (local $n i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 19)
      (i64.const 0x027b6d014c444944) (i64.const 0x78) (i32.const 10))
    (local.set $offset (i64.load (i32.const 10)))
    (call $blob (local.get $size) (i32.const 18))
    (local.set $len)
    (local.set $start)
    (local.set $end (call $end (local.get $offset) (local.get $len)))
    (if (local.get $stable)
      (then
        (call $stable_fit (local.get $end))
        (block $copied
          (loop $copy
            (br_if $copied (i64.ge_u (local.get $done) (local.get $len)))
            (local.set $n (call $chunk (i64.sub (local.get $len) (local.get $done))))
            (call $arg_copy (i32.const 32768)
              (i32.add (local.get $start) (i32.wrap_i64 (local.get $done)))
              (i32.wrap_i64 (local.get $n)))
            (call $stable_write (i64.add (local.get $offset) (local.get $done))
              (i64.const 32768) (local.get $n))
            (local.set $done (i64.add (local.get $done) (local.get $n)))
            (br $copy))))
      (else
        (call $heap_fit (local.get $end))
        (call $arg_copy (i32.wrap_i64 (i64.add (local.get $offset) (i64.const 65536)))
          (local.get $start) (i32.wrap_i64 (local.get $len)))))
    (call $reply_unit))

  ;; read_heap / read_stable : (offset : nat64, len : nat64) -> (blob)
  ;; Header DIDL 00 02 78 78, the offset at 8, the length at 16; out of bounds: CanisterTrapped.
  (func $read (param $stable i32)
    (local $size i32) (local $offset i64) (local $len i64) (local $limit i64) (local $p i32)
    (local $done i64) (local $n i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 24)
      (i64.const 0x787802004c444944) (i64.const 0) (i32.const 8))
    (call $expect_size (local.get $size) (i32.const 24))
    (local.set $offset (i64.load (i32.const 8)))
    (local.set $len (i64.load (i32.const 16)))
    (local.set $limit
      (if (result i64) (local.get $stable)
        (then (call $stable_bytes))
        (else (call $heap_size))))
    (if (i64.gt_u (call $end (local.get $offset) (local.get $len)) (local.get $limit))
      (then unreachable))
    ;; DIDL 01 6d 7b 01 00, then the blob's length.
    (i64.store (i32.const 64) (i64.const 0x017b6d014c444944))
    (i32.store8 (i32.const 72) (i32.const 0))
    (local.set $p (call $write_leb (i32.const 73) (local.get $len)))
    (call $append (i32.const 64) (i32.sub (local.get $p) (i32.const 64)))
    (if (local.get $stable)
      (then
        (block $copied
          (loop $copy
            (br_if $copied (i64.ge_u (local.get $done) (local.get $len)))
            (local.set $n (call $chunk (i64.sub (local.get $len) (local.get $done))))
            (call $stable_read (i64.const 32768) (i64.add (local.get $offset) (local.get $done))
              (local.get $n))
            (call $append (i32.const 32768) (i32.wrap_i64 (local.get $n)))
            (local.set $done (i64.add (local.get $done) (local.get $n)))
            (br $copy))))
      (else
        (call $append (i32.wrap_i64 (i64.add (local.get $offset) (i64.const 65536)))
          (i32.wrap_i64 (local.get $len)))))
    (call $finish))

  ;; fill_heap / fill_stable : (offset : nat64, len : nat64, byte : nat8) -> ()
  ;; Header DIDL 00 03 78 78 7b, the offset at 9, the length at 17, the byte at 25.
  (func $fill (param $stable i32)
    (local $size i32) (local $offset i64) (local $len i64) (local $byte i32) (local $end i64)
    (local $done i64) (local $n i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 26)
      (i64.const 0x787803004c444944) (i64.const 0x7b) (i32.const 9))
    (call $expect_size (local.get $size) (i32.const 26))
    (local.set $offset (i64.load (i32.const 9)))
    (local.set $len (i64.load (i32.const 17)))
    (local.set $byte (i32.load8_u (i32.const 25)))
    (local.set $end (call $end (local.get $offset) (local.get $len)))
    (if (local.get $stable)
      (then
        (call $stable_fit (local.get $end))
        (memory.fill (i32.const 32768) (local.get $byte) (i32.const 32768))
        (block $filled
          (loop $copy
            (br_if $filled (i64.ge_u (local.get $done) (local.get $len)))
            (local.set $n (call $chunk (i64.sub (local.get $len) (local.get $done))))
            (call $stable_write (i64.add (local.get $offset) (local.get $done))
              (i64.const 32768) (local.get $n))
            (local.set $done (i64.add (local.get $done) (local.get $n)))
            (br $copy))))
      (else
        (call $heap_fit (local.get $end))
        (memory.fill (i32.wrap_i64 (i64.add (local.get $offset) (i64.const 65536)))
          (local.get $byte) (i32.wrap_i64 (local.get $len)))))
    (call $reply_unit))

  ;; memory_sizes : () -> (nat64, nat64)
  (func $memory_sizes
    (local $size i32)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 6) (i64.const 0x4c444944) (i64.const 0) (i32.const 6))
    (call $expect_size (local.get $size) (i32.const 6))
    ;; DIDL 00 02 78 78, then the two sizes.
    (i64.store (i32.const 64) (i64.const 0x787802004c444944))
    (i64.store (i32.const 72) (call $heap_size))
    (i64.store (i32.const 80) (call $stable_bytes))
    (call $append (i32.const 64) (i32.const 24))
    (call $finish))

  ;; set_certified_data : (blob) -> (); more than 32 bytes: CanisterCalledTrap.
  ;; Header DIDL 01 6d 7b 01 00, the blob's length at 9.
  (func $set_certified_data
    (local $size i32) (local $start i32) (local $len i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 10)
      (i64.const 0x017b6d014c444944) (i64.const 0) (i32.const 9))
    (call $blob (local.get $size) (i32.const 9))
    (local.set $len)
    (local.set $start)
    (if (i64.gt_u (local.get $len) (i64.const 32)) (then (call $fail_certified)))
    (call $arg_copy (i32.const 1024) (local.get $start) (i32.wrap_i64 (local.get $len)))
    (call $certified_data_set (i32.const 1024) (i32.wrap_i64 (local.get $len)))
    (call $reply_unit))

  ;; set_global : (index : nat32, value : int64) -> (); header DIDL 00 02 79 74.
  (func $set_global
    (local $size i32) (local $index i32) (local $value i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 20)
      (i64.const 0x747902004c444944) (i64.const 0) (i32.const 8))
    (call $expect_size (local.get $size) (i32.const 20))
    (local.set $index (i32.load (i32.const 8)))
    (local.set $value (i64.load (i32.const 12)))
    (if (i32.eqz (local.get $index))
      (then (global.set $g0 (local.get $value)))
      (else
        (if (i32.eq (local.get $index) (i32.const 1))
          (then (global.set $g1 (local.get $value)))
          (else (call $fail_no_global)))))
    (call $reply_unit))

  ;; get_global : (index : nat32) -> (int64); header DIDL 00 01 79.
  (func $get_global
    (local $size i32) (local $index i32) (local $value i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 11)
      (i64.const 0x7901004c444944) (i64.const 0) (i32.const 7))
    (call $expect_size (local.get $size) (i32.const 11))
    (local.set $index (i32.load (i32.const 7)))
    (if (i32.eqz (local.get $index))
      (then (local.set $value (global.get $g0)))
      (else
        (if (i32.eq (local.get $index) (i32.const 1))
          (then (local.set $value (global.get $g1)))
          (else (call $fail_no_global)))))
    ;; DIDL 00 01 74, then the value.
    (i64.store (i32.const 64) (i64.const 0x7401004c444944))
    (i64.store (i32.const 71) (local.get $value))
    (call $append (i32.const 64) (i32.const 15))
    (call $finish))

  ;; trap : (message : text) -> (); CanisterCalledTrap with the message, state unchanged.
  ;; Header DIDL 00 01 71, the text's length at 7.
  (func $trap
    (local $size i32) (local $start i32) (local $len i64)
    (local.set $size (call $begin))
    (call $expect (local.get $size) (i32.const 8)
      (i64.const 0x7101004c444944) (i64.const 0) (i32.const 7))
    (call $blob (local.get $size) (i32.const 7))
    (local.set $len)
    (local.set $start)
    (if (i64.gt_u (local.get $len) (i64.const 30000)) (then (call $fail_too_long)))
    (call $arg_copy (i32.const 1024) (local.get $start) (i32.wrap_i64 (local.get $len)))
    (call $ic0_trap (i32.const 1024) (i32.wrap_i64 (local.get $len))))

  (func (export "canister_update write_heap") (call $write (i32.const 0)))
  (func (export "canister_update write_stable") (call $write (i32.const 1)))
  (func (export "canister_update read_heap") (call $read (i32.const 0)))
  (func (export "canister_update read_stable") (call $read (i32.const 1)))
  (func (export "canister_update fill_heap") (call $fill (i32.const 0)))
  (func (export "canister_update fill_stable") (call $fill (i32.const 1)))
  (func (export "canister_update memory_sizes") (call $memory_sizes))
  (func (export "canister_update set_certified_data") (call $set_certified_data))
  (func (export "canister_update set_global") (call $set_global))
  (func (export "canister_update get_global") (call $get_global))
  (func (export "canister_update trap") (call $trap))
)
