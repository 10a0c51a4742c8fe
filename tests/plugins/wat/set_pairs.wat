;; set_pairs.wat: proxy-wasm ABI 0.2.1 filter exercising proxy_set_header_map_pairs.
;;
;; on_response_headers: replaces the WHOLE response header map (map 2) with exactly
;;   {":status": "201", "x-only": "yes"}
;; via one proxy_set_header_map_pairs call (so every upstream response header is dropped and
;; the status becomes 201); the call's status is ignored; returns 0 (Continue).
;; No other callback is exported; requests pass unchanged.
;;
;; Memory layout: 2048.. constant serialized map; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_set_header_map_pairs"
    (func $set_pairs (param i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; 2048, 43 bytes: the serialized map {":status": "201", "x-only": "yes"}:
  ;;   u32 count = 2; (u32 key len, u32 value len) = (7, 3), (6, 3);
  ;;   then ":status" NUL "201" NUL "x-only" NUL "yes" NUL   (4 + 16 + 23 = 43)
  (data (i32.const 2048)
    "\02\00\00\00"
    "\07\00\00\00" "\03\00\00\00"
    "\06\00\00\00" "\03\00\00\00"
    ":status\00" "201\00"
    "x-only\00" "yes\00")

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
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $set_pairs (i32.const 2) (i32.const 2048) (i32.const 43)))
    (i32.const 0))
)
