;; config_props.wat: proxy-wasm ABI 0.2.1 filter exercising the plugin configuration buffer and
;; proxy_get_property / proxy_set_property.
;;
;; on_configure(root, size): if size > 0, reads the plugin configuration with
;;   proxy_get_buffer_bytes(7 = PLUGIN_CONFIGURATION, 0, size) and keeps its pointer/length in
;;   globals (a failed read, or size 0, leaves it empty); returns 1.
;; on_request_headers: sets (proxy_replace_header_map_value, map 0) these request headers:
;;   x-config          = the configuration text (empty value if there is none)
;;   x-prop-path       = property "request.path"       (path passed as dotted text)
;;   x-prop-path-nul   = property "request\0path"      (Envoy-style NUL-separated path bytes)
;;   x-prop-method     = property "request.method"
;;   x-prop-source     = property "source.address"
;;   x-prop-route      = property "route_name"
;;   x-prop-request-id = property "portico.request_id"
;;   x-prop-consumer   = property "portico.consumer" if proxy_get_property returned 0 (OK),
;;                       else the literal "none"
;;   then calls proxy_set_property("portico.custom", "v1") and sets
;;   x-set-property-status = that call's returned status in decimal (e.g. "0");
;;   returns 0 (Continue).
;; on_response_headers: sets (map 2) these response headers:
;;   x-prop-status   = property "response.code"
;;   x-prop-upstream = property "upstream.address"
;;   returns 0 (Continue).
;; Every property header except x-prop-consumer is left unset when proxy_get_property
;; returns a non-OK status. Values are copied byte for byte, except response.code: when its
;; value is exactly 8 bytes it is an integer (8 little-endian bytes, as Envoy answers) and is
;; written as its decimal text (e.g. "200"); a response.code of any other size is copied too.
;;
;; Memory layout: 1024/1028 return slots; 2048.. constant strings; 4096.. decimal scratch;
;; 32768.. heap of the bump allocator.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property"
    (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 2048) "x-config")               ;; 2048, 8 bytes
  (data (i32.const 2064) "x-prop-path")            ;; 2064, 11 bytes
  (data (i32.const 2080) "request.path")           ;; 2080, 12 bytes
  (data (i32.const 2096) "x-prop-path-nul")        ;; 2096, 15 bytes
  (data (i32.const 2112) "request\00path")         ;; 2112, 12 bytes ("request" NUL "path")
  (data (i32.const 2128) "x-prop-method")          ;; 2128, 13 bytes
  (data (i32.const 2144) "request.method")         ;; 2144, 14 bytes
  (data (i32.const 2160) "x-prop-source")          ;; 2160, 13 bytes
  (data (i32.const 2176) "source.address")         ;; 2176, 14 bytes
  (data (i32.const 2192) "x-prop-route")           ;; 2192, 12 bytes
  (data (i32.const 2208) "route_name")             ;; 2208, 10 bytes
  (data (i32.const 2224) "x-prop-request-id")      ;; 2224, 17 bytes
  (data (i32.const 2248) "portico.request_id")     ;; 2248, 18 bytes
  (data (i32.const 2272) "x-prop-consumer")        ;; 2272, 15 bytes
  (data (i32.const 2288) "portico.consumer")       ;; 2288, 16 bytes
  (data (i32.const 2304) "none")                   ;; 2304, 4 bytes
  (data (i32.const 2312) "portico.custom")         ;; 2312, 14 bytes
  (data (i32.const 2328) "v1")                     ;; 2328, 2 bytes
  (data (i32.const 2336) "x-set-property-status")  ;; 2336, 21 bytes
  (data (i32.const 2360) "x-prop-status")          ;; 2360, 13 bytes
  (data (i32.const 2376) "response.code")          ;; 2376, 13 bytes
  (data (i32.const 2392) "x-prop-upstream")        ;; 2392, 15 bytes
  (data (i32.const 2408) "upstream.address")       ;; 2408, 16 bytes

  ;; The plugin configuration read in on_configure (pointer into the heap, length).
  (global $config_ptr (mut i32) (i32.const 2048))
  (global $config_len (mut i32) (i32.const 0))

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
  ;; Writes the unsigned $v as decimal ASCII at $dst; returns the number of bytes written.
  (func $utoa64 (param $v i64) (param $dst i32) (result i32)
    (local $n i32) (local $t i64) (local $i i32)
    (local.set $n (i32.const 1))
    (local.set $t (local.get $v))
    (block $counted
      (loop $count
        (br_if $counted (i64.lt_u (local.get $t) (i64.const 10)))
        (local.set $t (i64.div_u (local.get $t) (i64.const 10)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $count)))
    (local.set $i (local.get $n))
    (local.set $t (local.get $v))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i64.store8 (i32.add (local.get $dst) (local.get $i))
        (i64.add (i64.const 48) (i64.rem_u (local.get $t) (i64.const 10))))
      (local.set $t (i64.div_u (local.get $t) (i64.const 10)))
      (br_if $write (local.get $i)))
    (local.get $n))

  ;; Reads property ($path, $plen) and, if that returns OK, sets header ($hdr, $hlen) of map
  ;; $map to it. With $int set, an 8-byte value is taken as a little-endian integer and written
  ;; in decimal. Returns the proxy_get_property status.
  (func $prop_to_header (param $map i32) (param $hdr i32) (param $hlen i32) (param $path i32) (param $plen i32) (param $int i32) (result i32)
    (local $status i32) (local $ptr i32) (local $len i32)
    (local.set $status (call $get_property (local.get $path) (local.get $plen) (i32.const 1024) (i32.const 1028)))
    (if (i32.eqz (local.get $status))
      (then
        (local.set $ptr (i32.load (i32.const 1024)))
        (local.set $len (i32.load (i32.const 1028)))
        (if (i32.and (local.get $int) (i32.eq (local.get $len) (i32.const 8)))
          (then
            (local.set $len (call $utoa64 (i64.load (local.get $ptr)) (i32.const 4096)))
            (local.set $ptr (i32.const 4096))))
        (drop (call $replace_header (local.get $map) (local.get $hdr) (local.get $hlen) (local.get $ptr) (local.get $len)))))
    (local.get $status))

  ;; ---- callbacks -----------------------------------------------------------------------------
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (if (i32.eqz (call $get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size) (i32.const 1024) (i32.const 1028)))
          (then
            (global.set $config_ptr (i32.load (i32.const 1024)))
            (global.set $config_len (i32.load (i32.const 1028)))))))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $len i32)
    ;; x-config: <configuration>
    (drop (call $replace_header (i32.const 0) (i32.const 2048) (i32.const 8) (global.get $config_ptr) (global.get $config_len)))
    (drop (call $prop_to_header (i32.const 0) (i32.const 2064) (i32.const 11) (i32.const 2080) (i32.const 12) (i32.const 0)))   ;; x-prop-path
    (drop (call $prop_to_header (i32.const 0) (i32.const 2096) (i32.const 15) (i32.const 2112) (i32.const 12) (i32.const 0)))   ;; x-prop-path-nul
    (drop (call $prop_to_header (i32.const 0) (i32.const 2128) (i32.const 13) (i32.const 2144) (i32.const 14) (i32.const 0)))   ;; x-prop-method
    (drop (call $prop_to_header (i32.const 0) (i32.const 2160) (i32.const 13) (i32.const 2176) (i32.const 14) (i32.const 0)))   ;; x-prop-source
    (drop (call $prop_to_header (i32.const 0) (i32.const 2192) (i32.const 12) (i32.const 2208) (i32.const 10) (i32.const 0)))   ;; x-prop-route
    (drop (call $prop_to_header (i32.const 0) (i32.const 2224) (i32.const 17) (i32.const 2248) (i32.const 18) (i32.const 0)))   ;; x-prop-request-id
    ;; x-prop-consumer, or "none" when portico.consumer is not OK
    (if (call $prop_to_header (i32.const 0) (i32.const 2272) (i32.const 15) (i32.const 2288) (i32.const 16) (i32.const 0))
      (then
        (drop (call $replace_header (i32.const 0) (i32.const 2272) (i32.const 15) (i32.const 2304) (i32.const 4)))))
    ;; x-set-property-status: <status of proxy_set_property("portico.custom", "v1")>
    (local.set $len (call $utoa64
      (i64.extend_i32_u (call $set_property (i32.const 2312) (i32.const 14) (i32.const 2328) (i32.const 2)))
      (i32.const 4096)))
    (drop (call $replace_header (i32.const 0) (i32.const 2336) (i32.const 21) (i32.const 4096) (local.get $len)))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $prop_to_header (i32.const 2) (i32.const 2360) (i32.const 13) (i32.const 2376) (i32.const 13) (i32.const 1)))   ;; x-prop-status
    (drop (call $prop_to_header (i32.const 2) (i32.const 2392) (i32.const 15) (i32.const 2408) (i32.const 16) (i32.const 0)))   ;; x-prop-upstream
    (i32.const 0))
)
