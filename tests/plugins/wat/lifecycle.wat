;; lifecycle.wat: proxy-wasm ABI 0.2.1 filter exercising the context lifecycle callbacks
;; (proxy_on_context_create, proxy_on_log, proxy_on_done, proxy_on_delete), counting them in
;; shared data (process-wide, so the counts are across all instances of the plugin).
;;
;; Each count is a shared data key holding decimal text, incremented with the same CAS loop as
;; shared.wat (NOT_FOUND: 0 with cas 0; retry on CAS_MISMATCH (8), at most 1000 tries):
;;   on_context_create(ctx, parent): parent == 0 -> remembers ctx as the root context id and
;;     counts nothing; parent != 0 (an HTTP context) -> increments `created`;
;;   on_log(ctx)    -> increments `logs`;
;;   on_done(ctx)   -> increments `done`, returns 1 (the context may be deleted now);
;;   on_delete(ctx) -> increments `deleted`;
;;   (on_log/on_done/on_delete for the root context id remembered above count nothing.)
;; on_request_headers: `:path` exactly `/stats` -> proxy_send_local_response(200, details "",
;;   body "created=A logs=B done=C deleted=D" with the four counts in decimal (a missing key
;;   is 0), no headers, grpc_status -1) and returns 1 (Pause); otherwise returns 0 (Continue).
;;   The /stats request's own context is already counted in `created` but not yet in the
;;   other three (so after N finished requests, /stats shows created=N+1 and N for the rest).
;;
;; Memory layout: 1024/1028/1032 return slots (value pointer, size, cas); 2040 empty string;
;; 2048.. constant strings; 4096.. decimal scratch; 4352.. the /stats body;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared_data (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) ":path")       ;; 2048, 5 bytes
  (data (i32.const 2056) "/stats")      ;; 2056, 6 bytes
  (data (i32.const 2064) "created")     ;; 2064, 7 bytes (shared data key)
  (data (i32.const 2072) "logs")        ;; 2072, 4 bytes (shared data key)
  (data (i32.const 2080) "done")        ;; 2080, 4 bytes (shared data key)
  (data (i32.const 2088) "deleted")     ;; 2088, 7 bytes (shared data key)
  (data (i32.const 2096) "created=")    ;; 2096, 8 bytes
  (data (i32.const 2104) " logs=")      ;; 2104, 6 bytes
  (data (i32.const 2112) " done=")      ;; 2112, 6 bytes
  (data (i32.const 2120) " deleted=")   ;; 2120, 9 bytes

  ;; The root context id (from on_context_create with parent 0); 0 until then.
  (global $root (mut i32) (i32.const 0))

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

  ;; Parses the leading decimal digits of ($p, $len) as an unsigned number (stops at the
  ;; first non-digit; no digits gives 0).
  (func $atou (param $p i32) (param $len i32) (result i32)
    (local $v i32) (local $c i32) (local $end i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $c) (i32.const 9)))
        (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10)) (local.get $c)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $v))

  ;; Copies $len bytes from $src to $dst; returns $dst + $len.
  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (local.get $dst) (local.get $i))
          (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.add (local.get $dst) (local.get $len)))

  ;; The shared counter at key ($key, $klen): its decimal value, 0 if the get is not OK.
  (func $read (param $key i32) (param $klen i32) (result i32)
    (if (call $get_shared_data (local.get $key) (local.get $klen) (i32.const 1024) (i32.const 1028) (i32.const 1032))
      (then (return (i32.const 0))))
    (call $atou (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))

  ;; Increments the shared counter at key ($key, $klen) with a CAS loop (as in shared.wat).
  (func $bump (param $key i32) (param $klen i32)
    (local $status i32) (local $value i32) (local $cas i32) (local $len i32) (local $tries i32)
    (loop $retry
      (local.set $status (call $get_shared_data (local.get $key) (local.get $klen) (i32.const 1024) (i32.const 1028) (i32.const 1032)))
      (if (i32.eq (local.get $status) (i32.const 1))
        (then
          (local.set $value (i32.const 0))
          (local.set $cas (i32.const 0)))
        (else
          (if (local.get $status) (then (return)))
          (local.set $value (call $atou (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))
          (local.set $cas (i32.load (i32.const 1032)))))
      (local.set $len (call $utoa (i32.add (local.get $value) (i32.const 1)) (i32.const 4096)))
      (local.set $status (call $set_shared_data (local.get $key) (local.get $klen) (i32.const 4096) (local.get $len) (local.get $cas)))
      (if (i32.eq (local.get $status) (i32.const 8))
        (then
          (local.set $tries (i32.add (local.get $tries) (i32.const 1)))
          (br_if $retry (i32.lt_u (local.get $tries) (i32.const 1000)))))))

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent))
      (then (global.set $root (local.get $ctx)))
      (else (call $bump (i32.const 2064) (i32.const 7)))))               ;; created

  (func (export "proxy_on_log") (param $ctx i32)
    (if (i32.ne (local.get $ctx) (global.get $root))
      (then (call $bump (i32.const 2072) (i32.const 4)))))               ;; logs

  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (if (i32.ne (local.get $ctx) (global.get $root))
      (then (call $bump (i32.const 2080) (i32.const 4))))                ;; done
    (i32.const 1))

  (func (export "proxy_on_delete") (param $ctx i32)
    (if (i32.ne (local.get $ctx) (global.get $root))
      (then (call $bump (i32.const 2088) (i32.const 7)))))               ;; deleted

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $p i32)
    (if (call $get_header (i32.const 0) (i32.const 2048) (i32.const 5) (i32.const 1024) (i32.const 1028))
      (then (return (i32.const 0))))
    (if (i32.eqz (call $eq (i32.load (i32.const 1024)) (i32.load (i32.const 1028)) (i32.const 2056) (i32.const 6)))
      (then (return (i32.const 0))))
    ;; "created=A logs=B done=C deleted=D" at 4352
    (local.set $p (call $copy (i32.const 4352) (i32.const 2096) (i32.const 8)))
    (local.set $p (i32.add (local.get $p) (call $utoa (call $read (i32.const 2064) (i32.const 7)) (local.get $p))))
    (local.set $p (call $copy (local.get $p) (i32.const 2104) (i32.const 6)))
    (local.set $p (i32.add (local.get $p) (call $utoa (call $read (i32.const 2072) (i32.const 4)) (local.get $p))))
    (local.set $p (call $copy (local.get $p) (i32.const 2112) (i32.const 6)))
    (local.set $p (i32.add (local.get $p) (call $utoa (call $read (i32.const 2080) (i32.const 4)) (local.get $p))))
    (local.set $p (call $copy (local.get $p) (i32.const 2120) (i32.const 9)))
    (local.set $p (i32.add (local.get $p) (call $utoa (call $read (i32.const 2088) (i32.const 7)) (local.get $p))))
    (drop (call $send_local_response
      (i32.const 200)
      (i32.const 2040) (i32.const 0)                                      ;; details ""
      (i32.const 4352) (i32.sub (local.get $p) (i32.const 4352))         ;; body
      (i32.const 2040) (i32.const 0)                                      ;; no headers
      (i32.const -1)))
    (i32.const 1))
)
