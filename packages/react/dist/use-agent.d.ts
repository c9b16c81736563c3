import { type UseAgentOptions, type UseAgentResult } from "./types.js";
/**
 * Connects a component to an agent instance.
 *
 * - Connects on mount and closes on unmount; React StrictMode's double
 *   mount leaves exactly one open connection.
 * - A new connection only when a connection option changes (agent, name,
 *   host, path, query, id, basePath, prefix, protocols, reconnect tuning);
 *   changing callbacks never reconnects.
 * - `state` and `readyState` are React state: components re-render on change.
 *
 * @example
 * const agent = useAgent<{ count: number }>({ agent: "counter-agent", name: "room-1" });
 * await agent.call("increment", [1]);
 * agent.state?.count;
 */
export declare function useAgent<State = unknown>(options: UseAgentOptions<State>): UseAgentResult<State>;
