import type { AgentClient, AgentClientOptions } from "@agents-rs/client";
import type { Query } from "./use-query.js";

/** `readyState` values, as `WebSocket`'s. */
export type ReadyState = 0 | 1 | 2 | 3;

/**
 * Options of {@link useAgent}: every `AgentClient` option (its callbacks
 * `onStateUpdateError`, `onIdentityChange`, `onConnectionError` and
 * `onMcpUpdate` included: read from the latest render) plus the hook's own.
 */
export interface UseAgentOptions<State = unknown>
  extends Omit<AgentClientOptions, "host" | "query" | "onStateUpdate" | "onIdentity"> {
  /** `host[:port]` of the server. @default window.location.host ("dummy-domain.com" without a window, e.g. SSR) */
  host?: string;
  /**
   * Query parameters, or a function (sync or async) giving them. An async
   * function suspends the component until it resolves (wrap it in
   * `<Suspense>`), and its result is cached per `[agent, name, host,
   * basePath, path, ...queryDeps]` for `cacheTtl`; it runs again before
   * every reconnect, so a reconnect carries fresh parameters (e.g. a new
   * token). A different result on a new mount or new `queryDeps` means a
   * new connection.
   * @example
   * useAgent({ agent: "chat", query: async () => ({ token: await getToken() }), queryDeps: [userId] })
   */
  query?: Query;
  /** What the cached `query` result depends on besides the address. @default [] */
  queryDeps?: unknown[];
  /** How long (ms) a `query` result is reused by new renders. @default 300000 (5 minutes) */
  cacheTtl?: number;
  /** `false` closes the connection, `true` reopens the same client. @default true */
  enabled?: boolean;
  /** A message that is not a protocol frame (the client marks those `isProtocol`, as `agents/react` filters them). */
  onMessage?: (event: MessageEvent) => void;
  /** The socket opened (after queued messages were flushed). */
  onOpen?: (event: Event) => void;
  /** The socket closed; `code`, `reason` and `wasClean` are the real ones. */
  onClose?: (event: CloseEvent) => void;
  /** A socket error (e.g. the server is unreachable). */
  onError?: (event: Event) => void;
  /** The state changed on the server (`"server"`) or through `setState` (`"client"`). */
  onStateUpdate?: (state: State, source: "server" | "client") => void;
  /** The server's identity arrived. */
  onIdentity?: (name: string, agent: string) => void;
}

/**
 * What {@link useAgent} returns: the client itself. Its `state` and
 * `readyState` are always current, and the hook re-renders the component
 * whenever they change.
 */
export type UseAgentResult<State = unknown> = AgentClient<State>;

/** Whether a message event carries a protocol frame (the client marks them). */
export function isProtocolEvent(event: MessageEvent): boolean {
  return (event as MessageEvent & { isProtocol?: boolean }).isProtocol === true;
}

/** The key of an async `query`'s cached result. */
export function queryKey(options: UseAgentOptions<any>, host: string): string {
  return JSON.stringify([
    options.agent, options.name ?? "default", host, options.basePath, options.path, ...(options.queryDeps ?? []),
  ]);
}

/**
 * The options whose change means a new connection (a new client): the
 * address, the resolved query, the connection tuning. All others
 * (callbacks, `enabled`, `cacheTtl`) are read from the latest render.
 */
export function connectionKey(options: UseAgentOptions<any>, host: string, query: unknown): string {
  return JSON.stringify([
    options.agent, options.name, host, options.path, query, options.id, options.basePath,
    options.prefix, options.protocol, options.protocols, options.startClosed, options.minUptime,
    options.maxRetries, options.connectionTimeout, options.maxEnqueuedMessages,
    options.maxReconnectionDelay, options.minReconnectionDelay, options.reconnectionDelayGrowFactor,
    options.defaultCallTimeout,
  ]);
}
