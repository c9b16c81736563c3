// @agents-rs/client: loads the WebAssembly once, at import, so that
// `new AgentClient({...})` works synchronously right after the import, as
// with `agents/client`.
//
// scripts/build-client.sh bundles and minifies this file with the
// wasm-bindgen glue into pkg/index.js, next to the .wasm: the URLs below are
// relative to that output file.
import init, { AgentClient } from "../pkg/agents_client.js";

const here = import.meta.url;
const node = globalThis.process?.getBuiltinModule;
// Node (tests, SSR): fetch() cannot read file: URLs, so hand init the bytes.
// Bundlers (Vite) see the `new URL(…, import.meta.url)` pattern and ship the
// .wasm as an asset.
await init({
  module_or_path:
    node && here.startsWith("file:")
      ? node("node:fs").readFileSync(new URL("./agents_client_bg.wasm", here))
      : new URL("./agents_client_bg.wasm", import.meta.url),
});

// The two pieces of the reference's surface that are plain JavaScript
// objects rather than client logic live here, not in the WebAssembly.

// `client.stub.increment(2)` is `client.call("increment", [2])`. Keys that
// `await`, loggers and test matchers probe answer `undefined`, as the
// reference's, so they never fire RPCs.
const NOT_METHODS = new Set([
  "toJSON", "then", "catch", "finally", "valueOf", "toString", "constructor",
  "prototype", "$$typeof", "@@toStringTag", "asymmetricMatch", "nodeType",
]);
Object.defineProperty(AgentClient.prototype, "stub", {
  get() {
    const stub = new Proxy({}, {
      get: (_, method) =>
        typeof method === "string" && !NOT_METHODS.has(method)
          ? (...args) => this.call(method, args)
          : undefined,
    });
    Object.defineProperty(this, "stub", { value: stub });
    return stub;
  },
});

// `WebSocket`'s readyState constants, on the class and its instances.
["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach((name, value) => {
  Object.defineProperty(AgentClient, name, { value });
  Object.defineProperty(AgentClient.prototype, name, { value });
});

export { AgentClient };
