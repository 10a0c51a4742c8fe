;; queue.wat: proxy-wasm ABI 0.2.1 filter exercising shared queues
;; (proxy_register/resolve/enqueue/dequeue_shared_queue and proxy_on_queue_ready).
;;
;; on_configure: proxy_register_shared_queue("events") and keeps the returned queue id in a
;;   global; returns 1 if that call returned OK, else 0 (configuration fails).
;; on_request_headers:
;;   * `:path` exactly `/last` -> reads shared data key `last-event` and sends
;;     proxy_send_local_response(200, details "", body = that value (empty body if the get is
;;     not OK, e.g. NOT_FOUND), no headers, grpc_status -1); returns 1 (Pause); enqueues nothing.
;;   * otherwise resolves the queue with proxy_resolve_shared_queue(vm_id "", name "events")
;;     (falling back to the id from on_configure if that is not OK) and enqueues the `:path`
;;     value (the empty string if `:path` cannot be read) onto it; returns 0 (Continue).
;; on_queue_ready(root, queue_id): dequeues ONE item from queue_id and, if that returned OK,
;;   stores it with proxy_set_shared_data("last-event", item, cas 0).
;; So after a request to /some/path has been queued and delivered, GET /last answers
;; 200 "/some/path".
;;
;; Memory layout: 1024/1028/1032 return slots (value pointer, size, cas); 1040 registered
;; queue id; 1044 resolved queue id; 2040 empty string; 2048.. constant strings;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue"
    (func $register_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue"
    (func $resolve_shared_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue"
    (func $enqueue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue"
    (func $dequeue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared_data (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) ":path")        ;; 2048, 5 bytes
  (data (i32.const 2056) "/last")        ;; 2056, 5 bytes
  (data (i32.const 2064) "events")       ;; 2064, 6 bytes (queue name)
  (data (i32.const 2072) "last-event")   ;; 2072, 10 bytes (shared data key)

  ;; The queue id returned by proxy_register_shared_queue in on_configure.
  (global $queue (mut i32) (i32.const 0))

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
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (call $register_shared_queue (i32.const 2064) (i32.const 6) (i32.const 1040))
      (then (return (i32.const 0))))
    (global.set $queue (i32.load (i32.const 1040)))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $path i32) (local $path_len i32) (local $body i32) (local $body_len i32) (local $id i32)
    ;; the :path value (empty if it cannot be read)
    (local.set $path (i32.const 2040))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 2048) (i32.const 5) (i32.const 1024) (i32.const 1028)))
      (then
        (local.set $path (i32.load (i32.const 1024)))
        (local.set $path_len (i32.load (i32.const 1028)))))
    ;; /last -> 200 with the last event
    (if (call $eq (local.get $path) (local.get $path_len) (i32.const 2056) (i32.const 5))
      (then
        (local.set $body (i32.const 2040))
        (if (i32.eqz (call $get_shared_data (i32.const 2072) (i32.const 10) (i32.const 1024) (i32.const 1028) (i32.const 1032)))
          (then
            (local.set $body (i32.load (i32.const 1024)))
            (local.set $body_len (i32.load (i32.const 1028)))))
        (drop (call $send_local_response
          (i32.const 200)
          (i32.const 2040) (i32.const 0)               ;; details ""
          (local.get $body) (local.get $body_len)      ;; body: last-event
          (i32.const 2040) (i32.const 0)               ;; no headers
          (i32.const -1)))
        (return (i32.const 1))))
    ;; enqueue :path on the queue resolved by (vm_id "", name "events")
    (local.set $id (global.get $queue))
    (if (i32.eqz (call $resolve_shared_queue (i32.const 2040) (i32.const 0) (i32.const 2064) (i32.const 6) (i32.const 1044)))
      (then (local.set $id (i32.load (i32.const 1044)))))
    (drop (call $enqueue_shared_queue (local.get $id) (local.get $path) (local.get $path_len)))
    (i32.const 0))

  (func (export "proxy_on_queue_ready") (param $root i32) (param $queue_id i32)
    (if (i32.eqz (call $dequeue_shared_queue (local.get $queue_id) (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $set_shared_data (i32.const 2072) (i32.const 10)
          (i32.load (i32.const 1024)) (i32.load (i32.const 1028)) (i32.const 0))))))
)
