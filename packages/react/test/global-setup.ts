// Starts one agents-server (the real binary) for the hook tests.
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    agentsHost: string;
  }
}

let child: ChildProcess | undefined;

export async function setup(project: TestProject) {
  const root = path.resolve(import.meta.dirname, "../../..");
  const bin = process.env.AGENTS_SERVER_BIN ?? path.join(root, "target/debug/agents-server");
  child = spawn(bin, ["--port", "0", "--in-memory", "--log", "warn"], { stdio: ["ignore", "pipe", "inherit"] });
  const host = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agents-server (${bin}) did not start`)), 10_000);
    let out = "";
    child!.stdout!.on("data", (d) => {
      out += d;
      const m = out.match(/listening on http:\/\/(\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child!.on("exit", (code) => reject(new Error(`agents-server exited with ${code}`)));
  });
  project.provide("agentsHost", host);
}

export async function teardown() {
  child?.kill("SIGTERM");
}
