;; round_trip.wat: on_request_headers reads the whole request map with
;; proxy_get_header_map_pairs (pseudo-headers included) and sets it back unchanged with
;; proxy_set_header_map_pairs, as SDKs do when a filter edits a copy of the map; returns 0.
(module
  (import "env" "proxy_get_header_map_pairs" (func $get (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (global.set $heap (i32.const 32768))
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 1024) (i32.const 1028)))
      (then (drop (call $set (i32.const 0) (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 0))
)
