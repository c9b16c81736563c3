// @agents-rs/client: loads the WebAssembly once, at import, so that
// `new AgentClient({...})` works synchronously right after the import, as
// with `agents/client`.
import init, { initSync, AgentClient } from "./pkg/agents_client.js";

const wasm = new URL("./pkg/agents_client_bg.wasm", import.meta.url);
if (wasm.protocol === "file:" && typeof process !== "undefined" && process.versions?.node) {
  // Node (tests, SSR): fetch() cannot read file: URLs.
  const { readFileSync } = await import("node:fs");
  initSync({ module: readFileSync(wasm) });
} else {
  await init({ module_or_path: wasm });
}

export { AgentClient };
