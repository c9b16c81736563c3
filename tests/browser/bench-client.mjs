// Client throughput in headless Chromium: the wasm AgentClient against a
// native WebSocket on the same page and server. Prints a table and JSON
// lines (`JSON {...}`) for scripts/bench.sh.
//   node bench-client.mjs [rounds]
import path from "node:path";
import { startStack, ROOT } from "./harness.mjs";

const ROUNDS = Number(process.argv[2] ?? 5);
const N = 10_000; // messages per measurement
const CHUNK = 1000; // count_to's limit on the server: N/CHUNK streaming calls

const stack = await startStack({ "/client/": path.join(ROOT, "packages/client"), "/": path.join(ROOT, "tests/browser") });
const { server, site, browser } = stack;
const page = await browser.newPage();
browser.on("disconnected", () => console.error("browser disconnected"));
page.on("console", (m) => console.log("console:", m.text()));
// Any same-origin HTML page will do: the measurements import the client themselves.
await page.goto(`${site.url}/blank.html`);
page.on("pageerror", (e) => console.error("page error:", e));
page.on("crash", () => console.error("page crashed"));

// Runs in the page. `kind` is "native" or "wasm"; returns messages per second.
async function measure({ host, kind, what, n, chunk }) {
  const { AgentClient } = await import("/client/pkg/index.js");
  const room = `bench-${kind}-${Math.random().toString(36).slice(2)}`;
  if (kind === "native") {
    const agent = what === "receive" ? "counter-agent" : "echo-agent";
    const ws = new WebSocket(`ws://${host}/agents/${agent}/${room}`);
    await new Promise((r) => (ws.onmessage = (e) => String(e.data).includes("cf_agent_mcp_servers") && r()));
    const t0 = performance.now();
    await new Promise((resolve) => {
      let got = 0;
      let calls = 0;
      const next = () => ws.send(JSON.stringify({ type: "rpc", id: String(++calls), method: "count_to", args: [chunk] }));
      ws.onmessage = (e) => {
        if (what === "receive") {
          const f = JSON.parse(e.data);
          if (f.type === "rpc" && f.done) (calls * chunk >= n ? resolve() : next());
        } else if (++got === n) resolve();
      };
      if (what === "receive") next();
      else for (let i = 0; i < n; i++) ws.send("m");
    });
    const ms = performance.now() - t0;
    ws.close();
    return (n / ms) * 1000;
  }
  const agent = what === "receive" ? "counter-agent" : "echo-agent";
  const c = new AgentClient({ agent, name: room, host });
  await c.ready;
  const t0 = performance.now();
  if (what === "receive") {
    let chunks = 0;
    for (let done = 0; done < n; done += chunk) {
      await c.call("count_to", [chunk], { stream: { onChunk: () => chunks++ } });
    }
  } else {
    await new Promise((resolve) => {
      let got = 0;
      c.addEventListener("message", (e) => {
        if (e.data === "m" && ++got === n) resolve();
      });
      for (let i = 0; i < n; i++) c.send("m");
    });
  }
  const ms = performance.now() - t0;
  c.close();
  c.free();
  return (n / ms) * 1000;
}

const results = { receive: { native: [], wasm: [] }, send: { native: [], wasm: [] } };
for (let r = 0; r < ROUNDS; r++) {
  for (const what of ["receive", "send"]) {
    for (const kind of r % 2 ? ["wasm", "native"] : ["native", "wasm"]) {
      if (process.env.DEBUG) console.error("measure", what, kind);
      results[what][kind].push(await page.evaluate(measure, { host: server.host, kind, what, n: N, chunk: CHUNK }));
    }
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const what of ["receive", "send"]) {
  const { native: n, wasm: w } = results[what];
  const native = median(n);
  const wasm = median(w);
  // Each round measures both, back to back: the median of the per-round
  // ratios is steadier on a shared machine than the ratio of the medians.
  const ratio = median(n.map((x, i) => w[i] / x));
  console.log(`client ${what.padEnd(8)} native=${Math.round(native)} msg/s  AgentClient=${Math.round(wasm)} msg/s  ratio=${ratio.toFixed(2)} (per-round: ${n.map((x, i) => (w[i] / x).toFixed(2)).join(" ")})`);
  console.log(`JSON ${JSON.stringify({ bench: `client-${what}`, label: "ours", native_msgs_per_s: Math.round(native), agentclient_msgs_per_s: Math.round(wasm), ratio: Number(ratio.toFixed(2)) })}`);
}
await stack.stop();
