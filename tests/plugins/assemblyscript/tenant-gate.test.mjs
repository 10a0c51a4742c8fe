// Runs the built tenant-gate.wasm against a small stand-in for a proxy-wasm host (only the
// imports the module has), to check the filter's own behaviour without Portico:
//   node --test tests/plugins/assemblyscript/
// Portico's own integration tests check the filter inside the gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const wasm = new WebAssembly.Module(readFileSync(new URL("./tenant-gate.wasm", import.meta.url)));
const OK = 0, NOT_FOUND = 1;
const REQUEST_HEADERS = 0, RESPONSE_HEADERS = 2, PLUGIN_CONFIGURATION = 7;

function instance({ configuration = "", rootId = "" } = {}) {
  const host = { logs: [], local: [], added: [], request: new Map(), response: new Map() };
  let exports;
  const mem = () => new Uint8Array(exports.memory.buffer);
  const view = () => new DataView(exports.memory.buffer);
  const text = (ptr, len) => Buffer.from(mem().subarray(ptr, ptr + len)).toString("utf8");
  // Copies bytes into memory the module allocates, as a host does for returned values; an empty
  // value is handed back as (0, 0) without an allocation, as Envoy's host does (the SDK frees
  // nothing it is given for an empty value).
  const give = (bytes, ptrPtr, sizePtr) => {
    const ptr = bytes.length ? exports.malloc(bytes.length) : 0;
    if (bytes.length) mem().set(bytes, ptr);
    view().setUint32(ptrPtr, ptr, true);
    view().setUint32(sizePtr, bytes.length, true);
    return OK;
  };
  const map = (t) => (t === REQUEST_HEADERS ? host.request : t === RESPONSE_HEADERS ? host.response : null);
  const imports = {
    env: {
      proxy_log: (level, ptr, len) => { host.logs.push([level, text(ptr, len)]); return OK; },
      proxy_get_buffer_bytes: (type, start, len, ptrPtr, sizePtr) => {
        if (type !== PLUGIN_CONFIGURATION) return NOT_FOUND;
        return give(Buffer.from(configuration).subarray(start, start + len), ptrPtr, sizePtr);
      },
      proxy_get_property: (ptr, len, ptrPtr, sizePtr) =>
        text(ptr, len) === "plugin_root_id" ? give(Buffer.from(rootId), ptrPtr, sizePtr) : NOT_FOUND,
      proxy_set_effective_context: () => OK,
      proxy_get_header_map_value: (type, kp, kl, ptrPtr, sizePtr) => {
        const v = map(type)?.get(text(kp, kl));
        return v === undefined ? NOT_FOUND : give(Buffer.from(v), ptrPtr, sizePtr);
      },
      proxy_add_header_map_value: (type, kp, kl, vp, vl) => {
        host.added.push([type, text(kp, kl), text(vp, vl)]);
        return OK;
      },
      proxy_send_local_response: (code, dp, dl, bp, bl, hp, hl, grpc) => {
        host.local.push({ code, details: text(dp, dl), body: bl, headers: Buffer.from(mem().subarray(hp, hp + hl)), grpc });
        return OK;
      },
    },
    wasi_unstable: {
      proc_exit: (code) => { throw new Error(`proc_exit(${code}): ${JSON.stringify(host.logs.at(-1))}`); },
    },
  };
  exports = new WebAssembly.Instance(wasm, imports).exports;
  exports.proxy_on_context_create(1, 0);
  host.vmStart = exports.proxy_on_vm_start(1, 0);
  host.configured = exports.proxy_on_configure(1, Buffer.byteLength(configuration));
  let next = 2;
  host.stream = (headers) => {
    const id = next++;
    host.request = new Map(Object.entries(headers));
    host.response = new Map();
    host.local = [];
    host.added = [];
    exports.proxy_on_context_create(id, 1);
    const req = exports.proxy_on_request_headers(id, host.request.size, 1);
    const res = host.local.length ? null : exports.proxy_on_response_headers(id, 0, 1);
    exports.proxy_on_done(id);
    exports.proxy_on_log(id);
    exports.proxy_on_delete(id);
    return { req, res, local: host.local, added: host.added };
  };
  host.exports = exports;
  return host;
}

const infos = (h) => h.logs.filter(([l]) => l === 2).map(([, m]) => m);

test("exports the 0.2.0 ABI marker and the allocator", () => {
  const names = WebAssembly.Module.exports(wasm).map((e) => e.name);
  assert.ok(names.includes("proxy_abi_version_0_2_0"));
  assert.ok(names.includes("malloc"));
});

test("empty configuration: header x-demo-tenant, logged once at info", () => {
  const h = instance();
  assert.equal(h.configured, 1);
  assert.deepEqual(infos(h), ["tenant-gate configured, header=x-demo-tenant"]);
});

test("root id 'tenant-gate' works as well as ''", () => {
  const h = instance({ rootId: "tenant-gate", configuration: '{"header": "x-demo-tenant"}' });
  assert.equal(h.configured, 1);
  assert.equal(h.stream({ "x-demo-tenant": "acme" }).req, 0);
});

test("configuration picks the header, other keys skipped, name lower-cased", () => {
  const cases = {
    '{"header": "X-Org"}': "x-org",
    ' { "a": [1, -2.5e3, {"b": null}, true, false, "x\\"}"], "header" : "x-t" } ': "x-t",
    '{"header": ""}': "x-demo-tenant",
    '{"other": 1}': "x-demo-tenant",
    "{}": "x-demo-tenant",
    '{"header": "x-\\u0041b"}': "x-ab",
  };
  for (const [configuration, header] of Object.entries(cases)) {
    const h = instance({ configuration });
    assert.equal(h.configured, 1, configuration);
    assert.deepEqual(infos(h), [`tenant-gate configured, header=${header}`], configuration);
  }
});

test("a malformed configuration is refused", () => {
  for (const configuration of ['{"header": 5}', "nope", '{"header": "x"', '{"header": "x"} extra', "[]", '{"a": tru}']) {
    const h = instance({ configuration });
    assert.equal(h.configured, 0, configuration);
    assert.equal(infos(h).length, 0, configuration);
  }
});

test("no tenant header: local 403, empty body, no headers, stop", () => {
  const h = instance();
  for (const headers of [{}, { "x-demo-tenant": "" }, { "x-other": "acme" }]) {
    const r = h.stream(headers);
    assert.equal(r.req, 1);
    assert.equal(r.local.length, 1);
    assert.equal(r.local[0].code, 403);
    assert.equal(r.local[0].details, "missing tenant header x-demo-tenant");
    assert.equal(r.local[0].body, 0);
    assert.deepEqual([...r.local[0].headers], [0, 0, 0, 0]); // zero header pairs
    assert.deepEqual(r.added, []);
  }
});

test("tenant header: x-tenant added upstream, x-plugin on the response", () => {
  const h = instance({ configuration: '{"header": "x-team"}' });
  const r = h.stream({ "x-team": "acme" });
  assert.equal(r.req, 0);
  assert.equal(r.res, 0);
  assert.deepEqual(r.local, []);
  assert.deepEqual(r.added, [
    [REQUEST_HEADERS, "x-tenant", "acme"],
    [RESPONSE_HEADERS, "x-plugin", "tenant-gate"],
  ]);
});

test("memory stays flat over many streams", () => {
  const h = instance();
  const mix = (i) => [{ "x-demo-tenant": "t" + i }, {}, { "x-demo-tenant": "" }][i % 3];
  for (let i = 0; i < 2000; i++) h.stream(mix(i));
  const pages = h.exports.memory.buffer.byteLength / 65536;
  for (let i = 0; i < 30000; i++) h.stream(mix(i));
  assert.equal(h.exports.memory.buffer.byteLength / 65536, pages);
});
