// Helpers for the end-to-end tests: the agents-server binary (killable and
// restartable, from ../agents-server.mjs), a static file server, and
// headless Debian Chromium.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

import { AgentsServer, ROOT } from "../agents-server.mjs";

export { AgentsServer, ROOT };

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml" };

/** Serves `mounts` ({ "/prefix/": dir }) on a free loopback port; `/` maps to the "/" mount. */
export async function serveStatic(mounts) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const prefix = Object.keys(mounts).sort((a, b) => b.length - a.length).find((p) => url.pathname.startsWith(p));
    if (!prefix) return res.writeHead(404).end("not found");
    let file = path.join(mounts[prefix], decodeURIComponent(url.pathname.slice(prefix.length)));
    if (file.endsWith("/") || !path.extname(file)) file = path.join(file, "index.html");
    fs.readFile(file, (err, data) => {
      if (err) return res.writeHead(404).end("not found");
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" }).end(data);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/** Debian's Chromium, headless, kept off the network. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
  });
}

/** Collects page errors so a test can assert there were none. */
export function watchErrors(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  return errors;
}

/**
 * agents-server, a static site of `mounts` and Chromium, for a test file:
 * `{ server, site, browser, stop() }`. With `cors`, the server lets the
 * site's origin (another port: another origin) make plain HTTP requests
 * (`AGENTS_CORS`). What started is stopped again if a later step fails.
 */
export async function startStack(mounts, { cors = false } = {}) {
  const stack = { server: new AgentsServer() };
  stack.stop = async () => {
    await stack.browser?.close();
    await stack.site?.close();
    await stack.server.stop();
  };
  try {
    stack.site = await serveStatic(mounts);
    const env = process.env.AGENTS_CORS;
    if (cors) process.env.AGENTS_CORS = stack.site.url;
    try {
      await stack.server.start();
    } finally {
      if (env === undefined) delete process.env.AGENTS_CORS;
      else process.env.AGENTS_CORS = env;
    }
    stack.browser = await launchBrowser();
  } catch (err) {
    await stack.stop();
    throw err;
  }
  return stack;
}
