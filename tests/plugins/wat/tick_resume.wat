;; tick_resume.wat: a request paused in on_request_headers and resumed from a timer.
;;
;; on_configure: proxy_set_tick_period_milliseconds(10); returns 1.
;; on_request_headers(ctx): remembers ctx as the paused context and returns 1 (Pause).
;; on_tick: if a context is paused, makes it the effective context
;;   (proxy_set_effective_context), adds request header `x-resumed-by: tick`, calls
;;   proxy_continue_stream(0 = HTTP_REQUEST) and forgets it. (One paused request at a time.)
(module
  (import "env" "proxy_set_tick_period_milliseconds"
    (func $tick_period (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (global $paused (mut i32) (i32.const 0))
  (data (i32.const 2048) "x-resumed-by")  ;; 12 bytes
  (data (i32.const 2080) "tick")          ;; 4 bytes
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick_period (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $paused (local.get $ctx))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (if (i32.eqz (global.get $paused)) (then (return)))
    (if (i32.eqz (call $effective (global.get $paused)))
      (then
        (drop (call $add (i32.const 0) (i32.const 2048) (i32.const 12) (i32.const 2080) (i32.const 4)))
        (drop (call $continue (i32.const 0)))))
    (global.set $paused (i32.const 0)))
)
