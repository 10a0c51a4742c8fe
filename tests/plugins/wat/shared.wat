;; shared.wat: proxy-wasm ABI 0.2.1 filter exercising proxy_get_shared_data /
;; proxy_set_shared_data with compare-and-swap.
;;
;; on_request_headers:
;;   * `:path` exactly `/read` -> reads shared key `count` (NOT_FOUND counts as 0) and sends
;;     proxy_send_local_response(200, details "", body = the value in decimal (e.g. "3"),
;;     no headers, grpc_status -1); returns 1 (Pause). Nothing is incremented.
;;   * otherwise increments shared key `count` (the value is decimal ASCII text) with a CAS
;;     loop:
;;       get_shared_data("count") -> NOT_FOUND (1): value = 0, cas = 0;
;;                                   OK (0): value = the decimal text parsed, cas = returned cas;
;;                                   any other status: give up (no header);
;;       set_shared_data("count", value + 1 in decimal, cas) -> CAS_MISMATCH (8): go round
;;       again (at most 1000 tries, then give up with no header); OK: add request header
;;       `x-count: <value + 1>` (e.g. the first request ever gets `x-count: 1`); any other
;;       status: no header.
;;     Returns 0 (Continue).
;;
;; Memory layout: 1024/1028/1032 return slots (value pointer, size, cas); 2040 empty string;
;; 2048.. constant strings; 4096.. decimal scratch; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) ":path")     ;; 2048, 5 bytes
  (data (i32.const 2056) "/read")     ;; 2056, 5 bytes
  (data (i32.const 2064) "count")     ;; 2064, 5 bytes (shared data key)
  (data (i32.const 2072) "x-count")   ;; 2072, 7 bytes

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
  ;; 1 if the $alen bytes at $a equal the $blen bytes at $b, else 0.
  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $alen)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

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
    (local $status i32) (local $value i32) (local $cas i32) (local $len i32) (local $tries i32)
    ;; /read -> 200 with the current value, no increment
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 2048) (i32.const 5) (i32.const 1024) (i32.const 1028)))
      (then
        (if (call $eq (i32.load (i32.const 1024)) (i32.load (i32.const 1028)) (i32.const 2056) (i32.const 5))
          (then
            (if (i32.eqz (call $get_shared_data (i32.const 2064) (i32.const 5) (i32.const 1024) (i32.const 1028) (i32.const 1032)))
              (then (local.set $value (call $atou (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
            (local.set $len (call $utoa (local.get $value) (i32.const 4096)))
            (drop (call $send_local_response
              (i32.const 200)
              (i32.const 2040) (i32.const 0)       ;; details ""
              (i32.const 4096) (local.get $len)    ;; body: the value
              (i32.const 2040) (i32.const 0)       ;; no headers
              (i32.const -1)))
            (return (i32.const 1))))))
    ;; CAS loop: count = count + 1
    (loop $retry
      (local.set $status (call $get_shared_data (i32.const 2064) (i32.const 5) (i32.const 1024) (i32.const 1028) (i32.const 1032)))
      (if (i32.eq (local.get $status) (i32.const 1))
        (then
          (local.set $value (i32.const 0))
          (local.set $cas (i32.const 0)))
        (else
          (if (local.get $status) (then (return (i32.const 0))))
          (local.set $value (call $atou (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))
          (local.set $cas (i32.load (i32.const 1032)))))
      (local.set $len (call $utoa (i32.add (local.get $value) (i32.const 1)) (i32.const 4096)))
      (local.set $status (call $set_shared_data (i32.const 2064) (i32.const 5) (i32.const 4096) (local.get $len) (local.get $cas)))
      (if (i32.eq (local.get $status) (i32.const 8))
        (then
          (local.set $tries (i32.add (local.get $tries) (i32.const 1)))
          (br_if $retry (i32.lt_u (local.get $tries) (i32.const 1000)))
          (return (i32.const 0)))))
    (if (i32.eqz (local.get $status))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 2072) (i32.const 7) (i32.const 4096) (local.get $len)))))
    (i32.const 0))
)
