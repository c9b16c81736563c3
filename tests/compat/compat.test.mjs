// Wire compatibility: the real `agents` npm AgentClient (0.32.0, Node 20,
// `ws` as its WebSocket) against our agents-server binary.
//
// With AGENTS_COMPAT_HOST=host:port the suite runs against a server already
// running there (the cluster test: a node that does not own the
// instances); AGENTS_COMPAT_OWNER=host:port first opens each instance on
// that other node, so that it becomes their owner.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { AgentClient } from "agents/client";
import { AgentsServer } from "../agents-server.mjs";

const WAIT_MS = 5000;

const external = process.env.AGENTS_COMPAT_HOST;
const server = external ? null : new AgentsServer();
let host;

/** Every instance the suite uses, opened once on `owner`. */
async function claim(owner) {
  const instances = ["echo-agent/compat-echo", "counter-agent/compat-counter", "counter-agent/compat-rpc", "echo-agent/compat-huge"];
  for (const path of instances) {
    await new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${owner}/agents/${path}`);
      ws.on("message", () => {
        ws.close();
        resolve();
      });
      ws.on("error", reject);
    });
  }
}

before(async () => {
  if (server) {
    await server.start();
    host = server.host;
  } else {
    host = external;
    if (process.env.AGENTS_COMPAT_OWNER) await claim(process.env.AGENTS_COMPAT_OWNER);
  }
});

after(() => server?.stop());

/** `promise`, or a rejection naming `what` after WAIT_MS. */
function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the next value `register` delivers, or rejects after WAIT_MS. */
function next(register, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

/** Collects every message event's data. */
function inbox(client) {
  const items = [];
  const waiters = [];
  client.addEventListener("message", (e) => {
    items.push(e.data);
    waiters.splice(0).forEach((w) => w());
  });
  return {
    items,
    async until(pred, what) {
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        const found = items.find(pred);
        if (found !== undefined) return found;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(items)}`);
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 50);
        });
      }
    },
  };
}

function client(opts) {
  return new AgentClient({ host, WebSocket, ...opts });
}

test("echo-agent: identity handshake, text and binary round trips", async () => {
  let identity;
  const c = client({
    agent: "EchoAgent",
    name: "compat-echo",
    onIdentity: (name, agent) => (identity = { name, agent }),
  });
  c.binaryType = "arraybuffer";
  const box = inbox(c);
  await within(c.ready, "ready");
  assert.deepEqual(identity, { name: "compat-echo", agent: "echo-agent" });
  assert.equal(c.identified, true);
  // Raw listeners see the protocol frames too, as in the reference.
  await box.until((d) => typeof d === "string" && d.includes("cf_agent_mcp_servers"), "mcp frame");

  c.send("hello from agents/client");
  await box.until((d) => d === "hello from agents/client", "text echo");

  const bytes = new Uint8Array([0, 1, 2, 3, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff]);
  c.send(bytes);
  const echoed = await box.until((d) => typeof d !== "string", "binary echo");
  assert.deepEqual(new Uint8Array(echoed), bytes);

  const json = JSON.stringify({ type: "inquiry", content: "What patterns do you see?" });
  c.send(json);
  await box.until((d) => d === json, "user JSON echo");

  await assert.rejects(within(c.call("nope", [1]), "call"), /Method nope does not exist/);
  const closed = next((done) => c.addEventListener("close", done, { once: true }), "close");
  c.close();
  await closed;
});

test("counter-agent: state handshake, broadcast, setState reaches another client", async () => {
  const seenA = [];
  const seenB = [];
  const a = client({ agent: "CounterAgent", name: "compat-counter", onStateUpdate: (s, src) => seenA.push([s, src]) });
  const b = client({ agent: "counter-agent", name: "compat-counter", onStateUpdate: (s, src) => seenB.push([s, src]) });
  await within(Promise.all([a.ready, b.ready]), "both ready");
  assert.deepEqual(a.state, { count: 0 });
  assert.deepEqual(seenA[0], [{ count: 0 }, "server"]);
  assert.equal(a.name, "compat-counter");
  assert.equal(a.agent, "counter-agent");

  const boxB = inbox(b);
  a.send("broadcast:hi-there");
  await boxB.until((d) => d === "hi-there", "broadcast");

  a.setState({ count: 41 });
  assert.deepEqual(seenA.at(-1), [{ count: 41 }, "client"]);
  await boxB.until((d) => typeof d === "string" && d.includes('"count":41'), "state broadcast");
  assert.deepEqual(b.state, { count: 41 });
  assert.deepEqual(seenB.at(-1), [{ count: 41 }, "server"]);

  await assert.rejects(within(a.call("onMessage", []), "call"), /Method onMessage is not callable/);
  a.close();
  b.close();
});

test("counter-agent RPC: call and stub resolve, streaming delivers chunks in order", async () => {
  const a = client({ agent: "CounterAgent", name: "compat-rpc" });
  const b = client({ agent: "CounterAgent", name: "compat-rpc" });
  await within(Promise.all([a.ready, b.ready]), "both ready");
  assert.equal(await within(a.call("increment", [2]), "increment"), 2);
  assert.equal(await within(a.stub.increment(3), "stub.increment"), 5);
  assert.deepEqual(a.state, { count: 5 });
  const deadline = Date.now() + WAIT_MS;
  while (b.state?.count !== 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(b.state, { count: 5 });

  const chunks = [];
  const done = await within(a.call("count_to", [4], { stream: { onChunk: (c) => chunks.push(c) } }), "count_to");
  assert.deepEqual(chunks, [1, 2, 3]);
  assert.equal(done, 4);
  await assert.rejects(within(a.call("increment", ["x"]), "call"), /Invalid arguments for increment/);
  a.close();
  b.close();
});

test("a message over the server's 32 MiB limit closes the socket with 1009, not a reset", async () => {
  const c = client({ agent: "EchoAgent", name: "compat-huge", maxRetries: 0 });
  await within(c.ready, "ready");
  const closed = next((done) => c.addEventListener("close", done, { once: true }), "close");
  c.send("x".repeat(32 * 1024 * 1024 + 1));
  const event = await closed;
  c.close();
  assert.equal(event.code, 1009);
  assert.equal(event.reason, "Message is too large: 33554433 > 33554432");
});

test("unknown agent: the handshake is refused with HTTP 400 and the client keeps retrying", async () => {
  // Short delays so the retries come quickly; maxRetries stays at its default (unlimited).
  const c = client({ agent: "NoSuchAgent", name: "x", minReconnectionDelay: 10, maxReconnectionDelay: 50 });
  const errors = [];
  const twoErrors = next((done) => {
    c.addEventListener("error", (e) => {
      errors.push(e.message);
      if (errors.length === 2) done();
    });
  }, "two error events");
  await twoErrors;
  c.close();
  // ws reports a refused handshake (its `unexpected-response`) with the status.
  assert.deepEqual(errors.slice(0, 2), ["Unexpected server response: 400", "Unexpected server response: 400"]);
});
