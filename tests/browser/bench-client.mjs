// Client throughput in headless Chromium, three contestants on the same page
// and server: our wasm AgentClient (packages/client/pkg), the reference
// AgentClient of the `agents` npm package (`agents/client`, bundled for the
// browser by rolldown at start and served as one ES module), and a native
// WebSocket (the floor: no client library at all). Prints a table and JSON
// lines (`JSON {...}`) for scripts/bench.sh.
//   [CLIENT_PKG=dir] [BENCH_REFERENCE=0] node bench-client.mjs [rounds]
// `BENCH_REFERENCE=0` leaves the reference out (ours against native only).
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
import { createRequire } from "node:module";
import { build } from "rolldown";
import { AgentsServer, ROOT } from "../agents-server.mjs";

const ROUNDS = Number(process.argv[2] ?? 5);
const N = 50_000; // messages per measurement (a few seconds each: steadier on a shared machine)
const CHUNK = 1000; // count_to's limit on the server: N/CHUNK streaming calls
const REFERENCE = process.env.BENCH_REFERENCE !== "0";
// The contestants: "native" (a bare WebSocket), "wasm" (ours), "reference"
// (the `agents` package's AgentClient). Each round runs them back to back,
// the order rotated by one per round so that none is always first.
const KINDS = REFERENCE ? ["native", "wasm", "reference"] : ["native", "wasm"];
const TIMEOUT_MS = 30_000 * KINDS.length * (ROUNDS + 1); // for the whole run
// What is measured, in order within a round: `receive` (stream chunks, no
// message listener on the client), `receive-listener` (the same with a
// counting "message" listener, as useAgent has), `send` (echo round trips).
const WHATS = ["receive", "receive-listener", "send"];

// Runs in the page. `kind` is "native", "wasm" or "reference"; returns
// messages per second. Every contestant must deliver every message: the
// chunks (count_to(c) streams 1..c-1, then answers c), the listener's
// count, the echoes; a shortfall throws instead of printing a figure.
async function measure({ host, kind, what, n, chunk }) {
  const room = `bench-${kind}-${Math.random().toString(36).slice(2)}`;
  const receive = what !== "send";
  const agent = receive ? "counter-agent" : "echo-agent";
  const check = (label, got, want) => {
    if (got !== want) throw new Error(`${kind} ${what}: ${label} ${got}, expected ${want}`);
  };
  if (kind === "native") {
    const ws = new WebSocket(`ws://${host}/agents/${agent}/${room}`);
    await new Promise((r) => (ws.onmessage = (e) => String(e.data).includes("cf_agent_mcp_servers") && r()));
    let chunks = 0;
    let got = 0;
    const t0 = performance.now();
    await new Promise((resolve, reject) => {
      let calls = 0;
      const next = () => ws.send(JSON.stringify({ type: "rpc", id: String(++calls), method: "count_to", args: [chunk] }));
      ws.onmessage = (e) => {
        got++;
        if (receive) {
          const f = JSON.parse(e.data);
          if (f.type !== "rpc") return;
          if (!f.done) return void chunks++;
          if (f.result !== chunk) reject(new Error(`native ${what}: count_to answered ${f.result}`));
          else if (calls * chunk >= n) resolve();
          else next();
        } else if (got === n) resolve();
      };
      if (receive) next();
      else for (let i = 0; i < n; i++) ws.send("m");
    });
    const ms = performance.now() - t0;
    ws.close();
    if (receive) check("chunks", chunks, n - n / chunk);
    check("messages", got, n);
    return (n / ms) * 1000;
  }
  const { AgentClient } = await import(kind === "wasm" ? "/client/pkg/index.js" : "/reference/client.js");
  const c = new AgentClient({ agent, name: room, host });
  // Both clients are ready after identity and state; the server sends its
  // MCP list after those: wait for it too (as the native branch does), so
  // that the measured listeners hear only the measured messages. Through
  // `onmessage`, cleared after: a `message` listener, once added, makes
  // ours build an event per message for good (it cannot tell whether one
  // is still there), which `receive` is to measure without.
  const settled = new Promise((resolve) => {
    c.onmessage = (e) => {
      if (typeof e.data === "string" && e.data.includes("cf_agent_mcp_servers")) {
        c.onmessage = null;
        resolve();
      }
    };
  });
  await c.ready;
  await settled;
  let chunks = 0;
  let heard = 0;
  let got = 0;
  const t0 = performance.now();
  if (receive) {
    if (what === "receive-listener") c.addEventListener("message", () => heard++);
    for (let done = 0; done < n; done += chunk) {
      const result = await c.call("count_to", [chunk], { stream: { onChunk: () => chunks++ } });
      if (result !== chunk) throw new Error(`${kind} ${what}: count_to answered ${result}`);
    }
  } else {
    await new Promise((resolve) => {
      c.addEventListener("message", (e) => {
        if (e.data === "m" && ++got === n) resolve();
      });
      for (let i = 0; i < n; i++) c.send("m");
    });
  }
  const ms = performance.now() - t0;
  c.close();
  if (kind === "wasm") c.free();
  if (receive) check("chunks", chunks, n - n / chunk);
  if (what === "receive-listener") check("messages heard by the listener", heard, n);
  if (!receive) check("echoes", got, n);
  return (n / ms) * 1000;
}

// The page: every round measures each case with every contestant, back to
// back (the order rotated per round), then POSTs `{ results }` or `{ error }`.
const page = (host) => `<!doctype html><meta charset="utf-8"><title>agents-rs client bench</title>
<script type="module">
const measure = ${measure};
const kinds = ${JSON.stringify(KINDS)};
const results = {};
try {
  for (let r = 0; r < ${ROUNDS}; r++) {
    for (const what of ${JSON.stringify(WHATS)}) {
      results[what] ??= Object.fromEntries(kinds.map((k) => [k, []]));
      for (const kind of [...kinds.slice(r % kinds.length), ...kinds.slice(0, r % kinds.length)]) {
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
// The reference client for the browser: `agents/client` and what it imports
// (partysocket, capnweb) as one ES module, kept in memory. Its package's
// `import` entries are browser-safe ESM; nothing of Node is pulled in.
async function bundleReference() {
  // The version, for the record: its package.json is not among its exports,
  // so from the resolved entry up to the package's root.
  let dir = path.dirname(createRequire(path.join(ROOT, "package.json")).resolve("agents/client"));
  while (!fs.existsSync(path.join(dir, "package.json"))) dir = path.dirname(dir);
  const { name, version } = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  if (name !== "agents") throw new Error(`agents/client resolved into ${dir}, the package ${name}`);
  const { output } = await build({
    cwd: ROOT,
    input: "agents/client",
    platform: "browser",
    write: false,
    output: { format: "esm", minify: true },
  });
  if (output.length !== 1) throw new Error(`bundling agents/client gave ${output.length} files, expected one`);
  return { version, code: output[0].code };
}

const server = new AgentsServer();
let site;
let chromium;
let profile;
try {
  const reference = REFERENCE ? await bundleReference() : null;
  if (reference) console.log(`reference: agents@${reference.version} agents/client, bundled by rolldown (${reference.code.length} B minified)`);
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
    if (reference && req.url === "/reference/client.js") return res.writeHead(200, { "content-type": "text/javascript" }).end(reference.code);
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
  // Each round measures every contestant, back to back: the median of the
  // per-round ratios is steadier on a shared machine than the ratio of the
  // medians.
  const perRound = (a, b) => a.map((x, i) => x / b[i]);
  const fixed = (xs) => xs.map((x) => x.toFixed(2)).join(" ");
  for (const what of WHATS) {
    const { native: n, wasm: w, reference: ref } = results[what];
    const native = median(n);
    const wasm = median(w);
    const ours = perRound(w, n);
    let line = `client ${what.padEnd(17)} native=${Math.round(native)} msg/s  AgentClient=${Math.round(wasm)} msg/s  ratio=${median(ours).toFixed(2)} (per-round: ${fixed(ours)})`;
    const json = { bench: `client-${what}`, label: "ours", native_msgs_per_s: Math.round(native), agentclient_msgs_per_s: Math.round(wasm), ratio: Number(median(ours).toFixed(2)) };
    if (ref) {
      const refNative = perRound(ref, n);
      const oursRef = perRound(w, ref);
      line += `  reference=${Math.round(median(ref))} msg/s  reference/native=${median(refNative).toFixed(2)}  ours/reference=${median(oursRef).toFixed(2)} (per-round: ${fixed(oursRef)})`;
      Object.assign(json, {
        reference_msgs_per_s: Math.round(median(ref)),
        reference_ratio: Number(median(refNative).toFixed(2)),
        ours_vs_reference: Number(median(oursRef).toFixed(2)),
      });
    }
    console.log(line);
    console.log(`JSON ${JSON.stringify(json)}`);
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
