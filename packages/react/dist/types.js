/** The `type`s `agents/react` treats as protocol frames and keeps out of `onMessage`. */
export const PROTOCOL_TYPES = new Set([
    "cf_agent_identity",
    "cf_agent_state",
    "cf_agent_state_error",
    "cf_agent_mcp_servers",
    "rpc",
]);
/** Whether a message event's data is a protocol frame. */
export function isProtocolMessage(data) {
    if (typeof data !== "string" || !data.startsWith("{"))
        return false;
    try {
        const type = JSON.parse(data).type;
        return typeof type === "string" && PROTOCOL_TYPES.has(type);
    }
    catch {
        return false;
    }
}
/**
 * The options whose change means a new connection (a new client); all
 * others (callbacks, `enabled`) are read from the latest render.
 */
export function connectionKey(options, host) {
    const query = typeof options.query === "function" ? "fn" : options.query;
    return JSON.stringify([
        options.agent, options.name, host, options.path, query, options.id, options.basePath,
        options.prefix, options.protocol, options.protocols, options.startClosed, options.minUptime,
        options.maxRetries, options.connectionTimeout, options.maxEnqueuedMessages,
        options.maxReconnectionDelay, options.minReconnectionDelay, options.reconnectionDelayGrowFactor,
        options.defaultCallTimeout,
    ]);
}
//# sourceMappingURL=types.js.map