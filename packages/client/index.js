// @agents-rs/client: loads the WebAssembly once, at import, so that
// `new AgentClient({...})` works synchronously right after the import, as
// with `agents/client`.
import init, { initSync, AgentClient } from "./pkg/agents_client.js";

const here = import.meta.url;
const node = globalThis.process?.getBuiltinModule;
if (node && here.startsWith("file:")) {
  // Node (tests, SSR): fetch() cannot read file: URLs.
  const { readFileSync } = node("node:fs");
  initSync({ module: readFileSync(new URL("./pkg/agents_client_bg.wasm", here)) });
} else {
  // Bundlers (Vite) see this pattern and ship the .wasm as an asset.
  await init({ module_or_path: new URL("./pkg/agents_client_bg.wasm", import.meta.url) });
}

export { AgentClient };
