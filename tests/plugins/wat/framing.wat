;; framing.wat: a filter that tries to change message framing: on_request_headers and
;; on_response_headers both replace `content-length` with `1` and add
;; `transfer-encoding: chunked`. The host must keep the framing the message arrived with (a
;; filter's Content-Length beside a chunked body would be a request-smuggling vector).
(module
  (import "env" "proxy_replace_header_map_value"
    (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (data (i32.const 2048) "content-length")     ;; 14 bytes
  (data (i32.const 2080) "1")
  (data (i32.const 2096) "transfer-encoding")  ;; 17 bytes
  (data (i32.const 2128) "chunked")            ;; 7 bytes
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func $reframe (param $map i32)
    (drop (call $replace (local.get $map) (i32.const 2048) (i32.const 14) (i32.const 2080) (i32.const 1)))
    (drop (call $add (local.get $map) (i32.const 2096) (i32.const 17) (i32.const 2128) (i32.const 7))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $reframe (i32.const 0))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $reframe (i32.const 2))
    (i32.const 0))
)
