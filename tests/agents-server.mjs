// The agents-server binary as the JavaScript test suites use it (compat,
// browser end-to-end, the wasm-test supervisor, the React hook tests): start
// it on a free loopback port, kill it like a crash, restart it on the same
// port. No dependencies, so every test package can import it.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** The binary: `$AGENTS_SERVER_BIN`, else the debug build. */
export const BIN = process.env.AGENTS_SERVER_BIN ?? path.join(ROOT, "target/debug/agents-server");

/** How long the server may take to print its `listening` line. */
const START_TIMEOUT_MS = 10_000;

/** agents-server on a port chosen at the first start and kept across restarts. */
export class AgentsServer {
  /** `dataDir` keeps state on disk (else `--in-memory`); `staticDir` is served at `/`. */
  constructor({ dataDir, staticDir, bin = BIN } = {}) {
    this.dataDir = dataDir;
    this.staticDir = staticDir;
    this.bin = bin;
    this.port = 0;
    this.child = null;
  }

  /** `127.0.0.1:<port>`. */
  get host() {
    return `127.0.0.1:${this.port}`;
  }

  /** Whether the process is running. */
  get running() {
    return this.child !== null;
  }

  /** Starts the server (a no-op while it runs) and waits until it listens. */
  async start() {
    if (this.child) return;
    const args = ["--port", String(this.port), "--log", "warn"];
    args.push(...(this.dataDir ? ["--data-dir", this.dataDir] : ["--in-memory"]));
    if (this.staticDir) args.push("--static-dir", this.staticDir);
    const child = spawn(this.bin, args, { stdio: ["ignore", "pipe", "inherit"] });
    this.child = child;
    child.on("exit", () => {
      if (this.child === child) this.child = null;
    });
    const port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.bin} did not start`)), START_TIMEOUT_MS);
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
        const m = out.match(/listening on http:\/\/\S+:(\d+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.on("exit", (code) => reject(new Error(`agents-server exited with ${code}`)));
    });
    this.port = Number(port);
  }

  /** SIGKILL: no close frames, like a crash. */
  kill() {
    return this.#end("SIGKILL");
  }

  /** SIGTERM: graceful shutdown (sockets get 1001). */
  stop() {
    return this.#end("SIGTERM");
  }

  #end(signal) {
    const child = this.child;
    if (!child) return Promise.resolve();
    this.child = null;
    return new Promise((resolve) => {
      child.on("exit", () => resolve());
      child.kill(signal);
    });
  }
}
