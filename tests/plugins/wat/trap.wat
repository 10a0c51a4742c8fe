;; trap.wat: proxy-wasm ABI 0.2.1 filter that traps on demand, to exercise the host's handling
;; of a crashed instance (and its replacement by a fresh one).
;;
;; on_request_headers: increments the global `served` (per instance, starts at 0) FIRST; then
;;   * request header `x-trap` present -> executes `unreachable` (a trap);
;;   * otherwise adds request header `x-served` = served in decimal and returns 0 (Continue).
;; So on a fresh instance the first request gets `x-served: 1`; a trapping request also
;; consumes a number; after the instance is replaced the count restarts at 1.
;;
;; Memory layout: 1024/1028 return slots; 2048.. constant strings; 4096.. decimal scratch;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "x-trap")     ;; 2048, 6 bytes
  (data (i32.const 2056) "x-served")   ;; 2056, 8 bytes

  ;; Number of on_request_headers calls seen by this instance.
  (global $served (mut i32) (i32.const 0))

  ;; ---- ABI marker and allocator -------------------------------------------------------------
  (func (export "proxy_abi_version_0_2_1"))

  ;; Bump allocator: 8-aligned blocks from 32768 up, growing memory as needed; 0 on failure.
  (global $heap (mut i32) (i32.const 32768))
  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $size))))
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000)) (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.wrap_i64 (i64.shr_u
                (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  ;; ---- helpers -------------------------------------------------------------------------------
  ;; Writes the unsigned $v as decimal ASCII at $dst; returns the number of bytes written.
  (func $utoa (param $v i32) (param $dst i32) (result i32)
    (local $n i32) (local $t i32) (local $i i32)
    (local.set $n (i32.const 1))
    (local.set $t (local.get $v))
    (block $counted
      (loop $count
        (br_if $counted (i32.lt_u (local.get $t) (i32.const 10)))
        (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $count)))
    (local.set $i (local.get $n))
    (local.set $t (local.get $v))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $t) (i32.const 10))))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $write (local.get $i)))
    (local.get $n))

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (global.set $served (i32.add (global.get $served) (i32.const 1)))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 2048) (i32.const 6) (i32.const 1024) (i32.const 1028)))
      (then (unreachable)))
    (drop (call $add_header (i32.const 0) (i32.const 2056) (i32.const 8)
      (i32.const 4096) (call $utoa (global.get $served) (i32.const 4096))))
    (i32.const 0))
)
