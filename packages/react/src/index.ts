export { useAgent } from "./use-agent.js";
export {
  connectionKey,
  isProtocolEvent,
  queryKey,
  type ReadyState,
  type UseAgentOptions,
  type UseAgentResult,
} from "./types.js";
export { DEFAULT_CACHE_TTL, type Query, type QueryParams } from "./use-query.js";
export { agentFetch, AgentConnectionError } from "@agents-rs/client";
export type { AgentClient, AgentClientOptions, CallOptions } from "@agents-rs/client";
