
/** Options of `new AgentClient(options)`; names and defaults as `agents/client`. */
export interface AgentClientOptions {
  /** Agent class or binding name; kebab-cased into the URL (`ChatAgent` → `chat-agent`). Required unless `basePath` is set. */
  agent: string;
  /** Instance name. @default "default" */
  name?: string;
  /** `host[:port]` of the server. @default location.host */
  host?: string;
  /** A full path that replaces `<prefix>/<agent>/<name>`; the server picks the instance. */
  basePath?: string;
  /** URL prefix before the agent. @default "agents" */
  prefix?: string;
  /** Extra path after the name; must not start with `/`. */
  path?: string;
  /** `"ws"` or `"wss"`. @default "ws" for localhost, 127.0.0.1, 10.x, 192.168.x, 172.16–31.x; else "wss" */
  protocol?: "ws" | "wss";
  /** Query parameters, or a (sync or async) function re-run before every connection attempt (for auth tokens). `null`/`undefined` values are skipped. */
  query?: Record<string, string | number | boolean | null | undefined> | (() => Record<string, string | number | boolean | null | undefined> | Promise<Record<string, string | number | boolean | null | undefined>>);
  /** WebSocket subprotocols. */
  protocols?: string | string[];
  /** Connection id sent as `_pk`. @default a random UUID, kept across reconnects */
  id?: string;
  /** Retries after the first attempt. @default Infinity */
  maxRetries?: number;
  /** First backoff delay in ms (full jitter is applied). @default 3000 */
  minReconnectionDelay?: number;
  /** Largest backoff delay in ms. @default 10000 */
  maxReconnectionDelay?: number;
  /** Backoff growth per retry. @default 1.3 */
  reconnectionDelayGrowFactor?: number;
  /** ms a connection must stay open before the retry count resets. @default 5000 */
  minUptime?: number;
  /** ms an attempt may take to open. @default 4000 */
  connectionTimeout?: number;
  /** Most messages queued while disconnected; `send` throws beyond it. @default Infinity */
  maxEnqueuedMessages?: number;
  /** Do not connect until `reconnect()`. @default false */
  startClosed?: boolean;
  /** Timeout of non-streaming `call`s in ms; `0` disables. @default 30000 */
  defaultCallTimeout?: number;
  /** The agent's state changed (`"server"`) or `setState` was called (`"client"`). */
  onStateUpdate?: (state: any, source: "server" | "client") => void;
  /** The server refused a `setState` (e.g. `"Connection is readonly"`). */
  onStateUpdateError?: (error: string) => void;
  /** The server's identity arrived. */
  onIdentity?: (name: string, agent: string) => void;
  /** A reconnect reached a different instance than before. */
  onIdentityChange?: (oldName: string, newName: string, oldAgent: string, newAgent: string) => void;
  /** A terminal close (1008, 4000–4999) or exhausted retries; reconnecting stopped. */
  onConnectionError?: (error: AgentConnectionError) => void;
  /** The `cf_agent_mcp_servers` frame. */
  onMcpUpdate?: (mcp: unknown) => void;
}

/** Options of `call`. */
export interface CallOptions {
  /** ms before the call rejects; `0` disables. @default defaultCallTimeout (none for streaming calls) */
  timeout?: number;
  /** Streaming callbacks: chunks (`done:false`), the final result, or the error. */
  stream?: StreamCallbacks;
  /** @deprecated use `stream.onChunk` */
  onChunk?: (chunk: any) => void;
  /** @deprecated use `stream.onDone` */
  onDone?: (result: any) => void;
  /** @deprecated use `stream.onError` */
  onError?: (error: string) => void;
}

/** Callbacks of a streaming call. */
export interface StreamCallbacks {
  onChunk?: (chunk: any) => void;
  onDone?: (result: any) => void;
  onError?: (error: string) => void;
}

/** Why the client stopped reconnecting. */
export interface AgentConnectionError extends Error {
  name: "AgentConnectionError";
  code: number;
  reason: string;
  wasClean: boolean;
}
