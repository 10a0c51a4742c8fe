// tenant-gate: a proxy-wasm HTTP filter for Portico, written in AssemblyScript with
// @solo-io/proxy-runtime.
//
// Configuration (the plugin configuration string): JSON such as {"header": "x-demo-tenant"}.
// Empty configuration, or no "header" key, or an empty "header" value, means "x-demo-tenant".
//
// on_request_headers: no such request header (or an empty one) -> local reply 403 with an empty
// body and no extra headers (Portico writes its own JSON error body), and the stream stops here.
// Otherwise the request goes on upstream with `x-tenant: <value>` added.
// on_response_headers: adds `x-plugin: tenant-gate`.

// The functions the host calls (proxy_on_*, malloc, proxy_abi_version_0_2_0).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  HeaderPair,
  LogLevelValues,
  log,
  send_local_response,
  stream_context,
} from "@solo-io/proxy-runtime";
import { BufferTypeValues, get_buffer_bytes } from "@solo-io/proxy-runtime/runtime";

const DEFAULT_HEADER = "x-demo-tenant";

class TenantGateRoot extends RootContext {
  header: string = DEFAULT_HEADER;

  createContext(context_id: u32): Context {
    return new TenantGate(context_id, this);
  }

  // Replaces RootContext.onConfigure: the SDK's own version reads the configuration with
  // proxy_get_buffer_bytes but passes the configuration's size where the ABI wants a pointer
  // for the returned size. get_buffer_bytes passes both pointers.
  onConfigure(configuration_size: u32): bool {
    let text = "";
    if (configuration_size > 0) {
      text = String.UTF8.decode(
        get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size),
      );
    }
    const parsed = headerFromConfig(text);
    if (parsed.error != "") {
      log(LogLevelValues.error, "tenant-gate: bad configuration: " + parsed.error);
      return false;
    }
    this.header = parsed.header;
    log(LogLevelValues.info, "tenant-gate configured, header=" + this.header);
    return true;
  }
}

class TenantGate extends Context {
  gate: TenantGateRoot;

  constructor(context_id: u32, root_context: TenantGateRoot) {
    super(context_id, root_context);
    this.gate = root_context;
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    // "" when the header is absent.
    const tenant = stream_context.headers.request.get(this.gate.header);
    if (tenant.length == 0) {
      // The details become the "message" of Portico's JSON error body.
      send_local_response(
        403,
        "missing tenant header " + this.gate.header,
        new ArrayBuffer(0),
        new Array<HeaderPair>(),
        GrpcStatusValues.InvalidCode,
      );
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-tenant", tenant);
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-plugin", "tenant-gate");
    return FilterHeadersStatusValues.Continue;
  }
}

// The SDK picks the root context by the host's `plugin_root_id` property. Register under the
// filter's name and under "" (what a host answers when no root id is configured).
registerRootContext((context_id: u32): RootContext => new TenantGateRoot(context_id), "tenant-gate");
registerRootContext((context_id: u32): RootContext => new TenantGateRoot(context_id), "");

// ---- configuration: the one key this filter reads, from a JSON object ----

class Parsed {
  header: string = DEFAULT_HEADER;
  error: string = "";
}

// Reads `header` from a JSON object. Other keys are skipped whatever their values are.
function headerFromConfig(text: string): Parsed {
  const out = new Parsed();
  const p = new JsonCursor(text);
  p.skipSpace();
  if (p.atEnd()) return out; // empty configuration
  if (!p.eat(0x7b /* { */)) return fail(out, "expected a JSON object");
  p.skipSpace();
  if (p.eat(0x7d /* } */)) return p.rest(out);
  while (true) {
    p.skipSpace();
    const key = p.string();
    if (p.failed) return fail(out, "expected a string key");
    p.skipSpace();
    if (!p.eat(0x3a /* : */)) return fail(out, "expected ':' after \"" + key + "\"");
    p.skipSpace();
    if (key == "header") {
      if (p.peek() != 0x22 /* " */) return fail(out, "\"header\" must be a string");
      const value = p.string();
      if (p.failed) return fail(out, "bad string for \"header\"");
      // Header names are matched in lower case.
      out.header = value.length == 0 ? DEFAULT_HEADER : value.toLowerCase();
    } else {
      p.skipValue(0);
      if (p.failed) return fail(out, "bad value for \"" + key + "\"");
    }
    p.skipSpace();
    if (p.eat(0x2c /* , */)) continue;
    if (p.eat(0x7d /* } */)) return p.rest(out);
    return fail(out, "expected ',' or '}'");
  }
  return out;
}

function fail(out: Parsed, why: string): Parsed {
  out.error = why;
  return out;
}

class JsonCursor {
  text: string;
  pos: i32 = 0;
  failed: bool = false;

  constructor(text: string) {
    this.text = text;
  }

  atEnd(): bool {
    return this.pos >= this.text.length;
  }

  peek(): i32 {
    return this.atEnd() ? -1 : this.text.charCodeAt(this.pos);
  }

  eat(c: i32): bool {
    if (this.peek() == c) {
      this.pos++;
      return true;
    }
    return false;
  }

  skipSpace(): void {
    while (true) {
      const c = this.peek();
      if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) this.pos++;
      else return;
    }
  }

  // Only whitespace may follow the object.
  rest(out: Parsed): Parsed {
    this.skipSpace();
    if (!this.atEnd()) out.error = "text after the JSON object";
    return out;
  }

  string(): string {
    if (!this.eat(0x22 /* " */)) {
      this.failed = true;
      return "";
    }
    let s = "";
    while (true) {
      if (this.atEnd()) {
        this.failed = true;
        return "";
      }
      const c = this.text.charCodeAt(this.pos++);
      if (c == 0x22) return s;
      if (c < 0x20) {
        this.failed = true;
        return "";
      }
      if (c != 0x5c /* \ */) {
        s += String.fromCharCode(c);
        continue;
      }
      if (this.atEnd()) {
        this.failed = true;
        return "";
      }
      const e = this.text.charCodeAt(this.pos++);
      if (e == 0x22 || e == 0x5c || e == 0x2f) s += String.fromCharCode(e);
      else if (e == 0x62) s += "\b";
      else if (e == 0x66) s += "\f";
      else if (e == 0x6e) s += "\n";
      else if (e == 0x72) s += "\r";
      else if (e == 0x74) s += "\t";
      else if (e == 0x75 /* u */) {
        let unit = 0;
        for (let i = 0; i < 4; i++) {
          const d = hexDigit(this.peek());
          if (d < 0) {
            this.failed = true;
            return "";
          }
          unit = (unit << 4) | d;
          this.pos++;
        }
        s += String.fromCharCode(unit); // UTF-16 code unit; surrogate pairs join up
      } else {
        this.failed = true;
        return "";
      }
    }
    return s;
  }

  // Skips any JSON value: string, number, true/false/null, object or array.
  skipValue(depth: i32): void {
    if (depth > 64) {
      this.failed = true;
      return;
    }
    const c = this.peek();
    if (c == 0x22) {
      this.string();
      return;
    }
    if (c == 0x7b || c == 0x5b) {
      const close = c == 0x7b ? 0x7d : 0x5d;
      this.pos++;
      this.skipSpace();
      if (this.eat(close)) return;
      while (true) {
        this.skipSpace();
        if (c == 0x7b) {
          this.string();
          if (this.failed) return;
          this.skipSpace();
          if (!this.eat(0x3a)) {
            this.failed = true;
            return;
          }
          this.skipSpace();
        }
        this.skipValue(depth + 1);
        if (this.failed) return;
        this.skipSpace();
        if (this.eat(0x2c)) continue;
        if (this.eat(close)) return;
        this.failed = true;
        return;
      }
      return;
    }
    // true, false, null or a number.
    if (this.eatWord("true") || this.eatWord("false") || this.eatWord("null")) return;
    const start = this.pos;
    while (true) {
      const d = this.peek();
      const numeric = (d >= 0x30 && d <= 0x39) || d == 0x2b || d == 0x2d || d == 0x2e || d == 0x45 || d == 0x65;
      if (!numeric) break;
      this.pos++;
    }
    if (this.pos == start) this.failed = true;
  }

  eatWord(word: string): bool {
    if (this.text.substr(this.pos, word.length) != word) return false;
    this.pos += word.length;
    return true;
  }
}

function hexDigit(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}
