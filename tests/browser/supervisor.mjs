// Runs agents-server for the browser tests and lets them kill and restart
// it over HTTP (a page cannot signal a process). Loopback only.
//
//   node supervisor.mjs <agents-server binary> [data dir]
//
// Prints `agents 127.0.0.1:<port>` and `control http://127.0.0.1:<port>` and
// serves GET /kill (SIGKILL), /start, /restart, /status, and /silent: the
// address of a listener that accepts connections and never answers (for
// connection timeouts). Exits on SIGTERM, killing the server.
import http from "node:http";
import net from "node:net";
import { AgentsServer } from "../agents-server.mjs";

const [bin, dataDir] = process.argv.slice(2);
if (!bin) {
  console.error("usage: node supervisor.mjs <agents-server binary> [data dir]");
  process.exit(2);
}

const server = new AgentsServer({ bin, dataDir });
await server.start();

// Accepts, reads nothing, answers nothing; the sockets end with the process.
const silent = net.createServer(() => {});
await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));

const control = http.createServer(async (req, res) => {
  res.setHeader("Access-Control-Allow-Origin", "*");
  try {
    if (req.url === "/kill") await server.kill();
    else if (req.url === "/start") await server.start();
    else if (req.url === "/restart") {
      await server.kill();
      await server.start();
    } else if (req.url === "/silent") {
      res.end(`127.0.0.1:${silent.address().port}`);
      return;
    } else if (req.url !== "/status") {
      res.writeHead(404).end("unknown");
      return;
    }
    res.end(server.running ? "running" : "stopped");
  } catch (e) {
    res.writeHead(500).end(String(e));
  }
});
control.listen(0, "127.0.0.1", () => {
  console.log(`agents ${server.host}`);
  console.log(`control http://127.0.0.1:${control.address().port}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await server.kill();
    process.exit(0);
  });
}
