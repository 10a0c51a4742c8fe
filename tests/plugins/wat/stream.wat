;; stream.wat: proxy-wasm ABI 0.2.1 filter exercising body callbacks for every piece of a
;; body it lets go on (not only until its first Continue), trailers, and a local reply sent
;; part-way through a request body.
;;
;; on_request_body(ctx, size, eos) / on_response_body (buffers 0 / 1):
;;   * size == 0 -> returns 0 (Continue);
;;   * a request piece whose first byte is '!' -> proxy_send_local_response(403, details
;;     "refused mid-body", no body, no headers), returns 1 (Pause);
;;   * else wraps the piece: "<" inserted at 0 (proxy_set_buffer_bytes(buf, 0, 0, "<")) and ">"
;;     at its end (start = size + 1, size 0), so "ab" becomes "<ab>"; returns 0 (Continue).
;; on_request_trailers(ctx, count) (map 1):
;;   * if trailer `x-in-trailer` exists, ADD trailer `x-seen-trailer` with its value;
;;   * REMOVE trailer `x-drop-trailer`; returns 0 (Continue).
;; on_response_trailers(ctx, count) (map 3): ADD trailer `x-response-trailer: seen`; returns 0.
;;
;; Memory layout: 1024/1028 return slots; 2048.. constant strings; 32768.. bump heap.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "<>")                   ;; 2048 "<", 2049 ">"
  (data (i32.const 2064) "x-in-trailer")         ;; 2064, 12 bytes
  (data (i32.const 2080) "x-seen-trailer")       ;; 2080, 14 bytes
  (data (i32.const 2096) "x-drop-trailer")       ;; 2096, 14 bytes
  (data (i32.const 2112) "x-response-trailer")   ;; 2112, 18 bytes
  (data (i32.const 2144) "seen")                 ;; 2144, 4 bytes
  (data (i32.const 2160) "refused mid-body")     ;; 2160, 16 bytes

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

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func $wrap (param $buf i32) (param $size i32)
    (drop (call $set_buffer_bytes (local.get $buf) (i32.const 0) (i32.const 0) (i32.const 2048) (i32.const 1)))
    (drop (call $set_buffer_bytes (local.get $buf) (i32.add (local.get $size) (i32.const 1)) (i32.const 0)
      (i32.const 2049) (i32.const 1))))

  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (if (i32.eqz (call $get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 1024) (i32.const 1028)))
      (then
        (if (i32.eq (i32.load8_u (i32.load (i32.const 1024))) (i32.const 33))   ;; '!'
          (then
            (drop (call $send_local_response (i32.const 403) (i32.const 2160) (i32.const 16)
              (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
            (return (i32.const 1))))))
    (call $wrap (i32.const 0) (local.get $size))
    (i32.const 0))

  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (call $wrap (i32.const 1) (local.get $size))
    (i32.const 0))

  (func (export "proxy_on_request_trailers") (param $ctx i32) (param $count i32) (result i32)
    (if (i32.eqz (call $get_header (i32.const 1) (i32.const 2064) (i32.const 12) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $add_header (i32.const 1) (i32.const 2080) (i32.const 14)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (drop (call $remove_header (i32.const 1) (i32.const 2096) (i32.const 14)))
    (i32.const 0))

  (func (export "proxy_on_response_trailers") (param $ctx i32) (param $count i32) (result i32)
    (drop (call $add_header (i32.const 3) (i32.const 2112) (i32.const 18) (i32.const 2144) (i32.const 4)))
    (i32.const 0))
)
