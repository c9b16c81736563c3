export {
  AgentClient,
  AgentClientOptions,
  AgentConnectionError,
  CallOptions,
  StreamCallbacks,
} from "./pkg/agents_client.js";
