// Starts one agents-server (the real binary) for the hook tests.
import type { TestProject } from "vitest/node";
// @ts-expect-error: a plain .mjs helper shared with the other JS test suites.
import { AgentsServer } from "../../../tests/agents-server.mjs";

declare module "vitest" {
  export interface ProvidedContext {
    agentsHost: string;
  }
}

const server = new AgentsServer();

export async function setup(project: TestProject) {
  await server.start();
  project.provide("agentsHost", server.host);
}

export async function teardown() {
  await server.stop();
}
