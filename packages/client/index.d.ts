// Types of @agents-rs/client. The class is client-wasm/js/agent-client.js
// (an EventTarget that owns the socket); every decision it carries out is
// made by the Rust core in client-wasm/src. These declarations mirror
// `agents/client`'s `AgentClient` so code written for it type-checks
// unchanged.

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
  /** A terminal close (1008, 4000–4999, or `shouldReconnectOnClose` said no) or exhausted retries; reconnecting stopped. */
  onConnectionError?: (error: AgentConnectionError) => void;
  /** The `cf_agent_mcp_servers` frame. */
  onMcpUpdate?: (mcp: unknown) => void;
  /**
   * Asked with each close of the socket, and with a close of code 1000,
   * reason `"timeout"` when an attempt times out (as the reference);
   * a falsy answer stops reconnecting as a terminal close code does
   * (`connectionError`, `onConnectionError`, pending calls rejected) until
   * `reconnect()`.
   */
  shouldReconnectOnClose?: (event: CloseEvent) => boolean;
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

/** Why the client stopped reconnecting: a terminal close (1008, 4000–4999) or retries used up. */
export declare class AgentConnectionError extends Error {
  readonly name: "AgentConnectionError";
  /** The close code. */
  readonly code: number;
  /** The close reason. */
  readonly reason: string;
  /** Whether the close was clean. */
  readonly wasClean: boolean;
}

/**
 * A `message` event of an {@link AgentClient}. Protocol frames (identity,
 * state, state errors, MCP servers, RPC answers) reach listeners too, marked
 * `isProtocol: true` by the client's frame sorting, so a filter needs no
 * `JSON.parse` of its own.
 */
export interface AgentMessageEvent<T = any> extends MessageEvent<T> {
  readonly isProtocol: boolean;
}

/** Events an {@link AgentClient} dispatches. */
export interface AgentClientEventMap {
  open: Event;
  message: AgentMessageEvent;
  close: CloseEvent;
  error: Event;
}

/**
 * A reconnecting WebSocket to one agent instance, wire-compatible with
 * `agents/client`'s `AgentClient`: buffers sends while disconnected (flushed
 * in order before `open`), reconnects with backoff plus jitter, stops on
 * close codes 1008 and 4000–4999, and speaks the agents protocol (identity,
 * state, RPC).
 *
 * @example
 * const connection = new AgentClient({ agent: "dialogue-agent", name: "insight-seeker" });
 * connection.addEventListener("message", (event) => console.log("Received:", event.data));
 * connection.send(JSON.stringify({ type: "inquiry", content: "What patterns do you see?" }));
 */
export declare class AgentClient<State = any> extends EventTarget {
  /** Creates the client and starts connecting (unless `startClosed`). Throws on bad options. */
  constructor(options: AgentClientOptions);

  addEventListener<K extends keyof AgentClientEventMap>(
    type: K,
    listener: (this: AgentClient<State>, event: AgentClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof AgentClientEventMap>(
    type: K,
    listener: (this: AgentClient<State>, event: AgentClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;

  /** Called on `open` (before listeners). */
  onopen: ((event: Event) => void) | null;
  /** Called on every message, protocol frames included (before listeners). */
  onmessage: ((event: AgentMessageEvent) => void) | null;
  /** Called on `close` with the real `code`, `reason` and `wasClean`. */
  onclose: ((event: CloseEvent) => void) | null;
  /** Called on `error`. */
  onerror: ((event: Event) => void) | null;

  /**
   * Sends now when open, else queues (up to `maxEnqueuedMessages`) and flushes
   * in order before `open`. Returns whether it went out now. Throws when the
   * queue is full.
   */
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): boolean;
  /** Closes and stops reconnecting; pending calls reject with `Connection closed`. @default code 1000 */
  close(code?: number, reason?: string): void;
  /** Reconnects now, also after `close()` or a terminal close. */
  reconnect(code?: number, reason?: string): void;
  /**
   * Calls a callable method. Rejects with the server's error, on timeout
   * (`defaultCallTimeout`, 30 s; none for streaming calls), or when the socket
   * it was sent on closes.
   */
  call<T = any>(method: string, args?: unknown[], options?: CallOptions): Promise<T>;
  /** `client.stub.increment(2)` is `client.call("increment", [2])`. */
  readonly stub: Record<string, (...args: unknown[]) => Promise<any>>;
  /** Sends `cf_agent_state` and updates `state` at once (optimistically). */
  setState(state: State): void;

  /** The agent's state (from the server or `setState`); `undefined` before any. */
  readonly state: State | undefined;
  /** Resolves once the server's identity (and the state that follows it) arrived on this socket. */
  readonly ready: Promise<void>;
  /** Whether the identity arrived on the current socket. */
  readonly identified: boolean;
  /** The agent's kebab-case name (the server's, once identified). */
  readonly agent: string;
  /** The instance name (the server's, once identified). */
  readonly name: string;
  /** The `_pk` connection id, kept across reconnects. */
  readonly id: string;
  /** The live socket's URL, or `""`. */
  readonly url: string;
  /** The live socket's subprotocol, or `""`. */
  readonly protocol: string;
  /** The live socket's extensions, or `""`. */
  readonly extensions: string;
  /** 0 connecting, 1 open, 2 closing, 3 closed (also between attempts). */
  readonly readyState: 0 | 1 | 2 | 3;
  /** Bytes queued while disconnected (UTF-16 units for strings) plus the socket's buffer. */
  readonly bufferedAmount: number;
  /** Retries since the last stable connection. */
  readonly retryCount: number;
  /** Whether automatic reconnection is on. */
  readonly shouldReconnect: boolean;
  /** Why reconnecting stopped (terminal close or exhausted retries), else `null`. */
  readonly connectionError: AgentConnectionError | null;
  /** `"blob"` (default) or `"arraybuffer"`; kept across reconnects. */
  binaryType: BinaryType;

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /** Closes and releases the WebAssembly memory now (else a FinalizationRegistry does). */
  free(): void;
  [Symbol.dispose](): void;
}


/** Options of {@link agentFetch}: the address options of {@link AgentClientOptions}. */
export interface AgentFetchOptions
  extends Pick<AgentClientOptions, "agent" | "name" | "host" | "basePath" | "prefix" | "path" | "protocol" | "query"> {
  /** The `fetch` to use. @default globalThis.fetch */
  fetch?: typeof fetch;
}

/**
 * A plain HTTP request to the agent instance (its `on_request`), at the URL
 * a socket would use with `http(s)` for `ws(s)` and no `_pk`, as
 * `agents/client`'s `agentFetch`. A `query` function is awaited first.
 *
 * @example
 * const state = await (await agentFetch({ agent: "counter-agent", name: "room-1" })).json();
 */
export declare function agentFetch(options: AgentFetchOptions, init?: RequestInit): Promise<Response>;
