;; Benchmark filter for the `wasm` profile: per request, one header read (`user-agent`) and one
;; header set (`x-plugin: bench`), nothing else. Written in the text format so the benchmark
;; needs no SDK toolchain; Portico compiles `.wat` modules at load.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; Bump allocator, reset at every request: the filter keeps nothing between requests.
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 100) "user-agent")
  (data (i32.const 120) "x-plugin")
  (data (i32.const 140) "bench")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.const 131072))
      (then (global.set $heap (i32.const 65536)) (return (i32.const 65536))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 65536))
    (drop (call $get (i32.const 0) (i32.const 100) (i32.const 10) (i32.const 200) (i32.const 204)))
    (drop (call $replace (i32.const 0) (i32.const 120) (i32.const 8) (i32.const 140) (i32.const 5)))
    (i32.const 0))
)
