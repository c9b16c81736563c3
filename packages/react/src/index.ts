export { useAgent } from "./use-agent.js";
export {
  connectionKey,
  isProtocolMessage,
  PROTOCOL_TYPES,
  type ReadyState,
  type UseAgentOptions,
  type UseAgentResult,
} from "./types.js";
export type { AgentClient, AgentClientOptions, AgentConnectionError, CallOptions } from "@agents-rs/client";
