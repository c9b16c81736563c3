// Runs agents-server for the browser tests and lets them kill and restart
// it over HTTP (a page cannot signal a process). Loopback only.
//
//   node supervisor.mjs <agents-server binary> [data dir]
//
// Prints `agents 127.0.0.1:<port>` and `control http://127.0.0.1:<port>` and
// serves GET /kill (SIGKILL), /start, /restart, /status. Exits on SIGTERM,
// killing the server.
import { spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";

const [bin, dataDir] = process.argv.slice(2);
if (!bin) {
  console.error("usage: node supervisor.mjs <agents-server binary> [data dir]");
  process.exit(2);
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const port = await freePort();
let child = null;

function start() {
  if (child) return Promise.resolve();
  const args = ["--port", String(port), "--log", "warn"];
  args.push(...(dataDir ? ["--data-dir", dataDir] : ["--in-memory"]));
  // Short idle timeout so evicted instances are exercised too.
  child = spawn(bin, args, { stdio: ["ignore", "pipe", "inherit"] });
  const proc = child;
  proc.on("exit", () => {
    if (child === proc) child = null;
  });
  return new Promise((resolve, reject) => {
    let out = "";
    proc.stdout.on("data", (d) => {
      out += d;
      if (out.includes("listening")) resolve();
    });
    proc.on("exit", (code) => reject(new Error(`agents-server exited (${code})`)));
  });
}

function kill() {
  if (!child) return Promise.resolve();
  const proc = child;
  child = null;
  return new Promise((resolve) => {
    proc.on("exit", () => resolve());
    proc.kill("SIGKILL");
  });
}

await start();

const control = http.createServer(async (req, res) => {
  res.setHeader("Access-Control-Allow-Origin", "*");
  try {
    if (req.url === "/kill") await kill();
    else if (req.url === "/start") await start();
    else if (req.url === "/restart") {
      await kill();
      await start();
    } else if (req.url !== "/status") {
      res.writeHead(404).end("unknown");
      return;
    }
    res.end(child ? "running" : "stopped");
  } catch (e) {
    res.writeHead(500).end(String(e));
  }
});
control.listen(0, "127.0.0.1", () => {
  console.log(`agents 127.0.0.1:${port}`);
  console.log(`control http://127.0.0.1:${control.address().port}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await kill();
    process.exit(0);
  });
}
