export { useAgent } from "./use-agent.js";
export { connectionKey, isProtocolMessage, PROTOCOL_TYPES, } from "./types.js";
//# sourceMappingURL=index.js.map