// examples/react-app in headless Chromium, served by agents-server
// --static-dir: two pages in one room, chat and counter sync, and a server
// that is killed and restarted mid-session.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { AgentsServer, launchBrowser, watchErrors, ROOT } from "./harness.mjs";

const ARTIFACTS = process.env.ARTIFACTS_DIR ?? path.join(ROOT, "target/test-logs");
let server, browser, dataDir;

before(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "agents-rs-e2e-"));
  server = new AgentsServer({ dataDir, staticDir: path.join(ROOT, "examples/react-app/dist") });
  await server.start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

const WAIT = { timeout: 15_000 };

async function open(room, user) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  const errors = watchErrors(page);
  const states = watchStateFrames(page);
  await page.goto(`http://${server.host}/?room=${room}&user=${user}`);
  return { page, errors, states };
}

/** Every `cf_agent_state` frame the page's sockets receive: `{ agent, state }`. */
function watchStateFrames(page) {
  const states = [];
  page.on("websocket", (ws) => {
    const agent = new URL(ws.url()).pathname.split("/")[2];
    ws.on("framereceived", ({ payload }) => {
      if (typeof payload !== "string" || !payload.includes('"cf_agent_state"')) return;
      const frame = JSON.parse(payload);
      if (frame.type === "cf_agent_state") states.push({ agent, state: frame.state });
    });
  });
  return states;
}

/** The first counter state frame after index `from`, waiting up to WAIT.timeout. */
async function counterStateAfter(states, from) {
  const deadline = Date.now() + WAIT.timeout;
  for (;;) {
    const found = states.slice(from).find((s) => s.agent === "counter-agent");
    if (found) return found.state;
    if (Date.now() > deadline) throw new Error("no counter state frame after the restart");
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function expectStatus(page, status) {
  for (const label of ["chat", "counter"]) {
    await page.getByTestId(`${label}-status`).filter({ hasText: status }).waitFor(WAIT);
  }
}

async function say(page, text) {
  await page.getByTestId("chat-input").fill(text);
  await page.getByTestId("chat-send").click();
}

test("two pages share a chat room and a counter, across a server restart", async () => {
  const room = `e2e-${Date.now()}`;
  const a = await open(room, "ann");
  const b = await open(room, "bob");
  await expectStatus(a.page, "open");
  await expectStatus(b.page, "open");

  // Chat typed in one page shows in the other.
  await say(a.page, "hi from ann");
  await b.page.getByTestId("messages").getByText("hi from ann").waitFor(WAIT);
  await say(b.page, "hello ann");
  await a.page.getByTestId("messages").getByText("hello ann").waitFor(WAIT);

  // The counter syncs.
  await a.page.getByTestId("increment").click();
  await a.page.getByTestId("count").filter({ hasText: /^1$/ }).waitFor(WAIT);
  await b.page.getByTestId("increment").click();
  for (const p of [a.page, b.page]) await p.getByTestId("count").filter({ hasText: /^2$/ }).waitFor(WAIT);

  // The server dies: both pages say so; what is typed meanwhile is kept.
  const seen = [a.states.length, b.states.length];
  await server.kill();
  await expectStatus(a.page, "reconnecting");
  await expectStatus(b.page, "reconnecting");
  await say(a.page, "typed while the server was down");

  await server.start();
  await expectStatus(a.page, "open");
  await expectStatus(b.page, "open");
  // The count shown after the restart comes from the restarted server's state frame.
  assert.deepEqual(await counterStateAfter(a.states, seen[0]), { count: 2 });
  assert.deepEqual(await counterStateAfter(b.states, seen[1]), { count: 2 });
  for (const p of [a.page, b.page]) {
    await p.getByTestId("count").filter({ hasText: /^2$/ }).waitFor(WAIT);
    await p.getByTestId("messages").getByText("typed while the server was down").waitFor(WAIT);
    // History survived the restart too.
    await p.getByTestId("messages").getByText("hi from ann").waitFor(WAIT);
  }
  const shown = await a.page.getByTestId("messages").locator("li .text").allTextContents();
  assert.deepEqual(shown, ["hi from ann", "hello ann", "typed while the server was down"]);

  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await a.page.screenshot({ path: path.join(ARTIFACTS, "react-app.png") });
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});
