// examples/plain-js in headless Chromium: the agents/client snippet with
// only the import changed, against agents-server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { startStack, watchErrors, ROOT } from "./harness.mjs";

let stack, server, site, browser;

before(async () => {
  stack = await startStack({
    "/": path.join(ROOT, "examples/plain-js"),
    "/client/": path.join(ROOT, "packages/client"),
  });
  ({ server, site, browser } = stack);
});

after(() => stack?.stop());

test("the plain JS page connects, echoes, and reconnects after a restart", async () => {
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${site.url}/?host=${server.host}`);
  const status = page.getByTestId("status");
  await status.filter({ hasText: "open" }).waitFor({ timeout: 10_000 });
  const log = page.getByTestId("log");
  // The snippet's inquiry came back from echo-agent.
  await log.getByText('{"type":"inquiry","content":"What patterns do you see?"}').waitFor({ timeout: 10_000 });

  await page.getByTestId("input").fill("hello from plain js");
  await page.keyboard.press("Enter");
  await log.getByText("hello from plain js").waitFor({ timeout: 10_000 });

  await server.kill();
  await status.filter({ hasText: "reconnecting" }).waitFor({ timeout: 10_000 });
  await page.getByTestId("input").fill("sent while down");
  await page.keyboard.press("Enter");
  await server.start();
  await status.filter({ hasText: "open" }).waitFor({ timeout: 20_000 });
  await log.getByText("sent while down").waitFor({ timeout: 10_000 });
  assert.deepEqual(errors, []);
  await page.close();
});
