// The published @agents-rs/client module (packages/client/pkg/index.js) in
// headless Chromium, on a page whose CSP forbids eval: the class surface
// (a real EventTarget, stub, readyState constants, protocol marks on
// message events), construction errors, and agentFetch to another origin.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { startStack, watchErrors, ROOT } from "./harness.mjs";

let stack, server, page, errors;

before(async () => {
  stack = await startStack(
    { "/": path.join(ROOT, "tests/browser"), "/client/": path.join(ROOT, "packages/client") },
    { cors: true },
  );
  server = stack.server;
  page = await stack.browser.newPage();
  errors = watchErrors(page);
  await page.goto(`${stack.site.url}/strict-csp.html`);
  // Every wait inside the page is bounded: a timeout fails with what it waited for.
  await page.evaluate(() => {
    window.within = (promise, what, ms = 10_000) =>
      Promise.race([
        promise,
        new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)),
      ]);
  });
});

after(() => stack?.stop());

test("stub calls methods, ignores probe keys, and works under a CSP without unsafe-eval", async () => {
  // page.evaluate runs through DevTools, not eval: the page's CSP still
  // applies to everything the package does.
  const result = await page.evaluate(async (host) => {
    const { AgentClient } = await import("/client/pkg/index.js");
    const client = new AgentClient({ agent: "CounterAgent", name: "stub-" + Math.random(), host });
    await within(new Promise((resolve) => client.addEventListener("open", resolve, { once: true })), "open");
    const viaStub = await within(client.stub.increment(2), "stub.increment");
    const viaCall = await within(client.call("increment", [3]), "call");
    let error = null;
    try {
      await within(client.stub.no_such_method(), "the error reply");
    } catch (e) {
      error = String(e.message ?? e);
    }
    let evalBlocked = false;
    try {
      new Function("return 1")();
    } catch {
      evalBlocked = true;
    }
    const out = {
      evalBlocked,
      viaStub,
      viaCall,
      error,
      sameStub: client.stub === client.stub,
      then: typeof client.stub.then,
      toJSON: typeof client.stub.toJSON,
      symbol: typeof client.stub[Symbol.iterator],
      awaited: (await client.stub) === client.stub,
    };
    client.close();
    return out;
  }, server.host);
  assert.equal(result.evalBlocked, true, "the page's CSP must forbid eval");
  assert.equal(result.viaStub, 2);
  assert.equal(result.viaCall, 5);
  assert.match(result.error, /no_such_method/);
  assert.equal(result.sameStub, true);
  assert.equal(result.then, "undefined");
  assert.equal(result.toJSON, "undefined");
  assert.equal(result.symbol, "undefined");
  assert.equal(result.awaited, true);
  assert.deepEqual(errors, []);
});

test("readyState constants on the class and instances follow the socket", async () => {
  const result = await page.evaluate(async (host) => {
    const { AgentClient } = await import("/client/pkg/index.js");
    const client = new AgentClient({ agent: "echo-agent", name: "states", host });
    const seen = [client.readyState];
    await within(new Promise((resolve) => client.addEventListener("open", resolve, { once: true })), "open");
    seen.push(client.readyState);
    const closed = new Promise((resolve) => client.addEventListener("close", resolve, { once: true }));
    client.close();
    await within(closed, "close");
    seen.push(client.readyState);
    const names = ["CONNECTING", "OPEN", "CLOSING", "CLOSED"];
    return {
      seen,
      onClass: names.map((n) => AgentClient[n]),
      onInstance: names.map((n) => client[n]),
      socket: names.map((n) => WebSocket[n]),
    };
  }, server.host);
  assert.deepEqual(result.onClass, [0, 1, 2, 3]);
  assert.deepEqual(result.onInstance, result.onClass);
  assert.deepEqual(result.socket, result.onClass);
  assert.deepEqual(result.seen, [0, 1, 3]);
});

test("bad options throw clear errors at construction", async () => {
  const messages = await page.evaluate(async (host) => {
    const { AgentClient } = await import("/client/pkg/index.js");
    const attempts = [
      undefined,
      {},
      { agent: "echo-agent", host, maxRetries: -1 },
      { agent: "echo-agent", host, query: 5 },
      { agent: "echo-agent", host, path: "/x" },
    ];
    const outcomes = attempts.map((options) => {
      try {
        new AgentClient(options).close();
        return "no error";
      } catch (e) {
        return `${e.constructor.name}: ${e.message}`;
      }
    });
    // close() takes what WebSocket.close takes, and says so.
    const client = new AgentClient({ agent: "echo-agent", host, startClosed: true });
    for (const code of [1006, 2999, 5000, 4000.5]) {
      try {
        client.close(code);
        outcomes.push(`${code}: no error`);
      } catch (e) {
        outcomes.push(`${code}: ${e.message}`);
      }
    }
    client.close(4999, "fine");
    return outcomes;
  }, server.host);
  assert.deepEqual(messages, [
    "Error: AgentClient needs an options object",
    "Error: agent is required",
    "Error: maxRetries must be a number >= 0",
    "Error: query must be an object or a function",
    "Error: path must not start with a slash",
    "1006: close code must be 1000 or 3000-4999",
    "2999: close code must be 1000 or 3000-4999",
    "5000: close code must be 1000 or 3000-4999",
    "4000.5: close code must be 1000 or 3000-4999",
  ]);
});

test("the client is a real EventTarget and marks protocol frames on its message events", async () => {
  const result = await page.evaluate(async (host) => {
    const { AgentClient } = await import("/client/pkg/index.js");
    const client = new AgentClient({ agent: "echo-agent", name: "target-" + Math.random(), host });
    const seen = [];
    client.addEventListener("message", (e) => seen.push([e.data, e.isProtocol, e instanceof MessageEvent]));
    let viaProperty = 0;
    let hello = null;
    client.onopen = () => viaProperty++;
    await within(new Promise((resolve) => client.addEventListener("open", resolve, { once: true })), "open");
    client.send("hello");
    await within(
      new Promise((resolve) => {
        const done = (e) => {
          if (e.data !== "hello") return;
          // The rest of a MessageEvent: the socket event's own fields.
          hello = {
            type: e.type, target: e.target === client, origin: e.origin, lastEventId: e.lastEventId,
            source: e.source, ports: Array.isArray(e.ports) && e.ports.length, tag: Object.prototype.toString.call(e),
            bubbles: e.bubbles, cancelable: e.cancelable, trusted: e.isTrusted,
          };
          client.removeEventListener("message", done);
          resolve();
        };
        client.addEventListener("message", done);
      }),
      "the echo",
    );
    // Anything can dispatch on it, as on any EventTarget.
    let custom = null;
    client.addEventListener("custom", (e) => (custom = [e.type, e.target === client]));
    const dispatched = client.dispatchEvent(new CustomEvent("custom"));
    client.close();
    return {
      isTarget: client instanceof EventTarget,
      prototype: Object.getPrototypeOf(AgentClient.prototype) === EventTarget.prototype,
      viaProperty,
      dispatched,
      custom,
      seen,
      hello,
    };
  }, server.host);
  assert.equal(result.isTarget, true);
  assert.equal(result.prototype, true);
  assert.equal(result.viaProperty, 1);
  assert.equal(result.dispatched, true);
  assert.deepEqual(result.custom, ["custom", true]);
  const types = result.seen.map(([data, isProtocol, isEvent]) => [
    data.startsWith("{") ? JSON.parse(data).type : data,
    isProtocol,
    isEvent,
  ]);
  assert.deepEqual(types, [
    ["cf_agent_identity", true, true],
    ["cf_agent_mcp_servers", true, true],
    ["hello", false, true],
  ]);
  assert.deepEqual(result.hello, {
    type: "message", target: true, origin: `ws://${server.host}`, lastEventId: "", source: null, ports: 0,
    tag: "[object MessageEvent]", bubbles: false, cancelable: false, trusted: false,
  });
});

test("agentFetch reaches the instance's on_request from another origin", async () => {
  const result = await page.evaluate(async (host) => {
    const { AgentClient, agentFetch } = await import("/client/pkg/index.js");
    const name = "fetch-" + Math.random().toString(36).slice(2);
    const client = new AgentClient({ agent: "CounterAgent", name, host });
    await within(client.ready, "ready");
    await within(client.call("increment", [5]), "increment");
    client.close();
    let asked = 0;
    const response = await within(
      agentFetch({ agent: "CounterAgent", name, host, query: async () => ({ asked: ++asked }) }),
      "agentFetch",
    );
    let refused = null;
    try {
      agentFetch({ host, name });
    } catch (e) {
      refused = e.message;
    }
    return {
      origin: location.origin,
      status: response.status,
      type: response.headers.get("content-type"),
      body: await response.json(),
      url: response.url,
      asked,
      refused: refused ?? (await within(agentFetch({ host, name }), "agentFetch").then(() => "no error", (e) => e.message)),
    };
  }, server.host);
  assert.notEqual(result.origin, `http://${server.host}`, "another origin");
  assert.equal(result.status, 200);
  assert.equal(result.type, "application/json");
  assert.deepEqual(result.body, { count: 5 });
  assert.match(result.url, new RegExp(`^http://${server.host}/agents/counter-agent/fetch-[a-z0-9]+\\?asked=1$`));
  assert.equal(result.asked, 1);
  assert.equal(result.refused, "agent is required");
});
