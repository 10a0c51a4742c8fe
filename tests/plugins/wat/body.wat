;; body.wat: proxy-wasm ABI 0.2.1 filter exercising body buffering and rewriting
;; (proxy_get_buffer_bytes / proxy_set_buffer_bytes on buffers 0 and 1).
;;
;; on_request_body(ctx, body_size, eos):
;;   * eos == 0 -> returns 1 (Pause: the host keeps buffering);
;;   * at eos: reads the whole body with proxy_get_buffer_bytes(0, 0, body_size) (skipped when
;;     body_size is 0: the body is then empty; if the read fails the body is left unchanged and
;;     0 is returned), then replaces it whole with proxy_set_buffer_bytes(0, 0, body_size,
;;     "[" + body + "]") (so "abc" becomes "[abc]" and an empty body "[]"); returns 0 (Continue).
;; on_response_body(ctx, body_size, eos):
;;   * eos == 0 -> returns 1 (Pause);
;;   * at eos: appends "\n-- filtered" (newline, then "-- filtered": 12 bytes) with
;;     proxy_set_buffer_bytes(1, start = body_size, size = 0, data); returns 0 (Continue).
;; No header callbacks: the host must fix up Content-Length itself.
;;
;; Memory layout: 1024/1028 return slots; 2048.. constant strings; 32768.. heap of the bump
;; allocator (also used for the bracketed copy of the request body).
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "\n-- filtered")   ;; 2048, 12 bytes (LF "-- filtered")

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
  ;; Copies $len bytes from $src to $dst; returns $dst + $len.
  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (local.get $dst) (local.get $i))
          (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.add (local.get $dst) (local.get $len)))

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (local $src i32) (local $len i32) (local $dst i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (if (call $get_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size) (i32.const 1024) (i32.const 1028))
          (then (return (i32.const 0))))
        (local.set $src (i32.load (i32.const 1024)))
        (local.set $len (i32.load (i32.const 1028)))))
    ;; "[" body "]"
    (local.set $dst (call $alloc (i32.add (local.get $len) (i32.const 2))))
    (if (i32.eqz (local.get $dst)) (then (return (i32.const 0))))
    (i32.store8 (local.get $dst) (i32.const 91))                                   ;; '['
    (i32.store8 (call $copy (i32.add (local.get $dst) (i32.const 1)) (local.get $src) (local.get $len))
      (i32.const 93))                                                                 ;; ']'
    (drop (call $set_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size)
      (local.get $dst) (i32.add (local.get $len) (i32.const 2))))
    (i32.const 0))

  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $set_buffer_bytes (i32.const 1) (local.get $size) (i32.const 0) (i32.const 2048) (i32.const 12)))
    (i32.const 0))
)
