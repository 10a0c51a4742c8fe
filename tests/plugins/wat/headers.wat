;; headers.wat: proxy-wasm ABI 0.2.1 filter exercising single-header edits on the request and
;; response header maps (proxy_get/add/replace/remove_header_map_value).
;;
;; on_request_headers (map 0, request headers), in this order:
;;   1. if request header `x-in` exists, ADD request header `x-seen` with the same value;
;;   2. REPLACE (set) request header `x-filter: headers`;
;;   3. REMOVE request header `x-remove-me`;
;;   4. REPLACE request header `x-path` with the value of the pseudo-header `:path`
;;      (skipped if `:path` cannot be read);
;;   returns 0 (Continue).
;; on_response_headers (map 2, response headers), in this order:
;;   1. ADD response header `x-response-filter: 1`;
;;   2. REMOVE response header `x-upstream-secret`;
;;   3. REPLACE response header `x-status-seen` with the value of the pseudo-header `:status`
;;      (skipped if `:status` cannot be read);
;;   returns 0 (Continue).
;; Statuses returned by the edit calls are ignored.
;;
;; Memory layout: 1024/1028 return slots (value pointer/size written by the host);
;; 2048.. constant strings; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "x-in")               ;; 2048, 4 bytes
  (data (i32.const 2056) "x-seen")             ;; 2056, 6 bytes
  (data (i32.const 2064) "x-filter")           ;; 2064, 8 bytes
  (data (i32.const 2080) "headers")            ;; 2080, 7 bytes
  (data (i32.const 2088) "x-remove-me")        ;; 2088, 11 bytes
  (data (i32.const 2104) ":path")              ;; 2104, 5 bytes
  (data (i32.const 2112) "x-path")             ;; 2112, 6 bytes
  (data (i32.const 2120) "x-response-filter")  ;; 2120, 17 bytes
  (data (i32.const 2144) "1")                  ;; 2144, 1 byte
  (data (i32.const 2152) "x-upstream-secret")  ;; 2152, 17 bytes
  (data (i32.const 2176) "x-status-seen")      ;; 2176, 13 bytes
  (data (i32.const 2192) ":status")            ;; 2192, 7 bytes

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
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; 1. x-in present -> add x-seen: <value>
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 2048) (i32.const 4) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 2056) (i32.const 6)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    ;; 2. x-filter: headers
    (drop (call $replace_header (i32.const 0) (i32.const 2064) (i32.const 8) (i32.const 2080) (i32.const 7)))
    ;; 3. remove x-remove-me
    (drop (call $remove_header (i32.const 0) (i32.const 2088) (i32.const 11)))
    ;; 4. x-path: <:path>
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 2104) (i32.const 5) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $replace_header (i32.const 0) (i32.const 2112) (i32.const 6)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; 1. add x-response-filter: 1
    (drop (call $add_header (i32.const 2) (i32.const 2120) (i32.const 17) (i32.const 2144) (i32.const 1)))
    ;; 2. remove x-upstream-secret
    (drop (call $remove_header (i32.const 2) (i32.const 2152) (i32.const 17)))
    ;; 3. x-status-seen: <:status>
    (if (i32.eqz (call $get_header (i32.const 2) (i32.const 2192) (i32.const 7) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $replace_header (i32.const 2) (i32.const 2176) (i32.const 13)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 0))
)
