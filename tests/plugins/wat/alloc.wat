;; alloc.wat: proxy-wasm ABI 0.2.1 filter that grows its linear memory on demand, to exercise
;; the host's memory cap.
;;
;; on_request_headers:
;;   * request header `x-grow-pages` absent -> nothing happens; returns 0 (Continue);
;;   * otherwise parses its value as decimal (leading digits; no digits = 0) and executes
;;     `memory.grow` by that many 64 KiB pages; if memory.grow returns -1 (refused) ->
;;     executes `unreachable` (a trap); else adds request header `x-grew: yes` and returns 0.
;; The memory starts at 1 page and declares no maximum.
;;
;; Memory layout: 1024/1028 return slots; 2048.. constant strings; 32768.. heap of the bump
;; allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "x-grow-pages")   ;; 2048, 12 bytes
  (data (i32.const 2064) "x-grew")         ;; 2064, 6 bytes
  (data (i32.const 2072) "yes")            ;; 2072, 3 bytes

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
  ;; Parses the leading decimal digits of ($p, $len) as an unsigned number (stops at the
  ;; first non-digit; no digits gives 0).
  (func $atou (param $p i32) (param $len i32) (result i32)
    (local $v i32) (local $c i32) (local $end i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $c) (i32.const 9)))
        (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10)) (local.get $c)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $v))

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (call $get_header (i32.const 0) (i32.const 2048) (i32.const 12) (i32.const 1024) (i32.const 1028))
      (then (return (i32.const 0))))
    (if (i32.eq
          (memory.grow (call $atou (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))
          (i32.const -1))
      (then (unreachable)))
    (drop (call $add_header (i32.const 0) (i32.const 2064) (i32.const 6) (i32.const 2072) (i32.const 3)))
    (i32.const 0))
)
