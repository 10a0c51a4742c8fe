;; local_reply.wat: proxy-wasm ABI 0.2.1 filter exercising proxy_send_local_response.
;;
;; on_request_headers, first match wins:
;;   1. `:path` is exactly `/teapot` (byte-for-byte; `/teapot?x` does not match) ->
;;      proxy_send_local_response(418, details "", body "short and stout",
;;        headers {"content-type": "text/plain"}, grpc_status -1) and return 1 (Pause);
;;   2. request header `x-demo-tenant` absent (the get returns any non-OK status) ->
;;      proxy_send_local_response(403, details "no tenant", empty body (size 0),
;;        no headers (size 0), grpc_status -1) and return 1 (Pause);
;;   3. otherwise add request header `x-tenant-checked: yes` and return 0 (Continue).
;; Empty values are passed as (pointer 2040, size 0), never as a null pointer.
;;
;; Memory layout: 1024/1028 return slots; 2040 empty string; 2048.. constant strings;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) ":path")              ;; 2048, 5 bytes
  (data (i32.const 2056) "/teapot")            ;; 2056, 7 bytes
  (data (i32.const 2064) "short and stout")    ;; 2064, 15 bytes
  ;; 2080, 36 bytes: the serialized map {"content-type": "text/plain"}:
  ;;   u32 count = 1; (u32 key len, u32 value len) = (12, 10);
  ;;   "content-type" NUL "text/plain" NUL   (4 + 8 + 24 = 36)
  (data (i32.const 2080)
    "\01\00\00\00"
    "\0c\00\00\00" "\0a\00\00\00"
    "content-type\00" "text/plain\00")
  (data (i32.const 2120) "x-demo-tenant")      ;; 2120, 13 bytes
  (data (i32.const 2136) "no tenant")          ;; 2136, 9 bytes
  (data (i32.const 2152) "x-tenant-checked")   ;; 2152, 16 bytes
  (data (i32.const 2176) "yes")                ;; 2176, 3 bytes

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

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; 1. :path == "/teapot" -> 418
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 2048) (i32.const 5) (i32.const 1024) (i32.const 1028)))
      (then
        (if (call $eq (i32.load (i32.const 1024)) (i32.load (i32.const 1028)) (i32.const 2056) (i32.const 7))
          (then
            (drop (call $send_local_response
              (i32.const 418)
              (i32.const 2040) (i32.const 0)     ;; details ""
              (i32.const 2064) (i32.const 15)    ;; body "short and stout"
              (i32.const 2080) (i32.const 36)    ;; headers {content-type: text/plain}
              (i32.const -1)))                   ;; grpc_status 0xffffffff
            (return (i32.const 1))))))
    ;; 2. no x-demo-tenant -> 403
    (if (call $get_header (i32.const 0) (i32.const 2120) (i32.const 13) (i32.const 1024) (i32.const 1028))
      (then
        (drop (call $send_local_response
          (i32.const 403)
          (i32.const 2136) (i32.const 9)         ;; details "no tenant"
          (i32.const 2040) (i32.const 0)         ;; empty body
          (i32.const 2040) (i32.const 0)         ;; no headers
          (i32.const -1)))
        (return (i32.const 1))))
    ;; 3. tenant present -> x-tenant-checked: yes
    (drop (call $add_header (i32.const 0) (i32.const 2152) (i32.const 16) (i32.const 2176) (i32.const 3)))
    (i32.const 0))
)
