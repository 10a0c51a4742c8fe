;; metrics.wat: proxy-wasm ABI 0.2.1 filter exercising metrics and logging
;; (proxy_define_metric, proxy_increment_metric, proxy_record_metric, proxy_log).
;;
;; on_configure: defines the counter "requests_total" (type 0), the gauge "last_status"
;;   (type 1) and the histogram "header_count" (type 2), keeping the three returned ids in
;;   globals; returns 1 if all three definitions returned OK, else 0 (configuration fails).
;; on_request_headers(ctx, num_headers, eos):
;;   proxy_increment_metric(requests_total, 1);
;;   proxy_record_metric(header_count, num_headers);
;;   proxy_log(2 = INFO, "metrics filter saw a request");
;;   returns 0 (Continue).
;; on_response_headers: proxy_record_metric(last_status, 200) (always the constant 200, not
;;   the real status); returns 0 (Continue).
;; Statuses of the increment/record/log calls are ignored.
;;
;; Memory layout: 1040/1044/1048 return slots for the metric ids; 2048.. constant strings;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_define_metric"
    (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric"
    (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric"
    (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_log"
    (func $log (param i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "requests_total")                 ;; 2048, 14 bytes
  (data (i32.const 2064) "last_status")                    ;; 2064, 11 bytes
  (data (i32.const 2080) "header_count")                   ;; 2080, 12 bytes
  (data (i32.const 2096) "metrics filter saw a request")   ;; 2096, 28 bytes

  ;; The metric ids returned by proxy_define_metric.
  (global $requests_total (mut i32) (i32.const 0))
  (global $last_status (mut i32) (i32.const 0))
  (global $header_count (mut i32) (i32.const 0))

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
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $failed i32)
    (local.set $failed (call $define_metric (i32.const 0) (i32.const 2048) (i32.const 14) (i32.const 1040)))
    (local.set $failed (i32.or (local.get $failed)
      (call $define_metric (i32.const 1) (i32.const 2064) (i32.const 11) (i32.const 1044))))
    (local.set $failed (i32.or (local.get $failed)
      (call $define_metric (i32.const 2) (i32.const 2080) (i32.const 12) (i32.const 1048))))
    (if (local.get $failed) (then (return (i32.const 0))))
    (global.set $requests_total (i32.load (i32.const 1040)))
    (global.set $last_status (i32.load (i32.const 1044)))
    (global.set $header_count (i32.load (i32.const 1048)))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $increment_metric (global.get $requests_total) (i64.const 1)))
    (drop (call $record_metric (global.get $header_count) (i64.extend_i32_u (local.get $n))))
    (drop (call $log (i32.const 2) (i32.const 2096) (i32.const 28)))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $record_metric (global.get $last_status) (i64.const 200)))
    (i32.const 0))
)
