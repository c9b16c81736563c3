// Client throughput in headless Chromium: the wasm AgentClient against a
// native WebSocket on the same page and server. Prints a table and JSON
// lines (`JSON {...}`) for scripts/bench.sh.
//   [CLIENT_PKG=dir] node bench-client.mjs [rounds]
//
// Chromium runs with no DevTools client attached: the page measures every
// round itself and POSTs the figures back. Under Playwright (CDP's Network
// domain, always on for its pages) every WebSocket frame is also reported
// to the driver, and that reporting (Chromium's browser process, its
// DevTools pipe and Node, on the same core as the page) cost about 170 µs
// per message where the page's own work is about 30 µs: it measured the
// harness, and diluted the client's cost in the ratio.
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { spawn } from "node:child_process";
import { AgentsServer, ROOT } from "../agents-server.mjs";

const ROUNDS = Number(process.argv[2] ?? 5);
const N = 50_000; // messages per measurement (a few seconds each: steadier on a shared machine)
const CHUNK = 1000; // count_to's limit on the server: N/CHUNK streaming calls
const TIMEOUT_MS = 60_000 * (ROUNDS + 1); // for the whole run
// What is measured, in order within a round: `receive` (stream chunks, no
// message listener on the client), `receive-listener` (the same with a
// counting "message" listener, as useAgent has), `send` (echo round trips).
const WHATS = ["receive", "receive-listener", "send"];

// Runs in the page. `kind` is "native" or "wasm"; returns messages per second.
async function measure({ host, kind, what, n, chunk }) {
  const { AgentClient } = await import("/client/pkg/index.js");
  const room = `bench-${kind}-${Math.random().toString(36).slice(2)}`;
  const receive = what !== "send";
  const agent = receive ? "counter-agent" : "echo-agent";
  if (kind === "native") {
    const ws = new WebSocket(`ws://${host}/agents/${agent}/${room}`);
    await new Promise((r) => (ws.onmessage = (e) => String(e.data).includes("cf_agent_mcp_servers") && r()));
    const t0 = performance.now();
    await new Promise((resolve) => {
      let got = 0;
      let calls = 0;
      const next = () => ws.send(JSON.stringify({ type: "rpc", id: String(++calls), method: "count_to", args: [chunk] }));
      ws.onmessage = (e) => {
        got++;
        if (receive) {
          const f = JSON.parse(e.data);
          if (f.type === "rpc" && f.done) (calls * chunk >= n ? resolve() : next());
        } else if (got === n) resolve();
      };
      if (receive) next();
      else for (let i = 0; i < n; i++) ws.send("m");
    });
    const ms = performance.now() - t0;
    ws.close();
    return (n / ms) * 1000;
  }
  const c = new AgentClient({ agent, name: room, host });
  await c.ready;
  const t0 = performance.now();
  if (receive) {
    let heard = 0;
    if (what === "receive-listener") c.addEventListener("message", () => heard++);
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

// The page: every round measures each case native and wasm, back to back
// (alternating which goes first), then POSTs `{ results }` or `{ error }`.
const page = (host) => `<!doctype html><meta charset="utf-8"><title>agents-rs client bench</title>
<script type="module">
const measure = ${measure};
const results = {};
try {
  for (let r = 0; r < ${ROUNDS}; r++) {
    for (const what of ${JSON.stringify(WHATS)}) {
      results[what] ??= { native: [], wasm: [] };
      for (const kind of r % 2 ? ["wasm", "native"] : ["native", "wasm"]) {
        results[what][kind].push(await measure({ host: ${JSON.stringify(host)}, kind, what, n: ${N}, chunk: ${CHUNK} }));
      }
    }
  }
  await fetch("/result", { method: "POST", body: JSON.stringify({ results }) });
} catch (e) {
  await fetch("/result", { method: "POST", body: JSON.stringify({ error: String(e?.stack ?? e) }) });
}
</script>`;

const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm" };
// `CLIENT_PKG`: another build of packages/client/pkg, to compare builds.
const PKG = process.env.CLIENT_PKG ?? path.join(ROOT, "packages/client/pkg");
const server = new AgentsServer();
let site;
let chromium;
let profile;
try {
  await server.start();
  let report;
  const reported = new Promise((resolve) => (report = resolve));
  site = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/result") {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        res.end("ok");
        report(JSON.parse(body));
      });
      return;
    }
    if (req.url === "/bench.html") return res.writeHead(200, { "content-type": "text/html" }).end(page(server.host));
    const file = req.url.startsWith("/client/pkg/") ? path.join(PKG, path.basename(req.url)) : null;
    if (!file) return res.writeHead(404).end("not found");
    fs.readFile(file, (err, data) => {
      if (err) return res.writeHead(404).end("not found");
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" }).end(data);
    });
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
  profile = fs.mkdtempSync(path.join(os.tmpdir(), "agents-rs-bench-chromium-"));
  // The flags of harness.mjs's launchBrowser, and the page as the argument.
  chromium = spawn(process.env.CHROMIUM ?? "/usr/bin/chromium", [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", `--user-data-dir=${profile}`,
    `http://127.0.0.1:${site.address().port}/bench.html`,
  ], { stdio: ["ignore", "ignore", process.env.DEBUG ? "inherit" : "ignore"] });
  const exited = new Promise((resolve) => chromium.on("exit", (code) => resolve({ error: `chromium exited (${code})` })));
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve({ error: `no result in ${TIMEOUT_MS} ms` }), TIMEOUT_MS)));
  const { results, error } = await Promise.race([reported, exited, timeout]);
  clearTimeout(timer);
  if (error) throw new Error(`the benchmark page failed: ${error}`);

  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const what of WHATS) {
    const { native: n, wasm: w } = results[what];
    const native = median(n);
    const wasm = median(w);
    // Each round measures both, back to back: the median of the per-round
    // ratios is steadier on a shared machine than the ratio of the medians.
    const ratio = median(n.map((x, i) => w[i] / x));
    console.log(`client ${what.padEnd(17)} native=${Math.round(native)} msg/s  AgentClient=${Math.round(wasm)} msg/s  ratio=${ratio.toFixed(2)} (per-round: ${n.map((x, i) => (w[i] / x).toFixed(2)).join(" ")})`);
    console.log(`JSON ${JSON.stringify({ bench: `client-${what}`, label: "ours", native_msgs_per_s: Math.round(native), agentclient_msgs_per_s: Math.round(wasm), ratio: Number(ratio.toFixed(2)) })}`);
  }
} finally {
  if (chromium && chromium.exitCode === null) {
    const exit = new Promise((r) => chromium.on("exit", r));
    chromium.kill();
    await exit;
  }
  await new Promise((r) => (site ? site.close(r) : r()));
  await server.stop();
  // Chromium's helper processes may still write to the profile for a moment
  // after the browser exits: retry, and never fail the run over a temp dir.
  if (profile) {
    try {
      fs.rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch (err) {
      console.error(`note: could not remove ${profile}: ${err.message}`);
    }
  }
}
