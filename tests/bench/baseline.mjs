// Baseline for the benchmarks: what a JS team would write with `ws` — the
// echo-agent and counter-agent behaviour (connect frames, echo, broadcast)
// on /agents/<agent>/<name>. Not an agents implementation: no RPC, no state
// sync beyond the connect frames.
//
//   node baseline.mjs [port]     → prints "listening on http://127.0.0.1:<port>"
import http from "node:http";
import { WebSocketServer } from "ws";

const MCP = '{"mcp":{"prompts":[],"resources":[],"servers":{},"tools":[]},"type":"cf_agent_mcp_servers"}';
const rooms = new Map(); // "<agent>/<name>" -> Set<WebSocket>

const server = http.createServer((_req, res) => res.writeHead(404).end("Not found"));
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 32 * 1024 * 1024 });

server.on("upgrade", (req, socket, head) => {
  const [prefix, agent, name] = new URL(req.url, "http://x").pathname.split("/").filter(Boolean);
  if (prefix !== "agents" || !name || (agent !== "echo-agent" && agent !== "counter-agent")) {
    socket.end("HTTP/1.1 400 Bad Request\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const key = `${agent}/${name}`;
    let room = rooms.get(key);
    if (!room) rooms.set(key, (room = new Set()));
    room.add(ws);
    const counter = agent === "counter-agent";
    ws.send(JSON.stringify({ type: "cf_agent_identity", name, agent, ...(counter ? { stateFollows: true } : {}) }));
    if (counter) ws.send('{"type":"cf_agent_state","state":{"count":0}}');
    ws.send(MCP);
    ws.on("message", (data, isBinary) => {
      if (!counter) {
        ws.send(data, { binary: isBinary });
        return;
      }
      const text = isBinary ? null : data.toString();
      if (text?.startsWith("broadcast:")) {
        const out = text.slice("broadcast:".length);
        for (const peer of room) if (peer.readyState === 1) peer.send(out);
      }
    });
    ws.on("close", () => {
      room.delete(ws);
      if (room.size === 0) rooms.delete(key);
    });
  });
});

server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
