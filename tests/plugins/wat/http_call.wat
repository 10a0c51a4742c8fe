;; http_call.wat: proxy-wasm ABI 0.2.1 filter exercising proxy_http_call,
;; proxy_on_http_call_response and proxy_continue_stream.
;;
;; on_request_headers: proxy_http_call(upstream "auth",
;;     headers {":method": "GET", ":path": "/check", ":authority": "auth"},
;;     body empty, trailers empty, timeout 1000 ms, &token):
;;   * the call returned a non-OK status -> adds request header
;;     `x-call-status: <that status in decimal>` (e.g. "2" for BAD_ARGUMENT) and returns
;;     0 (Continue: the request goes on upstream);
;;   * OK -> returns 1 (Pause) until the answer.
;; on_http_call_response(ctx, token, num_headers, body_size, num_trailers):
;;   * num_headers == 0 (the call failed or timed out) -> proxy_send_local_response(502,
;;     details "", body "", no headers, grpc_status -1); nothing else;
;;   * else reads `:status` from map 6 (HTTP_CALL_RESPONSE_HEADERS; empty if absent) and, if
;;     body_size > 0, the body with proxy_get_buffer_bytes(4 = HTTP_CALL_RESPONSE_BODY, 0,
;;     body_size) (empty if that fails);
;;       - status not exactly "200" -> proxy_send_local_response(401, details "",
;;         body "denied by auth", no headers, grpc_status -1);
;;       - status "200" -> replaces request headers `x-auth-status` = the status ("200") and
;;         `x-auth-body` = the call's body, then proxy_continue_stream(0 = HTTP_REQUEST).
;; The context id the host passes to on_http_call_response is not used (the host is expected
;; to make the calling stream the effective context, as Envoy does); the token is not checked.
;;
;; Memory layout: 1024/1028 return slots (:status), 1032/1036 return slots (body),
;; 1040 returned token; 2040 empty string; 2048.. constants; 4096.. decimal scratch;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream"
    (func $continue_stream (param i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "auth")   ;; 2048, 4 bytes (upstream name)
  ;; 2056, 69 bytes: the serialized map
  ;;   {":method": "GET", ":path": "/check", ":authority": "auth"}:
  ;;   u32 count = 3; (u32 key len, u32 value len) = (7, 3), (5, 6), (10, 4);
  ;;   ":method" NUL "GET" NUL ":path" NUL "/check" NUL ":authority" NUL "auth" NUL
  ;;   (4 + 24 + 41 = 69)
  (data (i32.const 2056)
    "\03\00\00\00"
    "\07\00\00\00" "\03\00\00\00"
    "\05\00\00\00" "\06\00\00\00"
    "\0a\00\00\00" "\04\00\00\00"
    ":method\00" "GET\00"
    ":path\00" "/check\00"
    ":authority\00" "auth\00")
  (data (i32.const 2128) "x-call-status")    ;; 2128, 13 bytes
  (data (i32.const 2144) ":status")          ;; 2144, 7 bytes
  (data (i32.const 2152) "denied by auth")   ;; 2152, 14 bytes
  (data (i32.const 2168) "x-auth-status")    ;; 2168, 13 bytes
  (data (i32.const 2184) "x-auth-body")      ;; 2184, 11 bytes
  (data (i32.const 2200) "200")              ;; 2200, 3 bytes

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

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $status i32)
    (local.set $status (call $http_call
      (i32.const 2048) (i32.const 4)      ;; upstream "auth"
      (i32.const 2056) (i32.const 69)     ;; headers
      (i32.const 2040) (i32.const 0)      ;; empty body
      (i32.const 2040) (i32.const 0)      ;; no trailers
      (i32.const 1000)                    ;; timeout, ms
      (i32.const 1040)))                  ;; return token
    (if (local.get $status)
      (then
        (drop (call $add_header (i32.const 0) (i32.const 2128) (i32.const 13)
          (i32.const 4096) (call $utoa (local.get $status) (i32.const 4096))))
        (return (i32.const 0))))
    (i32.const 1))

  (func (export "proxy_on_http_call_response")
    (param $ctx i32) (param $token i32) (param $nheaders i32) (param $body_size i32) (param $ntrailers i32)
    (local $status i32) (local $status_len i32) (local $body i32) (local $body_len i32)
    ;; failed call -> 502
    (if (i32.eqz (local.get $nheaders))
      (then
        (drop (call $send_local_response
          (i32.const 502)
          (i32.const 2040) (i32.const 0)    ;; details ""
          (i32.const 2040) (i32.const 0)    ;; empty body
          (i32.const 2040) (i32.const 0)    ;; no headers
          (i32.const -1)))
        (return)))
    ;; :status of the answer
    (local.set $status (i32.const 2040))
    (if (i32.eqz (call $get_header (i32.const 6) (i32.const 2144) (i32.const 7) (i32.const 1024) (i32.const 1028)))
      (then
        (local.set $status (i32.load (i32.const 1024)))
        (local.set $status_len (i32.load (i32.const 1028)))))
    ;; body of the answer
    (local.set $body (i32.const 2040))
    (if (i32.gt_u (local.get $body_size) (i32.const 0))
      (then
        (if (i32.eqz (call $get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $body_size) (i32.const 1032) (i32.const 1036)))
          (then
            (local.set $body (i32.load (i32.const 1032)))
            (local.set $body_len (i32.load (i32.const 1036)))))))
    ;; not 200 -> 401
    (if (i32.eqz (call $eq (local.get $status) (local.get $status_len) (i32.const 2200) (i32.const 3)))
      (then
        (drop (call $send_local_response
          (i32.const 401)
          (i32.const 2040) (i32.const 0)    ;; details ""
          (i32.const 2152) (i32.const 14)   ;; body "denied by auth"
          (i32.const 2040) (i32.const 0)    ;; no headers
          (i32.const -1)))
        (return)))
    ;; 200 -> annotate the request and resume it
    (drop (call $replace_header (i32.const 0) (i32.const 2168) (i32.const 13) (local.get $status) (local.get $status_len)))
    (drop (call $replace_header (i32.const 0) (i32.const 2184) (i32.const 11) (local.get $body) (local.get $body_len)))
    (drop (call $continue_stream (i32.const 0))))
)
