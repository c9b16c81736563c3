// @agents-rs/client: loads the WebAssembly once, at import, so that
// `new AgentClient({...})` works synchronously right after the import, as
// with `agents/client`.
//
// scripts/build-client.sh bundles and minifies this file, the class
// (client-wasm/js/agent-client.js) and the wasm-bindgen glue into
// pkg/index.js, next to the .wasm: the URLs below are relative to that
// output file. scripts/minify-wasm-names.mjs gathers the glue's imports
// (its exported functions, `--target bundler`) into `imports` and adds
// `start()`.
import { Core, __wbg_set_wasm, imports, start } from "../pkg/agents_client_bg.js";
import { AgentClient, AgentConnectionError, useCore } from "../../../client-wasm/js/agent-client.js";

const here = import.meta.url;
const node = globalThis.process?.getBuiltinModule;
// Node (tests, SSR): fetch() cannot read file: URLs, so read the bytes.
// Bundlers (Vite) see the `new URL(…, import.meta.url)` pattern and ship the
// .wasm as an asset. (Compiled from bytes, not streamed: no dependence on
// the server's MIME type for .wasm.)
// (`here`, not `import.meta.url`, on the Node path: Vite's test runner
// rewrites the pattern to an http URL.)
const bytes =
  node && here.startsWith("file:")
    ? node("node:fs").readFileSync(new URL("./agents_client_bg.wasm", here))
    : await (await fetch(new URL("./agents_client_bg.wasm", import.meta.url))).arrayBuffer();
const { instance } = await WebAssembly.instantiate(bytes, imports);
__wbg_set_wasm(instance.exports);
start();
useCore((options, host) => new Core(options, host));
const HTTP_URL = 5; // client-wasm/src/bindings.rs, `user`

/**
 * A plain HTTP request to the agent instance (its `on_request`), at the URL
 * the options give the socket (`http(s)` instead of `ws(s)`, no `_pk`), as
 * `agents/client`'s `agentFetch`. A `query` function is awaited first.
 */
export async function agentFetch(options, init) {
  const core = new Core(options, globalThis.location?.host);
  const query = options.query;
  const url = core.do_(null, HTTP_URL, typeof query == "function" ? await query() : undefined);
  core.free();
  return (options.fetch ?? fetch)(url, init);
}

export { AgentClient, AgentConnectionError };
